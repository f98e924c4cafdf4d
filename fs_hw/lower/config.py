"""A target's settings as a dataclass, parsed and validated in one place.

A backend declares ``config_type``, a frozen dataclass whose fields carry their checks
as metadata (:func:`setting`); :func:`parse_config` reads the ``[target]`` table of a
deploy config into it. Unknown keys, wrong types and values out of range are refused
with the key, the value and what was expected, the same way for every target, so no
backend writes its own key checker.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any

from fs_hw.errors import ValidationError


def setting(default: Any, doc: str, *, range: tuple[Any, Any] | None = None,
            choices: tuple[Any, ...] | None = None) -> Any:
    """A config field: its default, one line of documentation and its checks."""
    return dataclasses.field(default=default, metadata={"doc": doc, "range": range, "choices": choices})


def _allowed_types(annotation: Any) -> tuple[tuple[type, ...], bool]:
    """(types a value may have, whether None is allowed) for a field annotation."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        return tuple(a for a in args if a is not type(None)), type(None) in args
    return (annotation,), False


_TYPE_WORDS = {int: "an integer", bool: "true or false", float: "a number", str: "a string"}


def _type_ok(value: Any, allowed: tuple[type, ...]) -> bool:
    for t in allowed:
        if t is bool:
            if isinstance(value, bool):
                return True
        elif t is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return True
        elif t is float:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return True
        elif isinstance(value, t):
            return True
    return False


def parse_config(config_type: type, mapping: Mapping[str, Any] | Any | None, where: str) -> Any:
    """``config_type`` filled from ``mapping`` (an instance is returned as it is).

    ``where`` names the config in messages (``"loihi config"``).
    """
    if isinstance(mapping, config_type):
        return mapping
    if mapping is not None and not isinstance(mapping, Mapping):
        raise ValidationError(where, "[target]", f"must be a table, got {type(mapping).__name__}")
    hints = typing.get_type_hints(config_type)
    fields = {f.name: f for f in dataclasses.fields(config_type)}
    values: dict[str, Any] = {}
    for key, value in dict(mapping or {}).items():
        if key not in fields:
            raise ValidationError(where, key, f"unknown key; known: {sorted(fields)}")
        allowed, optional = _allowed_types(hints[key])
        if value is None and optional:
            values[key] = None
            continue
        if not _type_ok(value, allowed):
            names = " or ".join(_TYPE_WORDS.get(t, t.__name__) for t in allowed) + (" (or absent)" if optional else "")
            raise ValidationError(where, key, f"must be {names}, got {value!r}")
        if float in allowed and not isinstance(value, bool):
            value = float(value) if not any(t is int for t in allowed) else value
        meta = fields[key].metadata
        if meta.get("choices") is not None and value not in meta["choices"]:
            raise ValidationError(where, key, f"must be one of {list(meta['choices'])}, got {value!r}")
        if meta.get("range") is not None:
            lo, hi = meta["range"]
            if not lo <= value <= hi:
                raise ValidationError(where, key, f"must be in [{lo}, {hi}], got {value!r}")
        values[key] = value
    return config_type(**values)


def config_to_dict(config: Any) -> dict[str, Any]:
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}


def config_docs(config_type: type) -> list[dict[str, Any]]:
    """One row per setting (name, default, range or choices, doc): for documentation tables."""
    rows = []
    for f in dataclasses.fields(config_type):
        rows.append({
            "name": f.name,
            "default": f.default,
            "range": f.metadata.get("range"),
            "choices": f.metadata.get("choices"),
            "doc": f.metadata.get("doc", ""),
        })
    return rows
