r"""Worst-case membrane ranges, and the constants that keep every layer exact.

A time-unrolled FS neuron ``j`` has one compartment per step ``t``. Each compartment
holds :math:`v = B_j + (\text{partial input sum})`; at its step a gate adds
:math:`G_j - T(t) + r` (:math:`r = 1` for the rule ``>=``) and Loihi fires on
:math:`v > V_{th} = B_j + G_j`, i.e. exactly when :math:`x - \sum_{s<t} h(s) z(s) + r > T(t)`.
The baseline :math:`B_j` covers the most negative partial sum any spike pattern can
produce (Loihi clips the membrane at 0), :math:`G_j` the most positive one (nothing
fires before its gate). All bounds here are over every possible spike pattern, so the
emulator's ``strict`` overflow checks can never trip and no spike can come early.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from fs_hw.ir import FSActivation, Network, Readout
from fs_hw.lower.maps import ConvMap, DenseMap, IdentityMap, ReceiverInput, receiver_inputs
from fs_hw_loihi.fixedpoint import Q_LIMIT, V_LIMIT, VTH_MAX, vth_round_up


@dataclass
class LayerRange:
    """Constants of one receiver (FS layer or read-out accumulator)."""

    name: str
    kind: str  # "fs" or "readout"
    baseline: np.ndarray  # (n,) int64: B_j + bias_j, sent at the first data step
    offset: np.ndarray  # (n,) int64: B_j
    vth: int
    gate: np.ndarray | None  # (n, K) int64 for FS layers
    inhibit: np.ndarray | None  # (K,) int64: -h(s)
    q0_max: int
    v_max: int
    low: np.ndarray
    high: np.ndarray

    @property
    def problem(self) -> str | None:
        if self.vth > VTH_MAX:
            return f"threshold {self.vth} exceeds the largest Loihi threshold {VTH_MAX}"
        if self.q0_max >= Q_LIMIT:
            return f"worst-case input in one step {self.q0_max} exceeds the 21-bit synapse accumulator ({Q_LIMIT})"
        if self.v_max >= V_LIMIT:
            return f"worst-case membrane {self.v_max} exceeds the 24-bit register ({V_LIMIT})"
        return None


def layer_range(network: Network, name: str, rin: ReceiverInput,
                observed: ObservedRange | None = None) -> LayerRange:
    """Constants of one receiver from its worst case, or from ``observed`` (data) ranges
    widened by :data:`DATA_MARGIN` and never wider than the worst case."""
    node = network.by_name[name]
    b = rin.bias.astype(np.int64)
    low = b.copy()
    high = b.copy()
    step = np.zeros_like(b)
    for src, m in rin.maps.items():
        d = network.code_of(network.by_name[src]).d.astype(np.int64)
        pos, neg = m.row_sums()
        dp, dn = int(d[d > 0].sum()), int(d[d < 0].sum())
        low += dp * neg + dn * pos
        high += dp * pos + dn * neg
        step += int(np.abs(d).max(initial=0)) * (pos - neg)
    if observed is not None:
        low = np.maximum(low, _widen(observed.low))
        high = np.minimum(high, _widen(observed.high))
        step = np.minimum(step, _widen(observed.step))
    if isinstance(node, FSActivation):
        code = network.code_of(node)
        h = code.h.astype(np.int64)
        T = code.T.astype(np.int64)
        inhibit = -h
        low_all = low + int(np.minimum(inhibit, 0).sum())
        high_all = high + int(np.maximum(inhibit, 0).sum())
        if observed is not None:
            low_all = np.maximum(low_all, _widen(observed.low_all))
            high_all = np.minimum(high_all, _widen(observed.high_all))
        B = np.maximum(0, -low_all)
        vth = vth_round_up(int((B + np.maximum(high_all, 0)).max(initial=0)) + 1)
        r = 1 if code.rule == ">=" else 0
        gate = (vth - B)[:, None] - T[None, :] + r
        baseline = B + b
        gmax = np.abs(gate).max(axis=1)
        q0 = np.maximum.reduce([
            np.abs(baseline) + step,
            step + np.abs(gate[:, 0]),
            gmax + int(np.abs(h).max(initial=0)),
            np.full_like(step, vth),
        ])
        v_max = int((vth + np.maximum(high_all, 0) + np.maximum(-T, 0).max() + r).max(initial=0))
        return LayerRange(name, "fs", baseline, B, vth, gate, inhibit, int(q0.max(initial=0)), v_max,
                          low_all, high_all)
    assert isinstance(node, Readout)
    B = np.maximum(0, -low)
    vth = vth_round_up(int((B + np.maximum(high, 0)).max(initial=0)) + 1)
    baseline = B + b
    q0 = np.maximum(np.abs(baseline) + step, vth)
    return LayerRange(name, "readout", baseline, B, vth, None, None, int(q0.max(initial=0)), vth, low, high)


def layer_ranges(network: Network, observed: dict[str, ObservedRange] | None = None) -> dict[str, LayerRange]:
    rins = receiver_inputs(network)
    observed = observed or {}
    return {name: layer_range(network, name, rin, observed.get(name)) for name, rin in rins.items()}


def check_ranges(network: Network, observed: dict[str, ObservedRange] | None = None) -> dict[str, str]:
    """Receivers whose ranges do not fit Loihi's registers, with the reason."""
    return {name: r.problem for name, r in layer_ranges(network, observed).items() if r.problem}


