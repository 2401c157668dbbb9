"""Typed dataclass configs <-> plain data: strict conversion with the dotted key in every error.

`from_dict` builds a config from nested mappings (unknown keys and wrong types are errors naming
the key); `to_dict` is its inverse. YAML reading, overrides and saving live in varrl.config."""

from __future__ import annotations

import dataclasses
import difflib
import functools
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Literal, get_args, get_origin, get_type_hints

_NONE = type(None)


class ConfigError(ValueError):
    """Invalid configuration; ``key`` is the dotted key at fault, if known."""

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class FieldError(ConfigError):
    """A bad value of one field, found by a config's own `__post_init__`: `key` is relative to that
    dataclass, and `from_dict` puts the section's dotted path in front of it."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"config key '{key}' {problem}", key)
        self.problem = problem

    def under(self, path: str) -> FieldError:
        return FieldError(_join(path, self.key), self.problem)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    """Resolved annotations of the init fields (string annotations included)."""
    resolved = get_type_hints(cls)
    return {f.name: resolved[f.name] for f in dataclasses.fields(cls) if f.init}


def _is_union(tp: Any) -> bool:
    return get_origin(tp) in (typing.Union, types.UnionType)


def _type_name(tp: Any) -> str:
    if tp is _NONE or tp is None:
        return "None"
    if tp is Any:
        return "Any"
    origin, args = get_origin(tp), get_args(tp)
    if _is_union(tp):
        return " | ".join(_type_name(a) for a in args)
    if origin is Literal:
        return f"Literal[{', '.join(repr(a) for a in args)}]"
    if origin is not None:
        inner = ", ".join("..." if a is Ellipsis else _type_name(a) for a in args)
        return f"{origin.__name__}[{inner}]"
    return getattr(tp, "__name__", repr(tp))


def _show(value: Any) -> str:
    """``'abc' (str)``; long reprs are cut so one bad value can't flood the log."""
    text = repr(value)
    text = text if len(text) <= 80 else text[:77] + "..."
    return f"{text} ({type(value).__name__})"


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _mismatch(tp: Any, value: Any, key: str) -> ConfigError:
    return ConfigError(f"config key '{key}' expects {_type_name(tp)}, got {_show(value)}", key)


def _is_int(value: Any) -> bool:
    # bool subclasses int, but `steps: true` is a mistake, not 1.
    return isinstance(value, int) and not isinstance(value, bool)


def _convert(tp: Any, value: Any, key: str) -> Any:
    """Validate ``value`` against annotation ``tp``; return the typed value."""
    if tp is Any:
        return value
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key)
    if _is_union(tp):
        return _convert_union(tp, value, key)
    origin = get_origin(tp)
    if origin is Literal:
        return _convert_literal(tp, value, key)
    if origin in (tuple, list) or tp in (tuple, list):
        return _convert_sequence(tp, value, key)
    if origin is dict or tp is dict:
        return _convert_mapping(tp, value, key)
    return _convert_scalar(tp, value, key)


def _convert_scalar(tp: Any, value: Any, key: str) -> Any:
    if tp is float and _is_int(value):
        return float(value)  # `lr: 1` in YAML is an int but clearly means 1.0
    if tp is int:
        ok = _is_int(value)
    elif tp in (float, str, bool, _NONE):
        ok = isinstance(value, tp)
    else:
        raise TypeError(f"unsupported config annotation {tp!r} for '{key}'")
    if not ok:
        raise _mismatch(tp, value, key)
    return value


def _convert_union(tp: Any, value: Any, key: str) -> Any:
    args = get_args(tp)
    if value is None and _NONE in args:
        return None
    deeper: ConfigError | None = None
    for arg in args:
        try:
            return _convert(arg, value, key)
        except ConfigError as err:
            # An error about a nested key is more useful than "expects X | None".
            if deeper is None and err.key != key:
                deeper = err
    if deeper is not None:
        raise deeper
    raise _mismatch(tp, value, key)


def _convert_literal(tp: Any, value: Any, key: str) -> Any:
    choices = get_args(tp)
    # Compare types too, so True does not pass for Literal[1] (True == 1).
    if any(type(value) is type(c) and value == c for c in choices):
        return value
    options = ", ".join(repr(c) for c in choices)
    raise ConfigError(f"config key '{key}' expects one of {options}, got {_show(value)}", key)


