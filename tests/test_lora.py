"""LoRA adapters on a policy: config errors, which layers they pick, a start exactly at the base
model, the base model as the adapters-off reference, re-scoring == sampling, model directories."""

from __future__ import annotations

import pytest
import torch
from tinyvar import write_tiny_var

from varrl.checkpoint import CheckpointError
from varrl.cli import main
from varrl.config import ConfigError, load_config
from varrl.policy.load import load_policy, save_policy
from varrl.policy.lora import LoraConfig, attach_lora, merge_adapters, resolve_targets, select_modules
from varrl.policy.sampler import SamplerConfig
from varrl.trainer.config import TrainRunConfig, apply_method_preset

NANO_DEFAULT = [f"blocks.{b}.{m}" for b in (0, 1)
                for m in ("attn.qkv", "attn.proj", "xattn.q", "xattn.kv", "xattn.proj", "mlp.0", "mlp.2")]


@pytest.fixture
def policy(tiny_model_dir):
    return load_policy(tiny_model_dir)  # a fresh one per test: adapters change the model in place


def rollout(policy, seed=0, **sampler):
    s = SamplerConfig(**{"cfg": 1.5, "top_k": 20, **sampler})
    return policy.rollout(["ab", "hello"], n=3, sampler=s, generator=torch.Generator().manual_seed(seed))


def logits(policy, traj):
    with torch.no_grad():  # a no-grad pass, like sampling's (frozen modules may take other kernels)
        return policy.teacher_logits(traj)


