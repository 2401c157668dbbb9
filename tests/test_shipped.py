"""The shipped nano model: it loads with no arguments, its recipe config loads, and sampling and
re-scoring agree on it in every log-prob mode (the parity every RL update relies on)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import varrl
from varrl.config import load_config
from varrl.policy.load import shipped_model_dir
from varrl.recipes.pretrain import PretrainConfig

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ['the text "OPEN" in red on a white background', 'a blue sign that says "CAFE" and "TEA" in white']


@pytest.fixture(scope="module")
def shipped():
    return varrl.load_policy()


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("pretrain*.yaml")), ids=lambda p: p.name)
def test_every_pretrain_config_loads(path):
    cfg = load_config(PretrainConfig, path, [])
    assert cfg.tokenizer.schedule().num_steps == len(cfg.tokenizer.sides)


def test_shipped_weights_are_the_recipe_and_small():
    root = shipped_model_dir()
    files = {p.name: p.stat().st_size for p in root.iterdir()}
    assert set(files) >= {"config.json", "tokenizer.safetensors", "model.safetensors"}
    assert sum(files.values()) <= 50 * 2**20
    meta = json.loads((root / "config.json").read_text())
    recipe = load_config(PretrainConfig, ROOT / "configs" / "pretrain_nano.yaml", [])
    assert meta["model"] == json.loads(json.dumps(recipe.model.__dict__))
    assert meta["trained"]["model_steps"] > 0


@pytest.mark.parametrize("mode", ["plain", "sampling"])
@pytest.mark.parametrize("cfg", [0.0, 3.0])
@pytest.mark.parametrize("trunc", [(0, 0.0), (50, 0.9)], ids=["full", "topk-topp"])
def test_shipped_rescoring_matches_sampling(shipped, mode, cfg, trunc):
    sampler = varrl.SamplerConfig(cfg=cfg, top_k=trunc[0], top_p=trunc[1], logprob_mode=mode)
    traj = shipped.rollout(PROMPTS, n=2, sampler=sampler, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        rescored = shipped.logprobs(traj)
    diff = max((a - b).abs().max().item() for a, b in zip(rescored, traj.logprobs))
    # Sampling and re-scoring give every matmul the same rows (per scale, per CFG branch, per
    # distinct prompt), so on CPU the two agree bit for bit; 1e-5 is the contract. A real mismatch
    # (a wrong CFG branch, temperature or truncation) moves log-probs by 1e-2 or more.
    bound = 1e-5
    assert diff <= bound, f"max |re-scored - sampled| = {diff:.2e} (bound {bound:.0e})"


@pytest.mark.parametrize("m", [3, 6])
def test_shipped_cut_and_continue_reproduces_rollout(shipped, m):
    sampler = varrl.SamplerConfig(cfg=3.0, top_k=50, top_p=0.9)
    full = shipped.rollout(PROMPTS, n=2, sampler=sampler, generator=torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    prefix = shipped.rollout(PROMPTS, n=2, sampler=sampler, generator=g, steps=m)
    rest = shipped.rollout(None, n=1, sampler=sampler, generator=g, start=prefix.cut(m))
    assert all(torch.equal(a, b) for a, b in zip(rest.idx, full.idx))


def test_shipped_decodes_images(shipped):
    traj = shipped.rollout(PROMPTS[:1], n=2, sampler=varrl.SamplerConfig(), generator=torch.Generator().manual_seed(0))
    img = shipped.decode(traj)
    assert img.shape == (2, 3, 128, 128)
    assert 0.0 <= img.min() and img.max() <= 1.0 and img.std() > 0.05


def test_rl_default_prompts_follow_the_shipped_model():
    # varrl train's default prompt distribution is the one the shipped transformer learned last.
    from varrl.config import from_dict, to_dict
    from varrl.data.synth import SynthConfig
    from varrl.trainer.config import nano_text_data

    meta = json.loads((shipped_model_dir() / "config.json").read_text())
    recipe = load_config(PretrainConfig, ROOT / "configs" / "pretrain_nano_cells4.yaml", [])
    # Through SynthConfig, so that fields added later with their defaults compare equal.
    shipped = from_dict(SynthConfig, meta["trained"]["data"])
    assert to_dict(shipped) == to_dict(recipe.data) == to_dict(nano_text_data())
