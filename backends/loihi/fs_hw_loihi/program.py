r"""Lowering an integer IR network to a nengo-loihi block program.

Layout (see ``docs/loihi.md`` for the derivation):

* **Time-unrolled FS neurons.** Neuron ``j`` of an FS node is ``K`` compartments
  ``(j, t)``, compartment index ``j*K + t`` inside its core; compartment ``(j, t)`` decides
  once, at step ``t`` of its stage. All compartments: ``decay_u = 4095`` (the current is
  this step's input only), ``decay_v = 0`` (perfect integrator), ``vmin = 0``, one
  threshold per core.
* **Data synapses, weight-shared in time.** A source compartment ``(i, s)`` excites every
  ``(j, t)`` with ``M[j, i] * d(s)``. One population (pop32) synapse per source step
  ``s`` (and per signed power of two of ``d(s)``, and per weight plane) holds the row
  ``M[:, i]`` once; ``K`` axons reuse it with compartment bases ``t``. The factor
  :math:`2^p` of ``d(s)`` is the synapse format's weight exponent. Memory: ``K`` entries
  per weight (the naive layout needs ``K**2``).
* **Convolutions keep their weight sharing**: one axon per (input pixel, ``t``), atoms are
  input channels, rows are kernel slices shared by all pixels with the same border
  pattern (as nengo-loihi's own conv), bases carry the output position.
* **Residual inside a neuron**: ``(j, s)`` inhibits ``(j, t > s)`` by ``h(s)``.
* **Clock**: a ring of ``2K`` compartments started by one host spike sends, through
  constant synapses, a baseline with the first data spike, a gate at each decision step
  and a reset one step later (:mod:`fs_hw_loihi.bounds` derives the values).
* **Skip connections** that jump stages go through relay compartments (latches gated
  ``K`` steps later), one relay layer per skipped stage; the host input is delayed by the
  host itself.
* **Read-out**: one accumulator compartment per output (never fires); its membrane is
  probed at the step its last input arrives.
* **Pipeline**: sample ``n`` enters at step :math:`\tau_n = 2 + 2Kn`; a stage decides
  during ``K`` steps and rests ``K`` (its reset must precede the next sample's baseline),
  so a new sample enters every ``2K`` steps while earlier ones are still inside.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from nengo_loihi.block import (
    MAX_COMPARTMENTS,
    MAX_OUT_AXONS,
    Axon,
    LoihiBlock,
    Synapse,
)
from nengo_loihi.builder import Model
from nengo_loihi.inputs import SpikeInput
from nengo_loihi.probe import LoihiProbe

from fs_hw.errors import ResourceError, UnsupportedError
from fs_hw.ir import FSActivation, Network, Readout
from fs_hw.lower.maps import ConvMap, ReceiverInput, receiver_inputs
from fs_hw.lower.partition import PartSpec, fan_in_groups, layer_parts, partition_layer
from fs_hw.lower.schedule import Relay, relay_name, relay_plan, spiking_sources
from fs_hw_loihi.bounds import LayerRange, layer_ranges
from fs_hw_loihi.config import LOIHI_LIMITS, MAX_COPIES, LoihiConfig
from fs_hw_loihi.fixedpoint import (
    CHIP_UNIT,
    CONSTANT_LIMIT,
    Q_LIMIT,
    chip_weight_exp,
    constant_planes,
    signed_digits,
    synapse_exponent,
    vth_round_up,
    weight_planes,
)

#: what the lowering is doing, layer by layer (fs-deploy shows it on stderr: fs_hw.deploy.PROGRESS_LOGGER)
progress = logging.getLogger("fs_hw.progress.loihi")

MAX_ATOMS = 1024
RELAY_VTH = 128
#: largest compartment base of an axon (nengo-loihi's hardware builder asserts it)
BASE_LIMIT = 256
RING_WEIGHT = 128
#: what a split whose sources cannot send to its readers costs (it loses to any feasible one)
INFEASIBLE_CORES = 1e6
#: the synapse-row mode that holds the source steps as atoms (see Lowering._conv_synapses)
ATOMS = "shared, source steps as atoms"


# ---------------------------------------------------------------------------------------
# structures
@dataclass
class Part:
    """One core's share of a layer (or one host input chunk)."""

    neurons: np.ndarray  # IR flat indices, in local order (images: pixel-major, then channel)
    block: Any = None  # LoihiBlock, or None for host parts
    pixels: tuple[int, int] | None = None  # pixel range [q0, q1) of image layers
    channels: tuple[int, int] | None = None  # channel range [f0, f1) of image layers
    probe: LoihiProbe | None = None
    inputs: dict[tuple[int, int], SpikeInput] = field(default_factory=dict)  # host: (stage, s) -> input
    #: a read-out part that reads only source parts [s0, s1) of Lowering._feeds (its fan-in is
    #: split over cores: the host adds the parts' accumulators), with its own constants
    feeds: tuple[int, int] | None = None
    partial: PartialReadout | None = None

    @property
    def n(self) -> int:
        return len(self.neurons)

    @property
    def n_channels(self) -> int:
        return self.channels[1] - self.channels[0]

    @classmethod
    def of(cls, spec: PartSpec) -> Part:
        return cls(spec.neurons, pixels=spec.pixels, channels=spec.channels)


@dataclass
class PartialReadout:
    """Constants of a read-out part that holds a partial sum: its baseline (the bias only
    on the part holding the first sources), the offset the host subtracts, its threshold."""

    baseline: np.ndarray
    offset: np.ndarray
    vth: int


@dataclass
class Layer:
    """A population of the program: host input, FS layer, relay or read-out."""

    name: str
    kind: str  # "host", "fs", "relay", "readout"
    shape: tuple[int, ...]
    K: int  # compartments per neuron (1 for read-outs)
    stage: int  # stage at which it decides (read-out: at which it is read)
    d: np.ndarray | None = None  # output weights (sources)
    parts: list[Part] = field(default_factory=list)
    range: LayerRange | None = None
    source: str | None = None  # relays: the layer they delay
    split_reason: str = ""  # why the partitioner chose this split (fs_hw.lower.partition)
    #: a copy of FS layer ``copy_of`` (same neurons, inputs and spikes) that serves part of
    #: its readers: one source core can send to only so many reader cores (output axons)
    copy_of: str | None = None
    #: an FS layer's copies, itself first; readers are shared out among them (_copy_index)
    copies: list[Layer] = field(default_factory=list)

    @property
    def node(self) -> str:
        """The IR node this layer computes."""
        return self.copy_of or self.name

    @property
    def image(self) -> bool:
        return len(self.shape) == 3

    @property
    def n(self) -> int:
        return int(np.prod(self.shape))


@dataclass
class Program:
    """A lowered network: the nengo-loihi model and what is needed to run and read it."""

    network: Network
    model: Model
    K: int
    period: int
    readout_stage: int
    layers: dict[str, Layer]
    clock_start: SpikeInput
    resources: dict[str, Any]
    config: LoihiConfig
    clock_cores: int = 1
    #: layers whose cores need too many output axons (filled by resources.check_program)
    out_axon_layers: set[str] = field(default_factory=set)
    #: image layers to re-partition with at most this many pixels a core (idem)
    pixel_caps: dict[str, int] = field(default_factory=dict)
    #: FS layers whose one-pixel cores send to too many readers (idem): the copies that would
    #: share the readers out, and the refusal if that is more than MAX_COPIES
    copy_requests: dict[str, tuple[int, str]] = field(default_factory=dict)
    #: FS layers whose split this build took from an earlier build of lower_network
    reused_splits: list[str] = field(default_factory=list)

    def origin(self, n: int) -> int:
        """Emulator step tau_n of sample ``n`` (its stage-0 step 0)."""
        return 2 + n * self.period

    def steps_for(self, samples: int) -> int:
        return self.origin(samples - 1) + self.readout_stage * self.K


