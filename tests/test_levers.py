"""The credit-assignment levers in the trainer, on the tiny model: per-token advantages in the
update, per-scale VMR's rollouts and values, region credit's token map, leave-one-out baselines;
one real `varrl train` per knob, and bad values as config errors naming the key."""

import json
import math
from pathlib import Path

import pytest
import torch
from tinyrun import run_args

from varrl.algorithms.vmr import soft_value
from varrl.cli import main
from varrl.config import load_config
from varrl.policy.load import load_policy
from varrl.policy.sampler import SamplerConfig
from varrl.rewards.base import WordScore
from varrl.trainer.config import RlConfig, TrainConfig, TrainRunConfig, apply_method_preset
from varrl.trainer.dist import DistInfo
from varrl.trainer.loop import Trainer
from varrl.trainer.update import UpdatePlan, policy_update


def args(model, run_dir, name, *extra):
    return run_args(model, run_dir, name, "train.group_size=3", "train.steps=2", "train.eval_every=0",
                    "train.micro_batch=8", "train.lr=1e-3", "train.warmup=1", "rl.method=var_rl", *extra)


def step_records(run: Path) -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "reward/mean" in r]


def trainer(tiny_text_dir, tmp_path, *extra) -> Trainer:
    cfg = load_config(TrainRunConfig, None, args(tiny_text_dir, tmp_path, "t", *extra), apply_method_preset)
    return Trainer(cfg, tmp_path / "t", DistInfo(), resume=False)


def test_update_with_token_advantages(tiny_text_dir):
    policy = load_policy(tiny_text_dir)
    traj = policy.rollout(["a", "b"], n=1, sampler=SamplerConfig(cfg=0), generator=torch.Generator().manual_seed(0))
    steps, n = [0, 1, 2], policy.schedule.tokens_per_step  # 1 + 4 + 16 tokens
    rl, tc = RlConfig(kl_beta=0.0), TrainConfig(grad_clip=0.0)

    def run(adv_B, token_adv):
        policy.model.zero_grad()
        opt = torch.optim.SGD(policy.parameters(), lr=0.0)
        m = policy_update(policy, None, traj, adv_B, UpdatePlan(steps, advantages=token_adv), rl, tc, opt, DistInfo())
        return m["policy/loss"], [p.grad.clone() for p in policy.parameters() if p.grad is not None]

    adv_B = torch.tensor([0.7, -1.3])
    loss_b, grads_b = run(adv_B, None)
    loss_t, grads_t = run(torch.zeros(2), [adv_B[:, None].expand(-1, n[t]) for t in steps])
    assert loss_t == loss_b and all(torch.equal(a, b) for a, b in zip(grads_t, grads_b))  # the same numbers
    # At ratio 1, no KL: a sample's loss is minus its token mean of the advantages. Sample 0 takes
    # +1 on grid 1 and -1 on the 16 tokens of grid 3 (0 on grid 2): (-1 + 16) / 21; sample 1 takes
    # 2 on its 4 grid-2 tokens: -8 / 21. policy/loss is their mean: (15/21 - 8/21) / 2 = 1/6.
    token_adv = [torch.tensor([[1.0], [0.0]]), torch.tensor([[0.0] * 4, [2.0] * 4]),
                 torch.tensor([[-1.0] * 16, [0.0] * 16])]
    loss, _ = run(adv_B, token_adv)
    assert loss == pytest.approx(1 / 6, abs=1e-6)


def test_per_scale_rollout_forks_each_split_state(tiny_text_dir, tmp_path):
    tr = trainer(tiny_text_dir, tmp_path, "rl.vmr.splits=[1, 2]", "rl.vmr.k=2", "train.micro_batch=12")  # one chunk
    made = []
    rollout = tr.policy.rollout
    tr.policy.rollout = lambda *a, **k: made.append((k.get("start"), rollout(*a, **k))) or made[-1][1]
    batch = tr.rollout(0, [tr.train_prompts[0], tr.train_prompts[1]])
    # Per split state: the state itself, then K completions of it; at the end the samples themselves.
    (_, s1), (st1, c1), (st2_from, s2), (st2, c2), (last_from, own) = made
    assert st1 is s1 and st2_from is s1 and st2 is s2 and last_from is s2
    assert [s1.num_steps, s2.num_steps, c1.num_steps, own.num_steps] == [1, 2, 3, 3]
    assert torch.equal(c1.idx[0], s1.idx[0].repeat_interleave(2, 0))  # completions keep the split state's grids
    assert all(torch.equal(c2.idx[t], own.idx[t].repeat_interleave(2, 0)) for t in (0, 1))
    assert batch.stage == "per_scale" and batch.steps == [0, 1, 2] and batch.segments == [[0], [1], [2]]
    assert batch.traj.group.tolist() == [0, 0, 0, 1, 1, 1]
    assert all(torch.equal(a, b) for a, b in zip(batch.traj.idx, own.idx))
    # Rewards in submission order: split-1 completions (6 x 2), split-2 completions, the samples.
    scores = torch.from_numpy(batch.reward.scores)
    assert torch.equal(batch.returns, scores[24:])
    assert torch.allclose(batch.values, torch.stack([soft_value(scores[:12].view(6, 2)),
                                                     soft_value(scores[12:24].view(6, 2))], 1).to(scores.dtype))
    adv = tr.local_advantages(batch)
    assert [a.shape for a in adv.steps] == [(6, 1), (6, 4), (6, 16)]
    assert not torch.equal(adv.steps[0][:, 0], adv.steps[2][:, 0])  # segments take their own advantages


