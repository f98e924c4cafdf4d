"""A target's limits as data, and the one checker every backend refuses with.

A backend lists its limits once (:class:`Limit`: name, value, unit, scope); the
lowering measures what each core (or chip, or board) would use as a mapping from limit
name to number, and :func:`check_usage` compares the two. The refusal it raises names
the layer, the part, the limit and both numbers, so every target refuses in the same
words and no backend writes its own message table.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from fs_hw.errors import ResourceError

SCOPES = ("neuron", "synapse", "core", "chip", "board")


@dataclass(frozen=True)
class Limit:
    """One hardware limit: ``usage[name] <= value`` must hold for every ``scope`` unit."""

    name: str
    value: int | float
    unit: str
    scope: str
    description: str = ""

    def __post_init__(self) -> None:
        if self.scope not in SCOPES:
            raise ValueError(f"limit {self.name!r}: scope {self.scope!r} is not one of {SCOPES}")

    @property
    def what(self) -> str:
        """Words for a message: ``"input axons per core"``."""
        return f"{self.unit} per {self.scope}"

    def to_dict(self) -> dict:
        return {"name": self.name, "value": self.value, "unit": self.unit, "scope": self.scope,
                "description": self.description}


@dataclass(frozen=True)
class Violation:
    """A measured use above a limit."""

    limit: Limit
    used: int | float
    layer: str
    part: str | None = None

    @property
    def message(self) -> str:
        # "network" names a whole-network use (cores on a board, K), not a layer
        where = ("the network" if self.layer == "network" else f"layer {self.layer!r}") + (
            f" ({self.part})" if self.part else "")
        return (f"{where}: needs {_num(self.used)} {self.limit.what}, "
                f"above the limit {_num(self.limit.value)}")


def _num(v: int | float) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


class LimitTable:
    """The limits of one target, looked up by name."""

    def __init__(self, limits: Iterable[Limit]):
        self._by_name: dict[str, Limit] = {}
        for lim in limits:
            if lim.name in self._by_name:
                raise ValueError(f"limit {lim.name!r} listed twice")
            self._by_name[lim.name] = lim

    def __iter__(self):
        return iter(self._by_name.values())

    def __len__(self) -> int:
        return len(self._by_name)

    def __getitem__(self, name: str) -> Limit:
        return self._by_name[name]

    def __contains__(self, name: str) -> bool:
        return name in self._by_name

    def value(self, name: str) -> int | float:
        return self._by_name[name].value

    def scope(self, scope: str) -> list[Limit]:
        return [lim for lim in self if lim.scope == scope]

    def violations(self, usage: Mapping[str, int | float], layer: str, part: str | None = None,
                   scope: str | None = None) -> list[Violation]:
        """Every limit of ``scope`` (all scopes if None) that ``usage`` exceeds.

        A usage key that names no limit is an error (a typo would otherwise never be checked).
        """
        unknown = [k for k in usage if k not in self._by_name]
        if unknown:
            raise KeyError(f"usage names unknown limits {unknown}; known: {sorted(self._by_name)}")
        out = []
        for name, used in usage.items():
            lim = self._by_name[name]
            if scope is not None and lim.scope != scope:
                continue
            if used > lim.value:
                out.append(Violation(lim, used, layer, part))
        return out

    def first_violation(self, usage: Mapping[str, int | float], layer: str, part: str | None = None,
                        scope: str | None = None) -> Violation | None:
        found = self.violations(usage, layer, part, scope)
        return found[0] if found else None

    def check(self, usage: Mapping[str, int | float], layer: str, part: str | None = None,
              scope: str | None = None, hint: str = "") -> None:
        """Raise :class:`~fs_hw.errors.ResourceError` naming the first violated limit."""
        found = self.first_violation(usage, layer, part, scope)
        if found is not None:
            refuse(found, hint)

    def to_list(self) -> list[dict]:
        return [lim.to_dict() for lim in self]


def refuse(violation: Violation, hint: str = "") -> None:
    raise ResourceError(violation.message + (f"; {hint}" if hint else ""))


def check_usage(limits: LimitTable | Sequence[Limit], usage: Mapping[str, int | float], layer: str,
                part: str | None = None, scope: str | None = None, hint: str = "") -> None:
    """Shorthand for ``LimitTable(limits).check(...)``."""
    table = limits if isinstance(limits, LimitTable) else LimitTable(limits)
    table.check(usage, layer, part, scope, hint)
