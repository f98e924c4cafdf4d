r"""Range analysis: how large every membrane and accumulator of an integer network gets.

A time-unrolled receiver (an FS neuron's decision units, or a read-out accumulator)
adds its inputs source step by source step, then (an FS neuron) its own resets. A chip
must hold every partial sum of that process without clipping, and a decision unit must
not cross its threshold before its gate. This module computes, per receiver and neuron,

* ``low`` / ``high``: the extremes of the partial input sum (bias included) over every
  prefix of the source steps,
* ``step``: the largest absolute input delivered in one step,
* ``low_all`` / ``high_all``: the extremes once the neuron's own resets are included,

either over **every possible spike pattern** (:func:`worst_case`: sound for any input) or
**measured on data** (:func:`observe`), and :func:`bounded` combines the two: measured
extremes widened by :data:`DATA_MARGIN` and never wider than the worst case. Targets turn
these numbers into their own constants (Loihi: baseline, gate, threshold; see
``fs_hw_loihi.bounds``) and compare them with their register widths.

No SDK imports: every chip backend uses it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from fs_hw.ir import FSActivation, Network
from fs_hw.lower.maps import ReceiverInput, receiver_inputs

#: measured ranges are multiplied by this factor (and one unit added) before they set a
#: layer's constants: inputs outside the measured set may go further
DATA_MARGIN = 2


@dataclass
class PartialSums:
    """Extremes of one receiver's partial sums, per neuron (int64 arrays)."""

    name: str
    kind: str  # "fs" or "readout"
    bias: np.ndarray
    low: np.ndarray  # lowest partial input sum (bias included), <= 0
    high: np.ndarray  # highest partial input sum, >= 0
    step: np.ndarray  # largest |input| in one step
    low_all: np.ndarray  # lowest value once the neuron's own resets are included
    high_all: np.ndarray
    samples: int | None = None  # inputs measured (None: every spike pattern)


def worst_case(network: Network, name: str, rin: ReceiverInput) -> PartialSums:
    """Extremes over every spike pattern of the sources (sound for any input)."""
    node = network.by_name[name]
    b = rin.bias.astype(np.int64)
    low, high = b.copy(), b.copy()
    # every source's step s arrives in the same chip step (skips are aligned by relays)
    per_step = np.zeros((network.K, b.size), np.int64)
    for src in rin.maps:
        d = network.code_of(network.by_name[src]).d.astype(np.int64)
        sums: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # a plain map is shared by every step
        for s, (m, f) in enumerate(rin.steps(src, d)):
            if id(m) not in sums:
                sums[id(m)] = m.row_sums()
            pos, neg = sums[id(m)]
            low += f * neg if f > 0 else f * pos
            high += f * pos if f > 0 else f * neg
            per_step[s] += abs(f) * (pos - neg)
    step = per_step.max(axis=0)
    low_all, high_all = low.copy(), high.copy()
    kind = "readout"
    if isinstance(node, FSActivation):
        kind = "fs"
        h = network.code_of(node).h.astype(np.int64)
        low_all = low + int(np.minimum(-h, 0).sum())
        high_all = high + int(np.maximum(-h, 0).sum())
    return PartialSums(name, kind, b, low, high, step, low_all, high_all, None)


def observe(network: Network, profile, inputs: np.ndarray, batch_size: int = 250,
            rins: dict[str, ReceiverInput] | None = None) -> dict[str, PartialSums]:
    """Partial sums of every receiver, step by step, measured on ``inputs``.

    The reference (fast mode: the same spikes as the chip) gives every source's spike
    train; each receiver's input is accumulated in the order a time-unrolled chip adds
    it: source step by source step, then its own resets during its decision steps.
    """
    from fs_hw.reference.simulator import run_reference

    # measured before the target's widths are chosen: no register check here
    unchecked = dataclasses.replace(profile, membrane_bits=None)
    res = run_reference(network, inputs, "fast", unchecked, record_spikes=True, batch_size=batch_size)
    trains = res.spike_trains
    N, K = len(inputs), network.K
    out = {}
    for name, rin in (rins or receiver_inputs(network)).items():
        n = rin.bias.size
        inc = np.zeros((N, K, n), np.int64)
        for src in rin.maps:
            d = network.code_of(network.by_name[src]).d.astype(np.int64)
            z = trains[src].reshape(N, K, -1).astype(np.int64)
            steps = rin.steps(src, d)
            if all(m is steps[0][0] for m, _ in steps):  # one plain map: all steps at once
                inc += steps[0][0].apply((z * d[None, :, None]).reshape(N * K, -1)).reshape(N, K, n)
            else:
                for s, (m, f) in enumerate(steps):
                    inc[:, s] += f * m.apply(z[:, s]).reshape(N, n)
        partial = rin.bias[None, None, :] + np.cumsum(inc, axis=1)
        low = np.minimum(partial.min(axis=(0, 1)), np.minimum(rin.bias, 0))
        high = np.maximum(partial.max(axis=(0, 1)), np.maximum(rin.bias, 0))
        low_all, high_all = np.minimum(low, 0), np.maximum(high, 0)
        node = network.by_name[name]
        kind = "readout"
        if isinstance(node, FSActivation):
            kind = "fs"
            h = network.code_of(node).h.astype(np.int64)
            own = trains[name].reshape(N, K, -1).astype(np.int64) * h[None, :, None]
            v = partial[:, -1:, :] - np.cumsum(own, axis=1)
            low_all = np.minimum(low_all, v.min(axis=(0, 1)))
            high_all = np.maximum(high_all, v.max(axis=(0, 1)))
        out[name] = PartialSums(name, kind, rin.bias.astype(np.int64), np.minimum(low, 0), np.maximum(high, 0),
                                np.abs(inc).max(axis=(0, 1)), low_all, high_all, N)
    return out


def widen(values: np.ndarray, margin: int = DATA_MARGIN) -> np.ndarray:
    """Measured extremes times ``margin``, one unit further out."""
    values = np.asarray(values, np.int64)
    return values * margin + np.sign(values).astype(np.int64)


def bounded(worst: PartialSums, observed: PartialSums | None, margin: int = DATA_MARGIN) -> PartialSums:
    """``observed`` widened by ``margin``, never wider than ``worst`` (``worst`` when None)."""
    if observed is None:
        return worst
    low = np.maximum(worst.low, widen(observed.low, margin))
    high = np.minimum(worst.high, widen(observed.high, margin))
    # the resets' share of the worst case (low_all - low) applies on top of the tighter sums
    low_all = np.maximum(low + (worst.low_all - worst.low), widen(observed.low_all, margin))
    high_all = np.minimum(high + (worst.high_all - worst.high), widen(observed.high_all, margin))
    return PartialSums(worst.name, worst.kind, worst.bias, low, high,
                       np.minimum(worst.step, widen(observed.step, margin)), low_all, high_all, observed.samples)


def receiver_ranges(network: Network, observed: dict[str, PartialSums] | None = None,
                    margin: int = DATA_MARGIN, rins: dict[str, ReceiverInput] | None = None
                    ) -> dict[str, PartialSums]:
    """Every receiver's ranges: the worst case, tightened by ``observed`` where given
    (``rins``: the network's :func:`receiver_inputs`, when the caller has them)."""
    observed = observed or {}
    return {name: bounded(worst_case(network, name, rin), observed.get(name), margin)
            for name, rin in (rins or receiver_inputs(network)).items()}
