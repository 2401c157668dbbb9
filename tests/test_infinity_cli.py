"""`varrl sample` and `varrl eval` on a tiny Infinity: from the released files (with --text-encoder,
--schedule, --aspect-ratio), and from a model directory such as a run's last/ (which names its own
files), with Infinity's official sampler as the default."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from tinyinfinity import write_tiny_infinity
from tinyinfinity_vae import write_tiny_bsq, write_tiny_t5

from varrl.cli import _sampler, build_parser, default_sampler, main
from varrl.policy.infinity_policy import official_sampler
from varrl.policy.load import load_policy, save_policy


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("tinyinfinity_cli")
    model, vae, t5 = write_tiny_infinity(root, ".pth"), write_tiny_bsq(root), write_tiny_t5(root / "flan-t5-tiny")
    exported = save_policy(load_policy(model, vae=vae, text_encoder=t5, schedule="0.06M"), root / "last")
    return {"model": model, "vae": vae, "t5": t5, "dir": exported}


def released(files, *extra):
    return ["--checkpoint", str(files["model"]), "--vae", str(files["vae"]), "--text-encoder", str(files["t5"]),
            *extra]


def test_sample_from_the_released_files(files, tmp_path, capsys):
    out = tmp_path / "s.png"
    assert main(["sample", *released(files, "--schedule", "0.06M"), "--prompt", 'a sign "OPEN"', "--n", "2",
                 "--out", str(out)]) == 0
    assert "wrote 2 samples" in capsys.readouterr().out
    with Image.open(out) as im:
        wide = im.size
    # --aspect-ratio is height / width: 2.0 gives tiles taller than wide.
    out2 = tmp_path / "tall.png"
    assert main(["sample", *released(files, "--schedule", "0.06M", "--aspect-ratio", "2.0"), "--prompt", "a",
                 "--n", "1", "--out", str(out2)]) == 0
    with Image.open(out2) as im:
        assert im.size[1] - 40 > im.size[0] and im.size != wide  # (40 px: the caption under the tile)


def test_sample_from_a_model_directory_matches_the_api(files, tmp_path):
    out = tmp_path / "d.png"
    assert main(["sample", "--checkpoint", str(files["dir"]), "--prompt", "the text CAT", "--n", "2", "--seed", "3",
                 "--out", str(out), "--scale", "1", "--cols", "2"]) == 0
    policy = load_policy(files["dir"])
    traj = policy.rollout(["the text CAT"], n=2, sampler=official_sampler(), generator=torch.Generator().manual_seed(3))
    img = (policy.decode(traj)[0].permute(1, 2, 0) * 255).round().to(torch.uint8)
    with Image.open(out) as im:
        tile = torch.from_numpy(np.array(im.convert("RGB")))[4: 4 + 64, 4: 4 + 64]
    assert (tile.int() - img.int()).abs().max() <= 1  # the grid's first tile is the API's first sample


def test_infinity_models_default_to_the_official_sampler(files, tmp_path):
    assert default_sampler(str(files["model"])) == official_sampler() == default_sampler(str(files["dir"]))
    run = tmp_path / "run"
    (run / "last").mkdir(parents=True)
    (run / "config.yaml").write_text("run:\n  name: run\nsampler:\n  cfg: 4.0\n  top_p: 0.8\n")
    args = build_parser().parse_args(["sample", "--prompt", "a", "--temperature", "0.5"])
    s = _sampler(args, str(run / "last"))  # a run samples as it trained; given flags win
    assert (s.cfg, s.top_p, s.temperature) == (4.0, 0.8, 0.5)
    s = _sampler(build_parser().parse_args(["sample", "--prompt", "a", "--cfg", "1"]), str(files["model"]))
    assert (s.cfg, s.cfg_schedule, s.top_p) == (1.0, "constant", 0.97)


def test_eval_generates_with_an_infinity_model(files, tmp_path):
    out = tmp_path / "ev"
    assert main(["eval", *released(files, "--schedule", "0.06M"), "--limit", "2", "--batch", "2",
                 "--ocr-workers", "0", "--device", "cpu", "--out", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["scored"] == 2 and m["sampler"]["top_p"] == 0.97 and m["sampler"]["cfg_schedule"] == "constant"


def test_model_flag_mistakes_are_one_line(files, tmp_path, tiny_model_dir, capsys):
    assert main(["sample", "--checkpoint", str(files["model"]), "--vae", str(files["vae"]), "--prompt", "a",
                 "--out", str(tmp_path / "x.png")]) == 2
    assert "Flan-T5" in capsys.readouterr().err
    assert main(["sample", "--checkpoint", str(tiny_model_dir), "--text-encoder", str(files["t5"]), "--prompt", "a",
                 "--out", str(tmp_path / "y.png")]) == 2
    assert "Infinity models only" in capsys.readouterr().err
