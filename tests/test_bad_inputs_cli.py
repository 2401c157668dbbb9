"""Bad inputs through the real command line (`varrl.cli.main`), class by class (docs/bad-inputs.md,
`## Inputs`): each ends in one line naming the input and the fix, before anything is written, or is
counted and reported instead of ending a long job."""

from __future__ import annotations

import json
import os
import random
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from tinyrun import run_args

from varrl.cli import main

REPO = Path(__file__).resolve().parents[1]


def tiny_args(model, root, name, *extra):
    return run_args(model, root, name, "train.group_size=2", "train.steps=2", "train.eval_every=0",
                    "train.save_every=1", "train.micro_batch=8", "train.warmup=1", "train.samples_in_grid=2", *extra)


def one_line_error(capsys, rc, code=2) -> str:
    """The error line, after checking it is the only output on stderr and no traceback came."""
    err = capsys.readouterr().err.strip()
    assert rc == code, err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith("varrl ") and ": error: " in err, err
    return err


@pytest.fixture
def read_only_dir(tmp_path):
    """A folder nobody can write in: a chmod-ed one, or /sys for root (who ignores file modes)."""
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    for cand in (ro, Path("/sys")):
        try:
            (cand / ".probe").write_bytes(b"")
            (cand / ".probe").unlink()
        except OSError:
            yield cand
            break
    else:
        pytest.skip("no read-only folder on this machine")
    ro.chmod(0o755)


def _jsonl(path: Path, *lines: str) -> Path:
    path.write_text("".join(ln + "\n" for ln in lines), encoding="utf-8")
    return path


# --- class 1: tools never destroy their input -----------------------------------------------------

@pytest.mark.parametrize("same_file", [True, False], ids=["out-is-input", "out-elsewhere"])
def test_filter_that_selects_nothing_writes_nothing(tmp_path, capsys, same_file):
    f = _jsonl(tmp_path / "f.jsonl", '{"prompt": "the text \\"A\\""}', '{"prompt": "\\"A\\" and \\"B\\""}')
    before = f.read_text()
    out = f if same_file else tmp_path / "out.jsonl"
    err = one_line_error(capsys, main(["data", "filter", str(f), "--bins", "3", "--out", str(out)]))
    assert "bins 3" in err and "nothing was written" in err
    assert f.read_text() == before  # the input is whole (it was emptied before)
    assert same_file or not out.exists()


def test_filter_in_place_keeps_the_chosen_prompts(tmp_path, capsys):
    f = _jsonl(tmp_path / "f.jsonl", '{"prompt": "the text \\"A\\""}', '{"prompt": "\\"A\\" and \\"B\\""}')
    assert main(["data", "filter", str(f), "--bins", "2", "--out", str(f)]) == 0
    assert [json.loads(ln)["prompt"] for ln in f.read_text().splitlines()] == ['"A" and "B"']
    assert not list(tmp_path.glob(".f.jsonl.*"))  # no temporary file left behind


def test_data_out_in_a_read_only_place_is_one_line(tmp_path, capsys, read_only_dir):
    f = _jsonl(tmp_path / "f.jsonl", '{"prompt": "the text \\"A\\""}')
    err = one_line_error(capsys, main(["data", "filter", str(f), "--bins", "1", "--out",
                                       str(read_only_dir / "x.jsonl")]))
    assert "--out" in err and "cannot write" in err


# --- class 3: user mistakes in `varrl train`: one line, before the run folder exists -----------------

def _bad_prompts(tmp_path, kind):
    p = tmp_path / "prompts.jsonl"
    if kind == "folder":
        p.mkdir()
    elif kind == "latin1":
        p.write_bytes('{"prompt": "the text \\"CAFÉ\\""}\n'.encode("latin-1"))
    elif kind == "no_quotes":
        _jsonl(p, '{"prompt": "a quiet empty field"}')
    elif kind == "empty_words":
        _jsonl(p, '{"prompt": "the text \\"OPEN\\"", "words": []}')
    return p


TRAIN_MISTAKES = [
    # (id, prompts-file kind or None, overrides, what the line must name)
    ("prompts-file-is-a-folder", "folder", [], "is a folder"),
    ("prompts-file-not-utf8", "latin1", [], "not UTF-8"),
    ("no-target-words-var_rl", "no_quotes", ["reward.weights={text_ocr: 1.0}"], "no prompt asks for any words"),
    ("words-empty-var_rl", "empty_words", ["reward.weights={text_ocr: 1.0}"], "no prompt asks for any words"),
    ("no-target-words-grpo", "no_quotes", ["reward.weights={text_ocr: 1.0}", "rl.method=grpo"],
     "no prompt asks for any words"),
    ("save_every-0", None, ["train.save_every=0"], "train.save_every"),
    ("vmr-eta-0", None, ["rl.vmr.eta=0"], "rl.vmr.eta"),
    ("weights-empty", None, ["reward.weights={}"], "reward.weights"),
    ("weights-unknown", None, ["reward.weights={ocr: 1}"], "reward.weights"),
    ("lr-negative", None, ["train.lr=-1e-4"], "train.lr"),
    ("lr-nan", None, ["train.lr=.nan"], "train.lr"),
    ("mp-threshold-2", None, ["rl.mp.threshold=2"], "rl.mp.threshold"),
    ("run-name-up", None, ["run.name=../../escaped"], "run.name"),
]


