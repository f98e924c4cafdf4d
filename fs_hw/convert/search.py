r"""Operating-point search: choose K and every ReLU layer's :math:`\alpha` on held-out data.

The ReLU code of a layer with scale :math:`\alpha` and K steps rounds its input to the
grid :math:`s = \alpha 2^{-K}` (with the half-step offset) and spends
:math:`\mathrm{popcount}(q)` spikes on level :math:`q = \mathrm{round}(x/s)`. Two
consequences drive the search:

* the spikes of a neuron depend on the grid :math:`s` only (as long as it is not
  clipped), so a coarser grid is what saves spikes; K sets how far above the grid the
  code reaches before it clips (:math:`\alpha = s 2^K`), and the resolution of the
  input code;
* accuracy loss and spikes trade off differently in every layer, so the grid can be
  set per layer.

:class:`FSTwin` evaluates candidates fast: the converter's own canonical graph (same
trace, same BatchNorm folding, same calibration statistics, hence the same
:math:`\alpha` as :func:`~fs_hw.convert.from_torch`) run in torch float32 with every
activation replaced by its FS code (closed form for ReLU codes, :func:`simulate_fs`
for fitted codes) and the input passed through the input code. It predicts what the
reference backend computes in float64 up to float32 rounding at grid boundaries (a
fraction of a percent of predictions on deep networks); final numbers should come from
:func:`~fs_hw.reference.simulator.run_reference` on the converted network.

Candidates:

* :func:`percentile_alphas`: every layer's :math:`\alpha` from one calibration policy,
  optionally times a factor (``scale=2**0.5`` moves the grid half a bit coarser).
* :func:`layerwise_alphas`: a per-layer grid allocation. For each layer alone it
  measures, on calibration data, the KL divergence between the ANN's and the twin's
  output distribution and the layer's spikes for a few grids, then for a trade-off
  :math:`\lambda` picks in each layer the grid minimising
  ``spikes/neuron + lambda * KL`` (layers treated as independent).

:func:`select` then picks, among evaluated candidates, the one with the fewest spikes
whose accuracy loss (and prediction flips) on held-out data are within tolerances.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fs_hw.convert import calibrate as cal
from fs_hw.convert.converter import _select_code, canonical_graph
from fs_hw.dynamics import simulate_fs
from fs_hw.errors import ValidationError

_POPCOUNT_BITS = 16


class FSTwin:
    """The converted network's computation in torch float32, for fast candidate search.

    Parameters
    ----------
    model, example_input, calibration_data, input_normalization :
        As for :func:`~fs_hw.convert.from_torch`; calibration statistics are collected
        once, with the converter's own routine, so :meth:`alphas` returns the very
        :math:`\\alpha` values ``from_torch`` would choose.
    """

    def __init__(self, model: Any, example_input: Any, calibration_data: Any, batch_size: int = 256,
                 input_normalization: tuple[Any, Any] | None = None):
        if example_input is None and calibration_data is not None:
            example_input = next(iter(cal.batches(calibration_data, 2)), None)
        graph, _ = canonical_graph(model, example_input, input_normalization)
        self.graph = graph
        self.acts = [op for op in graph.ops.values() if op.kind == "act"]
        self.relu_layers = [op.name for op in self.acts if op.attrs["function"] == "relu"]
        self.functions = sorted({op.attrs["function"] for op in self.acts} - {"relu"})
        self.neurons = {op.name: int(np.prod(op.shape)) for op in self.acts}
        self.stats, data_range, self.calibration_samples = cal.collect(
            graph, calibration_data, {op.name: None for op in self.acts}, set(self.relu_layers), batch_size)
        self.data_range = data_range
        self.input_range = (min(0.0, data_range[0]), data_range[1])
        self._luts: dict[int, Any] = {}

    # -- choices ------------------------------------------------------------------------
    def alphas(self, policy: Any, scale: float = 1.0) -> dict[str, float]:
        """Per ReLU layer: ``scale`` x the alpha of ``policy`` (as from_torch picks it), float32-rounded."""
        out = {}
        for op in self.acts:
            if op.attrs["function"] != "relu":
                continue
            p = cal.AlphaPolicy.parse(policy)
            raw = self.stats[op.name].alpha(p) if p.needs_data else float(p.value)
            if not raw > 0:
                raw = 1.0
            raw *= scale
            clip = op.attrs.get("clip")
            if clip is not None and raw > clip:
                raw = clip
            out[op.name] = float(np.float32(raw))
        return out

    def codes(self, K: int) -> dict[str, Any]:
        """The fitted codes from_torch would use for the non-ReLU activations at ``K``."""
        return {fn: _select_code(fn, K, self.acts, self.graph, None) for fn in self.functions}

    # -- running ------------------------------------------------------------------------
    def _popcount(self, qi: Any, K: int) -> Any:
        import torch

        if K <= _POPCOUNT_BITS:
            lut = self._luts.get(K)
            if lut is None:
                lut = torch.tensor([bin(i).count("1") for i in range(2**K)], dtype=torch.int64)
                self._luts[K] = lut
            return lut[qi]
        c = torch.zeros_like(qi)
        for b in range(K):
            c += (qi >> b) & 1
        return c

    def run(self, x: Any, K: int, alphas: Mapping[str, float], count_spikes: bool = True,
            batch_size: int = 500, ann: bool = False, input_range: tuple[float, float] | None = None,
            ) -> tuple[np.ndarray, dict[str, float]]:
        """Logits ``(N, classes)`` and, per FS layer, the total spikes over all samples.

        ``ann=True`` runs the ANN itself (float32) instead. ``input_range``: the range
        the (rounding) input code spans, default the calibration data's.
        """
        import torch

        codes = {} if ann else self.codes(K)
        missing = set(self.relu_layers) - set(alphas)
        if missing and not ann:
            raise ValidationError("FSTwin.run", "alphas", f"no alpha for {sorted(missing)}")
        lo, hi = self.input_range if input_range is None else input_range
        step = (hi - lo) / (2**K - 1)
        levels = 2**K - 1
        spikes = {op.name: 0.0 for op in self.acts}
        tables = {fn: tuple(torch.tensor(np.array(getattr(c, k)), dtype=torch.float32) for k in "Thd")
                  for fn, c in codes.items()}

        def act_fn(op, v):
            fn = op.attrs["function"]
            if fn == "relu":
                s = alphas[op.name] * 2.0**-K
                q = torch.clamp(torch.floor(v / s + 0.5), 0, levels)
                if count_spikes:
                    spikes[op.name] += float(self._popcount(q.to(torch.int64), K).sum())
                return q * s
            T, h, d = tables[fn]
            r = simulate_fs(v, T, h, d, codes[fn].rule)
            if count_spikes:
                spikes[op.name] += float(r.spike_count.sum())
            return r.output

        outs = []
        with torch.no_grad():
            for start in range(0, len(x), batch_size):
                xb = torch.as_tensor(np.asarray(x[start:start + batch_size])).to(torch.float32)
                if ann:
                    o, _ = self.graph.run(xb, dtype=torch.float32)
                else:
                    xq = torch.clamp(torch.floor((xb - lo) / step + 0.5), 0, levels) * step + lo
                    o, _ = self.graph.run(xq, dtype=torch.float32, act_fn=act_fn)
                outs.append(o.numpy())
        return np.concatenate(outs), spikes

    def spikes_per_neuron(self, spikes: Mapping[str, float], n: int) -> float:
        """All spikes / all FS neurons / samples: the paper's count (input code excluded)."""
        return sum(spikes.values()) / sum(self.neurons.values()) / max(n, 1)


