"""Damaged checkpoints and model folders: found by their manifest (or by failing to parse), skipped on
resume with a warning, and named in one line when nothing intact is left."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file
from tinymodel import build_tiny, write_model_dir
from tinyrun import run_args

from varrl import load_policy
from varrl.checkpoint import (
    DamagedCheckpointError,
    check_intact,
    latest_intact_checkpoint,
    load_object,
    load_state,
    load_tensors,
    save_checkpoint,
)
from varrl.cli import main


def _save(root, step):
    return save_checkpoint(root, step, {"model": {"w": torch.full((64,), float(step))}}, {"step": step},
                           {"optimizer": {"lr": 0.5, "t": torch.tensor([step])}}, keep=5)


def truncate(path, keep_frac=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep_frac)])


def flip_last_byte(path):
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


# --- the manifest -------------------------------------------------------------------------------------

def test_manifest_lists_size_and_sha256_of_every_file(tmp_path):
    ckpt = _save(tmp_path, 1)
    files = json.loads((ckpt / "manifest.json").read_text())["files"]
    assert sorted(files) == ["model.safetensors", "optimizer.pt", "state.json"]
    for name, entry in files.items():
        data = (ckpt / name).read_bytes()
        assert entry == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert check_intact(ckpt) is None


@pytest.mark.parametrize("damage, expected", [
    (lambda c: truncate(c / "model.safetensors"), "model.safetensors has"),
    (lambda c: flip_last_byte(c / "optimizer.pt"), "optimizer.pt does not match its sha256"),
    (lambda c: (c / "state.json").unlink(), "state.json is missing"),
    (lambda c: (c / "manifest.json").write_text("{not json"), "manifest.json is damaged"),
])
def test_check_intact_names_the_damaged_file(tmp_path, damage, expected):
    ckpt = _save(tmp_path, 1)
    damage(ckpt)
    assert expected in check_intact(ckpt)


def test_a_folder_without_manifest_passes_and_still_loads(tmp_path):
    ckpt = _save(tmp_path, 3)
    (ckpt / "manifest.json").unlink()  # as written before manifests existed
    assert check_intact(ckpt) is None
    assert load_state(ckpt) == {"step": 3}
    assert load_tensors(ckpt / "model.safetensors")["w"][0] == 3.0


def test_latest_intact_skips_the_damaged_newest_with_a_warning(tmp_path):
    for step in (1, 2, 3):
        _save(tmp_path, step)
    truncate(tmp_path / "step_00000003" / "model.safetensors")
    heard = []
    assert latest_intact_checkpoint(tmp_path, heard.append) == tmp_path / "step_00000002"
    assert len(heard) == 1 and "step_00000003" in heard[0] and "model.safetensors" in heard[0]


def test_no_intact_checkpoint_is_one_error_naming_each(tmp_path):
    for step in (1, 2):
        _save(tmp_path, step)
        flip_last_byte(tmp_path / f"step_{step:08d}" / "model.safetensors")
    with pytest.raises(DamagedCheckpointError, match="no intact checkpoint") as err:
        latest_intact_checkpoint(tmp_path)
    assert "step_00000001" in str(err.value) and "step_00000002" in str(err.value)


@pytest.mark.parametrize("name, reader", [("model.safetensors", load_tensors), ("optimizer.pt", load_object)])
def test_unreadable_file_is_one_error_naming_it(tmp_path, name, reader):
    ckpt = _save(tmp_path, 1)
    truncate(ckpt / name)
    with pytest.raises(DamagedCheckpointError, match=name):
        reader(ckpt / name)


def test_overwritten_state_json_is_named(tmp_path):
    ckpt = _save(tmp_path, 1)
    (ckpt / "state.json").write_text("step: 1")
    with pytest.raises(DamagedCheckpointError, match="state.json is damaged"):
        load_state(ckpt)


# --- through varrl train / sample ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny") / "model"
    write_model_dir(path, *build_tiny(model_kwargs=dict(max_text_len=128)))
    return path


def train_args(tiny_dir, run_dir, name):
    return ["train", *run_args(tiny_dir, run_dir, name, "train.steps=4", "train.eval_every=2", "train.save_every=1",
                               "train.keep_checkpoints=3", "train.eval_prompts=4", "train.micro_batch=8",
                               "train.lr=1e-3", "train.warmup=1", "train.samples_in_grid=4")]


def same_weights(a, b):
    sa, sb = load_file(str(a / "last" / "model.safetensors")), load_file(str(b / "last" / "model.safetensors"))
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def without_perf(run):
    return [{k: v for k, v in json.loads(ln).items() if not k.startswith("perf/")}
            for ln in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def finished(tiny_dir, tmp_path_factory):
    """A finished 4-step run (the reference) and a copy to damage."""
    root = tmp_path_factory.mktemp("runs")
    assert main(train_args(tiny_dir, root, "full")) == 0
    return root / "full"


@pytest.mark.parametrize("legacy", [False, True])
def test_resume_skips_a_damaged_newest_checkpoint_and_ends_identical(finished, tmp_path, capsys, legacy):
    run = tmp_path / "full"  # the same run.name and run.dir as the reference: a resume keeps both
    shutil.copytree(finished, run)
    newest = run / "checkpoints" / "step_00000004"
    if legacy:  # no manifests: the damage shows when the file fails to parse
        for m in run.glob("checkpoints/*/manifest.json"):
            m.unlink()
        (newest / "state.json").write_text("{\"step\": 4, \"world\"")
    else:
        truncate(newest / "model.safetensors")
    capsys.readouterr()
    assert main(["train", "--resume", str(run)]) == 0
    err = capsys.readouterr().err
    assert "skipping checkpoint" in err and "step_00000004" in err
    assert ("state.json" if legacy else "model.safetensors") in err
    assert "resuming from" in err and "step_00000003" in err
    assert same_weights(finished, run)
    assert without_perf(run) == without_perf(finished)  # step 4 redone, the log in step order


def test_resume_with_no_intact_checkpoint_is_one_line(finished, tmp_path, capsys):
    run = tmp_path / "full"
    shutil.copytree(finished, run)
    for ckpt in (run / "checkpoints").iterdir():
        truncate(ckpt / "optimizer.pt")
    capsys.readouterr()
    assert main(["train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no intact checkpoint" in err and "optimizer.pt" in err


@pytest.mark.parametrize("manifest", [True, False])
def test_sample_from_a_damaged_model_folder_is_one_line_naming_the_file(finished, tmp_path, capsys, manifest):
    model = tmp_path / "model"
    shutil.copytree(finished / "last", model)
    assert (model / "manifest.json").exists()  # save_policy writes one
    if not manifest:
        (model / "manifest.json").unlink()
    truncate(model / "model.safetensors")
    with pytest.raises(DamagedCheckpointError, match="model.safetensors"):
        load_policy(model)
    rc = main(["sample", "--checkpoint", str(model), "--prompt", 'the text "OPEN"', "--n", "1",
               "--out", str(tmp_path / "s.png")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "model.safetensors" in err, err
