"""Bad inputs checked in-process, class by class (docs/bad-inputs.md, `## Inputs`): every knob has a
valid range, a YAML key given twice is refused, prompts and targets share one normalisation, and
a configuration under which the update can do nothing is said out loud."""

from __future__ import annotations

import math

import pytest
import torch

from varrl.config import ConfigError, load_config
from varrl.trainer.config import TrainRunConfig, apply_method_preset


def _load(*overrides: str, path=None) -> TrainRunConfig:
    return load_config(TrainRunConfig, path, list(overrides), apply_method_preset)


# --- class 2: every knob has a valid range, checked at load time, naming the key ---------------------

OUT_OF_RANGE = [
    ("rl.mp.threshold=2", "rl.mp.threshold"),  # every area-pooled mask empty: zero gradient
    ("rl.mp.threshold=0", "rl.mp.threshold"),
    ("rl.mp.dilation=-1", "rl.mp.dilation"),
    ("rl.clip_low=-0.5", "rl.clip_low"),  # changes the objective
    ("rl.clip_low=1.5", "rl.clip_low"),
    ("rl.clip_high=-0.1", "rl.clip_high"),
    ("rl.adv_clip=0", "rl.adv_clip"),
    ("train.grad_clip=-1", "train.grad_clip"),  # turned clipping off and logged grad_norm 0
    ("train.lr=-1e-3", "train.lr"),
    ("train.lr=.nan", "train.lr"),
    ("train.lr=0", "train.lr"),
    ("train.betas=[0.9, 1.0]", "train.betas[1]"),
    ("train.betas=[-0.1, 0.95]", "train.betas[0]"),
    ("train.weight_decay=-0.05", "train.weight_decay"),
    ("train.warmup=-1", "train.warmup"),
    ("train.save_every=0", "train.save_every"),  # was ZeroDivisionError after step 0
    ("train.keep_checkpoints=0", "train.keep_checkpoints"),  # silently meant "keep all"
    ("train.eval_every=-5", "train.eval_every"),
    ("train.samples_in_grid=0", "train.samples_in_grid"),
    ("train.threads=-2", "train.threads"),
    ("train.eval_seed=-1", "train.eval_seed"),
    ("train.eval_noise_seeds=0", "train.eval_noise_seeds"),
    ("train.trainable='('", "train.trainable"),
    ("rl.vmr.eta=0", "rl.vmr.eta"),  # was a ValueError after step 0
    ("rl.vmr.eta=.inf", "rl.vmr.eta"),
    ("rl.vmr.suffix_prefixes=0", "rl.vmr.suffix_prefixes"),
    ("rl.panw.alpha=-1", "rl.panw.alpha"),
    ("sampler.cfg=.nan", "sampler.cfg"),
    ("sampler.temperature=.inf", "sampler.temperature"),
    ("reward.weights={text_ocr: .nan}", "reward.weights.text_ocr"),
    ("reward.weights={}", "reward.weights"),  # was a traceback from build_reward
    ("reward.weights={ocr: 1.0}", "reward.weights"),
    ("reward.weights={text_ocr: 0.0}", "reward.weights"),  # only logged: nothing to train on
    ("reward.text_ocr.lam=-1", "reward.text_ocr.lam"),
    ("reward.text_ocr.workers=-1", "reward.text_ocr.workers"),
    ("reward.text_ocr.ocr.min_score=1.5", "reward.text_ocr.ocr.min_score"),
    ("reward.brightness.target=2", "reward.brightness.target"),
    ("reward.clip_score.batch_size=0", "reward.clip_score.batch_size"),
    ("policy.device=gpu", "policy.device"),
    ("data.synth.word_len=[6, 3]", "data.synth.word_len"),
    ("data.synth.region_mix={'1': -1.0, '2': 2.0}", "data.synth"),
    ("run.name=''", "run.name"),  # wrote the run into run.dir itself
    ("run.name=../../x", "run.name"),  # created folders outside run.dir
    ("run.name=a/b", "run.name"),
    ("run.name=..", "run.name"),
    ("run.seed=-1", "run.seed"),
    ("run.seed=99999999999999999999", "run.seed"),  # too large for the generators
]


@pytest.mark.parametrize("override,key", OUT_OF_RANGE, ids=[o for o, _ in OUT_OF_RANGE])
def test_out_of_range_knob_is_a_config_error_naming_the_key(override, key):
    with pytest.raises(ConfigError) as e:
        _load(override)
    assert f"'{key}" in str(e.value), str(e.value)


def test_the_defaults_and_shipped_edges_are_in_range():
    _load()
    _load("rl.mp.threshold=1", "train.grad_clip=0", "train.eval_every=0", "rl.panw.alpha=null", "rl.kl_beta=0",
          "train.betas=[0.0, 0.999]", "rl.method=grpo", "sampler.top_p=1.0", "policy.device=cuda:1")


