"""VMR in the policy and the trainer: completions fork the prefix's state, each stage trains its own
steps, the ratio is exactly 1 at the first update of each stage, and the alternation follows the pattern."""

import json
import math
from dataclasses import replace

import pytest
import torch
from tinymodel import build_tiny, write_model_dir
from tinyrun import run_args

from varrl.cli import main
from varrl.policy.load import load_policy
from varrl.policy.sampler import SamplerConfig


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("vmr") / "model"
    write_model_dir(path, *build_tiny(model_kwargs=dict(max_text_len=128)))
    return path


@pytest.mark.parametrize("cfg", [0.0, 2.0])
def test_completions_fork_the_prefix_state_instead_of_recomputing(tiny_dir, cfg):
    policy = load_policy(tiny_dir)
    sampler = SamplerConfig(cfg=cfg, top_k=10)
    prefix = policy.rollout(["a", "bb"], n=2, sampler=sampler, generator=torch.Generator().manual_seed(0), steps=2)
    assert prefix.state is not None and prefix.num_steps == 2
    calls = []
    step = policy.model.step
    policy.model.step = lambda *a, **k: calls.append(a[1]) or step(*a, **k)
    forked = policy.rollout(None, n=3, sampler=sampler, generator=torch.Generator().manual_seed(1), start=prefix)
    branches = 2 if cfg else 1  # the conditional and unconditional branches run as separate batches
    assert calls == [2] * branches  # only the suffix grid was computed
    calls.clear()
    recomputed = policy.rollout(None, n=3, sampler=sampler, generator=torch.Generator().manual_seed(1),
                                start=replace(prefix, state=None))
    assert calls == [k for k in (0, 1, 2) for _ in range(branches)]  # the prefill recomputes grids 1 and 2
    # The prefill runs the prefix's own rows through the same calls, so both paths agree exactly.
    assert all(torch.equal(a, b) for a, b in zip(forked.idx, recomputed.idx))
    assert all(torch.equal(a, b) for a, b in zip(forked.logprobs, recomputed.logprobs))
    # The stored state is not consumed: a second continuation of the same prefix is still exact.
    again = policy.rollout(None, n=3, sampler=sampler, generator=torch.Generator().manual_seed(1), start=prefix)
    assert all(torch.equal(a, b) for a, b in zip(again.idx, forked.idx))
    assert prefix.cut(1).state is None and prefix.select([0]).state is None


