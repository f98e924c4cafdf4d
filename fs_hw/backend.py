"""The backend API: what a target must provide, and how targets are found.

A backend is any object with the attributes of :class:`Backend`. Backends are
registered under the entry-point group ``fs_hw.backends`` (``name = module:Class``),
so a separately installed distribution adds a target without touching fs-hw; the
`backends/` folder of this repository holds such distributions.

The contract every backend keeps (checked by :mod:`fs_hw.conformance` and the pytest
plugin :mod:`fs_hw.testing`), in three steps:

1. ``quantize(network, config) -> Quantized``: SDK-free. The network as the chip will
   hold it (weights and tables in the chip's integers, the chip's rounding) and the
   :class:`NumericProfile` under which the reference predicts the chip; this is how
   fs-deploy predicts a chip's accuracy without its SDK.
2. ``lower(quantized, config) -> Artifact``: the chip's program, checked against the
   target's ``limits`` (data: :class:`fs_hw.lower.limits.Limit`).
3. ``run(artifact, inputs, record_spikes, runner) -> RunResult``: on one of the target's
   ``runners`` (hardware, emulator, simulator); its spikes equal, one for one, those of
   the reference run on ``artifact.network`` with ``artifact.profile``, or differ within
   the target's declared ``exactness``.

``config`` is an instance of the backend's ``config_type`` (a dataclass), parsed from
the ``[target]`` table by :func:`fs_hw.lower.config.parse_config`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
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
    "nir": "pip install -e backends/nir  (or: pip install 'fs-hw-nir')",
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
    #: the network's input node, whose spikes (the host-encoded input code) are not counted
    #: as the network's own by :meth:`spikes_per_neuron`
    input_name: str | None = None

    def spikes_per_neuron(self, include_input: bool = False, input_name: str | None = None) -> float:
        """Spikes of the FS neurons divided by their number (silent ones included), per
        sample. The input code's spikes are excluded unless ``include_input``: they are
        the host's encoding of the sample, not the network's activity (the input node is
        ``input_name``, else the one the result records)."""
        skip = input_name if input_name is not None else self.input_name
        names = [n for n in self.neurons if include_input or n != skip]
        neurons = sum(self.neurons[n] for n in names)
        if neurons == 0:
            return 0.0
        spikes = sum(float(self.spike_counts[n].sum()) for n in names)
        return spikes / neurons / max(len(self.predictions), 1)


@dataclass(frozen=True)
class Exactness:
    """How closely a target's runs must equal the reference on its artifact.

    ``kind="bit-exact"``: every spike and every read-out value equal. ``kind="tolerance"``
    (analog or float targets): at most ``spike_mismatch_fraction`` of compared spikes may
    differ and read-out values by at most ``readout_atol``; ``why`` says where the
    difference comes from.
    """

    kind: str = "bit-exact"
    spike_mismatch_fraction: float = 0.0
    readout_atol: float = 0.0
    why: str = ""

    def __post_init__(self) -> None:
        if self.kind not in ("bit-exact", "tolerance"):
            raise ValueError(f"exactness kind must be 'bit-exact' or 'tolerance', got {self.kind!r}")

    @property
    def bit_exact(self) -> bool:
        return self.kind == "bit-exact"

    def to_dict(self) -> dict:
        return {"kind": self.kind, "spike_mismatch_fraction": self.spike_mismatch_fraction,
                "readout_atol": self.readout_atol, "why": self.why}


BIT_EXACT = Exactness()


@dataclass(frozen=True)
class Runner:
    """One way to run a target's artifacts (``hardware``, ``emulator``, ``simulator``).

    ``available`` says whether it can run on this machine; when it cannot, ``missing``
    says what to install.
    """

    name: str
    description: str
    available: Callable[[], bool] = field(default=lambda: True, compare=False)
    missing: str = ""


def choose_runner(runners: tuple[Runner, ...], requested: str | None, target: str) -> Runner:
    """The runner ``requested`` (checked), or the first available one."""
    names = [r.name for r in runners]
    if requested is not None:
        for r in runners:
            if r.name == requested:
                if not r.available():
                    raise TargetNotFoundError(
                        f"target {target!r}: runner {requested!r} is not available here"
                        + (f" ({r.missing})" if r.missing else "")
                    )
                return r
        raise FSHWError(f"target {target!r} has no runner {requested!r}; its runners: {', '.join(names)}")
    for r in runners:
        if r.available():
            return r
    raise TargetNotFoundError(f"target {target!r}: none of its runners ({', '.join(names)}) is available")


@dataclass
class Quantized:
    """A network as a target will hold it: the SDK-free half of lowering.

    ``network`` and ``profile`` are what the reference runs to predict the target (its
    accuracy before any SDK is touched); ``notes`` lists every rounding made; ``info``
    holds what the quantization chose (units, exponents) for the lowering.
    """

    target: str
    network: Network
    profile: NumericProfile
    notes: list[str] = field(default_factory=list)
    info: Any = None


@dataclass
class LayerResources:
    """What one layer uses on a target (counts are totals over the layer's parts)."""

    name: str
    kind: str
    parts: int
    neurons_per_part: int
    units: int  # hardware units (compartments, circuits, cells) of the layer
    weights: int = 0
    synapse_entries: int = 0
    split: str = ""  # why the layer was split this way
    inputs: tuple[str, ...] = ()  # the layers (or relays) it receives from
    connection_kinds: tuple[str, ...] = ()  # "conv", "dense", "relay"

    @property
    def entries_per_weight(self) -> float | None:
        return round(self.synapse_entries / self.weights, 3) if self.weights else None

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["inputs"] = list(self.inputs)
        d["connection_kinds"] = list(self.connection_kinds)
        d["entries_per_weight"] = self.entries_per_weight
        return d


@dataclass
class Resources:
    """What an artifact uses: typed totals, per-layer figures and target-specific extras."""

    cores: int = 0
    chips: int = 0
    neurons: int = 0
    time_steps_per_sample: int = 0
    latency_steps: int = 0
    layers: dict[str, LayerResources] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        out = {
            "cores": self.cores, "chips": self.chips, "neurons": self.neurons,
            "time_steps_per_sample": self.time_steps_per_sample, "latency_steps": self.latency_steps,
        }
        out.update(self.extra)
        out["layers"] = {k: v.to_dict() for k, v in self.layers.items()}
        return out


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
    resources: Resources = field(default_factory=Resources)
    notes: list[str] = field(default_factory=list)
    config: Any = None


@runtime_checkable
class Backend(Protocol):
    """The interface of a target (see the module docstring for the contract)."""

    name: str
    capabilities: Capabilities
    #: a dataclass type; the ``[target]`` table is parsed into it by ``parse_config``
    config_type: type
    #: the target's limits as data (``fs_hw.lower.limits.LimitTable``)
    limits: Any
    runners: tuple[Runner, ...]
    exactness: Exactness

    def quantize(self, network: Network, config: Any) -> Quantized:
        """The network in the target's arithmetic (no SDK needed)."""
        ...

    def lower(self, quantized: Quantized | Network, config: Any) -> Artifact:
        """Check against the target's limits and build its program (a ``Network`` is
        quantized first)."""
        ...

    def run(self, artifact: Artifact, inputs: np.ndarray, record_spikes: bool = False,
            runner: str | None = None) -> RunResult:
        """Run the program on ``inputs`` (``(N, *input_shape)``) with ``runner``
        (default: the first available of ``runners``)."""
        ...

    def export(self, artifact: Artifact, path: Path) -> list[Path]:
        """Write the program (and what a user needs to run it) under ``path``."""
        ...


def parse_target_config(backend: Backend, mapping: Mapping[str, Any] | Any | None) -> Any:
    """The backend's ``config_type`` filled from a ``[target]`` table (validated)."""
    from fs_hw.lower.config import parse_config

    return parse_config(backend.config_type, mapping, f"{backend.name} config")


def check_config_K(target: str, config: Any, network: Network) -> None:
    """A target config's optional ``K`` must match the network's codes (one message for all targets)."""
    from fs_hw.errors import ValidationError

    K = getattr(config, "K", None)
    if K is not None and network.K != K:
        raise ValidationError(f"{target} config", "K", f"is {K} but the network's codes have K={network.K}")


def as_quantized(backend: Backend, network_or_quantized: Quantized | Network, config: Any) -> Quantized:
    """``lower`` accepts a network too: quantize it first."""
    if isinstance(network_or_quantized, Quantized):
        return network_or_quantized
    return backend.quantize(network_or_quantized, config)


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
