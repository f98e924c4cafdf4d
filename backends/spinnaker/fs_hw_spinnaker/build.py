"""One PyNN model of the unrolled network, built through PyNN's API for any simulator.

:func:`build_model` takes the PyNN module (``pyNN.nest`` here, ``pyNN.spiNNaker`` for a
board or its virtual twin) after ``setup`` and creates, from
:class:`fs_hw.lower.unroll.UnrolledNetwork`:

* one ``IF_curr_delta`` population per FS layer (``K`` cells per neuron, threshold
  ``T(t)`` in mV, ``v_rest = 0``, ``tau_m`` a thousandth of a tick so a cell
  forgets its membrane before its next decision (exactly: the decay factor is 0), one tick refractory) and one for the
  read-out (threshold out of reach: its membrane is read, it never fires);
* ``SpikeSourceArray`` populations for the input code (spikes computed by the host) and
  for the bias source;
* per synapse group two projections, positive weights on the ``excitatory`` receptor and
  negative ones on the ``inhibitory`` receptor (sPyNNaker stores ``|w|``: a negative
  weight on the excitatory receptor would silently turn positive).

Weights are the profile's integers of 2^-15 mV, given in mV (exact binary fractions),
delays whole ticks. On sPyNNaker each population also gets
``max_expected_summed_weight`` (its worst-case column sums), which fixes the ring-buffer
shifts the profile assumed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fs_hw.lower.unroll import BIAS_SOURCE, UnrolledNetwork
from fs_hw_spinnaker.pynn_compat import connect_arrays

#: units per mV (s16.15)
UNITS_PER_MV = 2.0**15
#: a read-out cell's threshold (mV): above any membrane the profile allows (2^14 mV)
#: and inside s16.15's range
READOUT_THRESHOLD_MV = 32000.0
RECEPTORS = ("excitatory", "inhibitory")

Connect = Callable[..., Any]


@dataclass
class Model:
    """What :func:`build_model` created: populations by IR name, projections, counts."""

    populations: dict[str, list[tuple[Any, int]]] = field(default_factory=dict)  # (population, first cell)
    projections: list[Any] = field(default_factory=list)
    synapses: dict[str, int] = field(default_factory=dict)  # per receptor


def cell_parameters(timestep_ms: float) -> dict[str, float]:
    """IF_curr_delta parameters of a memoryless threshold cell (thresholds set per cell)."""
    # exp(-dt / tau_m) = exp(-1000) is exactly 0 in float64 (below the smallest subnormal)
    # and in s16.15: the membrane returns to v_rest in one tick, to the bit
    tau_m = timestep_ms / 1000.0
    return {
        "tau_m": tau_m,
        # SpiNNaker adds a delta input as w * tau_m / (cm * dt) * (1 - exp(-dt / tau_m)); this
        # cm makes the factor exactly 1 (NEST adds w as it is)
        "cm": tau_m / timestep_ms,
        "tau_refrac": timestep_ms,
        "i_offset": 0.0,
    }


def _times(sim, ms: np.ndarray):
    """One cell's spike times: a PyNN ``Sequence`` where the simulator has one (pyNN.nest),
    a list of floats for sPyNNaker (which has no ``Sequence``)."""
    seq = getattr(sim, "Sequence", None)
    return seq(ms.tolist()) if seq is not None else ms.tolist()


def population_parts(cells: int, cells_per_neuron: int, cells_per_population: int | None) -> list[tuple[int, int]]:
    """``(first cell, cells)`` of each population a layer is split into: whole neurons, at
    most ``cells_per_population`` cells each (one core's worth). sPyNNaker refuses a synapse
    row (one source cell's synapses into one population) longer than 256, whatever the
    atoms per core, so receivers are created as core-sized populations."""
    if cells_per_population is None or cells <= cells_per_population:
        return [(0, cells)]
    per = max(1, cells_per_population // cells_per_neuron) * cells_per_neuron
    return [(first, min(per, cells - first)) for first in range(0, cells, per)]


def build_model(sim, unrolled: UnrolledNetwork, input_ticks: list[np.ndarray], samples: int, timestep_ms: float,
                max_summed: dict[str, dict[str, float]] | None = None, connect: Connect = connect_arrays,
                record: bool = True, extra_population_args: Callable[[str], dict] | None = None,
                cells_per_population: int | None = None) -> Model:
    """Populations and projections of ``unrolled`` for ``samples`` pipelined samples.

    ``input_ticks``: per input cell, its spike ticks (:meth:`UnrolledNetwork.input_spike_ticks`);
    ``max_summed``: per receiver population, ``{"excitatory": mV, "inhibitory": mV}``
    (passed to sPyNNaker as ``max_expected_summed_weight`` by ``extra_population_args``);
    ``cells_per_population``: receivers are split into populations of at most this many
    cells (:func:`population_parts`); ``model.populations[name]`` lists ``(population,
    first cell)``.
    """
    u = unrolled
    model = Model()
    dt = timestep_ms
    params = cell_parameters(dt)
    for name, layer in u.layers.items():
        if layer.kind == "input":
            times = [_times(sim, np.asarray(t, np.float64) * dt) for t in input_ticks]
            if not any(len(t) for t in input_ticks):
                # a silent batch: one shared empty list (sPyNNaker 7.4's spike-density check
                # fails with an IndexError on a list of empty lists)
                times = []
            model.populations[name] = [(sim.Population(layer.cells, sim.SpikeSourceArray(spike_times=times),
                                                       label=name), 0)]
            continue
        if layer.kind == "bias":
            ticks = u.bias_ticks(samples).astype(np.float64) * dt
            model.populations[name] = [(sim.Population(1, sim.SpikeSourceArray(spike_times=[_times(sim, ticks)]),
                                                       label=name), 0)]
            continue
        if layer.kind == "fs":
            v_th = np.tile(np.asarray(layer.threshold, np.float64) / UNITS_PER_MV, layer.neurons)
            v_rest = -np.tile(np.asarray(layer.gate, np.float64) / UNITS_PER_MV, layer.neurons)
        else:
            v_th = np.full(layer.cells, READOUT_THRESHOLD_MV)
            v_rest = np.zeros(layer.cells)
        # the reset level only has to lie below the threshold (NEST requires it): the
        # membrane is back at v_rest a tick later
        v_reset = np.minimum(v_th, v_rest) - 1.0
        extra = extra_population_args(name) if extra_population_args is not None else {}
        parts = population_parts(layer.cells, layer.cells_per_neuron, cells_per_population)
        model.populations[name] = []
        for k, (first, n) in enumerate(parts):
            sl = slice(first, first + n)
            cell = sim.IF_curr_delta(**params, v_thresh=v_th[sl], v_reset=v_reset[sl], v_rest=v_rest[sl])
            label = name if len(parts) == 1 else f"{name}[{k}]"
            pop = sim.Population(n, cell, label=label, initial_values={"v": v_rest[sl]}, **extra)
            if record:
                pop.record("spikes" if layer.kind == "fs" else "v")
            model.populations[name].append((pop, first))
    counts = dict.fromkeys(RECEPTORS, 0)
    for g in u.groups:
        for receptor, mask in (("excitatory", g.weight > 0), ("inhibitory", g.weight < 0)):
            if not mask.any():
                continue
            pre_idx, post_idx = g.pre_idx[mask], g.post_idx[mask]
            w_mv = g.weight[mask].astype(np.float64) / UNITS_PER_MV
            delay = g.delay[mask].astype(np.float64) * dt
            pre_parts, post_parts = model.populations[g.pre], model.populations[g.post]
            pre_of = _part_of(pre_idx, pre_parts)
            post_of = _part_of(post_idx, post_parts)
            key = pre_of * len(post_parts) + post_of
            order = np.argsort(key, kind="stable")
            bounds = np.flatnonzero(np.diff(key[order])) + 1
            for sel in np.split(order, bounds):
                a, b = int(pre_of[sel[0]]), int(post_of[sel[0]])
                (pre_pop, pre_first), (post_pop, post_first) = pre_parts[a], post_parts[b]
                proj = connect(sim, pre_pop, post_pop, pre_idx[sel] - pre_first, post_idx[sel] - post_first,
                               w_mv[sel], delay[sel], receptor, label=f"{pre_pop.label}->{post_pop.label}:{g.kind}:"
                               f"{receptor}")
                model.projections.append(proj)
            counts[receptor] += int(mask.sum())
    model.synapses = counts
    if BIAS_SOURCE not in model.populations:  # pragma: no cover - unroll always adds it
        raise ValueError("unrolled network without a bias source")
    return model


def _part_of(cells: np.ndarray, parts: list[tuple[Any, int]]) -> np.ndarray:
    firsts = np.array([first for _, first in parts], np.int64)
    return np.searchsorted(firsts, cells, side="right") - 1
