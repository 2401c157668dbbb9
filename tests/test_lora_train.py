"""`varrl train` with LoRA on the tiny model: one set of weights (the reference is the base with the
adapters off), an optimizer over the adapters only, the ratio exactly 1, the base untouched, and
checkpoints and model directories that hold the adapters."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file
from tinyrun import run_args

from varrl.cli import main
from varrl.config import load_config
from varrl.policy.load import load_policy
from varrl.policy.lora import BaseModelView
from varrl.trainer.config import TrainRunConfig, apply_method_preset
from varrl.trainer.dist import DistInfo
from varrl.trainer.loop import Trainer

LORA = ("train.lora.rank=2", "train.lora.alpha=4")


def tiny_args(model, run_dir, name, *extra):
    return run_args(model, run_dir, name, "train.steps=4", "train.eval_every=2", "train.save_every=2",
                    "train.eval_prompts=4", "train.micro_batch=8", "train.lr=1e-2", "train.warmup=1",
                    "train.samples_in_grid=4", "rl.kl_beta=0.1", *extra)


def trainer(tiny_text_dir, tmp_path, *extra) -> Trainer:
    cfg = load_config(TrainRunConfig, None, tiny_args(tiny_text_dir, tmp_path, "t", "rl.method=grpo", *extra),
                      apply_method_preset)
    return Trainer(cfg, tmp_path / "t", DistInfo(), resume=False)


def held_numel(tr: Trainer) -> int:
    """Elements of every distinct tensor the policy and the reference hold (shared storage counts once)."""
    seen, total = set(), 0
    for owner in (tr.policy, tr.ref_policy):
        for module in (getattr(owner, "model", None), getattr(owner, "tokenizer", None)):
            for t in [*module.parameters(), *module.buffers()] if module is not None else []:
                if t.data_ptr() not in seen:
                    seen.add(t.data_ptr())
                    total += t.numel()
    return total


def test_the_reference_is_the_base_with_adapters_off_not_a_copy(tiny_text_dir, tmp_path):
    full, lora = trainer(tiny_text_dir, tmp_path / "a"), trainer(tiny_text_dir, tmp_path / "b", *LORA)
    one = sum(t.numel() for m in (full.policy.model, full.policy.tokenizer) for t in [*m.parameters(), *m.buffers()])
    adapters = sum(p.numel() for p in lora.policy.lora.parameters())
    assert held_numel(full) == 2 * one  # full fine-tuning keeps a frozen deep copy
    assert held_numel(lora) == one + adapters  # with LoRA: one set of base weights, plus the adapters
    assert isinstance(lora.ref_policy, BaseModelView) and lora.ref_policy.policy is lora.policy
    assert adapters < one / 5
    # The optimizer holds exactly the adapters; every base weight is frozen.
    in_opt = [p for g in lora.optimizer.param_groups for p in g["params"]]
    assert {id(p) for p in in_opt} == {id(p) for p in lora.policy.lora.parameters()}
    assert [n for n, p in lora.policy.model.named_parameters() if p.requires_grad] == [
        n for n, _ in lora.policy.lora.named_parameters()]
    for tr in (full, lora):
        tr.reward.close()


def test_ratio_is_one_and_the_reference_stays_the_base(tiny_text_dir, tmp_path):
    tr = trainer(tiny_text_dir, tmp_path, *LORA)
    records = [tr.train_prompts[i] for i in range(2)]
    base = load_policy(tiny_text_dir)
    base.model.requires_grad_(False)  # frozen, as the adapted model's base is (same kernels)
    try:
        for step in range(3):
            batch = tr.rollout(step, records)
            m = tr.update(batch, tr.local_advantages(batch))
            assert m["policy/ratio_dev_first"] == 0.0  # on-policy: the first pass is the rollout's policy
            assert m["policy/logprob_drift"] == 0.0  # re-scored == sampled, bit for bit, adapters on
            if step == 0:
                assert m["policy/kl"] == 0.0  # B = 0: the policy starts exactly at its reference
        assert m["policy/kl"] > 0
        traj = batch.traj.select(torch.arange(4))
        with torch.no_grad():
            want = base.logprobs(traj)
            got = tr.ref_policy.logprobs(traj)
            moved = tr.policy.logprobs(traj)
        assert all(torch.equal(a, b) for a, b in zip(got, want))  # the reference is still the untouched base
        assert max((a - b).abs().max().item() for a, b in zip(moved, want)) > 1e-3  # the policy is not
    finally:
        tr.reward.close()


def test_train_with_lora_moves_only_the_adapters(tiny_text_dir, tmp_path, capsys):
    assert main(["train", *tiny_args(tiny_text_dir, tmp_path, "r", *LORA)]) == 0
    run = tmp_path / "r"
    before = load_file(str(tiny_text_dir / "model.safetensors"))
    base_after = load_file(str(run / "last" / "model.safetensors"))
    assert set(base_after) == set(before) and all(torch.equal(before[k], base_after[k]) for k in before)
    adapters = load_file(str(run / "last" / "adapter.safetensors"))
    assert adapters and all(".lora_A." in k or ".lora_B." in k for k in adapters)
    assert max(v.abs().max().item() for k, v in adapters.items() if ".lora_B." in k) > 0  # B left zero: learned
    meta = json.loads((run / "last" / "config.json").read_text())
    assert meta["lora"]["rank"] == 2 and meta["lora"]["alpha"] == 4.0 and "blocks.0.attn.qkv" in meta["lora"]["targets"]
    # A checkpoint holds the adapters, not another copy of the base.
    ckpt = run / "checkpoints" / "step_00000004"
    assert set(load_file(str(ckpt / "model.safetensors"))) == set(adapters)
    assert json.loads((ckpt / "state.json").read_text())["lora"]["rank"] == 2
    # The run loads as base + adapters, for the API and for `varrl sample`.
    policy = load_policy(run)
    assert policy.lora is not None
    assert all(torch.equal(policy.lora.state_dict()[k], v) for k, v in adapters.items())
    out = tmp_path / "s.png"
    assert main(["sample", "--checkpoint", str(run), "--prompt", "HI", "--n", "2", "--out", str(out)]) == 0
    assert out.exists()
    # Resuming with other LoRA settings is refused in one line.
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "train.steps=5", "train.lora.rank=0"]) == 2
    assert "written with LoRA" in capsys.readouterr().err
    assert main(["train", "--resume", str(run), "train.steps=5", "train.lora.rank=3"]) == 2
    assert "does not fit the adapters" in capsys.readouterr().err
    # A new run may start from a LoRA run: its adapters fold into the weights it starts from.
    assert main(["train", *tiny_args(run, tmp_path, "next", "train.steps=1", *LORA)]) == 0
    assert main(["train", *tiny_args(run, tmp_path, "full", "train.steps=1")]) == 0
    moved = load_file(str(tmp_path / "full" / "last" / "model.safetensors"))
    assert not (Path(tmp_path / "full" / "last" / "adapter.safetensors")).exists()
    assert max((moved[k] - before[k]).abs().max().item() for k in before) > 0


def test_lora_dropout_acts_in_the_update_only(tiny_text_dir, tmp_path):
    assert main(["train", *tiny_args(tiny_text_dir, tmp_path, "d", *LORA, "train.lora.dropout=0.3", "train.steps=2",
                                     "rl.method=grpo")]) == 0
    rows = [json.loads(ln) for ln in (tmp_path / "d" / "metrics.jsonl").read_text().splitlines()]
    first, second = [r for r in rows if "policy/kl" in r]
    assert first["policy/logprob_drift"] == 0.0  # B = 0: dropping adapter inputs changes nothing yet
    assert second["policy/logprob_drift"] > 0  # the update's pass drops, the rollout did not
    assert second["policy/ratio_dev_first"] == 0.0  # the ratio is still taken against that same pass
