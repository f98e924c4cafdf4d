"""The replayer: runs a BrainScaleS-2 export from its files alone, instance by instance.

It reads ``manifest.json``, ``network.npz`` and ``events.npz`` (never the IR, never the
reference) and executes the chip's digital semantics: in each sample's step window an
event ``(hemisphere, label)`` reaches the two rows of synapse driver ``label`` bits 6-10
and 14-15 and, on them, every synapse whose 6-bit label equals the event's bits 0-5; the
synapse adds its weight (even row) or subtracts it (odd row) from its circuit's
current, integrated within the step; the circuits of a logical neuron share one
membrane, which starts at the neuron's rest level; the neuron fires iff the membrane
reaches its threshold (``>=``), and is reset (hard reset, refractory until the window
ends). The host sends to each instance, for every source that spiked in a sample (its
own input spikes and bias source, listed in ``events.npz``, and the neurons of earlier
instances, as they fired), one event per route of that source in that instance.
Read-out neurons never fire; their membrane at the window's end is read.

With a :class:`Variation`, weights and thresholds vary per simulated chip (fixed pattern)
and the membrane gets trial-to-trial noise: the analog chip's spread, in float.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from fs_hw.errors import ValidationError
from fs_hw_brainscales2.export import Export, label_fields, read_export


@dataclass(frozen=True)
class Variation:
    """Analog variation of one simulated chip (all zero: the exact digital semantics)."""

    weight: float = 0.0  # relative std of each synapse's weight (fixed pattern)
    threshold: float = 0.0  # std of each logical neuron's threshold, in weight steps (fixed pattern)
    noise: float = 0.0  # std of membrane noise per decision, in weight steps (trial to trial)
    seed: int = 0

    @property
    def exact(self) -> bool:
        return self.weight == 0 and self.threshold == 0 and self.noise == 0


@dataclass
class ReplayResult:
    """Per logical neuron (the export's neuron table order): ``fired`` (samples, neurons)
    bool; read-out membranes ``readout`` (samples, read-out cells); the output events."""

    fired: np.ndarray
    membrane: np.ndarray
    out_sample: np.ndarray
    out_instance: np.ndarray
    out_cycle: np.ndarray
    out_label: np.ndarray
    events: int = 0  # chip events the host sent (routes of every spike)


class Replayer:
    """An export prepared for replay: per instance, which sources reach which synapse
    channels (the host's routes) and which channels reach which neurons (the synapses).
    :meth:`run` replays it exactly or on a simulated chip; preparing once serves many
    simulated chips."""

    CHANNELS = 2 * 128 * 64  # (hemisphere, driver, synapse label)

    def __init__(self, source: Path | Export):
        ex = read_export(Path(source)) if not isinstance(source, Export) else source
        self.export = ex
        t, m, ev = ex.tables, ex.manifest, ex.events
        self.N = int(ev["samples"])
        self.step = int(m["units"]["step_cycles"])
        self.n_neurons = len(t["neuron_instance"])
        self.n_sources = len(t["source_kind"])
        for name in ("neuron_instance", "synapse_instance", "route_instance"):
            if np.any(np.diff(t[name]) < 0):
                raise ValidationError("network.npz", name, "rows are not ordered by instance")
        bad = (t["route_source"] < 0) | (t["route_source"] >= self.n_sources)
        if bad.any() or np.any((ev["host_source"] < 0) | (ev["host_source"] >= self.n_sources)):
            raise ValidationError("network.npz/events.npz", "source", f"an id outside 0..{self.n_sources - 1}")
        # the source id of every logical neuron (its layer's cells follow the earlier layers')
        base = np.cumsum([0] + [ly["cells"] for ly in m["layers"]])
        self.neuron_source = base[t["neuron_layer"]] + t["neuron_cell"]
        self.sign = np.where(t["synapse_row"] % 2 == 0, 1.0, -1.0)
        driver = t["synapse_row"].astype(np.int64) // 2
        # row ranges of every instance in every table, found once
        n_inst = int(t["neuron_instance"].max(initial=-1)) + 1
        bounds = {name: np.searchsorted(t[name], np.arange(n_inst + 1).astype(t[name].dtype))
                  for name in ("neuron_instance", "synapse_instance", "route_instance")}
        self.plan = []
        for inst in range(n_inst):
            neu = slice(int(bounds["neuron_instance"][inst]), int(bounds["neuron_instance"][inst + 1]))
            if neu.stop == neu.start:
                continue
            col_owner = -np.ones((2, 256), np.int64)
            for i in range(neu.start, neu.stop):
                h, c0 = int(t["neuron_hemisphere"][i]), int(t["neuron_first_column"][i])
                col_owner[h, c0:c0 + int(t["neuron_circuits"][i])] = i - neu.start
            syn = slice(int(bounds["synapse_instance"][inst]), int(bounds["synapse_instance"][inst + 1]))
            hemi = t["synapse_hemisphere"][syn].astype(np.int64)
            ch_syn = (hemi * 128 + driver[syn]) * 64 + t["synapse_label"][syn]
            owner = col_owner[hemi, t["synapse_column"][syn]]
            if np.any(owner < 0):
                raise ValidationError("network.npz", "synapse_column",
                                      f"instance {inst}: a synapse on an unused column")
            r = slice(int(bounds["route_instance"][inst]), int(bounds["route_instance"][inst + 1]))
            rd, rl = label_fields(t["route_label"][r])
            rch = (t["route_hemisphere"][r].astype(np.int64) * 128 + rd) * 64 + rl
            used, local_src = np.unique(t["route_source"][r], return_inverse=True)
            R = sp.csr_matrix((np.ones(len(rch)), (local_src, rch)), shape=(len(used), self.CHANNELS))
            self.plan.append((neu, syn, ch_syn, owner, used, R))

    def run(self, variation: Variation | None = None) -> ReplayResult:
        t, ev = self.export.tables, self.export.events
        var = variation or Variation()
        rng = np.random.default_rng(var.seed)
        N = self.N
        # which sources spiked in which sample: the host's from the file, neurons' as they fire
        spiked = np.zeros((N, self.n_sources), np.float32)
        spiked[ev["host_sample"], ev["host_source"]] = 1.0
        w = t["synapse_weight"].astype(np.float64)
        if var.weight:
            w = w * (1.0 + var.weight * rng.standard_normal(len(w)))
        threshold = t["neuron_threshold"].astype(np.float64)
        if var.threshold:
            threshold = threshold + var.threshold * rng.standard_normal(self.n_neurons)
        rest = t["neuron_rest"].astype(np.float64)
        fired = np.zeros((N, self.n_neurons), bool)
        membrane = np.zeros((N, self.n_neurons))
        events = 0
        for neu, syn, ch_syn, owner, used, R in self.plan:
            n = neu.stop - neu.start
            A = sp.csc_matrix(((self.sign[syn] * w[syn]), (ch_syn, owner)), shape=(self.CHANNELS, n))
            M = (R @ A).tocsc()  # (routed sources, neurons): the weight a source's spike adds
            sub = spiked[:, used]
            events += int((sub @ np.asarray(R.sum(axis=1)).reshape(-1)).sum())
            v = np.asarray((M.T @ sub.T).T, np.float64) + rest[neu][None, :]
            if var.noise:
                v = v + var.noise * rng.standard_normal(v.shape)
            membrane[:, neu] = v
            out = (v >= threshold[neu][None, :]) & ~t["neuron_readout"][neu][None, :]
            fired[:, neu] = out
            spiked[:, self.neuron_source[neu]] = out
        s_idx, n_idx = np.nonzero(fired)
        out_inst = t["neuron_instance"][n_idx]
        out_cycle = (s_idx * self.step + self.step - 1).astype(np.uint64)
        out_label = t["neuron_label"][n_idx]
        order = np.lexsort((out_label, out_cycle, out_inst))
        return ReplayResult(fired, membrane, s_idx[order], out_inst[order], out_cycle[order], out_label[order],
                            events)


def replay(source: Path | Export, variation: Variation | None = None) -> ReplayResult:
    """Replay an export folder (or an :class:`Export` read from one)."""
    return Replayer(source).run(variation)


def compare_with_expected(source: Path | Export, result: ReplayResult) -> dict:
    """The replay's output events against the export's expected ones (every event)."""
    ex = read_export(Path(source)) if not isinstance(source, Export) else source
    ev = ex.events
    if "expected_label" not in ev:
        return {"compared": False}
    got = set(zip(result.out_instance.tolist(), result.out_cycle.tolist(), result.out_label.tolist()))
    want = set(zip(ev["expected_instance"].tolist(), ev["expected_cycle"].tolist(), ev["expected_label"].tolist()))
    ro = result.membrane[:, ex.tables["neuron_readout"]]
    return {"compared": True, "events": len(want), "missing": len(want - got), "extra": len(got - want),
            "readout_equal": bool(np.array_equal(np.rint(ro).astype(np.int64).reshape(ro.shape[0], -1),
                                                 ev["expected_readout"].reshape(ro.shape[0], -1)))}