@pytest.mark.parametrize("kind,extra,named", [t[1:] for t in TRAIN_MISTAKES], ids=[t[0] for t in TRAIN_MISTAKES])
def test_train_mistake_is_one_line_and_writes_nothing(tiny_model_dir, tmp_path, capsys, kind, extra, named):
    root = tmp_path / "runs"
    files = [f"data.prompts_file={_bad_prompts(tmp_path, kind)}"] if kind else []
    err = one_line_error(capsys, main(["train", *tiny_args(tiny_model_dir, root, "r", *files, *extra)]))
    assert named in err, err
    assert not root.exists() and not (tmp_path / "escaped").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_device_without_cuda_is_one_line(tiny_model_dir, tmp_path, capsys):
    err = one_line_error(capsys, main(["train", *tiny_args(tiny_model_dir, tmp_path, "r", "policy.device=cuda")]))
    assert "policy.device" in err and "no usable CUDA" in err and not (tmp_path / "r").exists()


# --- class 4: the operating system says no: one line naming the path ---------------------------------

def test_run_dir_that_is_a_file(tiny_model_dir, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    err = one_line_error(capsys, main(["train", *tiny_args(tiny_model_dir, tmp_path / "file", "r")]))
    assert "run.dir" in err and "file" in err


def test_run_dir_read_only(tiny_model_dir, capsys, read_only_dir):
    err = one_line_error(capsys, main(["train", *tiny_args(tiny_model_dir, read_only_dir, "r")]))
    assert "run.dir" in err and str(read_only_dir) in err


@pytest.mark.parametrize("out,named", [("folder", "is a folder"), ("x.txt", "image extension"),
                                       ("noext", "image extension"), ("ro", "cannot write")])
def test_sample_out_is_checked_before_sampling(tiny_model_dir, tmp_path, capsys, out, named, read_only_dir):
    (tmp_path / "folder").mkdir()
    path = read_only_dir / "x.png" if out == "ro" else tmp_path / out
    err = one_line_error(capsys, main(["sample", "--checkpoint", str(tiny_model_dir), "--prompt", "a",
                                       "--n", "1", "--out", str(path)]))
    assert "--out" in err and named in err


def test_sample_writes_jpeg_when_asked(tiny_model_dir, tmp_path):
    out = tmp_path / "s.jpg"
    assert main(["sample", "--checkpoint", str(tiny_model_dir), "--prompt", "a", "--n", "1", "--out", str(out)]) == 0
    with Image.open(out) as im:
        assert im.format == "JPEG"


@pytest.mark.parametrize("cmd", ["sample", "eval"])
def test_seed_too_large_for_the_generator(tiny_model_dir, tmp_path, capsys, cmd):
    args = ["--prompt", "a"] if cmd == "sample" else ["--limit", "1", "--out", str(tmp_path / "e")]
    err = one_line_error(capsys, main([cmd, "--checkpoint", str(tiny_model_dir), *args, "--seed", str(2**64)]))
    assert "--seed" in err


def test_full_disk_while_writing_a_checkpoint_is_one_line(tiny_model_dir, tmp_path):
    """A file-size limit makes the optimizer file's write fail as a full disk does (EFBIG instead of
    ENOSPC, the same failure for torch's writer): one line naming the checkpoint, not torch's text."""

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (400_000, 400_000))

    args = tiny_args(tiny_model_dir, tmp_path, "full", "train.steps=1")
    proc = subprocess.run([sys.executable, "-m", "varrl", "train", *args], capture_output=True, text=True,
                          preexec_fn=limit, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "cannot write the step-1 checkpoint" in last and "--resume" in last
    assert "inline_container" not in last


# --- class 5: one odd image does not sink an evaluation -----------------------------------------------

@pytest.mark.parametrize("workers", [0, 1])
def test_eval_images_counts_an_image_the_ocr_engine_fails_on(tmp_path, capsys, workers):
    bench, imgs = tmp_path / "bench", tmp_path / "imgs"
    assert main(["data", "synth-cvtg", "--out", str(bench), "--per-file", "1", "--render", str(imgs)]) == 0
    Image.new("RGB", (4000, 10), "white").save(imgs / "CVTG" / "2" / "0.png")  # the engine raises on it
    out = tmp_path / "ev"
    assert main(["eval", "--data", str(bench), "--images", str(imgs), "--out", str(out),
                 "--ocr-workers", str(workers)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["unreadable"] == ["CVTG/2/0"] and m["scored"] == m["prompts"] - 1
    assert "1 of 8 images unreadable" in capsys.readouterr().err


# --- class 6: run records tell the truth ------------------------------------------------------------

@pytest.fixture
def finished_run(tiny_model_dir, tmp_path):
    assert main(["train", *tiny_args(tiny_model_dir, tmp_path, "done")]) == 0
    return tmp_path / "done"


@pytest.mark.parametrize("override,named", [("train.steps=1", "train.steps=1 is below the 2 steps"),
                                            ("run.name=other", "run.name cannot change"),
                                            ("run.dir=elsewhere", "run.dir cannot change")])
def test_resume_that_would_misrecord_the_run_is_refused(finished_run, capsys, override, named):
    saved = (finished_run / "config.yaml").read_text()
    err = one_line_error(capsys, main(["train", "--resume", str(finished_run), override]))
    assert named in err
    assert (finished_run / "config.yaml").read_text() == saved  # the record is untouched


def test_config_file_with_a_key_twice(tiny_model_dir, tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train:\n  steps: 3\n  steps: 5\n")
    err = one_line_error(capsys, main(["train", "--config", str(cfg), *tiny_args(tiny_model_dir, tmp_path, "r")]))
    assert "'steps' is given twice (lines 2 and 3)" in err and str(cfg) in err


# --- class 7: messages that do not mislead ------------------------------------------------------------

class _Payload:
    def __reduce__(self):
        return (print, ("ran",))


@pytest.mark.parametrize("content,says,never", [
    ("pickled", "re-save the state dict alone as safetensors", "weights_only"),
    ("random", "not a readable PyTorch checkpoint", "pickled"),
    ("empty", "not a readable PyTorch checkpoint", "pickled"),
])
def test_refused_pth_says_what_to_do(tmp_path, capsys, content, says, never):
    path = tmp_path / "var_d16.pth"
    for p in (path, tmp_path / "vae_ch160v4096z32.pth"):  # the model and its tokenizer, both bad alike
        if content == "pickled":
            torch.save({"word_embed.weight": torch.zeros(2, 2), "x": _Payload()}, p)
        else:
            p.write_bytes(b"\x13" + random.Random(0).randbytes(4095) if content == "random" else b"")
    err = one_line_error(capsys, main(["sample", "--checkpoint", str(path), "--prompt", "1"]))
    assert says.lower() in err.lower() and never not in err, err


# --- the command line: --debug shows the traceback ------------------------------------------------

def test_debug_flag_and_env_show_the_traceback(tmp_path, monkeypatch, capsys):
    from varrl.config import ConfigError

    assert main(["train", "train.lr=-1"]) == 2
    with pytest.raises(ConfigError, match="train.lr"):
        main(["--debug", "train", "train.lr=-1"])
    with pytest.raises(ConfigError):
        main(["train", "train.lr=-1", "--debug"])
    monkeypatch.setenv("VARRL_DEBUG", "1")
    with pytest.raises(ConfigError):
        main(["train", "train.lr=-1"])


# --- no silent wrong signal: a step whose update can do nothing is loud, also in report.md --------------

def test_step_with_only_nan_rewards_warns_in_the_output_and_report(tiny_model_dir, tmp_path, capsys):
    # Step 1 draws the two prompts without words (all rewards NaN); step 2 the one with a word.
    f = _jsonl(tmp_path / "p.jsonl", '{"prompt": "a quiet field"}', '{"prompt": "an empty room"}',
               '{"prompt": "the text \\"OPEN\\""}', '{"prompt": "the text \\"SHUT\\""}')
    args = tiny_args(tiny_model_dir, tmp_path, "nan", f"data.prompts_file={f}", "reward.weights={text_ocr: 1.0}",
                     "reward.text_ocr.workers=0", f"data.eval_prompts_file={f}")
    assert main(["train", *args]) == 0  # var_rl crashed in mask propagation here
    err = capsys.readouterr().err
    assert "WARNING: step 1: all 2 groups got only NaN rewards" in err and "MP mask" not in err
    assert "2 of 4 prompts ask for no words" in err
    report = (tmp_path / "nan" / "report.md").read_text()
    assert "## Warnings" in report and "step 1: all 2 groups got only NaN rewards" in report
    assert json.loads((tmp_path / "nan" / "report.json").read_text())["warnings"]
