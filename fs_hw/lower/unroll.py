r"""The time-unrolled FS network as cells and delayed synapses, for chips with delays.

A chip whose neurons have one fixed threshold and forget their state between decisions
(SpiNNaker's ``IF_curr_delta`` with a membrane time constant far below a tick,
BrainScaleS-2's circuits) runs an FS neuron as **K cells**, one per step ``t``:

* cell ``t`` of neuron ``j`` has threshold ``T(t)`` and receives everything it needs in
  the one tick it decides: the whole input ``x_j`` (bias included) and the resets
  ``-h(s)`` of the neuron's earlier cells ``s < t``. So it fires iff
  :math:`x_j - \sum_{s<t} h(s) z_j(s) \ge T(t)`, which is the FS step of
  :func:`fs_hw.dynamics.simulate_fs` (rule ``>=``);
* synaptic **delays** line the inputs up: a spiking node at stage ``a`` decides cell
  ``s`` at tick ``t0 + (m + a) P + s`` for sample ``m`` (``P`` ticks between samples),
  so a synapse from source cell ``s`` (stage ``a``) to receiver cell ``t`` (stage ``b``)
  has delay ``(b - a) P + t - s`` (>= 1); a reset synapse inside a neuron has delay
  ``t - s``; skip connections are just longer delays (no relays);
* biases come from one **bias source** cell that spikes at tick ``t0 - 1 + m P``; a cell
  whose threshold is <= 0 would fire at rest, so it rests below 0 and the bias source
  *gates* it up in its decision tick (:attr:`CellLayer.gate`);
* the **read-out** is one accumulator cell per output that never fires: its inputs land
  in tick ``t0 + (m + b) P`` and its membrane there is the read-out value;
* the input code runs on the host: its spikes are sent at the ticks above.

Weights are the integers of a quantized network (``fs_hw.lower.maps.receiver_inputs``
composes each receiver's input per source step, ``step_weight`` included). Cell ``t`` of
neuron ``j`` has flat index ``j * K + t``; a synapse is counted once per (source cell,
receiver cell) pair, so a weight costs ``K * K`` synapses (``K`` for the read-out).
This module has no SDK import; :mod:`fs_hw_spinnaker` builds PyNN populations from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fs_hw.errors import UnsupportedError
from fs_hw.ir import FSActivation, Input, Network, Readout
from fs_hw.lower.maps import ReceiverInput, receiver_inputs

#: name of the bias source in :attr:`UnrolledNetwork.layers`
BIAS_SOURCE = "__bias__"
#: the first tick at which an input cell may spike (the bias source spikes one tick
#: earlier; simulators refuse spikes at or before their minimum delay of one tick)
FIRST_TICK = 3


@dataclass(frozen=True)
class CellLayer:
    """The cells of one IR node: ``kind`` is ``"input"`` (host spike sources), ``"fs"``,
    ``"readout"`` (accumulators) or ``"bias"`` (one source cell)."""

    name: str
    kind: str
    shape: tuple[int, ...]
    K: int
    stage: int
    #: per step t, the integer threshold of cell t (fs); None for the others
    threshold: np.ndarray | None = None
    #: per step t, the gate of cell t (fs): 0, or G > -T(t) when T(t) <= 0. Such a cell
    #: rests at -G (so it cannot fire at rest) and the bias source sends it +G in its
    #: decision tick, so its membrane there is its input, as for every other cell
    gate: np.ndarray | None = None

    @property
    def neurons(self) -> int:
        return int(np.prod(self.shape))

    @property
    def cells_per_neuron(self) -> int:
        return self.K if self.kind in ("input", "fs") else 1

    @property
    def cells(self) -> int:
        return self.neurons * self.cells_per_neuron


@dataclass
class SynapseGroup:
    """Synapses from ``pre`` to ``post`` cells: integer weights, delays in ticks (>= 1).

    ``kind``: ``"data"`` (between layers), ``"reset"`` (inside an FS neuron), ``"bias"``
    or ``"gate"`` (see :attr:`CellLayer.gate`). Positive weights excite, negative ones inhibit.
    """

    pre: str
    post: str
    kind: str
    pre_idx: np.ndarray
    post_idx: np.ndarray
    weight: np.ndarray
    delay: np.ndarray

    def __len__(self) -> int:
        return len(self.weight)


@dataclass
class UnrolledNetwork:
    """Cells and delayed synapses of an integer network (see the module docstring)."""

    K: int
    period: int  # ticks between samples
    layers: dict[str, CellLayer]
    groups: list[SynapseGroup]
    readout: str
    input: str
    #: per receiver, the sources it listens to (IR names)
    sources: dict[str, tuple[str, ...]] = field(default_factory=dict)
    #: per receiver, its weights: (source neuron, receiver neuron) pairs with a non-zero
    #: term at some step (each costs one synapse per source cell and receiver cell)
    weights: dict[str, int] = field(default_factory=dict)

    def decision_tick(self, layer: str, step: int, sample: int) -> int:
        """The tick at which cell ``step`` of ``layer`` decides for ``sample``."""
        return FIRST_TICK + (sample + self.layers[layer].stage) * self.period + step

    def readout_tick(self, sample: int) -> int:
        return self.decision_tick(self.readout, 0, sample)

    def ticks(self, samples: int) -> int:
        """Ticks to simulate so that ``samples`` pipelined samples are read out."""
        return self.readout_tick(samples - 1) + 1

    @property
    def max_delay(self) -> int:
        return max((int(g.delay.max()) for g in self.groups if len(g)), default=1)

    def synapse_counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for g in self.groups:
            out[g.kind] = out.get(g.kind, 0) + len(g)
        return out

    def input_spike_ticks(self, spikes: np.ndarray, first_sample: int = 0) -> list[np.ndarray]:
        """Per input cell (flat ``neuron * K + t``), the ticks it spikes at, from the host's
        spike trains ``(N, K, *shape)`` of the input code."""
        z = np.asarray(spikes).reshape(len(spikes), self.K, -1)  # (N, K, n)
        n = z.shape[2]
        per_cell: list[list[int]] = [[] for _ in range(n * self.K)]
        m, t, j = np.nonzero(z)
        ticks = FIRST_TICK + (m + first_sample) * self.period + t
        for cell, tick in zip(j * self.K + t, ticks):
            per_cell[int(cell)].append(int(tick))
        return [np.asarray(sorted(c), dtype=np.int64) for c in per_cell]

    def bias_ticks(self, samples: int) -> np.ndarray:
        return FIRST_TICK - 1 + np.arange(samples, dtype=np.int64) * self.period


def _data_groups(rin: ReceiverInput, src: CellLayer, dst: CellLayer, d: np.ndarray,
                 period: int) -> tuple[list[SynapseGroup], int]:
    """Synapses from every cell s of ``src`` to every cell t of ``dst`` (one group per step
    pair would be K^2 groups: they are concatenated), and the number of weights they carry
    (source neuron, receiver neuron pairs with a non-zero term at some step)."""
    K_src = src.K
    pre_all, post_all, w_all, delay_all = [], [], [], []
    pairs = []
    span = dst.stage - src.stage
    t_cells = dst.cells_per_neuron
    for s, (m, factor) in enumerate(rin.steps(src.name, d)):
        out_idx, in_idx, vals = m.triplets()
        vals = vals * int(factor)
        keep = vals != 0
        out_idx, in_idx, vals = out_idx[keep], in_idx[keep], vals[keep]
        if not len(vals):
            continue
        pairs.append(in_idx * dst.neurons + out_idx)
        for t in range(t_cells):
            pre_all.append(in_idx * K_src + s)
            post_all.append(out_idx * t_cells + t)
            w_all.append(vals)
            delay_all.append(np.full(len(vals), span * period + t - s, np.int64))
    if not pre_all:
        return [], 0
    weights = len(np.unique(np.concatenate(pairs))) if len(pairs) > 1 else len(pairs[0])
    return [SynapseGroup(src.name, dst.name, "data", np.concatenate(pre_all), np.concatenate(post_all),
                         np.concatenate(w_all).astype(np.int64), np.concatenate(delay_all))], weights


def _reset_group(layer: CellLayer, h: np.ndarray) -> SynapseGroup | None:
    K, n = layer.K, layer.neurons
    pre, post, w, delay = [], [], [], []
    base = np.arange(n, dtype=np.int64) * K
    for s in range(K):
        if h[s] == 0:
            continue
        for t in range(s + 1, K):
            pre.append(base + s)
            post.append(base + t)
            w.append(np.full(n, -int(h[s]), np.int64))
            delay.append(np.full(n, t - s, np.int64))
    if not pre:
        return None
    return SynapseGroup(layer.name, layer.name, "reset", np.concatenate(pre), np.concatenate(post),
                        np.concatenate(w), np.concatenate(delay))


def _bias_group(layer: CellLayer, bias: np.ndarray, period: int) -> SynapseGroup | None:
    nz = np.flatnonzero(bias)
    if not len(nz):
        return None
    t_cells = layer.cells_per_neuron
    post = (nz[:, None] * t_cells + np.arange(t_cells)[None, :]).reshape(-1)
    w = np.repeat(bias[nz].astype(np.int64), t_cells)
    delay = np.tile(layer.stage * period + np.arange(t_cells) + 1, len(nz)).astype(np.int64)
    return SynapseGroup(BIAS_SOURCE, layer.name, "bias", np.zeros(len(post), np.int64), post.astype(np.int64),
                        w, delay)


def _gate_group(layer: CellLayer, period: int) -> SynapseGroup | None:
    steps = np.flatnonzero(layer.gate)
    if not len(steps):
        return None
    j = np.arange(layer.neurons, dtype=np.int64)
    post = (j[:, None] * layer.K + steps[None, :]).reshape(-1)
    w = np.tile(layer.gate[steps], layer.neurons).astype(np.int64)
    delay = np.tile(layer.stage * period + steps + 1, layer.neurons).astype(np.int64)
    return SynapseGroup(BIAS_SOURCE, layer.name, "gate", np.zeros(len(post), np.int64), post, w, delay)


def gates(threshold: np.ndarray, grid: int = 1) -> np.ndarray:
    """Per step, the smallest multiple of ``grid`` above ``-T(t)`` for ``T(t) <= 0``, else 0."""
    T = np.asarray(threshold, np.int64)
    g = -((T - 1) // grid) * grid  # ceil((1 - T) / grid) * grid
    return np.where(T <= 0, g, 0).astype(np.int64)


def unroll(network: Network, period: int | None = None, gate_grid: dict[str, int] | None = None) -> UnrolledNetwork:
    """Cells and delayed synapses of the integer ``network`` (codes with rule ``>=``).

    ``period`` (ticks between samples) defaults to ``max(K, 2)``: a cell decides once per
    sample, and one tick of refractoriness after a spike must end before its next one.
    ``gate_grid``: per FS layer, the grid its excitatory weights (and so its gates) lie on.
    """
    gate_grid = gate_grid or {}
    K = network.K
    period = max(K, 2) if period is None else int(period)
    if period < K:
        raise ValueError(f"period {period} is shorter than K={K}: cells would decide twice per sample")
    stages = network.stages
    layers: dict[str, CellLayer] = {}
    for node in network.order:
        if isinstance(node, Input):
            layers[node.name] = CellLayer(node.name, "input", network.shapes[node.name], K, 0)
        elif isinstance(node, FSActivation):
            code = network.code_of(node)
            if code.rule != ">=":
                raise UnsupportedError(f"{node.label}: code {code.name!r} fires on {code.rule!r}; the unrolled "
                                       "cells fire on '>=' (quantize the network first)")
            T = np.asarray(code.T, np.int64)
            layers[node.name] = CellLayer(node.name, "fs", network.shapes[node.name], code.K, stages[node.name],
                                          T, gates(T, gate_grid.get(node.name, 1)))
        elif isinstance(node, Readout):
            layers[node.name] = CellLayer(node.name, "readout", network.shapes[node.name], K, stages[node.name])
    layers[BIAS_SOURCE] = CellLayer(BIAS_SOURCE, "bias", (1,), K, 0)
    rins = receiver_inputs(network)
    groups: list[SynapseGroup] = []
    sources: dict[str, tuple[str, ...]] = {}
    weights: dict[str, int] = {}
    for name, rin in rins.items():
        dst = layers[name]
        sources[name] = tuple(rin.maps)
        for src_name in rin.maps:
            src = layers[src_name]
            d = np.asarray(network.code_of(network.by_name[src_name]).d, np.int64)
            data, n_weights = _data_groups(rin, src, dst, d, period)
            groups.extend(data)
            weights[name] = weights.get(name, 0) + n_weights
        if dst.kind == "fs":
            reset = _reset_group(dst, np.asarray(network.code_of(network.by_name[name]).h, np.int64))
            if reset is not None:
                groups.append(reset)
        bias = _bias_group(dst, rin.bias, period)
        if bias is not None:
            groups.append(bias)
        gate = _gate_group(dst, period) if dst.kind == "fs" else None
        if gate is not None:
            groups.append(gate)
    return UnrolledNetwork(K, period, layers, groups, network.readout.name, network.input.name, sources, weights)


def _step_of(layer: CellLayer, cell: np.ndarray) -> np.ndarray:
    return cell % layer.cells_per_neuron if layer.kind in ("input", "fs") else np.zeros_like(cell)


def check_alignment(unrolled: UnrolledNetwork) -> None:
    """Every synapse delivers in the one tick its receiver cell decides (for every sample:
    the schedule is periodic), or :class:`ValueError` names the group and the first bad synapse."""
    u = unrolled
    for g in u.groups:
        pre, post = u.layers[g.pre], u.layers[g.post]
        if pre.kind == "bias":
            sent = np.full(len(g), FIRST_TICK - 1, np.int64)
        else:
            sent = FIRST_TICK + pre.stage * u.period + _step_of(pre, g.pre_idx)
        due = FIRST_TICK + post.stage * u.period + _step_of(post, g.post_idx)
        bad = np.flatnonzero(sent + g.delay != due)
        if len(bad) or (len(g) and int(g.delay.min()) < 1):
            i = int(bad[0]) if len(bad) else int(np.argmin(g.delay))
            raise ValueError(
                f"{g.kind} synapse {g.pre}[{g.pre_idx[i]}] -> {g.post}[{g.post_idx[i]}]: delay {g.delay[i]} "
                f"delivers at tick {sent[i] + g.delay[i]}, the cell decides at {due[i]}"
            )


def simulate(unrolled: UnrolledNetwork, input_spikes: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Run the cells on a batch of host input spikes ``(N, K, *input shape)``: per FS
    layer its spikes ``(N, K, *shape)`` and the read-out membranes ``(N, *shape)``.

    The cell semantics only (fire iff the input summed in the decision tick >= the
    threshold); run after :func:`check_alignment`, which proves the ticks line up, so
    every layer can be evaluated in stage order and, inside a layer, in step order.
    """
    u = unrolled
    N = len(input_spikes)
    z: dict[str, np.ndarray] = {u.input: np.asarray(input_spikes, np.int64).reshape(N, u.K, -1)}
    z[BIAS_SOURCE] = np.ones((N, 1, 1), np.int64)
    by_post: dict[str, list[SynapseGroup]] = {}
    for g in u.groups:
        by_post.setdefault(g.post, []).append(g)
    order = sorted((ly for ly in u.layers.values() if ly.kind in ("fs", "readout")), key=lambda ly: ly.stage)
    readout = np.zeros(0)

    def flat(name: str) -> np.ndarray:  # (N, cells) in cell order j * K + t
        a = z[name]
        return a.transpose(0, 2, 1).reshape(N, -1)

    for layer in order:
        cpn = layer.cells_per_neuron
        v = np.zeros((N, layer.cells), np.int64)
        resets = []
        for g in by_post.get(layer.name, []):
            if g.kind == "reset":
                resets.append(g)
                continue
            if g.kind == "gate":  # cancels the cell's rest level -G in its decision tick
                continue
            src = flat(g.pre)
            contrib = src[:, g.pre_idx] * g.weight[None, :]
            for n in range(N):
                v[n] += np.bincount(g.post_idx, contrib[n], minlength=layer.cells).astype(np.int64)
        if layer.kind == "readout":
            readout = v.reshape(N, *layer.shape)
            continue
        spikes = np.zeros((N, layer.cells), np.int64)
        steps = np.arange(layer.cells) % cpn
        for t in range(cpn):
            cells = np.flatnonzero(steps == t)
            vt = v[:, cells].copy()
            for g in resets:
                sel = (g.post_idx % cpn) == t
                if sel.any():
                    contrib = spikes[:, g.pre_idx[sel]] * g.weight[sel][None, :]
                    for n in range(N):
                        vt[n] += np.bincount(g.post_idx[sel] // cpn, contrib[n], minlength=layer.neurons)[
                            cells // cpn].astype(np.int64)
            spikes[:, cells] = (vt >= layer.threshold[t]).astype(np.int64)
        z[layer.name] = spikes.reshape(N, layer.neurons, cpn).transpose(0, 2, 1)
    trains = {name: a.reshape(N, u.K, *u.layers[name].shape).astype(np.uint8)
              for name, a in z.items() if name not in (BIAS_SOURCE,)}
    return trains, readout
