"""A bad input found at the start of `varrl train` leaves nothing that blocks the corrected command:
checks run before the run folder exists, and what a failed start wrote is removed."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from tinymodel import build_tiny, write_model_dir
from tinyrun import run_args

from varrl.cli import main


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny") / "model"
    write_model_dir(path, *build_tiny(model_kwargs=dict(max_text_len=128)))
    return path


def args(tiny_dir, run_dir, *extra):
    # rl.vmr.m at its default, 32px: the tiny model's last grid, where VMR cannot split (the tests correct it)
    return ["train", *run_args(tiny_dir, run_dir, "x", "train.group_size=2", "train.steps=1", "train.micro_batch=4",
                               "rl.method=var_rl", "rl.vmr.m=32px", *extra)]


@pytest.mark.parametrize("bad, says", [
    ("rl.vmr.m=512px", "rl.vmr.m"),  # needs the model's schedule: checked once the model is loaded
    ("train.trainable=nothing_matches", "train.trainable"),
])
def test_config_error_at_start_leaves_no_run_folder(tiny_dir, tmp_path, capsys, bad, says):
    assert main(args(tiny_dir, tmp_path, bad)) == 2
    assert says in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    assert main(args(tiny_dir, tmp_path, "rl.vmr.m=2")) == 0  # the corrected command is not refused


def test_prompt_the_model_cannot_read_leaves_no_run_folder(tiny_dir, tmp_path, capsys):
    f = tmp_path / "prompts.jsonl"
    f.write_text(json.dumps({"prompt": 'the text "OK" ' + "x" * 300}) + "\n")
    assert main(args(tiny_dir, tmp_path, "rl.vmr.m=2", f"data.prompts_file={f}")) == 2
    assert f"{f}:1" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_resume_with_a_bad_override_keeps_the_saved_config(tiny_dir, tmp_path, capsys):
    assert main(args(tiny_dir, tmp_path, "rl.vmr.m=2")) == 0
    saved = (tmp_path / "x" / "config.yaml").read_text()
    assert main(["train", "--resume", str(tmp_path / "x"), "rl.vmr.m=512px", "train.steps=2"]) == 2
    assert "rl.vmr.m" in capsys.readouterr().err
    assert (tmp_path / "x" / "config.yaml").read_text() == saved  # a plain --resume works as before
    assert main(["train", "--resume", str(tmp_path / "x"), "train.steps=2"]) == 0


@pytest.mark.parametrize("folder_existed", [False, True])
def test_input_error_found_after_the_folder_was_made_removes_what_the_start_wrote(tiny_dir, tmp_path, folder_existed):
    # A hub id that passes every check but cannot be fetched offline fails at the step-0 evaluation,
    # after the run folder and config.yaml were written.
    run = tmp_path / "x"
    if folder_existed:
        run.mkdir()
        (run / "notes.txt").write_text("mine")
    cmd = [sys.executable, "-m", "varrl", *args(tiny_dir, tmp_path, "rl.vmr.m=2", "reward.weights={clip_score: 1.0}",
                                                "reward.clip_score.model=nobody/no-such-clip")]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "nobody/no-such-clip" in out.stderr, out.stderr[-2000:]
    if folder_existed:
        assert (run / "notes.txt").read_text() == "mine" and not (run / "config.yaml").exists()
    else:
        assert not run.exists()