def test_region_credit_maps_word_boxes_to_tokens(tiny_text_dir, tmp_path):
    tr = trainer(tiny_text_dir, tmp_path, "reward.weights={text_ocr: 1.0}", "reward.text_ocr.workers=0",
                 "rl.method=grpo", "rl.region_credit.enabled=true", "rl.mp.dilation=0", "rl.adv_norm=none")
    try:
        batch = tr.rollout(0, [tr.train_prompts[0]])
    finally:
        tr.reward.close()
    # Hand-made word scores on the 32 px images (finest grid 4x4, 8 px cells): one word per row,
    # read in the top-left cell in every sample, scoring 0, 1, 2 -> advantages -1, 0, +1 (norm none).
    batch.words = [[WordScore("w", float(i), [(0, 0, 8, 8)])] for i in range(3)]
    batch.returns = torch.tensor([1.0, 2.0, 6.0], dtype=batch.returns.dtype)  # image advantages -2, -1, 3
    fine = tr.local_advantages(batch).steps[2]
    assert fine[:, 0].tolist() == [-1.0, 0.0, 1.0]  # the word's own advantage in its cell
    assert fine[:, 1:].tolist() == [[-2.0] * 15, [-1.0] * 15, [3.0] * 15]  # the image's elsewhere


def test_letter_credit_maps_letter_boxes_to_tokens(tiny_text_dir, tmp_path):
    tr = trainer(tiny_text_dir, tmp_path, "reward.weights={text_ocr: 1.0}", "reward.text_ocr.workers=0",
                 "rl.method=grpo", "rl.region_credit.enabled=true", "rl.region_credit.unit=letter",
                 "rl.region_credit.outside=mask", "rl.mp.dilation=0", "rl.adv_norm=none")
    try:
        batch = tr.rollout(0, [tr.train_prompts[0]])
    finally:
        tr.reward.close()
    # A two-letter word (finest grid 4x4, 8 px cells): letter 0 drawn in cell 0, letter 1 in cell 1.
    # Letter 0 scores 0, 1, 2 (advantages -1, 0, +1); letter 1 scores 1, 1, 4 (-1, -1, +2), and row 2
    # missed it (no box): its score counts for the others, its cell carries no gradient (mask).
    cells = [[(0, 0, 8, 8)], [(8, 0, 16, 8)]]
    batch.words = [[WordScore("ab", 9.0, [(0, 0, 16, 8)], (WordScore("a", float(i), cells[0]),
                                                               WordScore("b", b, cells[1] if i < 2 else [])))]
                   for i, b in enumerate([1.0, 1.0, 4.0])]
    fine = tr.local_advantages(batch).steps[2]
    assert fine[:, 0].tolist() == [-1.0, 0.0, 1.0] and fine[:, 1].tolist() == [-1.0, -1.0, 0.0]
    assert fine[:, 2:].abs().sum() == 0  # outside every letter: masked


def test_region_credit_needs_a_per_word_reward(tiny_text_dir, tmp_path, capsys):
    assert main(["train", *args(tiny_text_dir, tmp_path, "r", "rl.region_credit.enabled=true")]) == 2
    assert "rl.region_credit.enabled needs a reward that scores each target word" in capsys.readouterr().err


