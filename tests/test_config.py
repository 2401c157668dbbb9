from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from varrl.config import (
    ConfigError,
    apply_overrides,
    from_dict,
    load_config,
    parse_override,
    save_config,
    to_dict,
)


@dataclass
class Train:
    steps: int = 100
    lr: float = 3e-4
    use_amp: bool = False
    optimizer: Literal["adam", "sgd"] = "adam"
    hidden: tuple[int, ...] = (64, 64)
    seed: int | None = None
    tags: list[str] = field(default_factory=list)
    weights: dict[str, float] = field(default_factory=dict)


@dataclass
class Run:
    name: str = "default"
    out_dir: str = "runs"


@dataclass
class Eval:
    every: int = 10


@dataclass
class Cfg:
    run: Run = field(default_factory=Run)
    train: Train = field(default_factory=Train)
    eval: Eval | None = None


@dataclass
class Required:
    n: int


def test_defaults_from_empty_dict() -> None:
    assert from_dict(Cfg, {}) == Cfg()


def test_nested_build() -> None:
    cfg = from_dict(
        Cfg,
        {
            "run": {"name": "exp1"},
            "train": {"steps": 5, "hidden": [32, 16], "weights": {"a": 1, "b": 0.5}},
            "eval": {"every": 3},
        },
    )
    assert cfg.run == Run(name="exp1")
    assert cfg.train.steps == 5
    assert cfg.train.lr == 3e-4
    assert cfg.train.hidden == (32, 16)
    assert isinstance(cfg.train.hidden, tuple)
    assert cfg.train.weights == {"a": 1.0, "b": 0.5}
    assert isinstance(cfg.train.weights["a"], float)
    assert cfg.eval == Eval(every=3)


@dataclass
class Outer:
    """A section whose default comes from a factory that differs from the class defaults."""

    train: Train = field(default_factory=lambda: Train(steps=7, weights={"a": 1.0, "b": 2.0}))
    run: Run = field(default_factory=lambda: Run(name="factory"))


def test_partial_section_keeps_factory_defaults() -> None:
    cfg = from_dict(Outer, {"train": {"lr": 0.1}})
    assert cfg.train.steps == 7  # the factory's value, not Train's 100
    assert cfg.train.lr == 0.1
    assert cfg.train.weights == {"a": 1.0, "b": 2.0}
    assert cfg.run.name == "factory"
    # A mapping-typed value replaces the default mapping; it is not merged into it.
    assert from_dict(Outer, {"train": {"weights": {"c": 3}}}).train.weights == {"c": 3.0}
    with pytest.raises(ConfigError, match="train.stepz"):
        from_dict(Outer, {"train": {"stepz": 1}})


def test_nano_sampler_override_keeps_no_guidance() -> None:
    from varrl.trainer.config import TrainRunConfig, apply_method_preset

    cfg = load_config(TrainRunConfig, None, ["sampler.top_k=3", "data.synth.region_mix={'2': 1.0}"],
                      apply_method_preset)
    assert cfg.sampler.cfg == 0.0 and cfg.sampler.top_k == 3 and cfg.sampler.top_p == 0.9
    assert cfg.data.synth.layout == "cells" and cfg.data.synth.region_mix == {"2": 1.0}


def test_unknown_key_suggests_closest() -> None:
    with pytest.raises(ConfigError) as exc:
        from_dict(Cfg, {"train": {"stepz": 3}})
    msg = str(exc.value)
    assert "'train.stepz'" in msg
    assert "did you mean 'train.steps'" in msg
    assert exc.value.key == "train.stepz"


def test_unknown_key_without_match_lists_valid_keys() -> None:
    with pytest.raises(ConfigError) as exc:
        from_dict(Cfg, {"run": {"zzzzqqq": 1}})
    msg = str(exc.value)
    assert "'run.zzzzqqq'" in msg
    assert "'run.name'" in msg and "'run.out_dir'" in msg


def test_unknown_key_inside_optional_section() -> None:
    with pytest.raises(ConfigError, match="did you mean 'eval.every'"):
        from_dict(Cfg, {"eval": {"evry": 2}})


def test_missing_required_key() -> None:
    with pytest.raises(ConfigError, match="missing required config key 'n'"):
        from_dict(Required, {})