def test_var_rl_run_alternates_stages_with_exact_first_ratios(tiny_dir, tmp_path):
    args = run_args(tiny_dir, tmp_path, "v", "train.group_size=3", "train.steps=8", "train.eval_every=4",
                    "train.save_every=4", "train.micro_batch=5", "train.lr=1e-3", "rl.method=var_rl", "rl.vmr.k=2",
                    "rl.panw.alpha=0.8", "sampler.cfg=1.5")
    assert main(["train", *args]) == 0
    recs = [json.loads(ln) for ln in (tmp_path / "v" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in recs if "reward/mean" in r]
    stages = ["prefix" if "stage/prefix/loss" in r else "suffix" for r in steps]
    assert stages == ["prefix"] * 3 + ["suffix"] + ["prefix"] * 3 + ["suffix"]
    for r, st in zip(steps, stages):
        assert r["policy/ratio_dev_first"] == 0.0
        trained = [int(k.split("/")[1]) for k in r if k.startswith("scale/") and k.endswith("/weight")]
        assert trained == ([1, 2] if st == "prefix" else [3])  # prefix: grids 1..m, suffix: m+1..T
    # PANW weights on the prefix grids 1x1 and 2x2: 1^-0.8 and 4^-0.8.
    assert steps[0]["scale/1/weight"] == pytest.approx(1.0) and steps[0]["scale/2/weight"] == pytest.approx(4**-0.8)
    assert steps[0]["stage/prefix/return_mean"] >= steps[0]["reward/mean"]  # soft value >= mean reward
    cfg = (tmp_path / "v" / "config.yaml").read_text()
    assert "method: var_rl" in cfg and "alpha: 0.8" in cfg


def test_resume_keeps_the_alternation_position(tiny_dir, tmp_path):
    args = run_args(tiny_dir, tmp_path, "a", "train.group_size=3", "train.steps=3", "train.eval_every=0",
                    "train.save_every=1", "rl.method=var_rl", "rl.alternation=1:1")
    assert main(["train", *args]) == 0
    assert main(["train", "--resume", str(tmp_path / "a"), "train.steps=4"]) == 0
    recs = [json.loads(ln) for ln in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    stages = ["prefix" if "stage/prefix/loss" in r else "suffix" for r in recs if "reward/mean" in r]
    assert stages == ["prefix", "suffix", "prefix", "suffix"]


def test_prefix_updates_can_have_their_own_kl_coefficient(tiny_dir, tmp_path):
    def run(name: str, prefix_beta: float) -> list[dict]:
        args = run_args(tiny_dir, tmp_path, name, "train.group_size=3", "train.steps=3", "train.eval_every=0",
                        "train.lr=1e-2", "train.warmup=0", "rl.method=var_rl", "rl.alternation=1:1",
                        "rl.panw.alpha=null", "rl.kl_beta=0", f"rl.vmr.prefix_kl_beta={prefix_beta}")
        assert main(["train", *args]) == 0
        recs = [json.loads(ln) for ln in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        return [r for r in recs if "reward/mean" in r]

    low, high = run("low", 0.5), run("high", 5.0)
    assert "stage/suffix/loss" in low[1] and low[1]["policy/kl"] == 0.0  # the suffix keeps rl.kl_beta = 0
    # The KL and its gradient vanish at the start (up to rounding: the reference runs without
    # autograd), so both runs reach step 3, a prefix update, with the same weights and rollouts to
    # about 1e-5; their losses differ by the difference of coefficients times the token-mean KL.
    assert high[2]["policy/kl"] == pytest.approx(low[2]["policy/kl"], rel=1e-4) and low[2]["policy/kl"] > 0.1
    assert high[2]["policy/loss"] - low[2]["policy/loss"] == pytest.approx(4.5 * low[2]["policy/kl"], rel=1e-3)


def test_method_grpo_is_the_plain_baseline(tiny_dir, tmp_path):
    args = run_args(tiny_dir, tmp_path, "g", "train.group_size=3", "train.steps=1", "rl.method=grpo")
    assert main(["train", *args]) == 0
    r = next(json.loads(ln) for ln in (tmp_path / "g" / "metrics.jsonl").read_text().splitlines()
             if "reward/mean" in ln)
    assert not any(k.startswith("stage/") for k in r)
    assert [r[f"scale/{t}/weight"] for t in (1, 2, 3)] == [1.0, 1.0, 1.0]
    assert all(r[f"scale/{t}/mask_frac"] == 1.0 for t in (1, 2, 3))


def test_bad_split_is_a_config_error(tiny_dir, tmp_path, capsys):
    args = [f"policy.path={tiny_dir}", f"run.dir={tmp_path}", "run.name=b", "reward.weights={brightness: 1.0}",
            "rl.method=var_rl", "rl.vmr.m=64px"]
    assert main(["train", *args]) == 2
    assert "rl.vmr.m" in capsys.readouterr().err
    assert main(["train", *args[:-1], "rl.vmr.prefix_kl_beta=-0.1"]) == 2
    assert "'rl.vmr.prefix_kl_beta' must be >= 0" in capsys.readouterr().err


def test_ablate_runs_every_cell_and_skips_finished_ones(tiny_dir, tmp_path):
    args = ["ablate", "--grid", "rl.panw.alpha=0.5,1.0", "--seeds", "2", "--steps", "2", "--name", "abl",
            *run_args(tiny_dir, tmp_path, None, "train.group_size=3", "train.eval_every=1", "rl.method=var_rl")]
    assert main(args) == 0
    root = tmp_path / "abl"
    out = json.loads((root / "ablation.json").read_text())
    assert [c["name"] for c in out["cells"]] == ["alpha=0.5", "alpha=1.0"]
    assert all(len(c["final"]["reward_mean"]["values"]) == 2 for c in out["cells"])
    table = (root / "ablation.md").read_text()
    assert "rl.panw.alpha=0.5" in table and "+-" in table and (root / "ablation.png").exists()
    assert "alpha: 1.0" in (root / "alpha=1.0" / "seed1" / "config.yaml").read_text()
    stamp = (root / "alpha=0.5" / "seed0" / "report.json").stat().st_mtime_ns
    assert main(args) == 0  # everything finished: nothing reruns
    assert (root / "alpha=0.5" / "seed0" / "report.json").stat().st_mtime_ns == stamp


def test_named_cells_parse_and_reject_bad_specs():
    from varrl.config import ConfigError
    from varrl.recipes.ablate import parse_cells

    cells = parse_cells(["no_vmr: rl.vmr.enabled=false", "both: rl.mp.enabled=false 'run.name=a b'"])
    assert [(c.name, c.overrides) for c in cells] == [("no_vmr", ["rl.vmr.enabled=false"]),
                                                     ("both", ["rl.mp.enabled=false", "run.name=a b"])]
    for bad in ("rl.vmr.enabled=false", "no vmr: rl.vmr.enabled=false", "x: rl.vmr.enabled"):
        with pytest.raises(ConfigError, match="--cell"):
            parse_cells([bad])


def test_ablate_named_cells_and_a_partial_report(tiny_dir, tmp_path, capsys):
    def common_args(seeds: int) -> list[str]:
        return ["--seeds", str(seeds), "--steps", "1", "--name", "abl",
                *run_args(tiny_dir, tmp_path, None, "train.group_size=3", "rl.method=var_rl")]

    common = common_args(2)
    cells = ["--cell", "grpo: rl.method=grpo", "--cell", "no_mp: rl.mp.enabled=false"]
    assert main(["ablate", *cells, "--report-only", *common]) == 0  # nothing has run: an empty table
    root = tmp_path / "abl"
    assert [c["seeds"] for c in json.loads((root / "ablation.json").read_text())["cells"]] == [0, 0]
    assert main(["ablate", "--cell", "grpo: rl.method=grpo", *common]) == 0  # one cell only
    assert main(["ablate", *cells, "--report-only", *common]) == 0
    out = json.loads((root / "ablation.json").read_text())
    assert [(c["name"], c["seeds"]) for c in out["cells"]] == [("grpo", 2), ("no_mp", 0)]
    assert not (root / "no_mp").exists()  # --report-only never starts a run
    table = (root / "ablation.md").read_text()
    assert "| grpo | rl.method=grpo | 2/2 |" in table and "| no_mp | rl.mp.enabled=false | 0/2 | n/a |" in table
    grpo_row = next(line for line in table.splitlines() if line.startswith("| grpo |"))
    assert grpo_row.count("+-") == 2  # two seeds: start and final reward have a spread (no OCR: no word acc)
    assert "Paired by seed against `grpo`" in table  # the first cell is the reference by default
    assert "| no_mp | 0 | n/a | n/a | n/a | 0/0 |" in table
    assert main(["ablate", *cells, "--report-only", "--reference", "nope", *common]) == 2
    assert "--reference 'nope' is not a cell" in capsys.readouterr().err
    # --seeds 1: a spread of one run would be a false 0.000
    assert main(["ablate", "--cell", "grpo: rl.method=grpo", "--report-only", *common_args(1)]) == 0
    grpo_row = next(line for line in (root / "ablation.md").read_text().splitlines() if line.startswith("| grpo |"))
    assert "| 1/1 |" in grpo_row and "+-" not in grpo_row
    assert "method: grpo" in (root / "grpo" / "seed1" / "config.yaml").read_text()
    assert main(["ablate", "--cell", "a: rl.mp.enabled=false", "--cell", "a: rl.mp.enabled=true", *common]) == 2
    assert "share the name 'a'" in capsys.readouterr().err


def test_ablation_stats_use_the_sample_std():
    from varrl.recipes.ablate import _stats

    rows = [{"reward_mean": r, "word_acc": None, "ned": 0.5} for r in (1.0, 2.0, 4.0)]
    st = _stats(rows)
    # mean 7/3; squared deviations 16/9 + 1/9 + 25/9 = 42/9, over n - 1 = 2: 7/3
    assert st["reward_mean"]["mean"] == pytest.approx(7 / 3)
    assert st["reward_mean"]["std"] == pytest.approx(math.sqrt(7 / 3))
    assert st["ned"]["std"] == 0.0 and st["word_acc"] == {"mean": None, "std": None, "values": []}
    assert _stats(rows[:1])["reward_mean"]["std"] is None  # one seed: no spread



def test_paired_differences_match_seeds_and_count_wins():
    from varrl.recipes.ablate import paired_differences

    def row(r, w):
        return {"reward_mean": r, "word_acc": w, "ned": 0.9}

    ref = {0: row(1.5, 0.6), 1: row(1.4, 0.5), 2: row(1.6, None)}
    cell = {0: row(1.7, 0.7), 1: row(1.3, 0.6), 3: row(9.0, 0.9)}  # seed 3 has no partner, seed 2 none here
    d = paired_differences(cell, ref)
    assert d["seeds"] == 2 and d["seed_ids"] == [0, 1]
    # differences +0.2 and -0.1: mean 0.05; deviations +-0.15, squared 0.045 over n - 1 = 1
    assert d["reward_mean"]["mean"] == pytest.approx(0.05)
    assert d["reward_mean"]["std"] == pytest.approx(math.sqrt(0.045))
    assert d["word_acc"]["values"] == pytest.approx([0.1, 0.1]) and d["ned"]["mean"] == pytest.approx(0.0)
    assert d["higher"] == 1
    assert paired_differences(cell, {})["reward_mean"] == {"mean": None, "std": None, "values": []}