@pytest.mark.parametrize("extra, key", [
    (["rl.method=grpo", "rl.vmr.splits=[1]"], "rl.vmr.splits needs VMR"),
    (["rl.vmr.splits=[2, 1]"], "rl.vmr.splits=[2, 1] are steps [2, 1]; they must increase strictly"),
    (["rl.vmr.splits=[1, 3]"], "rl.vmr.splits[1]=3 is step 3; VMR needs a split inside 1..2"),
    (["rl.vmr.splits=[64px]"], "rl.vmr.splits[0]='64px'"),
    (["rl.vmr.splits=[1]", "rl.region_credit.enabled=true"], "rl.region_credit.enabled does not combine"),
    (["rl.region_credit.outside=nowhere"], "rl.region_credit.outside"),
    (["rl.region_credit.unit=char"], "rl.region_credit.unit"),
    (["rl.adv_norm=loo1"], "rl.adv_norm"),
    (["rl.adv_std_floor=-0.1"], "rl.adv_std_floor"),
    (["rl.adv_norm=loo", "rl.adv_std_floor=0.1"], "'rl.adv_std_floor' only applies when advantages are divided"),
    (["rl.last_grid=2"], "rl.last_grid does not combine with VMR"),
    (["rl.method=grpo", "rl.last_grid=4"], "rl.last_grid=4"),
    (["rl.method=grpo", "rl.last_grid=3x4"], "rl.last_grid='3x4'"),
])
def test_bad_lever_values_are_config_errors(tiny_text_dir, tmp_path, capsys, extra, key):
    assert main(["train", *args(tiny_text_dir, tmp_path, "bad", *extra)]) == 2
    assert key in capsys.readouterr().err


def test_last_grid_update_is_the_full_update_on_its_grids(tiny_text_dir, tmp_path):
    # Teacher forcing is causal over grids: the cut trajectory's pass gives grids 1-2 the same
    # log-probs as the whole one, so rl.last_grid=2 is exactly a full update that trains steps [0, 1].
    policy, ref = load_policy(tiny_text_dir), load_policy(tiny_text_dir)
    traj = policy.rollout(["a", "b"], n=3, sampler=SamplerConfig(cfg=0, temperature=0.7, logprob_mode="sampling"),
                          generator=torch.Generator().manual_seed(0))
    adv_B = torch.linspace(-1.0, 1.0, 6)
    grads = []
    for t in (traj.cut(2), traj):
        policy.model.zero_grad()
        opt = torch.optim.SGD(policy.parameters(), lr=0.0)
        m = policy_update(policy, ref, t, adv_B, UpdatePlan([0, 1]), RlConfig(kl_beta=0.1), TrainConfig(grad_clip=0.0),
                          opt, DistInfo())
        assert "scale/3/weight" not in m and m["policy/ratio_dev_first"] < 1e-5
        grads.append([p.grad.clone() for p in policy.parameters() if p.grad is not None])
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*grads)) and any(g.abs().sum() > 0 for g in grads[0])
    # The trainer's batch: cut at grid 2, steps [0, 1], every sample scored as a whole image.
    tr = trainer(tiny_text_dir, tmp_path, "rl.method=grpo", "rl.last_grid=2")
    try:
        batch = tr.rollout(0, [tr.train_prompts[i] for i in range(2)])
    finally:
        tr.reward.close()
    assert batch.traj.num_steps == 2 and batch.steps == [0, 1]
    assert batch.images.shape[1:3] == (policy.schedule.image_size,) * 2 and len(batch.returns) == 6


@pytest.mark.parametrize("knob", ["loo", "per_scale", "region_credit", "region_letter", "last_grid"])
def test_train_smoke_per_knob(tiny_text_dir, tmp_path, knob):
    extra = {"loo": ["rl.method=grpo", "rl.adv_norm=loo"],
             "per_scale": ["rl.vmr.splits=[1, 2]", "rl.vmr.k=2"],
             "region_credit": ["rl.method=grpo", "rl.region_credit.enabled=true", "reward.weights={text_ocr: 1.0}",
                               "reward.text_ocr.workers=0", "rl.region_credit.outside=mask"],
             "region_letter": ["rl.method=grpo", "rl.region_credit.enabled=true", "rl.region_credit.unit=letter",
                               "reward.weights={text_ocr: 1.0}", "reward.text_ocr.workers=0"],
             "last_grid": ["rl.method=grpo", "rl.last_grid=2"]}[knob]
    assert main(["train", *args(tiny_text_dir, tmp_path, knob, *extra)]) == 0
    recs = step_records(tmp_path / knob)
    assert len(recs) == 2 and all(math.isfinite(r["policy/loss"]) and r["policy/ratio_dev_first"] == 0.0
                                  for r in recs)
    if knob == "per_scale":  # every update trains every grid, and logs the value at each split
        assert all(f"scale/{t}/weight" in r for r in recs for t in (1, 2, 3))
        assert all(math.isfinite(r["stage/per_scale/value_1"]) and "stage/per_scale/value_2" in r for r in recs)
        assert json.loads((tmp_path / knob / "report.json").read_text())["kl_to_start"]["per_scale"]["updates"] == 2
    if knob == "last_grid":  # grids 1-2 carry the loss; grid 3 is sampled and scored only
        assert all("scale/2/weight" in r and "scale/3/weight" not in r for r in recs)