def percentile_alphas(twin: FSTwin, policy: str, scale: float = 1.0) -> dict[str, float]:
    return twin.alphas(policy, scale)


def _kl(logits: np.ndarray, ref: np.ndarray) -> float:
    def logsoftmax(z):
        z = z - z.max(axis=1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=1, keepdims=True))

    lp, lq = logsoftmax(ref.astype(np.float64)), logsoftmax(logits.astype(np.float64))
    return float((np.exp(lp) * (lp - lq)).sum(axis=1).mean())


@dataclass
class LayerTable:
    """Per layer and grid (in bits below the base alpha): output KL and spikes/neuron (network-wide)."""

    bits: list[float]
    kl: dict[str, list[float]] = field(default_factory=dict)
    spikes: dict[str, list[float]] = field(default_factory=dict)


def layer_table(twin: FSTwin, x: Any, base: Mapping[str, float], bits: Sequence[float],
                fine_bits: float = 12.0, progress: Any = None) -> LayerTable:
    r"""Quantize one layer at a time (grid ``base * 2**-b`` for each ``b`` in ``bits``), the
    others on a fine grid (``base * 2**-fine_bits``), and measure KL(ANN || twin) and that
    layer's spikes per network neuron."""
    ann, _ = twin.run(x, 8, {}, count_spikes=False, ann=True)
    K = int(math.ceil(fine_bits)) + 1
    total = sum(twin.neurons.values())
    table = LayerTable(list(bits))
    for name in twin.relu_layers:
        table.kl[name], table.spikes[name] = [], []
        for b in bits:
            al = {n: base[n] * 2.0 ** (K - fine_bits) for n in twin.relu_layers}
            al[name] = base[name] * 2.0 ** (K - b)
            logits, sp = twin.run(x, K, al)
            table.kl[name].append(_kl(logits, ann))
            table.spikes[name].append(sp[name] / total / len(x))
            if progress is not None:
                progress()
    return table


def layerwise_alphas(twin: FSTwin, table: LayerTable, base: Mapping[str, float], lam: float,
                     K: int | None = None) -> tuple[int, dict[str, float], dict[str, float]]:
    """For trade-off ``lam``: per layer the grid minimising ``spikes + lam * KL``.

    Returns ``(K, alphas, bits per layer)``. K is the smallest integer such that every
    layer's code reaches at least its base alpha (``K >= bits``), unless given.
    """
    chosen = {}
    for name in twin.relu_layers:
        costs = [s + lam * k for s, k in zip(table.spikes[name], table.kl[name])]
        chosen[name] = table.bits[int(np.argmin(costs))]
    if K is None:
        K = max(1, max(int(math.ceil(b - 1e-9)) for b in chosen.values()))
    alphas = {n: float(np.float32(base[n] * 2.0 ** (K - chosen[n]))) for n in twin.relu_layers}
    return K, alphas, chosen


def select(points: Sequence[Mapping[str, Any]], max_loss: float, max_flips: float | None = None) -> Mapping[str, Any]:
    """The point with the fewest ``spikes_per_neuron`` among those whose ``val_loss``
    (accuracy loss in points, ANN minus FS, on held-out data) is at most ``max_loss`` and,
    if given, whose ``val_flip`` (% of held-out images where FS and ANN predict different
    classes) is at most ``max_flips``. If none qualifies: the smallest ``val_loss``."""
    ok = [p for p in points if p["val_loss"] <= max_loss and (max_flips is None or p["val_flip"] <= max_flips)]
    if ok:
        return min(ok, key=lambda p: (p["spikes_per_neuron"], p["val_loss"]))
    return min(points, key=lambda p: (p["val_loss"], p["spikes_per_neuron"]))
