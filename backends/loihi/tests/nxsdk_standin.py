"""A recording stand-in for NxSDK, enough to run nengo-loihi's hardware builder.

``nengo_loihi.hardware.builder.build_board`` turns an allocated board into NxSDK
register writes: ``configure(...)`` calls on register objects (``cxCfg[i]``,
``synapses[ptr]``, ``synapseMap[axon].population32MapEntry``, ...), plain attribute
writes (``synapseFmt[i].wgtExp = ...``, ``synapseMap[axon].synapsePtr = ...``) and
axon creation calls (``createDiscreteAxon``, ``createPop16Axon``, ``createPop32Axon``).
Without NxSDK installed the names it imports from ``nengo_loihi.hardware.nxsdk_shim``
are ``None``. This module supplies objects that accept any attribute access, item
access and call, and record what the builder did, so tests can run the builder on a
program and check the result against the chip's rules (for instance the population
rule for pop32 axons) without the chip.

What is modelled and what is not:

* :class:`N2Board` has ``n2Chips`` (a list of :class:`N2Chip`, each with an integer
  ``id``), each chip ``n2CoresAsList`` and ``n2Cores`` (the same list of
  :class:`N2Core`, each with an integer ``id`` and ``parent`` the chip); a chip's
  ``parent`` is the board, so ``core.parent.parent`` is the board as NxSDK has it.
* Every other attribute or item is a :class:`Recorder` created on first use and kept,
  so a value written through ``core.synapseMap[3].synapsePtr = 7`` reads back.
* ``recorder.configure(**kw)`` merges ``kw`` into that register's recorded fields
  (:attr:`Recorder.fields`) and counts the call on the board.
* Any other call (``core.createPop32Axon(...)``, ``spike_gen.addPop32Spike(...)``,
  ``board.monitor.probe(...)``) is appended to the board's :attr:`N2Board.calls` as a
  :class:`Call` and returns a fresh :class:`Recorder`. Axon creation calls are also
  kept per kind in :attr:`N2Board.axons`.
* Nothing checks register ranges, memory sizes or NxSDK's own compiler rules: the
  stand-in records, the tests judge.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

AXON_CALLS = ("createDiscreteAxon", "createPop16Axon", "createPop32Axon")


@dataclass
class Call:
    """One call the builder made: ``owner.<name>(*args, **kwargs)``."""

    owner: Recorder
    name: str
    args: tuple
    kwargs: dict

    @property
    def core(self) -> N2Core | None:
        """The core the call was made on (or under), if any."""
        obj = self.owner
        while obj is not None and not isinstance(obj, N2Core):
            obj = object.__getattribute__(obj, "_parent")
        return obj


class Recorder:
    """An auto-vivifying NxSDK object: any attribute, item or call is accepted.

    Attributes and items are created on first access and kept; attribute writes are
    stored; ``configure`` merges its keyword arguments into :attr:`fields`; other calls
    are logged on the root board.
    """

    __slots__ = ("_name", "_parent", "_attrs", "_items", "_fields")

    # Names that must read as absent until set (the builder asserts ``not hasattr``).
    _NOT_AUTOVIVIFIED: frozenset[str] = frozenset()

    def __init__(self, name: str = "", parent: Recorder | None = None):
        object.__setattr__(self, "_name", name)
        object.__setattr__(self, "_parent", parent)
        object.__setattr__(self, "_attrs", {})
        object.__setattr__(self, "_items", None)
        object.__setattr__(self, "_fields", None)

    # --- access -----------------------------------------------------------------
    def __getattr__(self, name: str) -> Any:
        # Only called when normal lookup fails. Dunder and private names stay absent so
        # numpy, copy, pickle and hasattr probes see an ordinary object.
        if name.startswith("_"):
            raise AttributeError(name)
        attrs = object.__getattribute__(self, "_attrs")
        if name not in attrs:
            if name in type(self)._NOT_AUTOVIVIFIED:
                raise AttributeError(name)
            attrs[name] = Recorder(name, self)
        return attrs[name]

    def __setattr__(self, name: str, value: Any) -> None:
        object.__getattribute__(self, "_attrs")[name] = value

    def __getitem__(self, key: Any) -> Recorder:
        items = object.__getattribute__(self, "_items")
        if items is None:
            items = {}
            object.__setattr__(self, "_items", items)
        if key not in items:
            items[key] = Recorder(f"[{key!r}]", self)
        return items[key]

    def __setitem__(self, key: Any, value: Any) -> None:
        items = object.__getattribute__(self, "_items")
        if items is None:
            items = {}
            object.__setattr__(self, "_items", items)
        items[key] = value

    def __iter__(self):
        # Without this Python would iterate by calling __getitem__(0), (1), ... forever.
        raise TypeError(f"stand-in object {self.path} is not iterable")

    def __call__(self, *args: Any, **kwargs: Any) -> Recorder:
        parent = object.__getattribute__(self, "_parent")
        name = object.__getattribute__(self, "_name")
        call = Call(parent if parent is not None else self, name, args, kwargs)
        board = self.board
        if board is not None:
            board._log(call)
        return Recorder(f"{name}()", self)

    def configure(self, **kwargs: Any) -> None:
        fields = object.__getattribute__(self, "_fields")
        if fields is None:
            fields = {}
            object.__setattr__(self, "_fields", fields)
        fields.update(kwargs)
        board = self.board
        if board is not None:
            board.configure_calls += 1

    # --- inspection ---------------------------------------------------------------
    @property
    def fields(self) -> dict:
        """Keyword arguments of every ``configure`` call on this object, merged."""
        return dict(object.__getattribute__(self, "_fields") or {})

    @property
    def attrs(self) -> dict:
        """Attributes written or auto-created on this object."""
        return dict(object.__getattribute__(self, "_attrs"))

    @property
    def items(self) -> dict:
        """Items accessed or written on this object, by key."""
        return dict(object.__getattribute__(self, "_items") or {})

    @property
    def board(self) -> N2Board | None:
        obj = self
        while obj is not None and not isinstance(obj, N2Board):
            obj = object.__getattribute__(obj, "_parent")
        return obj

    @property
    def path(self) -> str:
        parts = []
        obj = self
        while obj is not None:
            parts.append(object.__getattribute__(obj, "_name"))
            obj = object.__getattribute__(obj, "_parent")
        out = ""
        for part in reversed(parts):
            out += part if (not out or part.startswith("[")) else "." + part
        return out

    def __repr__(self) -> str:
        return f"<standin {self.path}>"


class N2Core(Recorder):
    __slots__ = ()

    def __init__(self, core_id: int, chip: N2Chip):
        super().__init__(f"n2CoresAsList[{core_id}]", chip)
        self.id = core_id
        self.parent = chip


class N2Chip(Recorder):
    __slots__ = ()

    def __init__(self, chip_id: int, board: N2Board, n_cores: int):
        super().__init__(f"n2Chips[{chip_id}]", board)
        self.id = chip_id
        self.parent = board
        cores = [N2Core(j, self) for j in range(n_cores)]
        self.n2CoresAsList = cores
        self.n2Cores = cores


class N2Board(Recorder):
    """Stands in for ``nxsdk.arch.n2a.n2board.N2Board``.

    Called by the builder as ``NxsdkBoard(board_id, n_chips, n_cores_per_chip,
    n_synapses_per_core)``.
    """

    __slots__ = ()

    # build_board asserts these are absent before it sets them.
    _NOT_AUTOVIVIFIED = frozenset({"global_spike_generator", "spike_inputs"})

    def __init__(self, board_id=1, n_chips=1, n_cores_per_chip=None, n_synapses_per_core=None):
        super().__init__("board", None)
        if n_cores_per_chip is None:
            n_cores_per_chip = [128] * n_chips
        elif isinstance(n_cores_per_chip, int):
            n_cores_per_chip = [n_cores_per_chip] * n_chips
        assert len(n_cores_per_chip) == n_chips
        self.id = board_id
        self.n_synapses_per_core = n_synapses_per_core
        self.n2Chips = [N2Chip(i, self, n) for i, n in enumerate(n_cores_per_chip)]
        self.calls = []
        self.axons = {name: [] for name in AXON_CALLS}
        self.configure_calls = 0

    def _log(self, call: Call) -> None:
        self.calls.append(call)
        if call.name in self.axons:
            self.axons[call.name].append(call)

    def calls_named(self, name: str) -> list[Call]:
        return [c for c in self.calls if c.name == name]

    def summary(self) -> dict:
        """Counts of what the builder did, for messages."""
        return {
            "configure": self.configure_calls,
            **{name: len(v) for name, v in self.axons.items()},
            "other_calls": dict(Counter(c.name for c in self.calls if c.name not in self.axons)),
        }


class SpikeGen(Recorder):
    """Stands in for NxSDK's ``BasicSpikeGenerator(board)``; records ``add*Spike``."""

    __slots__ = ()

    def __init__(self, board: N2Board):
        super().__init__("spike_gen", board)