def test_pretrain_knobs_have_ranges_too():
    from varrl.recipes.pretrain import PretrainConfig

    cases = [("model_train.lr=-1", "model_train.lr"), ("tokenizer_train.save_every=0", "tokenizer_train.save_every"),
             ("model.heads=3", "model.dim"), ("ocr_workers=-1", "ocr_workers"),
             ("model_train.cond_drop=1.0", "model_train.cond_drop")]
    for override, key in cases:
        with pytest.raises(ConfigError, match=f"'{key}"):
            load_config(PretrainConfig, None, [override])


# --- class 6: a YAML key given twice is refused, with both lines ------------------------------------

@pytest.mark.parametrize("text,line", [
    ("train:\n  steps: 10\n  lr: 1e-4\n  steps: 20\n", "lines 2 and 4"),
    ("rl:\n  kl_beta: 0.1\nrl:\n  method: grpo\n", "lines 1 and 3"),
])
def test_yaml_key_given_twice_is_refused(tmp_path, text, line):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=f"given twice \\({line}\\)"):
        _load(path=path)


def test_override_mapping_with_a_key_twice_is_refused():
    with pytest.raises(ConfigError, match="given twice"):
        _load("reward.weights={text_ocr: 1.0, text_ocr: 0.5}")


# --- class 2: prompt and targets share one normalisation; words the prompt lacks warn ----------------

def _prompts(tmp_path, lines: list[str]):
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_accented_target_is_normalised_as_the_model_reads_the_prompt(tmp_path, tiny_policy):
    from varrl.data.prompts import JsonlPrompts
    from varrl.rewards.text_ocr import text_ocr_terms

    path = _prompts(tmp_path, ['{"prompt": "the text \\"CAFÉ\\" in red"}', '{"prompt": "x", "words": ["Crème"]}'])
    src = JsonlPrompts(path, tiny_policy.prompt_text)
    assert [r.words for r in src.records] == [("cafe",), ("creme",)]
    # An image showing exactly what the model was asked for (CAFE) is a perfect read.
    assert text_ocr_terms(list(src[0].words), [("CAFE", 1.0)])["word_acc"] == 1.0


@pytest.mark.parametrize("line,warned", [
    ('{"prompt": "the text \\"OPEN\\"", "words": ["SHUT"]}', "'shut'"),
    ('{"prompt": "a sign that says \\"EXIT\\"", "words": ["EXIT", "NOW"]}', "'now'"),
    ('{"prompt": "the text \\"OPEN\\"", "words": ["OPEN"]}', None),
])
def test_words_the_prompt_does_not_contain_warn_naming_the_line(tmp_path, line, warned):
    from varrl.data.prompts import JsonlPrompts

    path = _prompts(tmp_path, ['{"prompt": "the text \\"A\\""}', line])
    src = JsonlPrompts(path)
    if warned is None:
        assert src.warnings == []
    else:
        assert len(src.warnings) == 1 and src.warnings[0].startswith(f"{path}:2:") and warned in src.warnings[0]


# --- no silent wrong signal: an update that can do nothing is said out loud ------------------------

def test_no_signal_names_each_reason():
    from varrl.trainer.loop import no_signal

    assert [k for k, _ in no_signal({"policy/grad_norm": 0.0, "scale/1/mask_frac": 0.0}, 4, 4, None)] == ["all_nan"]
    masks = {"scale/1/mask_frac": 0.0, "scale/2/mask_frac": 0.0, "policy/grad_norm": 0.0}
    assert [k for k, _ in no_signal(masks, 4, 0, None)] == ["empty_masks"]
    kind, text = no_signal({"policy/grad_norm": 0.0, "scale/1/mask_frac": 1.0}, 4, 0, "bias$")[0]
    assert kind == "zero_grad" and "train.trainable" in text
    assert no_signal({"policy/grad_norm": 0.3, "scale/1/mask_frac": 0.2}, 4, 1, None) == []


def test_masks_of_an_empty_batch_have_no_rows():
    from varrl.algorithms.masks import batch_step_masks

    masks = batch_step_masks([], (32, 32), [(1, 1), (2, 2), (4, 4)])
    assert [tuple(m.shape) for m in masks] == [(0, 1), (0, 4), (0, 16)]


def test_grad_norm_is_measured_with_clipping_off(tiny_policy):
    import copy

    from varrl.policy.sampler import SamplerConfig
    from varrl.trainer.config import RlConfig, TrainConfig
    from varrl.trainer.dist import DistInfo
    from varrl.trainer.update import UpdatePlan, policy_update

    policy = copy.deepcopy(tiny_policy)
    traj = policy.rollout(["a"], n=2, sampler=SamplerConfig(cfg=0), generator=torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW(policy.parameters(), lr=0.0)
    m = policy_update(policy, None, traj, torch.tensor([1.0, -1.0]), UpdatePlan(steps=[0, 1, 2]),
                      RlConfig(kl_beta=0), TrainConfig(grad_clip=0), opt, DistInfo())
    assert m["policy/grad_norm"] > 0 and math.isfinite(m["policy/grad_norm"])  # was logged as 0.0
