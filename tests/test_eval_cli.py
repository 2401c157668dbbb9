"""`varrl eval` end to end: real OCR on real renderings, and generation with a tiny random model."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from varrl.cli import main
from varrl.eval.synthbench import build_synth_cvtg

try:  # the tiny random CLIP that the CLIP reward's tests save to disk: shared rather than rebuilt
    from test_clip_score import clip_dir  # noqa: F401
    HAVE_CLIP = True
except (ImportError, pytest.skip.Exception):
    HAVE_CLIP = False


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """A 2-prompts-per-file synthetic benchmark and the generator's renderings of its words."""
    root = tmp_path_factory.mktemp("evalbench")
    build_synth_cvtg(root / "bench", per_file=2, seed=3, render=root / "images")
    return root / "bench", root / "images"


def test_eval_images_reports_missing_and_unreadable(rendered, tmp_path, capsys):
    bench, images = rendered
    work = tmp_path / "images"
    for p in images.rglob("*.png"):  # a copy we may damage
        dest = work / p.relative_to(images)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(p.read_bytes())
    (work / "CVTG" / "3" / "1.png").unlink()
    (work / "CVTG-Style" / "5" / "0.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    out = tmp_path / "out"
    rc = main(["eval", "--images", str(work), "--data", str(bench), "--out", str(out), "--ocr-workers", "1",
               "--batch", "4", "--clip-model", str(tmp_path / "no_clip_here")])
    assert rc == 0
    err = capsys.readouterr().err
    assert "1 of 16 images missing" in err and "CVTG/3/1" in err
    assert "1 of 16 images unreadable" in err and "CVTG-Style/5/0" in err
    assert "clip_score is null" in err
    m = json.loads((out / "metrics.json").read_text())
    assert m["missing"] == ["CVTG/3/1"] and m["unreadable"] == ["CVTG-Style/5/0"]
    assert (m["prompts"], m["scored"]) == (16, 14)
    # clean renderings read back almost perfectly (real OCR); the two bad images are left out, not zeroed
    assert m["overall"]["word_acc"] > 0.85 and m["overall"]["ned"] > 0.95
    assert m["overall"]["images"] == 14 and m["overall"]["clip_score"] is None
    assert m["by_regions"]["3"]["images"] == 3 and m["by_regions"]["5"]["images"] == 3
    assert m["overall"]["words"] == sum(g["words"] for g in m["by_regions"].values())
    assert m["by_subset"]["CVTG"]["images"] == 7 and m["by_subset"]["CVTG-Style"]["images"] == 7
    reads = [json.loads(line) for line in (out / "reads.jsonl").read_text().splitlines()]
    assert len(reads) == 14 and all(r["reads"] for r in reads)
    assert "| overall |" in (out / "metrics.md").read_text()


def test_eval_checkpoint_generates_in_cvtg_layout(tiny_model_dir, rendered, tmp_path, capsys):
    bench, _ = rendered
    out = tmp_path / "gen"
    args = ["eval", "--checkpoint", str(tiny_model_dir), "--data", str(bench), "--limit", "3", "--batch", "2",
            "--ocr-workers", "0", "--seed", "5", "--top-k", "8"]
    assert main([*args, "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert "| 2 regions |" in stdout and "metrics.json" in stdout
    # --limit takes prompts round-robin over the files: one from each of the first three
    pngs = sorted(str(p.relative_to(out)) for p in out.rglob("*.png"))
    assert pngs == ["CVTG/2/0.png", "CVTG/3/0.png", "CVTG/4/0.png"]
    with Image.open(out / "CVTG/2/0.png") as im:
        assert im.size == (32, 32) and im.mode == "RGB"
    m = json.loads((out / "metrics.json").read_text())
    assert m["scored"] == 3 and m["missing"] == [] and set(m["by_regions"]) == {"2", "3", "4"}
    assert 0.0 <= m["overall"]["ned"] <= 1.0 and m["overall"]["clip_score"] is None
    assert m["sampler"]["top_k"] == 8 and m["seed"] == 5
    # the tiny model reads 63 characters: longer prompts were shortened for generation, and said so
    assert "CVTG/4/0" in m["prompts_shortened"]
    # same seed and batches: a shorter --limit gives the same first images
    out2 = tmp_path / "gen2"
    assert main([*args[:5], "--limit", "2", *args[7:], "--out", str(out2)]) == 0
    assert (out2 / "CVTG/2/0.png").read_bytes() == (out / "CVTG/2/0.png").read_bytes()
    # and scoring the generated folder again gives the same numbers
    out3 = tmp_path / "rescored"
    assert main(["eval", "--images", str(out), "--data", str(bench), "--limit", "3", "--ocr-workers", "0",
                 "--out", str(out3)]) == 0
    assert json.loads((out3 / "metrics.json").read_text())["overall"] == m["overall"]


@pytest.mark.parametrize("extra, message", [
    (["--images", "x", "--checkpoint", "y"], "not both"),
    (["--benchmark", "nope"], "unknown benchmark 'nope'"),
    (["--images", "/nonexistent/dir"], "--images folder not found"),
    (["--data", "/nonexistent/root"], "benchmark root not found"),
])
def test_eval_bad_arguments(extra, message, tmp_path, capsys):
    assert main(["eval", "--out", str(tmp_path / "o"), "--ocr-workers", "0", *extra]) == 2
    assert message in capsys.readouterr().err


def test_eval_with_no_image_found(rendered, tmp_path, capsys):
    bench, _ = rendered
    (tmp_path / "empty").mkdir()
    rc = main(["eval", "--images", str(tmp_path / "empty"), "--data", str(bench), "--ocr-workers", "0",
               "--out", str(tmp_path / "o")])
    assert rc == 2
    assert "no image could be scored" in capsys.readouterr().err


@pytest.mark.skipif(not HAVE_CLIP, reason="needs transformers")
def test_eval_images_with_a_clip_model(rendered, tmp_path, clip_dir):  # noqa: F811
    """CLIPScore through the CLIP reward's own loader: a tiny random CLIP saved to disk; each image's
    score equals the scorer's on the same image and prompt."""
    from varrl.eval.runner import read_image
    from varrl.rewards.clip_score import ClipScorer

    model = clip_dir
    bench, images = rendered
    out = tmp_path / "clip"
    assert main(["eval", "--images", str(images), "--data", str(bench), "--limit", "4", "--ocr-workers", "0",
                 "--clip-model", str(model), "--device", "cpu", "--out", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    rows = [json.loads(line) for line in (out / "reads.jsonl").read_text().splitlines()]
    scorer = ClipScorer.load(str(model))
    direct = scorer.score([read_image(images / f"{r['key']}.png") for r in rows], [r["prompt"] for r in rows])
    assert [r["clip_score"] for r in rows] == pytest.approx(list(direct))
    assert m["overall"]["clip_score"] == pytest.approx(float(direct.mean()))
    assert all(0.0 <= c <= 2.5 for c in direct) and m["clip_model"] == str(model) and m["clip_note"] is None
