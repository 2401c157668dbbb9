"""The VAR policy: class-label conditions, sampling == re-scoring, prefix continuation (the KV
cache forked and recomputed), model directories, and RL end to end through `varrl train`."""

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tinyvar import write_tiny_var

from varrl.cli import main
from varrl.config import load_config
from varrl.models.var import var_preset
from varrl.policy.base import NextScalePolicy
from varrl.policy.load import load_policy, save_policy
from varrl.policy.sampler import SamplerConfig
from varrl.policy.var_policy import ClassLabelError, VarPolicy
from varrl.trainer.config import TrainRunConfig, apply_method_preset
from varrl.trainer.loop import resolve_split

LABELS = [1, 7]
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture(scope="module")
def var_files(tmp_path_factory):
    return write_tiny_var(tmp_path_factory.mktemp("tinyvar"))


@pytest.fixture(scope="module")
def policy(var_files):
    return load_policy(var_files[0], vae=var_files[1])


def gen(seed):
    return torch.Generator().manual_seed(seed)


def max_diff(a, b):
    return max((x - y).abs().max().item() for x, y in zip(a, b))


def test_policy_implements_the_protocol(policy):
    assert isinstance(policy, VarPolicy) and isinstance(policy, NextScalePolicy)


@pytest.mark.parametrize("mode", ["plain", "sampling"])
@pytest.mark.parametrize("cfg,top_k,top_p", [(0.0, 0, 0.0), (1.5, 20, 0.9), (4.0, 0, 0.5)])
def test_rescored_equals_sampled(policy, mode, cfg, top_k, top_p):
    s = SamplerConfig(cfg=cfg, top_k=top_k, top_p=top_p, logprob_mode=mode)
    traj = policy.rollout(LABELS, n=3, sampler=s, generator=gen(0))
    assert traj.prompts == ["1"] * 3 + ["7"] * 3 and traj.num_steps == 4
    assert max_diff(policy.logprobs(traj), traj.logprobs) <= 1e-5
    again = policy.rollout(["1", "7"], n=3, sampler=s, generator=gen(0))
    assert all(torch.equal(a, b) for a, b in zip(traj.idx, again.idx))


def test_sampling_logprobs_follow_the_cfg_ramp(policy):
    s = SamplerConfig(cfg=3.0, logprob_mode="sampling")
    traj = policy.rollout([7], n=2, sampler=s, generator=gen(3))
    m = policy.model
    inputs = policy.tokenizer.quantizer.teacher_inputs(traj.idx)
    with torch.no_grad():
        cond = m(m.encode_labels(torch.tensor([7, 7])), inputs)
        uncond = m(m.encode_labels(torch.tensor([10, 10])), inputs)  # class 10 = unconditional here
    off = policy.schedule.offsets
    for t, g in enumerate([0.0, 1.0, 2.0, 3.0]):  # 3.0 * t / (4 - 1)
        lg = ((1 + g) * cond - g * uncond)[:, off[t]: off[t + 1]]
        want = lg.log_softmax(-1).gather(-1, traj.idx[t].unsqueeze(-1)).squeeze(-1)
        assert torch.allclose(traj.logprobs[t], want, atol=1e-5), t


@pytest.mark.parametrize("cfg,mode", [(0.0, "plain"), (1.5, "sampling")])
def test_continuation_equals_uninterrupted(policy, cfg, mode):
    s = SamplerConfig(cfg=cfg, top_k=30, top_p=0.95, logprob_mode=mode)
    full = policy.rollout(LABELS, n=2, sampler=s, generator=gen(5))
    g2 = gen(5)
    pre = policy.rollout(LABELS, n=2, sampler=s, generator=g2, steps=2)
    assert pre.state is not None  # continuing it forks the KV cache
    cont = policy.rollout(None, n=1, sampler=s, generator=g2, start=pre)
    assert all(torch.equal(a, b) for a, b in zip(full.idx, cont.idx))
    assert max_diff(full.logprobs, cont.logprobs) <= 1e-5
    # Without the saved state the prefix is prefilled again: the same continuation.
    g3 = gen(5)
    policy.rollout(LABELS, n=2, sampler=s, generator=g3, steps=2)
    recomputed = policy.rollout(None, n=1, sampler=s, generator=g3, start=full.cut(2))
    assert all(torch.equal(a, b) for a, b in zip(full.idx, recomputed.idx))
    forked = policy.rollout(None, n=3, sampler=s, generator=gen(9), start=pre)
    assert forked.parent.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert max_diff(policy.logprobs(forked), forked.logprobs) <= 1e-5


def test_decode_and_labels(policy):
    s = SamplerConfig(cfg=1.5)
    traj = policy.rollout([0, 10], n=1, sampler=s, generator=gen(1))  # 10: unconditional
    img = policy.decode(traj)
    assert img.shape == (2, 3, 64, 64) and 0 <= img.min() and img.max() <= 1
    assert policy.decode(traj.cut(2)).shape == (2, 3, 64, 64)  # a prefix decodes to its preview
    for bad in (["a cat"], [11], [-1]):
        with pytest.raises(ClassLabelError):
            policy.check_prompts(bad)


def test_logprobs_are_differentiable(policy):
    s = SamplerConfig(cfg=1.5, logprob_mode="sampling")
    traj = policy.rollout(LABELS, n=1, sampler=s, generator=gen(2))
    policy.model.zero_grad()
    sum(lp.sum() for lp in policy.logprobs(traj)).backward()
    assert policy.model.blocks[0].attn.scale_mul_1H11.grad is not None
    assert policy.model.class_emb.weight.grad[10].abs().sum() > 0  # the unconditional branch too
    policy.model.zero_grad()