def _convert_sequence(tp: Any, value: Any, key: str) -> Any:
    origin = get_origin(tp) or tp
    args = get_args(tp)
    # YAML has no tuples, so tuple fields accept lists (and vice versa).
    if not isinstance(value, (list, tuple)):
        raise _mismatch(tp, value, key)
    if origin is tuple and args and args[-1] is not Ellipsis:
        if len(value) != len(args):
            msg = f"expects {_type_name(tp)} ({len(args)} items), got {len(value)} items: {value!r}"
            raise ConfigError(f"config key '{key}' {msg}", key)
        item_types = list(args)
    else:
        item_types = [args[0] if args else Any] * len(value)
    items = [_convert(t, v, f"{key}[{i}]") for i, (t, v) in enumerate(zip(item_types, value))]
    return tuple(items) if origin is tuple else items


def _convert_mapping(tp: Any, value: Any, key: str) -> dict[Any, Any]:
    if not isinstance(value, Mapping):
        raise _mismatch(tp, value, key)
    key_type, value_type = get_args(tp) or (Any, Any)
    out: dict[Any, Any] = {}
    for k, v in value.items():
        sub = _join(key, str(k))
        out[_convert(key_type, k, sub)] = _convert(value_type, v, sub)
    return out


def _unknown_key(name: str, valid: Sequence[str], path: str) -> ConfigError:
    full = _join(path, name)
    close = difflib.get_close_matches(name, valid, n=1)
    if close:
        hint = f"did you mean '{_join(path, close[0])}'?"
    elif valid:
        hint = "valid keys: " + ", ".join(f"'{_join(path, v)}'" for v in valid)
    else:
        hint = "this section has no keys"
    return ConfigError(f"unknown config key '{full}'; {hint}", full)


def from_dict(cls: type, data: Mapping[str, Any], path: str = "") -> Any:
    """Build dataclass ``cls`` from ``data``; missing keys take their defaults."""
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"from_dict expects a dataclass type, got {cls!r}")
    if not isinstance(data, Mapping):
        where = f"config section '{path}'" if path else "config root"
        raise ConfigError(f"{where} expects a mapping, got {_show(data)}", path or None)
    hints = _hints(cls)
    for name in data:
        if name not in hints:
            raise _unknown_key(str(name), list(hints), path)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for name, f in fields.items():
        no_default = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if no_default and name not in data:
            full = _join(path, name)
            raise ConfigError(f"missing required config key '{full}'", full)
    kwargs = {}
    for name, value in data.items():
        f = fields.get(name)
        if f is not None and f.default_factory is not dataclasses.MISSING and isinstance(value, Mapping):
            default = f.default_factory()
            if dataclasses.is_dataclass(default):
                # A partial section overrides the factory's defaults (e.g. nano_sampler's cfg=0),
                # not the bare class defaults: `sampler.top_k=2` must not switch guidance back on.
                value = _overlay(type(default), _plain(default), value)
        kwargs[name] = _convert(hints[name], value, _join(path, name))
    try:
        return cls(**kwargs)
    except FieldError as err:
        raise (err.under(path) if path else err) from None
    except ConfigError:
        raise
    except ValueError as err:  # from a __post_init__ check; add where it happened
        where = f"config section '{path}'" if path else "config"
        raise ConfigError(f"invalid {where}: {err}", path or None) from err


def _overlay(cls: type, base: Mapping[str, Any], data: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` (a plain dataclass dict) with ``data`` on top; nested dataclass sections merge key
    by key, any other value (a mapping-typed field like region_mix included) is replaced whole."""
    out = dict(base)
    hints = _hints(cls)
    for k, v in data.items():
        tp = hints.get(k)
        if (isinstance(tp, type) and dataclasses.is_dataclass(tp) and isinstance(v, Mapping)
                and isinstance(base.get(k), Mapping)):
            out[k] = _overlay(tp, base[k], v)
        else:
            out[k] = v
    return out


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        # Only init fields: anything else would be rejected by from_dict on reload.
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value) if f.init}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def to_dict(obj: Any) -> dict[str, Any]:
    """Plain, YAML-serialisable dict of a config instance (tuples become lists)."""
    if not dataclasses.is_dataclass(obj) or isinstance(obj, type):
        raise TypeError(f"to_dict expects a dataclass instance, got {obj!r}")
    return _plain(obj)
