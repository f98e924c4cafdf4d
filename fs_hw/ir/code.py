"""`FSCode`: the shared per-step tables of one FS activation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fs_hw.dynamics import RULES, FSResult, simulate_fs
from fs_hw.errors import ValidationError


def _frozen_array(values: Any, obj: str, name: str) -> np.ndarray:
    try:
        arr = np.array(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
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
    def from_dict(cls, data: dict, obj: str = "provenance") -> "Provenance":
        try:
            lo, hi = (float(v) for v in data["x_range"])
            return cls(
                function=str(data["function"]),
                x_range=(lo, hi),
                mse=None if data.get("mse") is None else float(data["mse"]),
                max_abs_error=None
                if data.get("max_abs_error") is None
                else float(data["max_abs_error"]),
                mean_spikes=None
                if data.get("mean_spikes") is None
                else float(data["mean_spikes"]),
                source=str(data.get("source", "")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValidationError(obj, "provenance", f"malformed ({exc!r})") from None


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

    def with_name(self, name: str) -> "FSCode":
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
    def from_dict(cls, data: dict, obj: str = "FSCode") -> "FSCode":
        if not isinstance(data, dict):
            raise ValidationError(obj, "code", f"must be an object, got {type(data).__name__}")
        try:
            name = data["name"]
            code = cls(
                name=name,
                T=data["T"],
                h=data["h"],
                d=data["d"],
                rule=data.get("rule", ">"),
                provenance=None
                if data.get("provenance") is None
                else Provenance.from_dict(data["provenance"], f"FSCode {name!r}"),
            )
        except KeyError as exc:
            raise ValidationError(obj, str(exc.args[0]), "missing") from None
        if "K" in data and data["K"] != code.K:
            raise ValidationError(
                f"FSCode {code.name!r}", "K", f"says {data['K']} but the tables have {code.K} steps"
            )
        return code

    def max_output(self) -> float:
        """Largest |y| any input can produce (sum of |d|): bounds accumulators."""
        return float(np.abs(self.d).sum())