@pytest.mark.parametrize(
    ("train", "fragment"),
    [
        ({"steps": "abc"}, "config key 'train.steps' expects int, got 'abc' (str)"),
        ({"steps": 1.5}, "'train.steps' expects int, got 1.5 (float)"),
        ({"steps": True}, "'train.steps' expects int, got True (bool)"),
        ({"lr": "fast"}, "'train.lr' expects float, got 'fast' (str)"),
        ({"lr": False}, "'train.lr' expects float, got False (bool)"),
        ({"use_amp": 1}, "'train.use_amp' expects bool, got 1 (int)"),
        ({"use_amp": "yes"}, "'train.use_amp' expects bool"),
        ({"optimizer": "rmsprop"}, "'train.optimizer' expects one of 'adam', 'sgd', got 'rmsprop'"),
        ({"seed": "x"}, "'train.seed' expects int | None, got 'x' (str)"),
        ({"hidden": 64}, "'train.hidden' expects tuple[int, ...], got 64 (int)"),
        ({"hidden": [64, "a"]}, "'train.hidden[1]' expects int, got 'a' (str)"),
        ({"tags": "a"}, "'train.tags' expects list[str]"),
        ({"weights": {"a": "x"}}, "'train.weights.a' expects float"),
        ({"weights": [1]}, "'train.weights' expects dict[str, float]"),
    ],
)
def test_wrong_types(train: dict[str, object], fragment: str) -> None:
    with pytest.raises(ConfigError) as exc:
        from_dict(Cfg, {"train": train})
    assert fragment in str(exc.value)


def test_wrong_type_for_str_and_section() -> None:
    with pytest.raises(ConfigError, match=r"'run.name' expects str, got 3 \(int\)"):
        from_dict(Cfg, {"run": {"name": 3}})
    with pytest.raises(ConfigError, match="config section 'run' expects a mapping"):
        from_dict(Cfg, {"run": "oops"})


def test_int_coerced_to_float_and_optional_accepts_both() -> None:
    cfg = from_dict(Cfg, {"train": {"lr": 1, "seed": 7}})
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert cfg.train.seed == 7
    assert from_dict(Cfg, {"train": {"seed": None}}).train.seed is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("train.steps=3", ("train.steps", 3)),
        ("train.lr=0.5", ("train.lr", 0.5)),
        ("train.lr=1e-3", ("train.lr", 1e-3)),
        ("train.use_amp=true", ("train.use_amp", True)),
        ("train.seed=null", ("train.seed", None)),
        ("train.hidden=[1,2]", ("train.hidden", [1, 2])),
        ("run.name=hello", ("run.name", "hello")),
        ("run.name=a=b", ("run.name", "a=b")),
        (" run.name = spaced", ("run.name", "spaced")),
    ],
)
def test_parse_override(text: str, expected: tuple[str, object]) -> None:
    assert parse_override(text) == expected


def test_parse_override_values_are_not_shared_between_calls() -> None:
    # A cached parse would hand every caller the same list: one caller's edit would change the next
    # run's override.
    first = parse_override("data.fonts=[DejaVuSans]")[1]
    first.append("Other")
    assert parse_override("data.fonts=[DejaVuSans]")[1] == ["DejaVuSans"]


@pytest.mark.parametrize("text", ["train.steps", "=3", "train..steps=3", "train.=1"])
def test_parse_override_errors(text: str) -> None:
    with pytest.raises(ConfigError, match=r"key\.sub=value"):
        parse_override(text)


def test_parse_override_bad_yaml_value() -> None:
    with pytest.raises(ConfigError, match="cannot parse value"):
        parse_override("train.hidden=[1,2")


def test_apply_overrides_creates_sections_without_mutating_input() -> None:
    data: dict[str, object] = {"run": {"name": "x"}}
    out = apply_overrides(data, ["train.steps=7", "run.name=y", "eval.every=2"], Cfg)
    assert out == {"run": {"name": "y"}, "train": {"steps": 7}, "eval": {"every": 2}}
    assert data == {"run": {"name": "x"}}
    cfg = from_dict(Cfg, out)
    assert cfg.eval == Eval(every=2) and cfg.train.steps == 7


def test_apply_overrides_into_dict_field() -> None:
    out = apply_overrides({}, ["train.weights.a=2"], Cfg)
    assert from_dict(Cfg, out).train.weights == {"a": 2.0}


def test_override_through_scalar_field_is_rejected() -> None:
    with pytest.raises(ConfigError, match="'train.steps' is int, not a config section"):
        apply_overrides({}, ["train.steps.x=1"], Cfg)


def test_override_through_non_mapping_data_is_rejected() -> None:
    with pytest.raises(ConfigError, match="'run' holds 'oops'"):
        apply_overrides({"run": "oops"}, ["run.name=a"], Cfg)