def test_model_directory_round_trip(policy, tmp_path):
    save_policy(policy, tmp_path / "exported")
    meta = json.loads((tmp_path / "exported" / "config.json").read_text())
    assert meta["format"] == "varrl-var/1"
    back = load_policy(tmp_path / "exported")
    assert isinstance(back, VarPolicy)
    s = SamplerConfig(cfg=1.5, top_k=10)
    a = policy.rollout(LABELS, n=2, sampler=s, generator=gen(4))
    b = back.rollout(LABELS, n=2, sampler=s, generator=gen(4))
    assert all(torch.equal(x, y) for x, y in zip(a.idx, b.idx))
    # the exported weights keep the published key layout
    assert set(load_file(str(tmp_path / "exported" / "model.safetensors"))) == set(policy.model.state_dict())


@pytest.mark.parametrize("name", ["var_d16_jpeg", "var_d16_classifier"])
def test_shipped_var_configs_load(name):
    cfg = load_config(TrainRunConfig, CONFIGS / f"{name}.yaml", [], apply_method_preset)
    assert cfg.policy.path.endswith("var_d16.pth") and cfg.policy.vae.endswith("vae_ch160v4096z32.pth")
    assert len(cfg.data.classes) == 16 and not set(cfg.data.classes) & set(cfg.data.eval_classes)
    assert resolve_split(cfg.rl.vmr.m, var_preset("var_d16").schedule()) == 4  # 64px: grids 1..4


def train_args(var_files, run_dir, name, *extra):
    """The shipped VAR-d16 recipe, on the tiny random VAR and at toy sizes."""
    var_file, vae_file = var_files
    return ["train", "--config", str(CONFIGS / "var_d16_jpeg.yaml"), f"policy.path={var_file}",
            f"policy.vae={vae_file}", f"run.dir={run_dir}", f"run.name={name}", "data.classes=[1, 2, 3]",
            "data.eval_classes=[4, 5]", "train.prompts_per_step=2", "train.group_size=3", "train.steps=2",
            "train.eval_every=0", "train.save_every=2", "train.eval_prompts=2", "train.micro_batch=6", "train.lr=1e-3",
            "train.warmup=1", "train.samples_in_grid=2", "rl.vmr.m=2", "sampler.top_k=30", *extra]


@pytest.mark.parametrize("mode", ["plain", "sampling"])
def test_ratio_is_exactly_one_at_the_first_update(var_files, tmp_path, mode):
    args = train_args(var_files, tmp_path, mode, "train.steps=1", "train.epochs=2", f"sampler.logprob_mode={mode}",
                      "rl.method=grpo", "train.micro_batch=4", "sampler.top_k=0", "sampler.top_p=0")
    assert main(args) == 0
    rows = [json.loads(ln) for ln in (tmp_path / mode / "metrics.jsonl").read_text().splitlines()]
    m = next(r for r in rows if "policy/ratio_mean" in r)
    assert m["policy/ratio_dev_first"] == 0.0
    assert m["policy/ratio_mean"] != 1.0  # the second epoch moved off-policy
    assert m["policy/logprob_drift"] <= 1e-5  # sampled vs re-scored, with the CFG ramp in sampling mode


def test_rl_end_to_end_on_class_labels(var_files, tmp_path):
    var_file, vae_file = var_files
    assert main(train_args(var_files, tmp_path, "v")) == 0
    run = tmp_path / "v"
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    step = next(m for m in rows if m["step"] == 1 and "reward/mean" in m)
    for k in ("reward/mean", "reward/jpeg", "policy/kl", "policy/ratio_mean", "perf/images_per_s"):
        assert math.isfinite(step[k]), k
    evals = json.loads((run / "report.json").read_text())["eval"]
    assert [e["step"] for e in evals] == [0, 2] and evals[0]["word_acc"] is None  # no text: null metrics
    before = load_policy(var_file, vae=vae_file).model.state_dict()
    after = load_policy(run).model.state_dict()  # the run's last/ is a VAR model directory
    assert max((before[k] - after[k]).abs().max().item() for k in before) > 0


def test_sample_cli_with_class_labels(var_files, tmp_path, capsys):
    var_file, vae_file = var_files
    out = tmp_path / "grid.png"
    base = ["sample", "--checkpoint", str(var_file), "--vae", str(vae_file), "--n", "2", "--cfg", "1.5",
            "--out", str(out)]
    assert main([*base, "--prompt", "3", "--prompt", "10"]) == 0 and out.exists()
    assert main([*base, "--prompt", "a red car"]) == 2
    assert "not a class label" in capsys.readouterr().err


def test_resume_continues_exactly(var_files, tmp_path):
    def rows(run):
        return [{k: v for k, v in json.loads(ln).items() if not k.startswith("perf/")}
                for ln in (run / "metrics.jsonl").read_text().splitlines()]

    extra = ("train.save_every=1", "train.eval_every=2", "rl.method=grpo")
    assert main(train_args(var_files, tmp_path, "full", *extra)) == 0
    assert main(train_args(var_files, tmp_path, "part", *extra, "train.steps=1")) == 0
    assert main(["train", "--resume", str(tmp_path / "part"), "train.steps=2"]) == 0
    full, part = rows(tmp_path / "full"), rows(tmp_path / "part")
    assert [r for r in part if r["step"] == 2 and "reward/mean" in r] == [r for r in full if r["step"] == 2
                                                                          and "reward/mean" in r]
