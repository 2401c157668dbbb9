"""A cold tail: grids after `sampler.tail_after` sample at `sampler.tail_temperature`. The
temperature of each step by hand, the config errors, and on the tiny nano model: the grids before
the tail are drawn exactly as without it, re-scoring still equals sampling, and a near-zero tail
temperature draws the argmax."""

from __future__ import annotations

import pytest
import torch
from tinyrun import run_args

from varrl.cli import main
from varrl.policy.sampler import SamplerConfig, SamplerConfigError

PROMPTS = ['the text "OPEN" in red on a white background', 'a blue sign that says "cat"']


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_temperature_of_each_step_by_hand(tiny_policy):
    sch = tiny_policy.schedule  # grids 1x1, 2x2, 4x4
    assert [SamplerConfig(temperature=0.7).temperature_at(k, sch) for k in range(3)] == [0.7, 0.7, 0.7]
    two = SamplerConfig(temperature=0.7, tail_temperature=0.1, tail_after="2x2")
    assert [two.temperature_at(k, sch) for k in range(3)] == [0.7, 0.7, 0.1]
    one = SamplerConfig(temperature=0.7, tail_temperature=0.1, tail_after=1)
    assert [one.temperature_at(k, sch) for k in range(3)] == [0.7, 0.1, 0.1]
    last = SamplerConfig(temperature=0.7, tail_temperature=0.1, tail_after="4x4")  # the last grid: no tail
    assert [last.temperature_at(k, sch) for k in range(3)] == [0.7, 0.7, 0.7]


@pytest.mark.parametrize(("kwargs", "key"), [({"tail_temperature": 0.1}, "tail_after"),
                                             ({"tail_after": "8x8"}, "tail_temperature"),
                                             ({"tail_temperature": 0.0, "tail_after": 2}, "tail_temperature"),
                                             ({"tail_temperature": -1.0, "tail_after": 2}, "tail_temperature")])
def test_tail_config_errors(kwargs, key):
    with pytest.raises(SamplerConfigError) as err:
        SamplerConfig(**kwargs)
    assert err.value.key == key


def test_tail_outside_the_schedule_is_named(tiny_policy):
    s = SamplerConfig(cfg=0.0, tail_temperature=0.1, tail_after="3x3")
    with pytest.raises(SamplerConfigError, match="tail_after.*3x3.*no grid of side 3"):
        tiny_policy.rollout(PROMPTS, n=1, sampler=s)


@pytest.mark.parametrize("cfg", [0.0, 3.0])
def test_cold_tail_rollout(tiny_policy, cfg):
    warm = SamplerConfig(cfg=cfg, temperature=0.7, logprob_mode="sampling")
    cold = SamplerConfig(cfg=cfg, temperature=0.7, tail_temperature=1e-3, tail_after=2, logprob_mode="sampling")
    a = tiny_policy.rollout(PROMPTS, n=3, sampler=warm, generator=gen(5))
    b = tiny_policy.rollout(PROMPTS, n=3, sampler=cold, generator=gen(5))
    # Grids before the tail: the same logits and the same draws.
    assert all(torch.equal(x, y) for x, y in zip(a.idx[:2], b.idx[:2]))
    assert all(torch.equal(x, y) for x, y in zip(a.logprobs[:2], b.logprobs[:2]))
    # The tail at temperature 1e-3 is the argmax of the (guided) logits, with log-prob ~0.
    with torch.no_grad():
        cond = tiny_policy.teacher_logits(b)
        uncond = tiny_policy.teacher_logits(b, uncond=True) if cfg else None
        off = tiny_policy.schedule.offsets
        tail = cond[:, off[2]:off[3]]
        if cfg:
            tail = (1 + cfg) * tail - cfg * uncond[:, off[2]:off[3]]
        assert torch.equal(b.idx[2], tail.argmax(-1))
        assert bool((b.logprobs[2] > -1e-3).all()) and not torch.equal(a.idx[2], b.idx[2])
        # Re-scoring takes each step's own temperature: it equals what sampling stored.
        rescored = tiny_policy.logprobs(b)
    assert max((x - y).abs().max().item() for x, y in zip(rescored, b.logprobs)) <= 1e-4


def test_train_names_a_tail_outside_the_schedule(tiny_text_dir, tmp_path, capsys):
    assert main(["train", *run_args(tiny_text_dir, tmp_path, "t", "sampler.tail_temperature=0.1",
                                    "sampler.tail_after=5x5")]) == 2
    err = capsys.readouterr().err
    assert "sampler.tail_after='5x5'" in err and "no grid of side 5" in err
    assert not (tmp_path / "t").exists()


def test_sample_flags(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "x.png"
    base = ["sample", "--checkpoint", str(tiny_model_dir), "--prompt", "a", "--out", str(out)]
    assert main([*base, "--tail-temperature", "0.1", "--tail-after", "2x2"]) == 0 and out.is_file()
    assert main([*base, "--tail-temperature", "0.1", "--tail-after", "3x3"]) == 2
    assert "--tail-after is '3x3': no grid of side 3" in capsys.readouterr().err
    assert main([*base, "--tail-temperature", "0.1"]) == 2
    assert "--tail-after is needed when tail_temperature is set" in capsys.readouterr().err
