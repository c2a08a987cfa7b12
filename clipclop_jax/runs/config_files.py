"""Config files: YAML or JSON (or a run's own collage.png), dotted overrides, one-line errors.

A config file is a (partial) ``GenerateConfig.to_dict()``: nested mappings for the nested
settings, anything left out keeps its default::

    prompt: a cat made of leaves
    population: 4
    optim: {steps: 500, chunk_steps: 20}
    output: {checkpoint_every: 50, gif: true}

Overrides are dotted keys, ``optim.steps=500``; a value is text for a text setting and YAML
(``true``, ``null``, ``1e-3``, ``[0.7, 0.9]``) for the others. Every mistake is one
``ValueError`` line naming the key and the valid choices. The module works on any frozen
config dataclass with a ``from_dict``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import json
import math
import os
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any

from clipclop_jax import io

# The tEXt/iTXt key under which collage.png carries its run's config.
PNG_CONFIG_KEY = "clipclop_jax_config"


def load_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """Reads a config from ``.yaml``/``.yml``, ``.json`` or a run's ``.png``.

    Raises:
      ValueError: missing file, not UTF-8 text, bad syntax, or not a mapping at the top.
    """
    name = os.fspath(path)
    if not os.path.isfile(name):
        raise ValueError(f"config file {name} does not exist.")
    if name.lower().endswith(".png"):
        text = io.png_text(name).get(PNG_CONFIG_KEY)
        if text is None:
            raise ValueError(f"{name} carries no clipclop config (not a clipclop collage).")
        values = _parse(name, text, json_only=True)
    else:
        text = read_utf8(name, "a config file")
        values = _parse(name, text, json_only=name.lower().endswith(".json"))
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ValueError(
            f"{name}: a config file holds settings as 'key: value' lines, "
            f"not a {type(values).__name__}."
        )
    return values


def read_utf8(name: str, what: str) -> str:
    """The text of file ``name``, which must be UTF-8.

    Raises:
      ValueError: one line naming the file (``what`` says what it is) when it is not UTF-8.
    """
    try:
        with open(name, encoding="utf-8") as handle:
            return handle.read()
    except UnicodeDecodeError as error:
        raise ValueError(
            f"{name} is not UTF-8 text (byte {error.start} cannot be read): "
            f"{what} must be saved as UTF-8."
        ) from None


def _parse(name: str, text: str, *, json_only: bool) -> Any:
    if json_only:
        try:
            return json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"{name}: not valid JSON ({error}).") from None
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or "syntax error"
        raise ValueError(f"{name}: not valid YAML{where} ({problem}).") from None


class _Text(str):
    """An override's value as typed: read by the type of the field it sets (``_coerce``), so
    ``prompt=a: b`` and ``background=#ff0000`` stay text while ``optim.steps=500`` is a
    number."""


def parse_assignment(text: str) -> tuple[str, Any]:
    """``"optim.steps=500"`` -> ``("optim.steps", "500")``, the value read when the config is
    built: as text for a text setting, as YAML (``true``, ``null``, ``1e-3``, ``[0.7, 0.9]``)
    for the others.

    Raises:
      ValueError: no ``=``, or an empty key.
    """
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ValueError(f"{text!r} is not an override: write KEY=VALUE, e.g. optim.steps=500.")
    return key, _Text(value)


def _read_text(value: _Text) -> Any:
    import yaml

    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        return str(value)
    return parsed if isinstance(parsed, (bool, int, float, list, type(None))) else str(value)


def merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` (nested) with each dotted ``key: value`` of ``overrides`` set in a copy."""
    merged = _copy(base)
    for dotted, value in overrides.items():
        parts = dotted.split(".")
        node = merged
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[parts[-1]] = value
    return merged


def merge_nested(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with nested ``overrides`` laid over it: a nested dict merges key by key, any
    other value replaces."""
    merged = _copy(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge_nested(merged[key], value)
        else:
            merged[key] = _copy(value) if isinstance(value, Mapping) else value
    return merged


def _copy(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _copy(v) if isinstance(v, Mapping) else v for k, v in values.items()}


def build_config(cls: type, values: Mapping[str, Any], *, source: str = "config") -> Any:
    """``cls`` from nested ``values`` after checking every key and value type.

    Args:
      cls: a frozen config dataclass (``GenerateConfig``); ``cls.from_dict`` builds it.
      values: nested settings, as from ``load_config_file`` and ``merge``.
      source: names where the settings came from in error messages.

    Raises:
      ValueError: one line: an unknown key (with the nearest valid one and the valid keys),
        a value of the wrong type, or (from the dataclasses) a value out of range.
    """
    return cls.from_dict(check_settings(cls, values, source=source))


def check_settings(cls: type, values: Mapping[str, Any], *, source: str = "config") -> dict:
    """``values`` with every key checked against ``cls``'s fields (recursively) and every
    value converted to its field's type; ranges are left to ``cls``.

    Raises:
      ValueError: one line naming ``source``, the dotted key and the valid keys or type.
    """
    return _check(cls, values, prefix="", source=source)


def _check(cls: type, values: Mapping[str, Any], *, prefix: str, source: str) -> dict[str, Any]:
    if not isinstance(values, Mapping):
        raise ValueError(
            f"{source}: {prefix.rstrip('.')} holds settings (key: value), "
            f"not {type(values).__name__}."
        )
    hints = typing.get_type_hints(cls)
    fields = [f.name for f in dataclasses.fields(cls)]
    checked = {}
    for key, value in values.items():
        if key not in fields:
            near = difflib.get_close_matches(str(key), fields, n=1)
            hint = f"; did you mean '{prefix}{near[0]}'?" if near else "."
            where = f" of {prefix.rstrip('.')}" if prefix else ""
            raise ValueError(
                f"{source}: unknown setting '{prefix}{key}'{hint} Valid settings{where}: "
                f"{', '.join(fields)}."
            )
        checked[key] = _coerce(hints[key], value, f"{prefix}{key}", source)
    return checked


def _coerce(hint: Any, value: Any, name: str, source: str) -> Any:
    """``value`` as the field type ``hint`` wants, or a one-line error."""
    options = typing.get_args(hint) if _is_union(hint) else (hint,)
    if isinstance(value, _Text):
        value = str(value) if str in options else _read_text(value)
    if value is None:
        if type(None) in options:
            return None
        raise ValueError(f"{source}: {name} needs a value, not null.")
    kinds = [o for o in options if o is not type(None)]
    if len(kinds) != 1:
        return value
    kind = kinds[0]
    if dataclasses.is_dataclass(kind):
        return _check(kind, value, prefix=f"{name}.", source=source)
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"{source}: {name}={value!r} is not valid: use true or false.")
    if kind is int:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ValueError(f"{source}: {name}={value!r} is not valid: use a whole number.")
    if kind is float:
        if isinstance(value, str):
            # YAML 1.1 reads 1e-3 (no dot) as text.
            with contextlib.suppress(ValueError):
                value = float(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if math.isnan(value):
                raise ValueError(f"{source}: {name}=nan is not valid: use a number.")
            return float(value)
        raise ValueError(f"{source}: {name}={value!r} is not valid: use a number.")
    if kind is str:
        if isinstance(value, str):
            return value
        raise ValueError(f"{source}: {name}={value!r} is not valid: use text (quote it).")
    return value


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


def assignments(items: Iterable[str]) -> dict[str, Any]:
    """Many ``KEY=VALUE`` overrides as one dotted mapping (later ones win)."""
    return dict(parse_assignment(item) for item in items)