# ---------------------------------------------------------------------------------------
# small builders
def _block(label: str, n_comp: int, vth: int) -> LoihiBlock:
    block = LoihiBlock(n_comp, label=label)
    c = block.compartment
    c.decay_u = np.full(n_comp, 4095, np.int32)
    c.decay_v = np.zeros(n_comp, np.int32)
    c.refract_delay = np.ones(n_comp, np.int32)
    c.vth = np.full(n_comp, vth * CHIP_UNIT, np.int32)  # the program's units are CHIP_UNIT chip steps
    c.bias = np.zeros(n_comp, np.int32)
    c.enable_noise = np.zeros(n_comp, bool)
    c.scale_u = False
    c.scale_v = False
    c.vmin = 0
    c.vmax = 2**23 - 1
    c.tau_s = 0.0
    return block


def _synapse(label, weights, indices, axon_to_weight, bases, exp, pop_type) -> Synapse:
    syn = Synapse(len(bases), label=label)
    syn._set_weights_indices(
        [np.asarray(np.asarray(w, np.int64) * CHIP_UNIT, np.int32) for w in weights],
        indices=[np.asarray(i, np.int32) for i in indices],
        weight_dtype=np.int32,
        compression=0,
    )
    syn.axon_to_weight_map = np.asarray(axon_to_weight, np.int32)
    syn.axon_compartment_bases = np.asarray(bases, np.int32)
    syn.pop_type = pop_type
    syn.format(weight_exp=chip_weight_exp(int(exp)))
    return syn


def _axon(label: str, target: Synapse, comp_map: np.ndarray, atoms: np.ndarray, n: int | None = None) -> Axon:
    """An axon of the compartments ``comp_map >= 0``; ``n`` (their distinct axon indices)
    when the caller knows it."""
    if n is None:
        n = int(np.unique(comp_map[comp_map >= 0]).size)
    ax = Axon(max(n, 1), label=label)
    ax.target = target
    ax.set_compartment_axon_map(np.asarray(comp_map, np.int32), atoms=np.asarray(atoms, np.int32))
    return ax


@dataclass
class _Pending:
    """A synapse for a target part and the axons that feed it (not yet attached)."""

    synapse: Synapse
    axons: list[tuple[Any, Axon, int]]  # (source Part, Axon, source step s)


def _unify_formats(block: LoihiBlock) -> None:
    """One index width per core, so formats differ by weight exponent only."""
    if not block.synapses:
        return
    bits = max(s.synapse_cfg.idx_bits for s in block.synapses)
    for s in block.synapses:
        s.format(idx_bits=bits)


def _formats(synapses: list[Synapse]) -> int:
    return len({s.synapse_cfg for s in synapses})


