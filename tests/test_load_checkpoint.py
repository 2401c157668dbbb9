from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import save_file
from tinymodel import build_tiny, write_model_dir

from varrl import load_policy
from varrl.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    list_checkpoints,
    load_object,
    load_state,
    load_tensors,
    prune_checkpoints,
    save_checkpoint,
)


def test_load_policy_roundtrip(tiny_model_dir):
    _, _, tok, model = build_tiny(seed=0)
    policy = load_policy(tiny_model_dir)
    for name, t in model.state_dict().items():
        assert torch.equal(policy.model.state_dict()[name], t), name
    for name, t in tok.state_dict().items():
        assert torch.equal(policy.tokenizer.state_dict()[name], t), name
    assert not policy.model.training and not policy.tokenizer.training


def test_missing_path(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(CheckpointError, match="not found") as e:
        load_policy(missing)
    assert str(missing) in str(e.value)


def test_dir_without_config(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match="config.json is missing") as e:
        load_policy(tmp_path)
    assert str(tmp_path) in str(e.value)


def test_bad_config_json(tiny_model_dir, tmp_path):
    d = tmp_path / "m"
    shutil.copytree(tiny_model_dir, d)
    (d / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_policy(d)
    meta = {"format": "other/2", "tokenizer": {}, "model": {}}
    (d / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="unknown format 'other/2'"):
        load_policy(d)
    meta = json.loads((tiny_model_dir / "config.json").read_text())
    meta["model"]["dimm"] = 3
    (d / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="did you mean 'model.dim'"):
        load_policy(d)


def test_missing_weights_file(tiny_model_dir, tmp_path):
    d = tmp_path / "m"
    shutil.copytree(tiny_model_dir, d)
    (d / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_policy(d)


def test_run_dir_uses_its_export(tiny_model_dir, tmp_path):
    shutil.copytree(tiny_model_dir, tmp_path / "run" / "export")
    policy = load_policy(tmp_path / "run")
    assert policy.schedule.total_tokens == 21


def test_weights_that_do_not_fit(tiny_model_dir, tmp_path):
    d = tmp_path / "m"
    shutil.copytree(tiny_model_dir, d)
    tok_cfg, model_cfg, tok, model = build_tiny(seed=1, model_kwargs={"dim": 48})
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(d / "model.safetensors"))
    with pytest.raises(CheckpointError) as e:
        load_policy(d)
    msg = str(e.value)
    assert "model.safetensors does not fit the model config" in msg
    # the first tensor of the state dict, with both shapes
    assert "text.tok.weight is (97, 48) in the file but (97, 32) in the model" in msg


def test_missing_and_unexpected_tensors(tiny_model_dir, tmp_path):
    d = tmp_path / "m"
    shutil.copytree(tiny_model_dir, d)
    sd = load_tensors(d / "model.safetensors")
    sd.pop("head.bias")
    sd["extra.weight"] = torch.zeros(2)
    save_file(sd, str(d / "model.safetensors"))
    with pytest.raises(CheckpointError) as e:
        load_policy(d)
    assert "1 missing tensors (first: head.bias)" in str(e.value)
    assert "1 unexpected tensors (first: extra.weight)" in str(e.value)


def test_half_precision_weights_load_as_float32(tmp_path):
    tok_cfg, model_cfg, tok, model = build_tiny(seed=0)
    write_model_dir(tmp_path, tok_cfg, model_cfg, tok, model)
    sd = {k: v.half() for k, v in model.state_dict().items()}
    save_file(sd, str(tmp_path / "model.safetensors"))
    policy = load_policy(tmp_path)
    w = policy.model.state_dict()["head.weight"]
    assert w.dtype == torch.float32
    assert torch.equal(w, model.state_dict()["head.weight"].half().float())


def _save(root, step, keep=3):
    return save_checkpoint(root, step, {"model": {"w": torch.full((2,), float(step))}}, {"step": step},
                           {"optimizer": {"lr": 0.5, "t": torch.tensor([step])}}, keep=keep)


def test_save_checkpoint_contents(tmp_path):
    path = _save(tmp_path, 7)
    assert path == tmp_path / "step_00000007"
    names = sorted(p.name for p in path.iterdir())
    assert names == ["manifest.json", "model.safetensors", "optimizer.pt", "state.json"]
    assert load_state(path) == {"step": 7}
    assert torch.equal(load_tensors(path / "model.safetensors")["w"], torch.tensor([7.0, 7.0]))
    obj = load_object(path / "optimizer.pt")
    assert obj["lr"] == 0.5 and obj["t"].tolist() == [7]
    assert not list(tmp_path.glob(".tmp_ckpt_*"))


def test_keep_last_n_and_order(tmp_path):
    for step in (1, 2, 10, 3, 100):
        _save(tmp_path, step, keep=3)
    # numeric order, not the order of writing; the 3 highest steps survive
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000003", "step_00000010", "step_00000100"]
    assert latest_checkpoint(tmp_path).name == "step_00000100"
    assert latest_checkpoint(tmp_path / "none") is None
    assert list_checkpoints(tmp_path / "none") == []


def test_overwrite_same_step(tmp_path):
    _save(tmp_path, 5)
    save_checkpoint(tmp_path, 5, {"model": {"w": torch.zeros(3)}}, {"step": 5, "again": True})
    assert load_state(tmp_path / "step_00000005") == {"step": 5, "again": True}
    assert load_tensors(tmp_path / "step_00000005" / "model.safetensors")["w"].shape == (3,)
    assert not (tmp_path / "step_00000005" / "optimizer.pt").exists()


def test_prune_removes_leftover_tmp_dirs(tmp_path):
    _save(tmp_path, 1)
    stale = tmp_path / ".tmp_ckpt_abc123"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half written")
    (tmp_path / "notes").mkdir()  # unrelated dirs are left alone
    (tmp_path / "step_12").mkdir()  # not an 8-digit checkpoint name
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000001"]
    prune_checkpoints(tmp_path, keep=3)
    assert not stale.exists()
    assert (tmp_path / "notes").exists() and (tmp_path / "step_12").exists()
    stale.mkdir()
    _save(tmp_path, 2)  # saving prunes too
    assert not stale.exists()
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000001", "step_00000002"]


def test_load_tensors_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_tensors(tmp_path / "x.safetensors")