def test_unknown_override_key_reported_by_load() -> None:
    with pytest.raises(ConfigError, match="did you mean 'train.steps'"):
        load_config(Cfg, None, ["train.stpes=3"])


def test_override_wrong_type_reported_by_load() -> None:
    with pytest.raises(ConfigError, match="'train.steps' expects int"):
        load_config(Cfg, None, ["train.steps=abc"])


def test_load_config_defaults_when_no_path() -> None:
    assert load_config(Cfg, None, []) == Cfg()


def test_load_yaml_file_with_overrides(tmp_path: Path) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text(
        "run:\n  name: base\ntrain:\n  steps: 10\n  lr: 1e-3\n  hidden: [8, 8]\n",
        encoding="utf-8",
    )
    cfg = load_config(Cfg, path, ["train.steps=20", "train.optimizer=sgd"])
    assert cfg.run.name == "base"
    assert cfg.train.steps == 20
    assert cfg.train.lr == 1e-3
    assert cfg.train.hidden == (8, 8)
    assert cfg.train.optimizer == "sgd"


def test_load_empty_file_gives_defaults(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("", encoding="utf-8")
    assert load_config(Cfg, str(path), []) == Cfg()


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="config file not found") as exc:
        load_config(Cfg, path, [])
    assert str(path) in str(exc.value)


def test_yaml_syntax_error_names_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("run:\n  name: a\ntrain:\n  steps: [1, 2\n  lr: 3\n", encoding="utf-8")
    with pytest.raises(ConfigError) as exc:
        load_config(Cfg, path, [])
    msg = str(exc.value)
    assert str(path) in msg
    assert "line 5" in msg


def test_top_level_must_be_mapping(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="must be a mapping, got list"):
        load_config(Cfg, path, [])


def test_to_dict_is_plain() -> None:
    data = to_dict(Cfg(eval=Eval()))
    assert data["train"]["hidden"] == [64, 64]
    assert data["eval"] == {"every": 10}
    assert data["train"]["seed"] is None


def test_save_load_round_trip(tmp_path: Path) -> None:
    original = Cfg(
        run=Run(name="rt: with colon", out_dir="out"),
        train=Train(
            steps=3,
            lr=1e-5,
            use_amp=True,
            optimizer="sgd",
            hidden=(4, 2, 1),
            seed=0,
            tags=["a", "b"],
            weights={"x": 0.25},
        ),
        eval=Eval(every=4),
    )
    path = tmp_path / "sub" / "saved.yaml"
    save_config(original, path)
    assert load_config(Cfg, path, []) == original
    # Atomic write leaves no temp files behind.
    assert os.listdir(path.parent) == ["saved.yaml"]


def test_save_overwrites_existing(tmp_path: Path) -> None:
    path = tmp_path / "cfg.yaml"
    save_config(Cfg(), path)
    save_config(Cfg(run=Run(name="second")), path)
    assert load_config(Cfg, path, []).run.name == "second"


def test_ratio_like_values_stay_strings():
    # YAML 1.1 would read 3:1 as the base-60 integer 181.
    from varrl.config import _load_yaml

    assert _load_yaml("3:1") == "3:1" and _load_yaml("a: 1:1") == {"a": "1:1"}
    assert _load_yaml("1e-3") == 0.001 and _load_yaml("12") == 12


def test_default_is_the_measured_best_and_var_rl_is_one_flag_away() -> None:
    from varrl.trainer.config import TrainRunConfig, apply_method_preset

    cfg = load_config(TrainRunConfig, None, [], apply_method_preset)
    assert cfg == TrainRunConfig()  # the dataclass defaults are the default method's preset
    assert cfg.rl.method == "grpo" and cfg.rl.kl_beta == 0.5
    assert not cfg.rl.vmr.enabled and cfg.rl.panw.alpha is None and not cfg.rl.mp.enabled
    assert (cfg.sampler.cfg, cfg.sampler.temperature, cfg.sampler.logprob_mode) == (0.0, 0.7, "sampling")
    assert cfg.train.eval_prompts == 128 and cfg.train.lr == 1e-5
    paper = load_config(TrainRunConfig, None, ["rl.method=var_rl"], apply_method_preset)
    assert paper.rl.vmr.enabled and paper.rl.panw.alpha == 0.6 and paper.rl.mp.enabled
    assert paper.rl.alternation == "fine" and paper.rl.kl_beta == 0.5
    # Explicit keys win over the preset.
    assert load_config(TrainRunConfig, None, ["rl.method=var_rl", "rl.mp.enabled=false"],
                       apply_method_preset).rl.mp.enabled is False
