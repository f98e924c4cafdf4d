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

    populations: dict[str, Any] = field(default_factory=dict)
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


def plain_connect(sim, pre, post, pre_idx, post_idx, weights, delays, receptor_type, label=None):
    """Connections through PyNN's FromListConnector (any simulator)."""
    conns = np.column_stack([pre_idx, post_idx, weights, delays])
    return sim.Projection(pre, post, sim.FromListConnector(conns), receptor_type=receptor_type, label=label)


def build_model(sim, unrolled: UnrolledNetwork, input_ticks: list[np.ndarray], samples: int, timestep_ms: float,
                max_summed: dict[str, dict[str, float]] | None = None, connect: Connect = plain_connect,
                record: bool = True, extra_population_args: Callable[[str], dict] | None = None) -> Model:
    """Populations and projections of ``unrolled`` for ``samples`` pipelined samples.

    ``input_ticks``: per input cell, its spike ticks (:meth:`UnrolledNetwork.input_spike_ticks`);
    ``max_summed``: per receiver population, ``{"excitatory": mV, "inhibitory": mV}``
    (passed to sPyNNaker as ``max_expected_summed_weight`` by ``extra_population_args``).
    """
    u = unrolled
    model = Model()
    dt = timestep_ms
    params = cell_parameters(dt)
    for name, layer in u.layers.items():
        if layer.kind == "input":
            times = [sim.Sequence((np.asarray(t, np.float64) * dt).tolist()) for t in input_ticks]
            pop = sim.Population(layer.cells, sim.SpikeSourceArray(spike_times=times), label=name)
        elif layer.kind == "bias":
            ticks = u.bias_ticks(samples).astype(np.float64) * dt
            pop = sim.Population(1, sim.SpikeSourceArray(spike_times=[sim.Sequence(ticks.tolist())]), label=name)
        else:
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
            cell = sim.IF_curr_delta(**params, v_thresh=v_th, v_reset=v_reset, v_rest=v_rest)
            pop = sim.Population(layer.cells, cell, label=name,
                                 initial_values={"v": v_rest}, **extra)
            if record:
                pop.record("spikes" if layer.kind == "fs" else "v")
        model.populations[name] = pop
    counts = dict.fromkeys(RECEPTORS, 0)
    for g in u.groups:
        for receptor, mask in (("excitatory", g.weight > 0), ("inhibitory", g.weight < 0)):
            if not mask.any():
                continue
            w_mv = g.weight[mask].astype(np.float64) / UNITS_PER_MV
            proj = connect(sim, model.populations[g.pre], model.populations[g.post], g.pre_idx[mask],
                           g.post_idx[mask], w_mv, g.delay[mask].astype(np.float64) * dt, receptor,
                           label=f"{g.pre}->{g.post}:{g.kind}:{receptor}")
            model.projections.append(proj)
            counts[receptor] += int(mask.sum())
    model.synapses = counts
    if BIAS_SOURCE not in model.populations:  # pragma: no cover - unroll always adds it
        raise ValueError("unrolled network without a bias source")
    return model
