"""The backend API: what a target must provide, and how targets are found.

A backend is any object with the attributes of :class:`Backend`. Backends are
registered under the entry-point group ``fs_hw.backends`` (``name = module:Class``),
so a separately installed distribution adds a target without touching fs-hw; the
`backends/` folder of this repository holds such distributions.

The contract every backend keeps (checked by :mod:`fs_hw.conformance`):
``lower(network, config)`` returns an :class:`Artifact` whose ``network`` and
``profile`` say exactly what the chip computes (weights and tables as the chip holds
them, the chip's rounding); ``run(artifact, inputs)`` returns a :class:`RunResult`
whose spikes equal, one for one, those of the reference backend run on
``artifact.network`` with ``artifact.profile``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from fs_hw.errors import FSHWError, TargetNotFoundError
from fs_hw.ir.network import Network

ENTRY_POINT_GROUP = "fs_hw.backends"

#: Targets this repository knows of, with how to install the ones that are plugins.
KNOWN_TARGETS: dict[str, str] = {
    "reference": "part of fs-hw itself",
    "loihi": "pip install -e backends/loihi  (or: pip install 'fs-hw-loihi')",
    "spinnaker": "pip install -e backends/spinnaker  (or: pip install 'fs-hw-spinnaker')",
    "brainscales2": "pip install -e backends/brainscales2  (or: pip install 'fs-hw-brainscales2')",
}


@dataclass(frozen=True)
class Capabilities:
    """What a target can do, as data (documentation tables are generated from it).

    ``None`` means "no limit of this kind".
    """

    node_kinds: frozenset[str]
    firing_rules: frozenset[str] = frozenset({">", ">="})
    weight_bits: int | None = None
    fan_in: int | None = None
    neurons_per_core: int | None = None
    max_K: int | None = None
    notes: str = ""

    def to_dict(self) -> dict:
        return {
            "node_kinds": sorted(self.node_kinds),
            "firing_rules": sorted(self.firing_rules),
            "weight_bits": self.weight_bits,
            "fan_in": self.fan_in,
            "neurons_per_core": self.neurons_per_core,
            "max_K": self.max_K,
            "notes": self.notes,
        }


@dataclass(frozen=True)
class NumericProfile:
    """How a target does arithmetic, for the reference's bit-exact prediction.

    ``dtype`` is the array type the reference computes in: ``float64`` for the
    float FS semantics, ``int64`` for a chip with integer state (weights, tables and
    inputs then hold integer values and every sum is exact). ``membrane_bits``, when
    set, is the signed width of the membrane/accumulator: a value outside it is an
    overflow error, never a silent wrap. ``input_scale`` multiplies raw inputs before
    they enter (a fixed-point chip's input units); inputs are then rounded to
    integers with ``input_rounding`` ("floor" or "nearest") for integer profiles.
    """

    name: str = "float64"
    dtype: str = "float64"
    membrane_bits: int | None = None
    input_scale: float = 1.0
    input_rounding: str = "floor"
    description: str = "float64 arithmetic on the IR's own weights and tables"

    @property
    def is_integer(self) -> bool:
        return np.dtype(self.dtype).kind in "iu"


FLOAT64 = NumericProfile()


@dataclass
class RunResult:
    """What running a network produces.

    ``outputs``: read-out values, shape ``(N, *readout_shape)``; ``predictions``: argmax
    class per sample; ``spike_counts``: per spiking node, spikes per sample ``(N,)``;
    ``neurons``: per spiking node, its number of neurons; ``spike_trains`` (when asked
    for): per spiking node, a ``uint8`` array ``(N, K, *shape)``; ``time_steps``: steps
    from first input spike to read-out; ``info``: backend-specific facts (resources,
    timing, emulator or hardware).
    """

    outputs: np.ndarray
    predictions: np.ndarray
    spike_counts: dict[str, np.ndarray]
    neurons: dict[str, int]
    time_steps: int
    spike_trains: dict[str, np.ndarray] | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def spikes_per_neuron(self, include_input: bool = False, input_name: str | None = None) -> float:
        """All spikes divided by all FS neurons (silent ones included), per sample."""
        names = [n for n in self.neurons if include_input or n != input_name]
        neurons = sum(self.neurons[n] for n in names)
        if neurons == 0:
            return 0.0
        spikes = sum(float(self.spike_counts[n].sum()) for n in names)
        return spikes / neurons / max(len(self.predictions), 1)


@dataclass
class Artifact:
    """A network lowered for one target.

    ``network`` and ``profile`` define what the target computes (the reference run on
    them predicts the target bit for bit); ``payload`` is the target's own program;
    ``resources`` counts what it uses; ``notes`` lists every approximation the
    lowering made, so none is silent.
    """

    target: str
    network: Network
    profile: NumericProfile
    payload: Any = None
    resources: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@runtime_checkable
class Backend(Protocol):
    """The interface of a target."""

    name: str
    capabilities: Capabilities

    def lower(self, network: Network, config: Mapping[str, Any]) -> Artifact:
        """Check ``network`` against the target's limits and build its program."""
        ...

    def run(self, artifact: Artifact, inputs: np.ndarray, record_spikes: bool = False) -> RunResult:
        """Run the program on ``inputs`` (``(N, *input_shape)``)."""
        ...

    def export(self, artifact: Artifact, path: Path) -> list[Path]:
        """Write the program (and what a user needs to run it) under ``path``."""
        ...


def available_targets() -> dict[str, metadata.EntryPoint]:
    """Installed backends by name (from the ``fs_hw.backends`` entry points)."""
    return {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def get_backend(name: str) -> Backend:
    """Instantiate the backend registered as ``name``.

    An unknown or uninstalled name raises :class:`TargetNotFoundError` listing the
    available targets and how to install the missing one.
    """
    found = available_targets()
    if name not in found:
        have = ", ".join(sorted(found)) or "none"
        hint = f"; install it with: {KNOWN_TARGETS[name]}" if name in KNOWN_TARGETS else ""
        raise TargetNotFoundError(f"target {name!r} is not installed{hint}. Available targets: {have}")
    try:
        cls = found[name].load()
    except ImportError as exc:
        raise TargetNotFoundError(
            f"target {name!r} is registered but cannot be imported ({exc}); "
            f"reinstall it with: {KNOWN_TARGETS.get(name, 'its package')}"
        ) from None
    backend = cls()
    if not isinstance(backend, Backend):
        raise FSHWError(f"target {name!r}: {cls!r} does not implement the Backend protocol")
    return backend