#: data ranges are widened by this factor (and one unit) before they set a layer's constants
DATA_MARGIN = 2


def _widen(values: np.ndarray) -> np.ndarray:
    return np.asarray(values, np.int64) * DATA_MARGIN + np.sign(values).astype(np.int64)


@dataclass
class ObservedRange:
    """Extremes of one receiver's partial sums over a set of inputs (per neuron)."""

    low: np.ndarray  # lowest partial input sum (bias included), <= 0
    high: np.ndarray  # highest partial input sum, >= 0
    step: np.ndarray  # largest input received in one step
    low_all: np.ndarray  # lowest membrane value, the neuron's own resets included
    high_all: np.ndarray
    samples: int


def observe_ranges(network: Network, profile, inputs: np.ndarray) -> dict[str, ObservedRange]:
    """Partial sums of every receiver, step by step, on ``inputs`` (an integer network).

    The reference (fast mode, the same spikes as the chip) gives every source's spike
    train; each receiver's input is accumulated in the order the chip adds it: source
    step by source step, then its own resets during its decision steps.
    """
    from fs_hw.reference.simulator import run_reference

    # measured before the units fit: the register check is what this measurement feeds
    unchecked = dataclasses.replace(profile, membrane_bits=None)
    res = run_reference(network, inputs, "fast", unchecked, record_spikes=True, batch_size=250)
    trains = res.spike_trains
    N = len(inputs)
    K = network.K
    out = {}
    for name, rin in receiver_inputs(network).items():
        n = rin.bias.size
        inc = np.zeros((N, K, n), np.int64)
        for src, m in rin.maps.items():
            d = network.code_of(network.by_name[src]).d.astype(np.int64)
            z = trains[src].reshape(N, K, -1).astype(np.int64) * d[None, :, None]
            inc += _apply_map(m, z.reshape(N * K, -1)).reshape(N, K, n)
        partial = rin.bias[None, None, :] + np.cumsum(inc, axis=1)
        low = np.minimum(partial.min(axis=(0, 1)), np.minimum(rin.bias, 0))
        high = np.maximum(partial.max(axis=(0, 1)), np.maximum(rin.bias, 0))
        low_all, high_all = np.minimum(low, 0), np.maximum(high, 0)
        node = network.by_name[name]
        if isinstance(node, FSActivation):
            h = network.code_of(node).h.astype(np.int64)
            own = trains[name].reshape(N, K, -1).astype(np.int64) * h[None, :, None]
            v = partial[:, -1:, :] - np.cumsum(own, axis=1)
            low_all = np.minimum(low_all, v.min(axis=(0, 1)))
            high_all = np.maximum(high_all, v.max(axis=(0, 1)))
        out[name] = ObservedRange(np.minimum(low, 0), np.maximum(high, 0), np.abs(inc).max(axis=(0, 1)),
                                  low_all, high_all, N)
    return out


def _apply_map(m, x: np.ndarray) -> np.ndarray:
    """``m`` applied to a batch of flat source vectors ``x`` (B, n_in) -> (B, n_out)."""
    if isinstance(m, ConvMap):
        y = m._apply(m.kernel, x.reshape(len(x), *m.in_shape))
        return y.reshape(len(x), -1)
    if isinstance(m, DenseMap):
        return x @ m.matrix.T
    if isinstance(m, IdentityMap):
        return x
    raise TypeError(f"unknown map {type(m).__name__}")