# ---------------------------------------------------------------------------------------
class Lowering:
    """Builds a :class:`Program` from an integer network (see the module docstring)."""

    def __init__(self, network: Network, config: LoihiConfig, per_core: dict[str, int] | None = None,
                 observed: dict | None = None, replicated: set[str] | None = None,
                 pixel_caps: dict[str, int] | None = None, copies: dict[str, int] | None = None,
                 atoms: set[str] | None = None, decisions: dict | None = None,
                 analysis: tuple[dict, dict] | None = None):
        self.net = network
        self.cfg = config
        self.K = network.K
        self.P = 2 * self.K
        self.per_core_override = dict(per_core or {})
        self.pixel_caps = dict(pixel_caps or {})
        self.n_copies = dict(copies or {})
        self.force_atoms = set(atoms or ())  # readers of a source with too many of them: steps as atoms
        # (ranges, receiver maps): the same for every build of lower_network, computed once
        self.ranges: dict[str, LayerRange]
        self.rins: dict[str, ReceiverInput]
        self.ranges, self.rins = analysis or (layer_ranges(network, observed), receiver_inputs(network))
        self.layers: dict[str, Layer] = {}
        self.pending: dict[int, list[_Pending]] = {}
        self._dense_cache: dict[tuple[str, str], dict[int, tuple]] = {}
        self._part_layer: dict[int, Layer] = {}  # id(part) -> its layer
        self.replicate: dict[str, bool] = {}  # layers whose rows hold all K decision units
        self.prefer_replicated = set(replicated or ())  # layers whose sources ran out of output axons
        self.step_atoms: set[str] = set()  # conv layers whose rows hold the source steps as atoms
        self._plane_cache: dict[tuple, tuple] = {}
        self._arrays: dict[tuple, list[np.ndarray]] = {}  # interned axon maps, see _interned
        self._step_maps: dict[tuple, np.ndarray] = {}  # conv axon maps by their groups, see _step_map
        #: FS layers' splits, kept across the builds of lower_network (see _decision_key)
        self.decisions = decisions if decisions is not None else {}
        self.reused: list[str] = []  # layers whose split this build took from ``decisions``

    # -- sources ----------------------------------------------------------------------
    def source_for(self, src: str, stage: int, reader: Part | None = None) -> Layer:
        """The layer that delivers ``src``'s spikes as if it decided at ``stage`` (to reader
        part ``reader``: one of the layer's copies)."""
        layer = self.layers[src]
        if layer.kind == "host":
            if (stage, 0) not in layer.parts[0].inputs:
                for i, part in enumerate(layer.parts):
                    for s in range(self.K):
                        part.inputs[(stage, s)] = SpikeInput(part.n, label=f"{src}[{i}]@stage{stage}s{s}")
            return layer
        if layer.stage == stage:
            if reader is None or len(layer.copies) < 2:
                return layer
            return layer.copies[_copy_index(reader, len(layer.copies))]
        key = relay_name(src, stage)
        if key not in self.layers:  # the relay plan (fs_hw.lower.schedule) made every copy
            raise UnsupportedError(f"layer {src!r} is read at stage {stage}, which no relay of the plan covers")
        return self.layers[key]

    def _make_relay(self, relay: Relay) -> None:
        """One relay copy of the plan: latches re-firing ``relay.previous``'s spikes K steps later."""
        prev = self.layers[relay.previous]
        layer = Layer(relay.name, "relay", prev.shape, self.K, relay.stage, d=prev.d, source=relay.source)
        for i, p in enumerate(prev.parts):
            part = Part(p.neurons.copy(), pixels=p.pixels, channels=p.channels)
            part.block = _block(f"{relay.name}[{i}]", part.n * self.K, RELAY_VTH)
            layer.parts.append(part)
            self._relay_synapse(prev, p, part, relay.name, i)
        self.layers[relay.name] = layer

    def _relay_synapse(self, prev: Layer, sp: Part, tp: Part, key: str, i: int) -> None:
        K, n = self.K, sp.n
        comp = np.arange(n * K)
        if prev.image:
            # Image sources already send conv axons whose atoms are channels; a compartment
            # has one population and one atom on the chip, so the relay copy uses discrete
            # axons (no population), one per compartment, in groups of compartment bases
            # below the builder's limit of 256.
            group = comp // BASE_LIMIT
            n_groups = int(group.max(initial=0)) + 1
            weights = [np.full((1, 1), RING_WEIGHT) for _ in range(n_groups)]
            indices = [np.full((1, 1), g * BASE_LIMIT) for g in range(n_groups)]
            syn = _synapse(f"{key}[{i}].in", weights, indices, group, comp - group * BASE_LIMIT, 0, 0)
            ax = self._axon(f"{key}[{i}].in", syn, comp, np.zeros(comp.size))
        else:
            weights = [np.full((n, 1), RING_WEIGHT) for _ in range(K)]
            indices = [(np.arange(n) * K + s)[:, None] for s in range(K)]
            syn = _synapse(f"{key}[{i}].in", weights, indices, np.arange(K), np.zeros(K), 0, 32)
            ax = self._axon(f"{key}[{i}].in", syn, comp % K, comp // K)
        tp.block.add_synapse(syn)
        self._attach(prev, sp, ax, 0)

    def _attach(self, layer: Layer, part: Part, axon: Axon, s: int, stage: int | None = None) -> None:
        if layer.kind == "host":
            part.inputs[(stage, s)].add_axon(axon)
        else:
            part.block.add_axon(axon)

    # -- data synapses ----------------------------------------------------------------
    def _dense_synapses(self, src: Layer, sp: Part, tp: Part, Kt: int, steps: list[tuple[np.ndarray, int]],
                        label: str, replicate: bool = False) -> list[_Pending]:
        """Synapses from source part ``sp`` into target part ``tp``: per source step ``s``
        the matrix ``M_s`` times the integer factor ``f_s`` (``d(s)`` for a plain map, 1 for
        per-step weights), as weight planes times signed powers of two of ``f_s``.

        Rows are shared by the ``Kt`` decision units (``Kt`` axons with compartment bases
        ``t``), or with ``replicate`` hold an entry for each of them (one axon)."""
        K = src.K
        host = src.kind == "host"
        c, n_atoms = len(tp.neurons), len(sp.neurons)
        n_t = 1 if replicate else Kt
        if replicate:
            cols = (np.arange(c)[:, None] * Kt + np.arange(Kt)[None, :]).reshape(-1)
            idx = np.broadcast_to(cols[None, :], (n_atoms, c * Kt))
        else:
            idx = np.broadcast_to((np.arange(c) * Kt)[None, :], (n_atoms, c))
        comp = np.arange(n_atoms) * K if host else np.arange(n_atoms * K)
        planes: dict[int, list[tuple[np.ndarray, int]]] = {}  # a plain map is shared by every step
        atoms = self._interned(comp // K)
        out = []
        for s, (M, f) in enumerate(steps):
            if f == 0:
                continue
            if id(M) not in planes:
                planes[id(M)] = weight_planes(M[np.ix_(tp.neurons, sp.neurons)].T)
            # the axon maps of step s, the same for every plane and digit
            cmaps = [self._interned(np.full(comp.size, t) if host else np.where(comp % K == s, t, -1))
                     for t in range(n_t)]
            for m, k in planes[id(M)]:
                mmax = int(np.abs(m).max())
                for sign, p in signed_digits(f):
                    exp, _ = synapse_exponent(mmax, k + p)
                    W = (m * sign) << (k + p)
                    if replicate:
                        W = np.repeat(W, Kt, axis=1)
                    syn = _synapse(f"{label}.s{s}p{p}k{k}", [W], [idx], np.zeros(n_t), np.arange(n_t), exp, 32)
                    out.append(_Pending(syn, [(sp, _axon(f"{label}.s{s}t{t}", syn, cmap, atoms, 1), s)
                                              for t, cmap in enumerate(cmaps)]))
        return out

    def _conv_synapses(self, src: Layer, tp: Part, Kt: int, steps: list[tuple[ConvMap, int]],
                       label: str, replicate: bool = False, step_atoms: bool = False) -> list[_Pending]:
        """Conv synapses into target part ``tp``: rows are kernel slices shared by the source
        pixels with the same border pattern; per source step ``s`` the kernel ``M_s`` times
        the factor ``f_s`` (see :meth:`_dense_synapses`).

        With ``step_atoms`` the source steps are atoms too (atom ``channel * K + s``): the
        products ``M_s * f_s`` of all steps are stacked and split into radix-128 planes
        (:func:`weight_planes`, exact), one synapse per plane, so a source pixel needs one
        axon per plane (and decision unit) instead of one per step and power of two of
        ``f_s``: fewer output axons on the source core for more synapse memory (every
        plane holds a row for every step)."""
        cm = steps[0][0]
        # taps used by any step (per-step kernels may round some taps to zero)
        support = np.zeros(cm.kernel.shape, bool)
        for m, f in steps:
            if f:
                support |= m.kernel != 0
        Co, Ci, kh, kw = cm.kernel.shape
        _, H, W = cm.in_shape
        # source rows/cols the map does not read (a pooling's dropped tail) get no synapse
        Hu, Wu = cm.in_used if cm.in_used is not None else (H, W)
        _, Ho, Wo = cm.out_shape
        (sh, sw), (ph, pw) = cm.stride, cm.padding
        q0, q1 = tp.pixels
        f0, f1 = tp.channels
        Cp = f1 - f0
        G = 256 - (Kt - 1)
        # shared rows: one axon per (source pixel, t) reuses the row with base t (memory x1,
        # axons x Kt); replicated rows hold the Kt decision units' entries themselves (memory
        # x Kt, one axon per source pixel): the partitioner picks what fits in fewer cores
        t_in_row = range(Kt) if replicate else (0,)
        n_t = 1 if replicate else Kt
        # taps whose kernel columns are equal in every step share a name: a pooling folded into
        # the kernel repeats each tap over its window, so the source pixels of one window give
        # identical entries and share one axon (their spikes add, as the pooling's sum does)
        kernels = np.stack([m.kernel for m, f in steps if f]) if any(f for _, f in steps) else cm.kernel[None]
        canon: dict[tuple[int, int], tuple[int, int]] = {}
        seen_taps: dict[bytes, tuple[int, int]] = {}
        for dy in range(kh):
            for dx in range(kw):
                canon[(dy, dx)] = seen_taps.setdefault(np.ascontiguousarray(kernels[..., dy, dx]).tobytes(), (dy, dx))
        used_tap = support.any(axis=1).tolist()  # [f][dy][dx]: plain lists, read in the loop below
        patterns: dict[tuple, int] = {}
        pattern_list: list[tuple] = []
        pix_axon: dict[int, tuple[int, int]] = {}  # source pixel -> (weight idx, base of t=0)
        # only source rows that output rows [y_lo, y_hi] of this part read (and, within one
        # output row, only the source columns its pixels read)
        y_lo, y_hi = q0 // Wo, (q1 - 1) // Wo
        if y_lo == y_hi:
            cols = range(max(0, (q0 % Wo) * sw - pw), min(Wu, ((q1 - 1) % Wo) * sw - pw + kw))
        else:
            cols = range(Wu)
        for r in range(max(0, y_lo * sh - ph), min(Hu, y_hi * sh - ph + kh)):
            ys = [y for y in range(max(0, -(-(r + ph - kh + 1) // sh)), min(Ho - 1, (r + ph) // sh) + 1)
                  if 0 <= r + ph - y * sh < kh]
            if not ys:
                continue
            for col in cols:
                entries = []
                for y in ys:
                    dy = r + ph - y * sh
                    for x in range(max(0, -(-(col + pw - kw + 1) // sw)), min(Wo - 1, (col + pw) // sw) + 1):
                        dx = col + pw - x * sw
                        if not 0 <= dx < kw:
                            continue
                        q = y * Wo + x
                        if not q0 <= q < q1:
                            continue
                        for f in range(f0, f1):
                            if used_tap[f][dy][dx]:
                                cy, cx = canon[(dy, dx)]
                                for t in t_in_row:
                                    entries.append((((q - q0) * Cp + f - f0) * Kt + t, f, cy, cx))
                if not entries:
                    continue
                base = min(e[0] for e in entries)
                offset = (base // G) * G
                key = (tuple((e[0] - base, e[1], e[2], e[3]) for e in entries), offset)
                if key not in patterns:
                    patterns[key] = len(pattern_list)
                    pattern_list.append(key)
                pix_axon[r * W + col] = (patterns[key], base - offset)
        if not pix_axon:
            return []
        # one axon group per distinct (row, base): pixels with identical entries share it
        groups: dict[tuple[int, int], int] = {}
        axon_of = np.full(H * W, -1, np.int64)  # source pixel -> its axon group (-1: not read)
        for p in sorted(pix_axon):
            axon_of[p] = groups.setdefault(pix_axon[p], len(groups))
        group_keys = sorted(groups, key=groups.get)
        a2w = np.repeat([g[0] for g in group_keys], n_t)
        bases = np.array([g[1] + t for g in group_keys for t in range(n_t)])
        K = src.K
        host = src.kind == "host"
        # per source part (once): its compartments' pixel, channel, and whether this part reads it
        sources = []
        for sp in src.parts:
            comp = np.arange(sp.n) * K if host else np.arange(sp.n * K)
            neuron = comp // K
            pix = sp.pixels[0] + neuron // sp.n_channels
            group = axon_of[pix]
            if (group >= 0).any():
                ch = sp.channels[0] + neuron % sp.n_channels
                sources.append((sp, comp, group, ch))
        if step_atoms and not host:
            return self._atom_synapses(steps, pattern_list, sources, a2w, bases, n_t, label)
        idxs = [np.broadcast_to(np.array([e[0] + offset for e in entries])[None, :], (Ci, len(entries)))
                for entries, offset in pattern_list]
        taps = [tuple(np.array([e[i] for e in entries], np.int64) for i in (1, 2, 3)) for entries, _ in pattern_list]
        planes: dict[int, list[tuple[list, int, int]]] = {}  # id(kernel map) -> [(rows, shift, max |m|)]
        # a source part's axon groups are per neuron, so every step reads the same groups
        senders = [(sp, comp, group, self._interned(ch), int(np.unique(group[group >= 0]).size),
                    hashlib.blake2b(np.ascontiguousarray(group).data, digest_size=16).digest())
                   for sp, comp, group, ch in sources]
        out = []
        for s, (sm, fs) in enumerate(steps):
            if fs == 0:
                continue
            if id(sm) not in planes:
                planes[id(sm)] = []
                for mk, k in weight_planes(sm.kernel):
                    # a pattern's row: its entries' kernel taps, one line per input channel
                    rows = [np.ascontiguousarray(mk[f, :, dy, dx].T, np.int64) for f, dy, dx in taps]
                    if any(r.any() for r in rows):
                        planes[id(sm)].append((rows, k, int(np.abs(mk).max())))
            # the axon maps of step s are the same for every plane and digit: made once
            maps = [(sp, [self._step_map(group, digest, comp, None if host else s, t, n_t) for t in range(n_t)],
                     ch, n_ax) for sp, comp, group, ch, n_ax, digest in senders]
            for rows, k, mmax in planes[id(sm)]:
                for sign, p in signed_digits(fs):
                    exp, _ = synapse_exponent(mmax, k + p)
                    W = [(r * sign) << (k + p) for r in rows]
                    syn = _synapse(f"{label}.s{s}p{p}k{k}", W, idxs, a2w, bases, exp, 32)
                    out.append(_Pending(syn, [(sp, _axon(f"{label}.s{s}t{t}", syn, cmap, ch, n_ax), s)
                                              for sp, cmaps, ch, n_ax in maps for t, cmap in enumerate(cmaps)]))
        return out

    def _atom_synapses(self, steps: list[tuple[ConvMap, int]], pattern_list: list[tuple], sources: list,
                       a2w: np.ndarray, bases: np.ndarray, n_t: int, label: str) -> list[_Pending]:
        """Conv synapses with the source steps as atoms (see :meth:`_conv_synapses`): atom
        ``channel * K + s`` of a row holds ``M_s * f_s``; one synapse per radix-128 plane of
        those products."""
        planes = self._step_planes(steps)
        if not planes:
            return []
        Ci = steps[0][0].kernel.shape[1]
        K = len(steps)
        idxs = [np.broadcast_to(np.array([e[0] + offset for e in entries])[None, :], (Ci * K, len(entries)))
                for entries, offset in pattern_list]
        senders = []
        for sp, comp, group, ch in sources:
            step = comp % K
            valid = (group >= 0) & np.isin(step, [s for s, (_, f) in enumerate(steps) if f])
            if valid.any():
                senders.append((sp, valid, group, ch * K + step, int(np.unique(group[valid]).size)))
        maps = [(sp, [self._interned(np.where(valid, group * n_t + t, -1)) for t in range(n_t)],
                 self._interned(atom), n_ax) for sp, valid, group, atom, n_ax in senders]
        out = []
        for mk, k in planes:
            # (K, Co, Ci, kh, kw) -> per pattern (Ci * K atoms, entries), atom = ci * K + s
            mt = mk.transpose(1, 3, 4, 2, 0)  # (Co, kh, kw, Ci, K)
            rows = []
            for entries, _ in pattern_list:
                f = np.array([e[1] for e in entries])
                dy = np.array([e[2] for e in entries])
                dx = np.array([e[3] for e in entries])
                rows.append(mt[f, dy, dx].reshape(len(entries), Ci * K).T)
            mmax = int(np.abs(mk).max())
            exp, _ = synapse_exponent(mmax, k)
            syn = _synapse(f"{label}.a{k}", [r << k for r in rows], idxs, a2w, bases, exp, 32)
            out.append(_Pending(syn, [(sp, _axon(f"{label}.a{k}t{t}", syn, cmap, atom, n_ax), 0)
                                      for sp, cmaps, atom, n_ax in maps for t, cmap in enumerate(cmaps)]))
        return out

    def _step_planes(self, steps: list) -> list[tuple[np.ndarray, int]]:
        """Radix-128 planes of the products ``M_s * f_s`` stacked over the source steps
        (cached per map list): what :meth:`_atom_synapses` stores, one synapse per plane."""
        key = tuple((id(m), int(f)) for m, f in steps)
        if key not in self._plane_cache:
            kern = steps[0][0].kernel
            stack = np.stack([m.kernel.astype(np.int64) * int(f) if f else np.zeros(kern.shape, np.int64)
                              for m, f in steps])
            self._plane_cache[key] = (steps, [(m, k) for m, k in weight_planes(stack) if m.any()])
        return self._plane_cache[key][1]

    def _incoming(self, target: Layer, tp: Part, label: str) -> list[_Pending]:
        """Data synapses of one target part (not attached)."""
        node = target.node
        rin = self.rins[node]
        out = []
        fed = 0  # source parts numbered over every source (what a part's feeds select)
        for src_name in rin.maps:
            src = self.source_for(src_name, target.stage - 1, tp)
            lab = f"{label}<{src_name}"
            steps = rin.steps(src_name, src.d)
            if (target.image and src.image
                    and all(isinstance(m, ConvMap) and m.out_shape == target.shape for m, _ in steps)):
                atoms = node in self.step_atoms and steps[0][0].kernel.shape[1] * src.K <= MAX_ATOMS
                out += self._conv_synapses(src, tp, target.K, steps, lab, self.replicate.get(node, False), atoms)
            else:
                dense = self._dense_steps(node, src_name, steps)
                for i, sp in enumerate(src.parts):
                    feed, fed = fed, fed + 1
                    if tp.feeds is not None and not tp.feeds[0] <= feed < tp.feeds[1]:
                        continue
                    out += self._dense_synapses(src, sp, tp, target.K, dense, f"{lab}[{i}]",
                                                self.replicate.get(node, False))
        return out

    def _feeds(self, target: Layer) -> list[tuple[str, Part]]:
        """The source parts a receiver reads, in the order :meth:`_incoming` numbers them."""
        return [(src_name, sp) for src_name in self.rins[target.name].maps
                for sp in self.source_for(src_name, target.stage - 1).parts]

    def _dense_steps(self, target: str, src: str, steps: list) -> list[tuple[np.ndarray, int]]:
        """``steps`` with every map as a dense int64 matrix (one per distinct map, cached)."""
        cache = self._dense_cache.setdefault((target, src), {})
        out = []
        for m, f in steps:
            if id(m) not in cache:
                cache[id(m)] = (m, m.to_dense())  # keep m alive so its id stays unique
            out.append((cache[id(m)][1], f))
        return out

    def _inhibition(self, layer: Layer, tp: Part, label: str) -> list[Synapse]:
        K, c = self.K, tp.n
        if K < 2:
            return []
        out = []
        comp = np.arange(c * K)
        step = comp % K
        neuron = comp // K
        for plane, exp in constant_planes(layer.range.inhibit[:-1]):
            if layer.image:
                # discrete axons (see _relay_synapse): (j, s) -> (j, t > s), weights shared by
                # the neurons of one base group
                G = BASE_LIMIT - K
                group = (neuron * K) // G
                n_groups = int(group.max(initial=0)) + 1
                weights = [np.full((1, K - 1 - s), plane[s]) for s in range(K - 1) for _ in range(n_groups)]
                indices = [(g * G + np.arange(s + 1, K))[None, :] for s in range(K - 1) for g in range(n_groups)]
                sel = step < K - 1
                a2w = (step * n_groups + group)[sel]
                bases = (neuron * K - group * G)[sel]
                syn = _synapse(f"{label}.inh{exp}", weights, indices, a2w, bases, exp, 0)
                cmap = np.where(sel, np.cumsum(sel) - 1, -1)
                ax = self._axon(f"{label}.inh{exp}", syn, cmap, np.zeros(comp.size))
            else:
                weights = [np.full((c, K - 1 - s), plane[s]) for s in range(K - 1)]
                indices = [np.arange(c)[:, None] * K + np.arange(s + 1, K)[None, :] for s in range(K - 1)]
                syn = _synapse(f"{label}.inh{exp}", weights, indices, np.arange(K - 1), np.zeros(K - 1), exp, 32)
                cmap = np.where(step < K - 1, step, -1)
                ax = self._axon(f"{label}.inh{exp}", syn, cmap, neuron)
            tp.block.add_axon(ax)
            out.append(syn)
        return out

    # -- clock ------------------------------------------------------------------------
    def _events(self, layer: Layer, tp: Part) -> dict[int, np.ndarray]:
        """Constant inputs of one part per clock phase: phase -> value per compartment."""
        K, P, Kt = self.K, self.P, layer.K
        ev: dict[int, np.ndarray] = {}

        def add(phase: int, comps: np.ndarray, values: np.ndarray) -> None:
            vec = ev.setdefault(phase % P, np.zeros(tp.n * Kt, np.int64))
            vec[comps] += values

        a = np.arange(tp.n)
        if layer.kind == "relay":
            for s in range(K):
                add(layer.stage * K + s - 1, a * K + s, np.ones(tp.n, np.int64))
                add(layer.stage * K + s, a * K + s, np.full(tp.n, -RELAY_VTH))
            return ev
        rng = layer.range
        base = rng.baseline[tp.neurons]
        if layer.kind == "fs":
            for t in range(K):
                add((layer.stage - 1) * K, a * K + t, base)
                add(layer.stage * K + t - 1, a * K + t, rng.gate[tp.neurons, t])
                add(layer.stage * K + t, a * K + t, np.full(tp.n, -rng.vth))
        else:
            # a part of a fan-in split read-out has its own constants (Lowering._partial_constants)
            add((layer.stage - 1) * K, a, tp.partial.baseline if tp.partial else base)
            add(layer.stage * K, a, np.full(tp.n, -(tp.partial or rng).vth))
        return ev

    def _clock_synapses(self, layer: Layer, tp: Part, label: str) -> list[tuple[Synapse, Axon]]:
        ev = {r: v for r, v in self._events(layer, tp).items() if v.any()}
        phases = sorted(ev)
        by_exp: dict[int, dict[int, np.ndarray]] = {}
        for r in phases:
            for plane, exp in constant_planes(ev[r]):
                by_exp.setdefault(exp, {})[r] = plane
        out = []
        for exp, rows in sorted(by_exp.items()):
            rs = sorted(rows)
            weights, indices = [], []
            for r in rs:
                nz = np.flatnonzero(rows[r])
                weights.append(rows[r][nz][None, :])
                indices.append(nz[None, :])
            syn = _synapse(f"{label}.clk{exp}", weights, indices, np.arange(len(rs)), np.zeros(len(rs)), exp, 0)
            cmap = -np.ones(self.P, np.int64)
            for i, r in enumerate(rs):
                cmap[r] = i
            ax = self._axon(f"{label}.clk{exp}", syn, cmap, np.zeros(self.P))
            out.append((syn, ax))
        return out

    # -- partition --------------------------------------------------------------------
    def _cost(self, layer: Layer, spec: PartSpec, feeds: tuple[int, int] | None = None) -> dict[str, int]:
        """What one core holding ``spec`` of ``layer`` (reading source parts ``feeds``) uses:
        its synapses are built and counted with nengo-loihi's own ``Synapse.bits`` (output
        axons are checked on the whole program, see :func:`fs_hw_loihi.resources.check_program`)."""
        part = Part.of(spec)
        part.feeds = feeds
        part.block = _block("trial", part.n * layer.K, 64)
        # a trial's axon maps are not kept
        kept, self._arrays, kept_maps, self._step_maps = self._arrays, {}, self._step_maps, {}
        try:
            syns = [p.synapse for p in self._incoming(layer, part, "trial")]
            if layer.kind == "fs":
                syns += self._inhibition(layer, part, "trial")
            syns += [s for s, _ in self._clock_synapses(layer, part, "trial")]
        finally:
            self._arrays, self._step_maps = kept, kept_maps
        for s in syns:
            part.block.add_synapse(s)
        _unify_formats(part.block)
        return {
            "compartments": part.n * layer.K,
            "in_axons": sum(s.n_axons for s in syns),
            "synapse_bits": sum(s.bits() for s in syns),
            "formats": _formats(syns),
        }

    def _source_cores(self, layer: Layer, parts: list[PartSpec]) -> float:
        """Cores' worth of output axons a split of ``layer`` costs its image sources: every
        part reading a source pixel costs each of its K compartments one axon per decision
        unit (shared rows) or one (replicated), 2 slots each, of the 4096 a core has."""
        rin = self.rins[layer.name]
        n_t = 1 if self.replicate.get(layer.name) else layer.K
        total = 0.0
        for src_name in rin.maps:
            src = self.layers.get(src_name)
            if src is None or src.kind == "host" or not src.image or not layer.image:
                continue
            steps = rin.steps(src_name, src.d)
            cm = steps[0][0]
            if not isinstance(cm, ConvMap):
                continue
            # axons per reader and decision unit: one per step, or (steps as atoms) one per plane
            per_unit = (len(self._step_planes(steps))
                        if layer.name in self.step_atoms and cm.kernel.shape[1] * src.K <= MAX_ATOMS else src.K)
            _, H, W = cm.in_shape
            Hu, Wu = cm.used
            _, Ho, Wo = cm.out_shape
            (sh, sw), (ph, pw) = cm.stride, cm.padding
            kh, kw = cm.kernel.shape[2:]
            readers = np.zeros((H, W))
            runs: dict[tuple[int, int], int] = {}
            for part in parts:
                runs[part.pixels] = runs.get(part.pixels, 0) + 1  # channel blocks of this run
            for (q0, q1), blocks in runs.items():
                y_lo, y_hi = q0 // Wo, (q1 - 1) // Wo
                r0, r1 = max(0, y_lo * sh - ph), min(Hu, y_hi * sh - ph + kh)
                if y_lo == y_hi:
                    c0, c1 = max(0, (q0 % Wo) * sw - pw), min(Wu, ((q1 - 1) % Wo) * sw - pw + kw)
                else:
                    c0, c1 = 0, Wu
                readers[r0:r1, c0:c1] += blocks
            # the source's copies share its readers out
            per_pixel = float(readers.max(initial=0)) * per_unit * n_t * 2 / max(1, len(src.copies))
            if per_pixel > 0.9 * MAX_OUT_AXONS:
                # even a source core holding one pixel could not send to that many readers
                return INFEASIBLE_CORES
            # every source core holding a pixel (its channel blocks) sends it to every reader
            holders = np.zeros(H * W)
            for sp in src.parts:
                holders[sp.pixels[0]:sp.pixels[1]] += 1
            total += float((readers.reshape(-1) * holders).sum()) * per_unit * n_t * 2 / MAX_OUT_AXONS
        return total

    def _atoms_apply(self, layer: Layer) -> bool:
        """Whether ``layer`` reads a conv of a spiking image source (steps as atoms possible:
        channels x K atoms within :data:`MAX_ATOMS`)."""
        rin = self.rins[layer.name]
        for src_name in rin.maps:
            src = self.layers.get(src_name)
            if src is not None and src.kind != "host" and src.image:
                cm = rin.steps(src_name, src.d)[0][0]
                if isinstance(cm, ConvMap) and cm.kernel.shape[1] * src.K <= MAX_ATOMS:
                    return True
        return False

    def _decision_key(self, layer: Layer, cap: int) -> tuple:
        """Everything an FS layer's split depends on: its own limits and flags, and how its
        sources are split (the cost of a candidate core is its incoming synapses, built
        from the source parts; the output axons it costs them depend on its own parts).
        A rebuild that changes none of these gets the same split without searching."""
        sources = []
        for src_name in sorted(self.rins[layer.name].maps):
            src = self.layers[src_name]
            sources.append((src_name, len(src.copies),
                            tuple((p.pixels, p.channels, p.n, int(p.neurons[0]) if p.n else -1) for p in src.parts)))
        return (layer.name, cap, self.pixel_caps.get(layer.name), layer.name in self.force_atoms,
                layer.name in self.prefer_replicated, tuple(sources))

    def _partition(self, layer: Layer) -> list[Part]:
        cap = MAX_COMPARTMENTS // layer.K
        if layer.name in self.per_core_override:
            cap = min(cap, self.per_core_override[layer.name])
        if layer.kind == "readout":
            return self._partition_readout(layer, cap)
        key = self._decision_key(layer, cap)
        if key in self.decisions:  # the same inputs as in an earlier build: the same split
            mode, specs, layer.split_reason = self.decisions[key]
            self.replicate[layer.name] = mode == "replicated"
            (self.step_atoms.add if mode == ATOMS else self.step_atoms.discard)(layer.name)
            self.reused.append(layer.name)
            return [Part.of(spec) for spec in specs]
        parts, mode = self._search_split(layer, cap)
        self.decisions[key] = (mode, parts, layer.split_reason)
        return [Part.of(spec) for spec in parts]

    def _search_split(self, layer: Layer, cap: int) -> tuple[list[PartSpec], str]:
        """The split of an FS layer with the fewest cores over the synapse-row modes that
        apply (below), and the mode; sets ``layer.split_reason``."""
        atoms_ok = layer.image and layer.K > 1 and self._atoms_apply(layer)

        def split(mode: str):
            self.replicate[layer.name] = mode == "replicated"
            (self.step_atoms.add if mode == ATOMS else self.step_atoms.discard)(layer.name)
            return partition_layer(layer.name, layer.shape, lambda spec: self._cost(layer, spec), LOIHI_LIMITS,
                                   max_neurons=max(1, cap), max_pixels=self.pixel_caps.get(layer.name),
                                   unit_name="compartments", units_per_neuron=layer.K,
                                   extra_cores=lambda parts: self._source_cores(layer, parts))

        # a tie keeps the first: images prefer replicated rows (a conv source pixel fans out
        # to many parts, and replicated rows need K times fewer output axons there), vectors
        # prefer shared rows (K times less memory)
        if layer.K == 1:
            modes = ("shared",)
        elif layer.image:
            modes = ("replicated", "shared")
        else:
            modes = ("shared", "replicated")
        if self.cfg.synapse_rows == "atoms" or (layer.name in self.force_atoms and atoms_ok):
            modes = (ATOMS,) if atoms_ok else ("shared",)
        elif self.cfg.synapse_rows != "auto":
            modes = tuple(m for m in modes if m == self.cfg.synapse_rows) or ("shared",)
        splits, refusal = {}, None
        for mode in modes:
            try:
                splits[mode] = split(mode)
            except ResourceError as exc:
                refusal = refusal or exc
        if not splits:
            raise refusal
        mode = min(splits, key=lambda m: len(splits[m].parts))
        # its sources ran out of output axons: replicated rows if they cost at most twice the cores
        if (layer.name in self.prefer_replicated and "replicated" in splits
                and ("shared" not in splits or len(splits["replicated"].parts) <= 2 * len(splits["shared"].parts))):
            mode = "replicated"
        chosen = splits[mode]
        self.replicate[layer.name] = mode == "replicated"
        (self.step_atoms.add if mode == ATOMS else self.step_atoms.discard)(layer.name)
        chosen_extra = self._source_cores(layer, chosen.parts)
        if (atoms_ok and self.cfg.synapse_rows == "auto"
                and (layer.name in self.prefer_replicated or chosen_extra >= INFEASIBLE_CORES)):
            # no source could send to the readers of this split, or a source ran out of output
            # axons: the source steps as atoms (K / planes times fewer axons a reader), if that
            # costs fewer cores counting the sources' output axons, and (when the split was
            # feasible) no more cores for the layer itself (its own readers' input axons grow
            # with its parts)
            try:
                atoms = split(ATOMS)
                atoms_extra = self._source_cores(layer, atoms.parts)
            except ResourceError:
                atoms, atoms_extra = None, INFEASIBLE_CORES
            if (atoms is not None and len(atoms.parts) + atoms_extra < len(chosen.parts) + chosen_extra
                    and (chosen_extra >= INFEASIBLE_CORES or len(atoms.parts) <= len(chosen.parts))):
                chosen, mode = atoms, ATOMS
        self.replicate[layer.name] = mode == "replicated"
        (self.step_atoms.add if mode == ATOMS else self.step_atoms.discard)(layer.name)
        layer.split_reason = chosen.why + (f"; synapse rows {mode}" if layer.K > 1 else "")
        return chosen.parts, mode

    def _build_cores(self, layer: Layer) -> None:
        """The blocks of a receiver's parts, their data synapses (attached to the sources'
        cores) and, for FS layers, the inhibition inside each neuron."""
        for i, tp in enumerate(layer.parts):
            label = f"{layer.name}[{i}]"
            tp.block = _block(label, tp.n * layer.K, (tp.partial or layer.range).vth)
            for pend in self._incoming(layer, tp, label):
                tp.block.add_synapse(pend.synapse)
                for sp, ax, s in pend.axons:
                    self._attach(self._layer_of_part(sp), sp, ax, s, stage=layer.stage - 1)
            if layer.kind == "fs":
                for syn in self._inhibition(layer, tp, label):
                    tp.block.add_synapse(syn)

    def _partition_readout(self, layer: Layer, cap: int) -> list[Part]:
        """A read-out's split: by neurons, and when one neuron's fan-in is too much for a
        core, by runs of its source parts too (:func:`fs_hw.lower.partition.fan_in_groups`).
        Each such core accumulates a partial sum; the host adds them (integers it reads
        anyway, so nothing is rounded)."""
        def split(feeds):
            return partition_layer(layer.name, layer.shape, lambda spec: self._cost(layer, spec, feeds), LOIHI_LIMITS,
                                   max_neurons=max(1, cap), unit_name="compartments", units_per_neuron=1)

        try:
            whole = split(None)
        except ResourceError:
            whole = None
        if whole is not None:
            layer.split_reason = whole.why
            return [Part.of(spec) for spec in whole.parts]
        feeds = self._feeds(layer)
        one = layer_parts(layer.shape, neurons_per_part=1)[0]
        groups = fan_in_groups(layer.name, len(feeds), lambda run: self._cost(layer, one, run), LOIHI_LIMITS)
        groups = self._halved_until_constants_fit(layer, feeds, groups)
        parts = []
        for run in groups:
            chosen = split(run)
            for spec in chosen.parts:
                part = Part.of(spec)
                part.feeds = run
                part.partial = self._partial_constants(layer, part, feeds[run[0]:run[1]], with_bias=run[0] == 0)
                parts.append(part)
        layer.split_reason = (f"fan-in split: {len(groups)} runs of at most {max(b - a for a, b in groups)} of "
                              f"{len(feeds)} source cores, the host adds the partial accumulators; {chosen.why}")
        return parts

    def _halved_until_constants_fit(self, layer: Layer, feeds: list[tuple[str, Part]],
                                    groups: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """``groups`` (runs of ``feeds``), each halved until its worst-case partial sum fits
        the constants that set and clear its accumulator (one clock synapse each)."""
        every_neuron = Part.of(layer_parts(layer.shape)[0])  # constants are per neuron: all of them
        fitted: list[tuple[int, int]] = []
        todo = list(groups)
        while todo:
            run = todo.pop(0)
            try:
                self._partial_constants(layer, every_neuron, feeds[run[0]:run[1]], with_bias=run[0] == 0)
                fitted.append(run)
            except ResourceError:
                if run[1] - run[0] == 1:
                    raise
                mid = (run[0] + run[1]) // 2
                todo[:0] = [(run[0], mid), (mid, run[1])]
        return fitted

    def _partial_constants(self, layer: Layer, tp: Part, feeds: list[tuple[str, Part]],
                           with_bias: bool) -> PartialReadout:
        """Baseline, offset and threshold of a partial read-out accumulator from the worst
        case of its own sources (as :func:`fs_hw.lower.ranges.worst_case` does for the whole
        sum): every partial sum over any spike pattern stays in ``[0, vth)``."""
        rin = self.rins[layer.name]
        bias = rin.bias.astype(np.int64)[tp.neurons] if with_bias else np.zeros(tp.n, np.int64)
        low, high = bias.copy(), bias.copy()
        per_step = np.zeros((self.K, tp.n), np.int64)  # largest |input| in one step
        for src_name, sp in feeds:
            src = self.source_for(src_name, layer.stage - 1)
            for s, (M, f) in enumerate(self._dense_steps(layer.name, src_name, rin.steps(src_name, src.d))):
                sub = M[np.ix_(tp.neurons, sp.neurons)].astype(np.int64)
                pos, neg = np.maximum(sub, 0).sum(axis=1), np.minimum(sub, 0).sum(axis=1)
                low += f * neg if f > 0 else f * pos
                high += f * pos if f > 0 else f * neg
                per_step[s] += abs(f) * (pos - neg)
        offset = np.maximum(0, -low)
        vth = vth_round_up(int((offset + np.maximum(high, 0)).max(initial=0)) + 1)
        q0 = int(np.maximum(offset + np.abs(bias) + per_step.max(axis=0), vth).max(initial=0))
        constant = int(max(vth, np.abs(offset + bias).max(initial=0)))  # what the clock synapses add
        if q0 >= Q_LIMIT or constant > CONSTANT_LIMIT:
            raise ResourceError(f"layer {layer.name!r}: a partial read-out accumulator over {len(feeds)} source "
                                f"core(s) needs threshold {vth} and a step input up to {q0} (limits "
                                f"{CONSTANT_LIMIT} for a constant, {Q_LIMIT - 1} for a step's input)")
        return PartialReadout(baseline=offset + bias, offset=offset, vth=vth)

    # -- main -------------------------------------------------------------------------
    def build(self) -> Program:
        net, K = self.net, self.K
        model = Model(dt=0.001, label=str(net.metadata.get("name", "fs-hw")))
        stages = net.stages
        inp = net.input
        code = net.code_of(inp)
        host = Layer(inp.name, "host", inp.shape, K, 0, d=code.d.astype(np.int64))
        # host chunks: whole pixels (all channels), at most MAX_ATOMS neurons each
        if host.image:
            specs = layer_parts(inp.shape, pixels_per_part=max(1, MAX_ATOMS // inp.shape[0]))
        else:
            specs = layer_parts(inp.shape, neurons_per_part=MAX_ATOMS)
        host.parts = [Part.of(spec) for spec in specs]
        self.layers[inp.name] = host
        # clocks: one host spike starts every ring; more rings when one core's output axons
        # cannot reach every part
        start = SpikeInput(1, label="clock.start")
        clocks: list[list] = []  # [block, output axon slots used]

        def new_clock():
            label = f"clock{len(clocks)}" if clocks else "clock"
            clock = _block(label, self.P, 64)
            ring_w = [np.full((self.P, 1), RING_WEIGHT)]
            ring_i = [((np.arange(self.P) + 1) % self.P)[:, None]]
            ring = _synapse(f"{label}.ring", ring_w, ring_i, [0], [0], 0, 32)
            clock.add_synapse(ring)
            ring_axon = self._axon(f"{label}.ring", ring, np.zeros(self.P), np.arange(self.P))
            clock.add_axon(ring_axon)
            start_syn = _synapse(f"{label}.start", [np.array([[RING_WEIGHT]])], [np.array([[0]])], [0], [0], 0, 0)
            clock.add_synapse(start_syn)
            start.add_axon(self._axon(f"{label}.start", start_syn, np.zeros(1), np.zeros(1)))
            clocks.append([clock, ring_axon.axon_slots()])

        new_clock()

        relays: dict[str, list[Relay]] = {}
        for relay in relay_plan(net, host_delays=True):  # the host re-sends its input instead
            relays.setdefault(relay.source, []).append(relay)
        receivers = [n for n in net.order if isinstance(n, (FSActivation, Readout))]
        for number, node in enumerate(receivers, 1):
            started = time.perf_counter()
            kind = "fs" if isinstance(node, FSActivation) else "readout"
            layer = Layer(
                node.name, kind, net.shapes[node.name], K if kind == "fs" else 1, stages[node.name],
                d=net.code_of(node).d.astype(np.int64) if kind == "fs" else None,
                range=self.ranges[node.name],
            )
            layer.parts = self._partition(layer)
            self.layers[node.name] = layer
            self._build_cores(layer)
            if kind == "fs":
                layer.copies = [layer]
                for r in range(1, self.n_copies.get(node.name, 1)):
                    copy = Layer(f"{node.name}#copy{r}", kind, layer.shape, layer.K, layer.stage, d=layer.d,
                                 range=layer.range, copy_of=node.name,
                                 split_reason=f"copy {r} of {node.name!r}, serving its share of the readers")
                    copy.parts = [Part(p.neurons, pixels=p.pixels, channels=p.channels) for p in layer.parts]
                    self.layers[copy.name] = copy
                    self._build_cores(copy)
                    layer.copies.append(copy)
            for relay in relays.get(node.name, ()):  # after the layer's cores exist
                self._make_relay(relay)
            copies = f" and {len(layer.copies) - 1} copies" if len(layer.copies) > 1 else ""
            reused = ", split of the last build" if node.name in self.reused else ""
            progress.info("lowering layer %d of %d, %r: %d core(s)%s (%.0f s%s)", number, len(receivers), node.name,
                          len(layer.parts), copies, time.perf_counter() - started, reused)
        # clock synapses for every receiving part (relays included)
        for layer in self.layers.values():
            if layer.kind == "host":
                continue
            for i, tp in enumerate(layer.parts):
                pairs = self._clock_synapses(layer, tp, f"{layer.name}[{i}]")
                slots = sum(ax.axon_slots() for _, ax in pairs)
                if clocks[-1][1] + slots > MAX_OUT_AXONS:
                    new_clock()
                for syn, ax in pairs:
                    tp.block.add_synapse(syn)
                    clocks[-1][0].add_axon(ax)
                clocks[-1][1] += slots
        # assemble the model
        blocks = [c[0] for c in clocks]
        for layer in self.layers.values():
            for tp in layer.parts:
                if layer.kind == "host":
                    continue
                _unify_formats(tp.block)
                blocks.append(tp.block)
        for b in blocks:
            model.add_block(b)
        model.add_input(start)
        for tp in host.parts:
            # an input step whose spikes reach no synapse (d(s) = 0) is left out: the
            # hardware builder refuses a SpikeInput without axons
            tp.inputs = {key: si for key, si in tp.inputs.items() if si.axons}
            for si in tp.inputs.values():
                model.add_input(si)
        for layer in self.layers.values():
            if layer.kind in ("fs", "readout"):
                for tp in layer.parts:
                    tp.probe = LoihiProbe(target=tp.block, key="spiked" if layer.kind == "fs" else "voltage")
                    model.add_probe(tp.probe)
        program = Program(
            network=net, model=model, K=K, period=self.P, readout_stage=stages[net.readout.name],
            layers=self.layers, clock_start=start, resources={}, config=self.cfg, clock_cores=len(clocks),
            reused_splits=list(self.reused),
        )
        program._maps = self.rins  # what resources.program_maps would compute again
        return program

    def _axon(self, label: str, target: Synapse, comp_map: np.ndarray, atoms: np.ndarray,
              n: int | None = None) -> Axon:
        """:func:`_axon` with its two per-compartment arrays interned: equal maps (a source
        part read by the channel blocks of one pixel range, the decision units' atoms) are
        one read-only int32 array, not a copy per axon. A K = 16 conv core holds hundreds
        of axons, and these arrays were most of the lowering's memory."""
        return _axon(label, target, self._interned(comp_map), self._interned(atoms), n)

    def _step_map(self, group: np.ndarray, digest: bytes, comp: np.ndarray, s: int | None, t: int,
                  n_t: int) -> np.ndarray:
        """The axon map of a conv source part for source step ``s`` (``None``: a host part,
        which sends every step) and decision unit ``t``: axon ``group * n_t + t`` for the
        compartments of step ``s`` that the target reads, -1 for the rest. Looked up by the
        groups' digest first: a target part's planes, digits and channel blocks ask for the
        same maps many times, and hashing each new array was a fifth of the lowering."""
        key = (digest, group.size, s, t, n_t)  # comp follows from group.size and whether s is None
        found = self._step_maps.get(key)
        if found is None:
            valid = group >= 0
            if s is not None:
                valid &= comp % self.K == s
            found = np.where(valid, group * n_t + t, -1).astype(np.int32)
            found.flags.writeable = False  # shared by every axon that asks for it
            self._step_maps[key] = found
        return found

    def _interned(self, a: np.ndarray) -> np.ndarray:
        a = np.ascontiguousarray(a, np.int32)
        key = (a.shape, hashlib.blake2b(a.data, digest_size=16).digest())
        for kept in self._arrays.get(key, ()):
            if np.array_equal(kept, a):  # the digest picks the bucket, equality decides
                return kept
        a.flags.writeable = False  # shared: nothing may change it in place
        self._arrays.setdefault(key, []).append(a)
        return a

    def _layer_of_part(self, part: Part) -> Layer:
        if len(self._part_layer) != sum(len(layer.parts) for layer in self.layers.values()):
            self._part_layer = {id(p): layer for layer in self.layers.values() for p in layer.parts}
        return self._part_layer[id(part)]


def _copy_index(reader: Part, n_copies: int) -> int:
    """Which copy of a source serves reader part ``reader``: neighbouring pixel runs and
    channel blocks alternate, so the readers of one source pixel are shared out evenly."""
    if reader.channels is not None and reader.pixels is not None:
        block = reader.channels[0] // max(1, reader.n_channels)
        run = reader.pixels[0] // max(1, reader.pixels[1] - reader.pixels[0])
        return (block + run) % n_copies
    return (int(reader.neurons[0]) // max(1, reader.n)) % n_copies


def lower_network(network: Network, config: LoihiConfig, observed: dict | None = None) -> Program:
    """Build, partition and check the program; refuse (ResourceError) if it does not fit.

    A source layer whose cores need too many output axons first has the layers reading
    it switched to replicated synapse rows (K times fewer output axons per source
    compartment); if that is not enough it is re-partitioned with fewer neurons a core.
    When even one pixel a core sends to too many reader cores, its readers get the source
    steps as atoms, and then the layer is built as copies that share the readers out (at
    most ``MAX_COPIES``). Each of these decisions costs a rebuild of the whole program.
    """
    from fs_hw_loihi.resources import check_program

    overrides: dict[str, int] = {}
    # readers of a source short of output axons get replicated rows if those cost at most
    # twice the cores of shared ones (forcing them further does not help: a memory-bound
    # reader then needs K times more cores, each read by the source); then sources shrink
    replicated: set[str] = set()
    readers = {name: set(spiking_sources(network, name))
               for name in (n.name for n in network.order if isinstance(n, (FSActivation, Readout)))}
    pixel_caps: dict[str, int] = {}
    copies: dict[str, int] = {}
    atoms: set[str] = set()
    decisions: dict = {}  # layers whose inputs did not change keep their split (Lowering._decision_key)
    analysis = (layer_ranges(network, observed), receiver_inputs(network))
    for attempt in range(1, 13):
        program = Lowering(network, config, overrides, observed, replicated, pixel_caps, copies, atoms,
                           decisions, analysis).build()
        shrink = check_program(program)
        if not shrink:
            res = program.resources
            progress.info("build %d fits: %d cores on %d chip(s), %d axon objects (nengo-loihi's emulator visits "
                          "each one every step)", attempt, res.cores, res.chips, res.extra["axon_objects"])
            return program
        progress.info("build %d: layers %s need another split (output axons or cores); building again",
                      attempt, ", ".join(sorted(shrink)))
        for name, (n, refusal) in program.copy_requests.items():
            consumers = {r for r, srcs in readers.items() if name in srcs}
            if config.synapse_rows == "auto" and consumers - atoms:
                # first the readers with the source steps as atoms: a reader core then costs a
                # source pixel 2 x planes x K slots instead of 2 x K x K x (planes, digits)
                atoms |= consumers
                continue
            if n > MAX_COPIES:
                raise ResourceError(refusal)
            copies[name] = max(n, copies.get(name, 1))
        for name, per_core in shrink.items():
            consumers = {r for r, srcs in readers.items() if name in srcs} - replicated
            if name in program.out_axon_layers and consumers and config.synapse_rows == "auto":
                replicated |= consumers
                continue
            overrides[name] = min(per_core, overrides.get(name, per_core))
            if name in program.pixel_caps:
                pixel_caps[name] = min(program.pixel_caps[name], pixel_caps.get(name, program.pixel_caps[name]))
    raise ResourceError(f"could not partition layers {sorted(overrides)} within the out-axon limit")
