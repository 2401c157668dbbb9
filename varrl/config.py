"""Strict, typed-dataclass configuration: YAML file + dotted CLI overrides.

Configs are plain (nested) ``@dataclass`` classes with defaults. Loading is
strict on purpose: a typo in a key or a value of the wrong type fails loudly
with the full dotted key, instead of silently training with a default.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, get_args, get_origin

import yaml

from varrl.config_types import (  # noqa: F401  (re-exported: varrl.config is the public name)
    _NONE,
    ConfigError,
    _hints,
    _is_union,
    _show,
    _type_name,
    from_dict,
    to_dict,
)
from varrl.fileio import atomic_write_text


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-3`` as a float.

    YAML 1.1 only treats ``1.0e-3`` as a float, so ``lr: 1e-3`` would otherwise
    arrive as the string ``'1e-3'`` and be rejected by a float field.
    """


# YAML 1.1 reads "1:1" or "3:1" as base-60 integers (61, 181): drop the sexagesimal forms of the
# int and float resolvers so such values stay strings (e.g. rl.alternation=3:1).
_Loader.yaml_implicit_resolvers = {
    ch: [(tag, rx) for tag, rx in resolvers
         if not (tag in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float") and ":" in rx.pattern)]
    for ch, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:int",
    re.compile(r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$"),
    list("-+0123456789"),
)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?|\.[0-9_]+(?:[eE][-+][0-9]+)?"
               r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."),
)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def _unique_keys_mapping(loader: _Loader, node: yaml.MappingNode) -> dict:
    """A mapping whose keys are all different: PyYAML keeps the last of two equal keys without a
    word, so a setting written twice in a config would silently lose its first value."""
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        try:
            first = seen.get(key)
            seen[key] = line
        except TypeError:
            continue  # an unhashable key: construct_mapping reports it
        if first is not None:
            where = f"lines {first} and {line}" if first != line else f"line {line}"
            raise yaml.constructor.ConstructorError(None, None, f"key {key!r} is given twice ({where}); keep one",
                                                    key_node.start_mark)
    return loader.construct_mapping(node, deep=True)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_keys_mapping)


def _load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # safe: _Loader is a SafeLoader subclass


def parse_override(s: str) -> tuple[str, Any]:
    """Split ``key.sub=value``; the value is parsed as YAML (``3``, ``true``, ``[1,2]``)."""
    if "=" not in s:
        raise ConfigError(f"invalid override {s!r}: expected the form key.sub=value")
    key, raw = s.split("=", 1)  # only the first '=': values may contain '='
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"invalid override {s!r}: bad key {key!r}; expected key.sub=value")
    try:
        value = _load_yaml(raw)
    except yaml.YAMLError as err:
        raise ConfigError(f"invalid override {s!r}: cannot parse value: {err}", key) from err
    return key, value


def _strip_optional(tp: Any) -> Any:
    if _is_union(tp):
        rest = [a for a in get_args(tp) if a is not _NONE]
        return rest[0] if len(rest) == 1 else Any
    return tp


def _child_type(parent: Any, name: str, prefix: str, full: str) -> Any:
    """Annotation of ``name`` inside a value of type ``parent``."""
    parent = _strip_optional(parent)
    if parent is Any:
        return Any
    if isinstance(parent, type) and dataclasses.is_dataclass(parent):
        # Unknown names are left for from_dict, which suggests the right key.
        return _hints(parent).get(name, Any)
    if get_origin(parent) is dict or parent is dict:
        args = get_args(parent)
        return args[1] if args else Any
    raise ConfigError(f"cannot set '{full}': '{prefix}' is {_type_name(parent)}, not a config section", full)


def apply_overrides(data: Mapping[str, Any], overrides: Sequence[str], cls: type) -> dict[str, Any]:
    """Return a copy of ``data`` with each ``key.sub=value`` override set."""
    out: dict[str, Any] = copy.deepcopy(dict(data))
    for override in overrides:
        key, value = parse_override(override)
        parts = key.split(".")
        node, tp = out, cls
        for depth, part in enumerate(parts):
            tp = _child_type(tp, part, ".".join(parts[:depth]), key)
            if depth == len(parts) - 1:
                node[part] = value
                break
            child = node.get(part)
            if child is None:  # absent, or `section: null` in YAML: start a section
                child = node[part] = {}
            elif not isinstance(child, dict):
                prefix = ".".join(parts[: depth + 1])
                raise ConfigError(f"cannot set '{key}': '{prefix}' holds {_show(child)}, not a mapping", key)
            node = child
    return out


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as err:
        raise ConfigError(f"config file not found: {path}") from err
    except OSError as err:
        raise ConfigError(f"cannot read config file {path}: {err}") from err
    try:
        data = _load_yaml(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError(f"invalid YAML in {path}{where}: {problem}") from err
    if data is None:  # an empty file means "all defaults"
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"top level of {path} must be a mapping, got {type(data).__name__}")
    return data


def load_config(cls: type, path: str | Path | None, overrides: Sequence[str] = (),
                preset: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> Any:
    """Read YAML at ``path`` (or start from defaults if None), apply overrides, build ``cls``.
    ``preset`` may fill in keys that depend on other keys (e.g. a method's switches) before the
    dataclass defaults apply; keys given in the file or the overrides stay as given."""
    data = {} if path is None else _read_yaml(Path(path))
    data = apply_overrides(data, overrides, cls)
    if preset is not None:
        data = preset(data)
    return from_dict(cls, data)


def save_config(obj: Any, path: str | Path) -> None:
    """Write ``obj`` as YAML atomically, so a crash never leaves a half-written file."""
    atomic_write_text(path, yaml.safe_dump(to_dict(obj), sort_keys=False))


@dataclasses.dataclass
class RunConfig:
    """Where a run lives and how it is seeded: the run directory is `<dir>/<name>`."""

    name: str = "run"
    """the run's folder inside `dir`: one path component (no '/', not '.' or '..')"""
    dir: str = "runs"
    """parent of run directories"""
    seed: int = 0

    def __post_init__(self) -> None:
        from varrl.config_checks import check_ranges, seed_range
        from varrl.config_types import FieldError

        bad = (not self.name.strip() or self.name in (".", "..") or any(c in self.name for c in "/\\\0")
               or self.name != self.name.strip())
        if bad:
            raise FieldError("name", f"must be one folder name (no '/', not empty, '.' or '..'), got "
                                     f"{self.name!r}; put the parent folders in run.dir")
        if not self.dir.strip():
            raise FieldError("dir", "must name a folder, got ''; e.g. run.dir=runs")
        check_ranges(self, {"seed": seed_range})
