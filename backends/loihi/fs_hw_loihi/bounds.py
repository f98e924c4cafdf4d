r"""Worst-case membrane ranges, and the constants that keep every layer exact.

A time-unrolled FS neuron ``j`` has one compartment per step ``t``. Each compartment
holds :math:`v = B_j + (\text{partial input sum})`; at its step a gate adds
:math:`G_j - T(t) + r` (:math:`r = 1` for the rule ``>=``) and Loihi fires on
:math:`v > V_{th} = B_j + G_j`, i.e. exactly when :math:`x - \sum_{s<t} h(s) z(s) + r > T(t)`.
The baseline :math:`B_j` covers the most negative partial sum any spike pattern can
produce (Loihi clips the membrane at 0), :math:`G_j` the most positive one (nothing
fires before its gate). The partial-sum ranges come from the hardware-neutral range
analysis (:mod:`fs_hw.lower.ranges`): over every possible spike pattern, or measured on
calibration data and widened; with the former the emulator's ``strict`` overflow checks
can never trip and no spike can come early.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fs_hw.ir import FSActivation, Network, Readout
from fs_hw.lower.maps import receiver_inputs
from fs_hw.lower.ranges import PartialSums, receiver_ranges
from fs_hw_loihi.fixedpoint import Q_LIMIT, V_LIMIT, VTH_MAX, WEIGHT_TERM_MAX, vth_round_up


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

    #: largest single weight term (|map entry| x |factor|) of any step, in units
    weight_max: int = 0

    @property
    def excess(self) -> float:
        """How many times too large the largest quantity is for Loihi (<= 1: fits)."""
        return max(self.vth / VTH_MAX, self.q0_max / (Q_LIMIT - 1), self.v_max / (V_LIMIT - 1),
                   self.weight_max / WEIGHT_TERM_MAX)

    @property
    def problem(self) -> str | None:
        if self.weight_max > WEIGHT_TERM_MAX:
            return (f"a weight of {self.weight_max} units exceeds the largest weight one synapse holds "
                    f"exactly ({WEIGHT_TERM_MAX})")
        if self.vth > VTH_MAX:
            return f"threshold {self.vth} exceeds the largest Loihi threshold {VTH_MAX}"
        if self.q0_max >= Q_LIMIT:
            return f"worst-case input in one step {self.q0_max} exceeds the 21-bit synapse accumulator ({Q_LIMIT})"
        if self.v_max >= V_LIMIT:
            return f"worst-case membrane {self.v_max} exceeds the 24-bit register ({V_LIMIT})"
        return None


def layer_range(network: Network, sums: PartialSums) -> LayerRange:
    """Loihi's constants of one receiver from its partial-sum ranges
    (:mod:`fs_hw.lower.ranges`: the worst case, or data ranges widened)."""
    node = network.by_name[sums.name]
    b = sums.bias.astype(np.int64)
    step = sums.step
    if isinstance(node, FSActivation):
        code = network.code_of(node)
        h = code.h.astype(np.int64)
        T = code.T.astype(np.int64)
        low_all, high_all = sums.low_all, sums.high_all
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
        return LayerRange(sums.name, "fs", baseline, B, vth, gate, -h, int(q0.max(initial=0)), v_max,
                          low_all, high_all)
    assert isinstance(node, Readout)
    low, high = sums.low, sums.high
    B = np.maximum(0, -low)
    vth = vth_round_up(int((B + np.maximum(high, 0)).max(initial=0)) + 1)
    baseline = B + b
    q0 = np.maximum(np.abs(baseline) + step, vth)
    return LayerRange(sums.name, "readout", baseline, B, vth, None, None, int(q0.max(initial=0)), vth, low, high)


def layer_ranges(network: Network, observed: dict[str, PartialSums] | None = None,
                 rins: dict | None = None) -> dict[str, LayerRange]:
    """Loihi's constants of every receiver (worst case, tightened by ``observed`` data)."""
    rins = rins or receiver_inputs(network)
    out = {}
    for name, sums in receiver_ranges(network, observed, rins=rins).items():
        r = layer_range(network, sums)
        r.weight_max = _weight_max(network, rins[name])
        out[name] = r
    return out


def _weight_max(network: Network, rin) -> int:
    """Largest |weight x factor| term a synapse of this receiver must hold."""
    best = 0
    for src in rin.maps:
        d = network.code_of(network.by_name[src]).d.astype(np.int64)
        seen: dict[int, int] = {}
        for m, f in rin.steps(src, d):
            if id(m) not in seen:
                seen[id(m)] = m.max_abs()
            best = max(best, seen[id(m)] * abs(f))
    return int(best)