def randomise_b_(lora, seed=0):
    """Move the adapters off their zero start (B = 0), as training does."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in lora.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)


@pytest.mark.parametrize("overrides,key", [
    (["train.lora.rank=-1"], "train.lora.rank"),
    (["train.lora.rank=2.5"], "train.lora.rank"),
    (["train.lora.rank=4", "train.lora.alpha=0"], "train.lora.alpha"),
    (["train.lora.rank=4", "train.lora.dropout=1.0"], "train.lora.dropout"),
    (["train.lora.rank=4", "train.lora.dropout=-0.1"], "train.lora.dropout"),
    (["train.lora.rank=4", "train.lora.targets=(qkv"], "train.lora.targets"),
    (["train.lora.rank=4", "train.lora.targets=[]"], "train.lora.targets"),
    (["train.lora.rank=4", "train.lora.targets=[qkv, '']"], "train.lora.targets"),
    (["train.lora.rank=4", "train.lora.targets=[1, 2]"], "train.lora.targets[0]"),
    (["train.lora.rnk=4"], "did you mean 'train.lora.rank'"),
    (["train.lora.rank=4", "train.trainable=bias$"], "train.trainable"),
])
def test_bad_values_are_config_errors_naming_the_key(overrides, key):
    with pytest.raises(ConfigError) as e:
        load_config(TrainRunConfig, None, overrides, apply_method_preset)
    assert key in str(e.value)


def test_defaults_are_off_and_valid_settings_load():
    assert not TrainRunConfig().train.lora.enabled
    assert not load_config(TrainRunConfig, None, ["train.lora.rank=0"]).train.lora.enabled
    cfg = load_config(TrainRunConfig, None, ["train.lora.rank=8", "train.lora.alpha=16", "train.lora.dropout=0.1",
                                             "train.lora.targets=[qkv, mlp.0]"]).train.lora
    assert cfg.enabled and cfg.scale == 2.0 and cfg.targets == ["qkv", "mlp.0"] and cfg.dropout == 0.1
    assert LoraConfig(rank=4).scale == 1.0  # alpha null: alpha = rank
    regex = load_config(TrainRunConfig, None, ["train.lora.rank=2", r"train.lora.targets=blocks\.1\..*"])
    assert regex.train.lora.targets == r"blocks\.1\..*"


def test_cli_reports_a_bad_lora_value_in_one_line(tmp_path, capsys):
    assert main(["train", f"run.dir={tmp_path}", "train.lora.rank=4", "train.lora.dropout=2"]) == 2
    err = capsys.readouterr().err
    assert "config key 'train.lora.dropout' must be in [0, 1)" in err and "Traceback" not in err


def test_select_modules_by_hand():
    names = ["blocks.0.attn.qkv", "blocks.0.xattn.qkv", "blocks.0.mlp.0", "blocks.10.mlp.0", "text.blocks.0.mlp.0"]
    # a list: whole names or dotted endings; 'attn.qkv' is not an ending of 'xattn.qkv'
    assert select_modules(names, ["attn.qkv"]) == ["blocks.0.attn.qkv"]
    assert select_modules(names, ["qkv"]) == ["blocks.0.attn.qkv", "blocks.0.xattn.qkv"]
    assert select_modules(names, ["blocks.0.mlp.0"]) == ["blocks.0.mlp.0", "text.blocks.0.mlp.0"]
    # a string: a regular expression over the whole name
    assert select_modules(names, r"blocks\.\d+\.mlp\.0") == ["blocks.0.mlp.0", "blocks.10.mlp.0"]
    assert select_modules(names, "mlp") == []


def test_targets_default_to_attention_and_mlp(policy):
    assert resolve_targets(policy.model, None) == NANO_DEFAULT  # no AdaLN, no text encoder
    assert resolve_targets(policy.model, ["xattn.kv"]) == ["blocks.0.xattn.kv", "blocks.1.xattn.kv"]
    # a regex picks the Linear layers among its matches
    # a regex picks the Linear layers among its matches (the AdaLN projection too)
    in_block_1 = [n for n in NANO_DEFAULT if n.startswith("blocks.1.")]
    assert resolve_targets(policy.model, r"blocks\.1\..*") == ["blocks.1.ada", *in_block_1]


@pytest.mark.parametrize("targets,msg", [
    (["attn"], "'attn' picks blocks.0.attn, a SelfAttention, not a Linear"),
    (["nope"], "'nope' names no layer"),
    (r"blocks\.9\..*", "matches no Linear layer"),
    ("qkv", "for name endings give a list: [qkv]"),
])
def test_targets_that_pick_no_linear_layer_are_errors(policy, targets, msg):
    with pytest.raises(ConfigError, match="train.lora.targets") as e:
        resolve_targets(policy.model, targets)
    assert msg in str(e.value) and "blocks.0.attn.qkv" in str(e.value)  # it shows real layer names


def test_adapters_start_at_the_base_model_and_only_they_train(policy):
    traj = rollout(policy)
    base = logits(policy, traj)
    lora = attach_lora(policy, LoraConfig(rank=2))
    assert torch.equal(logits(policy, traj), base)  # B = 0: identical logits before any update
    assert not policy.model.training  # sampling never sees the adapters' dropout
    trainable = [n for n, p in policy.model.named_parameters() if p.requires_grad]
    assert trainable == [n for n, _ in lora.named_parameters()] and len(trainable) == 2 * len(NANO_DEFAULT)
    assert all(".lora_A." in n or ".lora_B." in n for n in trainable)
    randomise_b_(lora)
    assert not torch.allclose(logits(policy, traj), base)
    with lora.disabled():  # the reference: the same modules with the adapters off
        assert torch.equal(logits(policy, traj), base)
    assert not torch.allclose(logits(policy, traj), base)  # back on after the context


@pytest.mark.parametrize("mode", ["plain", "sampling"])
def test_rescoring_equals_sampling_with_adapters_on(policy, mode):
    randomise_b_(attach_lora(policy, LoraConfig(rank=3, alpha=6)))
    traj = rollout(policy, seed=1, logprob_mode=mode)
    again = policy.logprobs(traj)
    assert all(torch.equal(a, b) for a, b in zip(again, traj.logprobs))  # ratio exactly 1 on-policy


def test_dropout_acts_only_in_the_update(policy, tiny_model_dir):
    lora = attach_lora(policy, LoraConfig(rank=2, dropout=0.5))
    randomise_b_(lora)
    plain = load_policy(tiny_model_dir)
    randomise_b_(attach_lora(plain, LoraConfig(rank=2)))
    plain.lora.load_state_dict(lora.state_dict(), "adapters")
    traj = rollout(policy)
    assert all(torch.equal(a, b) for a, b in zip(traj.idx, rollout(plain).idx))  # rollouts: no dropout
    assert all(torch.equal(a, b) for a, b in zip(policy.logprobs(traj), traj.logprobs))
    with lora.dropout_active():
        dropped = policy.logprobs(traj)
    assert max((a - b).abs().max().item() for a, b in zip(dropped, traj.logprobs)) > 1e-3
    assert not policy.model.training and all(not m.training for m in policy.model.modules())


def test_model_directory_round_trip_keeps_the_adapters(policy, tiny_model_dir, tmp_path):
    base_sd = {k: v.clone() for k, v in policy.model.state_dict().items()}
    lora = attach_lora(policy, LoraConfig(rank=2, targets=["qkv", "mlp.2"]))
    randomise_b_(lora)
    out = save_policy(policy, tmp_path / "m", {"trained": {"rl_steps": 3}})
    assert sorted(p.name for p in out.iterdir()) == ["adapter.safetensors", "config.json", "manifest.json",
                                                     "model.safetensors", "tokenizer.safetensors"]
    # model.safetensors holds the base in the plain layout: it loads as an ordinary model directory
    from safetensors.torch import load_file

    saved = load_file(str(out / "model.safetensors"))
    assert set(saved) == set(base_sd) and all(torch.equal(saved[k], base_sd[k]) for k in saved)
    # Saving again with keep_base links the frozen base's files and writes only the new adapters.
    inode = (out / "model.safetensors").stat().st_ino
    randomise_b_(lora, seed=1)
    save_policy(policy, out, keep_base=True)
    assert (out / "model.safetensors").stat().st_ino == inode
    back = load_policy(out)
    assert back.lora is not None and back.lora.cfg.targets == lora.cfg.targets
    traj = rollout(policy)
    assert torch.equal(logits(back, traj), logits(policy, traj))  # unmerged: exactly the saved policy
    merge_adapters(back)
    assert back.lora is None and set(back.model.state_dict()) == set(base_sd)
    assert all(p.requires_grad for p in back.model.parameters())
    assert torch.allclose(logits(back, traj), logits(policy, traj), atol=1e-4)  # merged: last bits differ
    # A base removed by hand since: keep_base writes it again instead of failing the save.
    (out / "model.safetensors").unlink()
    save_policy(policy, out, keep_base=True)
    assert torch.equal(logits(load_policy(out), traj), logits(policy, traj))


def test_adapter_file_that_does_not_fit_is_a_clear_error(policy, tmp_path):
    attach_lora(policy, LoraConfig(rank=2))
    out = save_policy(policy, tmp_path / "m")
    import json

    from varrl.checkpoint import write_manifest

    # A folder whose files are intact (its manifest rewritten) but whose adapter settings lie.
    meta = json.loads((out / "config.json").read_text())
    meta["lora"]["rank"] = 4
    (out / "config.json").write_text(json.dumps(meta))
    write_manifest(out)
    with pytest.raises(CheckpointError, match="adapter.safetensors does not fit the adapters"):
        load_policy(out)
    meta["lora"]["targets"] = ["blocks.7.mlp.0"]
    (out / "config.json").write_text(json.dumps(meta))
    write_manifest(out)
    with pytest.raises(CheckpointError, match="bad lora entry"):
        load_policy(out)


def test_a_layer_the_model_never_calls_is_caught(policy):
    # The text encoder's attention reads out_proj.weight directly (F.multi_head_attention_forward):
    # an adapter there would never act.
    lora = attach_lora(policy, LoraConfig(rank=2, targets=["self_attn.out_proj", "mlp.0"]))
    randomise_b_(lora)
    traj = rollout(policy)
    sum(lp.sum() for lp in policy.logprobs(traj)).backward()
    with pytest.raises(ConfigError, match="text.blocks.layers.0.self_attn.out_proj got no gradient"):
        lora.check_reached()


def test_var_policy_adapters_reach_every_default_layer(tmp_path):
    var_file, vae_file = write_tiny_var(tmp_path)
    policy = load_policy(var_file, vae=vae_file)
    s = SamplerConfig(cfg=1.5, top_k=20)
    traj = policy.rollout([1, 7], n=2, sampler=s, generator=torch.Generator().manual_seed(0))
    base = logits(policy, traj)
    lora = attach_lora(policy, LoraConfig(rank=2))
    assert lora.cfg.targets == [f"blocks.{b}.{m}" for b in (0, 1)
                                for m in ("attn.mat_qkv", "attn.proj", "ffn.fc1", "ffn.fc2")]
    assert torch.allclose(logits(policy, traj), base, atol=1e-5)  # the adapted q/k/v call rounds differently
    randomise_b_(lora)
    sum(lp.sum() for lp in policy.logprobs(traj)).backward()
    lora.check_reached()  # mat_qkv is called through its layer, so its adapter acts
    qkv_only = load_policy(var_file, vae=vae_file)
    randomise_b_(attach_lora(qkv_only, LoraConfig(rank=2, targets=["mat_qkv"])))
    assert not torch.allclose(logits(qkv_only, traj), base, atol=1e-3)
    again = policy.rollout([1, 7], n=2, sampler=s, generator=torch.Generator().manual_seed(3))
    # sampling and re-scoring run one code path (VAR's own kernels round ~1e-6 apart, as without adapters)
    assert max((a - b).abs().max().item() for a, b in zip(policy.logprobs(again), again.logprobs)) <= 1e-5
    out = save_policy(policy, tmp_path / "var_lora")
    assert torch.equal(logits(load_policy(out), traj), logits(policy, traj))


def test_infinity_policy_takes_adapters_on_its_attention_and_mlp(tmp_path):
    from tinyinfinity import write_tiny_infinity
    from tinyinfinity_vae import write_tiny_bsq, write_tiny_t5

    files = {"vae": write_tiny_bsq(tmp_path), "text_encoder": write_tiny_t5(tmp_path / "t5"), "schedule": "0.06M"}
    policy = load_policy(write_tiny_infinity(tmp_path, ".pth"), **files)
    prompts = ['a sign with the text "OPEN"', "the text CAT on a red wall"]
    s = SamplerConfig(cfg=2.0, top_k=20)
    traj = policy.rollout(prompts, n=2, sampler=s, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        base = policy.logprobs(traj)
    lora = attach_lora(policy, LoraConfig(rank=2))
    # 4 blocks in 2 chunks (block_chunks.<c>.module.<j>), each: self-attn qkv/proj, cross-attn q/kv/proj, MLP
    assert len(lora.cfg.targets) == 4 * 7 and lora.cfg.targets[0] == "block_chunks.0.module.0.sa.mat_qkv"
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(policy.logprobs(traj), base))  # B = 0: the base
    randomise_b_(lora, seed=2)
    sum(lp.sum() for lp in policy.logprobs(traj)).backward()
    lora.check_reached()  # the model calls every adapted layer
    again = policy.rollout(prompts, n=2, sampler=s, generator=torch.Generator().manual_seed(1))
    assert max((a - b).abs().max().item() for a, b in zip(policy.logprobs(again), again.logprobs)) <= 1e-5
    with lora.disabled(), torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(policy.logprobs(traj), base))
    back = load_policy(save_policy(policy, tmp_path / "exported"))
    assert back.lora is not None
    redo = back.rollout(prompts, n=2, sampler=s, generator=torch.Generator().manual_seed(1))
    assert all(torch.equal(a, b) for a, b in zip(redo.idx, again.idx))
