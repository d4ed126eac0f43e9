"""Typed settings from YAML: dataclass fields with help text, checked at load time with their dotted key.

The machinery behind ``rlthf.config`` and the study configs (``rlthf.studies``): ``option`` declares a field,
``require`` checks a value in ``__post_init__``, ``from_dict`` builds a dataclass from a mapping and fails on an
unknown key or a bad value, ``read_yaml`` reads a file and applies ``KEY=VALUE`` overrides.
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import field
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A bad key or value in a config; the message starts with the dotted key."""


def option(default: Any, text: str, **kw: Any) -> Any:
    """A dataclass field whose help text is its documentation (a list default is copied per instance)."""
    if isinstance(default, list):
        return field(default_factory=lambda d=default: list(d), metadata={"help": text, **kw})
    return field(default=default, metadata={"help": text, **kw})


def require(ok: bool, key: str, msg: str) -> None:
    """Fail with ``key: msg`` unless ``ok`` (for ``__post_init__`` checks)."""
    if not ok:
        raise ConfigError(f"{key}: {msg}")


def _is_instance(value: Any, tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if tp is Any:
        return True
    if origin is typing.Union or origin is types.UnionType:
        return any(_is_instance(value, t) for t in typing.get_args(tp))
    if origin is Literal:
        return value in typing.get_args(tp)
    if origin is list:
        (item,) = typing.get_args(tp)
        return isinstance(value, list) and all(_is_instance(v, item) for v in value)
    if origin is dict or tp is dict:
        return isinstance(value, dict)
    if tp is type(None):
        return value is None
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, tp)


def _describe(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false", dict: "a mapping"}.get(
        tp, str(tp).replace("typing.", ""))


def from_dict(cls: type, raw: Any, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a nested mapping, failing on unknown keys and bad values."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        dotted = f"{prefix}{key}"
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
            raise ConfigError(f"{dotted}: unknown key{hint}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = from_dict(tp, value, prefix=f"{dotted}.")
            continue
        if typing.get_origin(tp) is list and isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]  # a schedule may be written as one number
        if tp is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if typing.get_origin(tp) is list and typing.get_args(tp) == (float,) and isinstance(value, list):
            value = [float(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in value]
        if not _is_instance(value, tp):
            union = typing.get_origin(tp) in (typing.Union, types.UnionType)
            opts = [t for t in typing.get_args(tp) if t is not type(None)] if union else [tp]
            want = " or ".join(_describe(t) for t in opts)
            raise ConfigError(f"{dotted}: expected {want}, got {value!r}")
        kwargs[key] = value
    return cls(**kwargs)  # __post_init__ checks name their full dotted key


def apply_override(raw: dict, override: str) -> None:
    key, sep, value = override.partition("=")
    if not sep:
        raise ConfigError(f"{override}: an override is KEY=VALUE, e.g. reward.epochs=3")
    node = raw
    parts = key.strip().split(".")
    for part in parts[:-1]:
        if node.get(part) is None:  # `reward:` with nothing under it is an empty section
            node[part] = {}
        node = node[part]
        if not isinstance(node, dict):
            raise ConfigError(f"{key}: {part} is not a section")
    try:
        node[parts[-1]] = yaml.safe_load(value)
    except yaml.YAMLError as err:
        raise ConfigError(f"{key}: {value!r} is not a valid YAML value ({err.problem})") from None


def read_yaml(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """A YAML mapping (empty when ``path`` is None) with ``KEY=VALUE`` overrides (dotted keys) applied."""
    raw: dict = {}
    if path is not None:
        text = Path(path).read_text()
        try:
            raw = yaml.safe_load(text) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    for override in overrides:
        apply_override(raw, override)
    return raw