@dataclass
class _TraceCfg:
    kwargs: dict = field(default_factory=dict)

    def writeToRegister(self, register):
        register.configure(**self.kwargs)


class TraceConfigGenerator:
    """Stands in for NxSDK's ``TraceCfgGen`` (learning only)."""

    def genTraceCfg(self, **kwargs):
        return _TraceCfg(kwargs)


class _MicroGen:
    """Stands in for ``nxsdk.compiler.microcodegen.interface`` (learning only)."""

    class _UCode:
        numUCodes = 1

        def __init__(self, rules):
            self.uCodes = [hash(tuple(rules))]

    def ruleToUCode(self, rules, doOptimize=False):
        return self._UCode(rules)


micro_gen = _MicroGen()

PATCHED_NAMES = {
    "NxsdkBoard": N2Board,
    "SpikeGen": SpikeGen,
    "TraceConfigGenerator": TraceConfigGenerator,
    "micro_gen": micro_gen,
}


@contextlib.contextmanager
def patched_builder():
    """Install the stand-ins into ``nengo_loihi.hardware.builder`` for the duration."""
    from nengo_loihi.hardware import builder

    saved = {name: getattr(builder, name, None) for name in PATCHED_NAMES}
    try:
        for name, obj in PATCHED_NAMES.items():
            setattr(builder, name, obj)
        yield builder
    finally:
        for name, obj in saved.items():
            setattr(builder, name, obj)


def build_board(board, use_snips: bool = False, seed: int | None = 0) -> N2Board:
    """Run nengo-loihi's hardware builder on an allocated ``board`` against the stand-in."""
    with patched_builder() as builder:
        return builder.build_board(board, use_snips=use_snips, seed=seed)
