"""`FSCode`: the shared per-step tables of one FS activation."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fs_hw.dynamics import RULES, FSResult, simulate_fs
from fs_hw.errors import ValidationError

# Most steps an FS code may have. The shipped codes use K <= 16; the ReLU code halves its
# step every step (2^-K grid), so beyond 52 steps float64 cannot tell them apart, and
# the reference's cost grows with K (a K of 200000 ran for minutes). 64 leaves room.
MAX_K = 64
CODE_KEYS = ("name", "K", "rule", "T", "h", "d", "provenance")
PROVENANCE_KEYS = ("function", "x_range", "mse", "max_abs_error", "mean_spikes", "source")


def _is_number(value: Any) -> bool:
    """A finite int or float; a bool is not a number here (JSON true is not 1)."""
    if type(value) not in (int, float):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:  # an int beyond float range
        return False


def _check_keys(data: dict, known: tuple[str, ...], required: tuple[str, ...], strict: bool,
                obj: str, what: str) -> None:
    unknown = sorted(set(data) - set(known), key=str)
    if unknown:
        raise ValidationError(obj, what, f"unknown field(s) {unknown}; known: {list(known)}")
    missing = [k for k in (known if strict else required) if k not in data]
    if missing:
        raise ValidationError(obj, what, f"missing field(s) {missing}")


def _frozen_array(values: Any, obj: str, name: str) -> np.ndarray:
    try:
        arr = np.array(values, dtype=np.float64)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ValidationError(obj, name, f"not a list of numbers ({exc})") from None
    if arr.ndim != 1:
        raise ValidationError(obj, name, f"must be 1-D, got shape {arr.shape}")
    bad = ~np.isfinite(arr)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValidationError(obj, name, f"non-finite value {arr[i]} at step {i}")
    arr.setflags(write=False)
    return arr


@dataclass(frozen=True)
class Provenance:
    """Where a code comes from and how good it is.

    ``function`` is the activation it approximates ("relu", "swish", ...), ``x_range``
    the input interval it was fitted or checked on, ``mse`` / ``max_abs_error`` /
    ``mean_spikes`` the errors measured on a uniform grid of that interval with
    :func:`fs_hw.codes.evaluate_code`; ``source`` says who made it.
    """

    function: str
    x_range: tuple[float, float]
    mse: float | None = None
    max_abs_error: float | None = None
    mean_spikes: float | None = None
    source: str = ""

    def to_dict(self) -> dict:
        return {
            "function": self.function,
            "x_range": list(self.x_range),
            "mse": self.mse,
            "max_abs_error": self.max_abs_error,
            "mean_spikes": self.mean_spikes,
            "source": self.source,
        }

    @classmethod
    def from_dict(cls, data: dict, obj: str = "provenance", strict: bool = False) -> Provenance:
        """Read the JSON form; types are checked, not coerced (a string is not a number).

        ``strict`` (the `.fsnet` reader) also requires every key that :meth:`to_dict` writes.
        """
        if not isinstance(data, dict):
            raise ValidationError(obj, "provenance", f"must be an object, got {type(data).__name__}")
        _check_keys(data, PROVENANCE_KEYS, ("function", "x_range"), strict, obj, "provenance")
        if type(data["function"]) is not str:
            raise ValidationError(obj, "provenance.function", f"must be a string, got {data['function']!r}")
        x_range = data["x_range"]
        if not isinstance(x_range, (list, tuple)) or len(x_range) != 2 or not all(_is_number(v) for v in x_range):
            raise ValidationError(obj, "provenance.x_range", f"must be a pair of finite numbers, got {x_range!r}")
        values = {}
        for key in ("mse", "max_abs_error", "mean_spikes"):
            value = data.get(key)
            if value is not None and not _is_number(value):
                raise ValidationError(obj, f"provenance.{key}", f"must be a finite number or null, got {value!r}")
            values[key] = None if value is None else float(value)
        source = data.get("source", "")
        if type(source) is not str:
            raise ValidationError(obj, "provenance.source", f"must be a string, got {source!r}")
        return cls(data["function"], (float(x_range[0]), float(x_range[1])), source=source, **values)


@dataclass(frozen=True, eq=False)
class FSCode:
    """The tables of one FS activation, shared by every neuron that uses it.

    The dynamics are those of :func:`fs_hw.dynamics.simulate_fs`: ``v`` starts at the
    input, and at each step ``t`` the neuron fires if ``v > T[t]`` (rule ``">"``) or
    ``v >= T[t]`` (rule ``">="``), adds ``d[t]`` to its output and subtracts ``h[t]``
    from ``v``.
    """

    name: str
    T: np.ndarray
    h: np.ndarray
    d: np.ndarray
    rule: str = ">"
    provenance: Provenance | None = field(default=None)

    def __post_init__(self) -> None:
        obj = f"FSCode {self.name!r}"
        if not isinstance(self.name, str) or not self.name:
            raise ValidationError("FSCode", "name", f"must be a non-empty string, got {self.name!r}")
        for key in ("T", "h", "d"):
            object.__setattr__(self, key, _frozen_array(getattr(self, key), obj, key))
        lengths = {len(self.T), len(self.h), len(self.d)}
        if len(lengths) != 1:
            raise ValidationError(
                obj, "T/h/d", f"tables differ in length (T {len(self.T)}, h {len(self.h)}, d {len(self.d)})"
            )
        if len(self.T) < 1:
            raise ValidationError(obj, "K", "must have at least one step")
        if len(self.T) > MAX_K:
            raise ValidationError(obj, "K", f"{len(self.T)} steps; the limit is K <= {MAX_K}")
        if self.rule not in RULES:
            raise ValidationError(obj, "rule", f"must be one of {RULES}, got {self.rule!r}")

    @property
    def K(self) -> int:
        """Number of time steps."""
        return len(self.T)

    def __call__(self, x: Any, record_spikes: bool = False) -> FSResult:
        """Run this code on ``x`` with :func:`fs_hw.dynamics.simulate_fs`."""
        return simulate_fs(x, self.T, self.h, self.d, self.rule, record_spikes=record_spikes)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FSCode):
            return NotImplemented
        return (
            self.name == other.name
            and self.rule == other.rule
            and self.provenance == other.provenance
            and all(np.array_equal(getattr(self, k), getattr(other, k)) for k in "Thd")
        )

    def __hash__(self) -> int:
        return hash((self.name, self.rule, self.T.tobytes(), self.h.tobytes(), self.d.tobytes()))

    def with_name(self, name: str) -> FSCode:
        return FSCode(name, self.T, self.h, self.d, self.rule, self.provenance)

    def to_dict(self) -> dict:
        """JSON form (floats written with repr, which round-trips exactly)."""
        return {
            "name": self.name,
            "K": self.K,
            "rule": self.rule,
            "T": [float(v) for v in self.T],
            "h": [float(v) for v in self.h],
            "d": [float(v) for v in self.d],
            "provenance": None if self.provenance is None else self.provenance.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict, obj: str = "FSCode", strict: bool = False) -> FSCode:
        """Read the JSON form of :meth:`to_dict`. Types are checked, not coerced.

        ``name`` a string, ``K`` an int (not a bool) equal to the tables' length, ``rule``
        a string, ``T``/``h``/``d`` lists of at most ``MAX_K`` numbers. Unknown keys are
        refused; ``strict`` (the `.fsnet` reader) also requires every key to be present.
        """
        if not isinstance(data, dict):
            raise ValidationError(obj, "code", f"must be an object, got {type(data).__name__}")
        _check_keys(data, CODE_KEYS, ("name", "T", "h", "d"), strict, obj, "code")
        name = data["name"]
        if type(name) is not str:
            raise ValidationError(obj, "name", f"must be a string, got {name!r}")
        obj = f"FSCode {name!r}"
        if "K" in data and (type(data["K"]) is not int or not 1 <= data["K"] <= MAX_K):
            raise ValidationError(obj, "K", f"must be an integer in [1, {MAX_K}], got {data['K']!r}")
        for key in "Thd":
            table = data[key]
            if not isinstance(table, list):
                raise ValidationError(obj, key, f"must be a list of numbers, got {type(table).__name__}")
            if len(table) > MAX_K:
                raise ValidationError(obj, key, f"has {len(table)} steps; the limit is K <= {MAX_K}")
            for i, v in enumerate(table):
                if type(v) not in (int, float):
                    raise ValidationError(obj, key, f"step {i} is {v!r}, not a number")
        rule = data.get("rule", ">")
        if type(rule) is not str:
            raise ValidationError(obj, "rule", f"must be a string, got {rule!r}")
        provenance = data.get("provenance")
        code = cls(
            name=name,
            T=data["T"],
            h=data["h"],
            d=data["d"],
            rule=rule,
            provenance=None if provenance is None else Provenance.from_dict(provenance, obj, strict=strict),
        )
        if "K" in data and data["K"] != code.K:
            raise ValidationError(obj, "K", f"says {data['K']} but the tables have {code.K} steps")
        return code

    def max_output(self) -> float:
        """Largest |y| any input can produce (sum of |d|): bounds accumulators."""
        return float(np.abs(self.d).sum())

