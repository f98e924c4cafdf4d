"""The BrainScaleS-2 export: execution instances, placement, routing and events as arrays.

:func:`build_export` turns an integer network (the BrainScaleS-2 profile) into an
:class:`Export`; :meth:`Export.write` and :func:`read_export` move it to and from a folder
(``manifest.json`` + ``network.npz`` + ``events.npz``; no pickle). The format is specified
field by field in docs/bss2-format.md; the replayer (:mod:`fs_hw_brainscales2.replay`)
reads only these files.

How FS is realised (the chip has no synaptic delays, a fixed threshold and a hard reset):
the network is time-unrolled (:mod:`fs_hw.lower.unroll`: K cells per FS neuron, each with
threshold ``T(t)``), and every **(layer, step)** is one or more **execution instances**
(one chip configuration each). In an instance every logical neuron decides once per
sample from the events the host sends it in that sample's step window: host input spikes,
the bias source, and the *recorded* spikes of earlier instances (the layer's own earlier
steps for the resets ``-h(s)``, earlier layers for the data, any stage for skip
connections). The host thereby replaces the synaptic delays that the chip does not have.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fs_hw.errors import FSHWError, ResourceError, ValidationError
from fs_hw.ir import Network
from fs_hw.lower.limits import check_usage
from fs_hw.lower.unroll import BIAS_SOURCE, UnrolledNetwork, unroll
from fs_hw.outputs import atomic_write_json
from fs_hw_brainscales2.config import (
    BSS2_LIMITS,
    CIRCUITS_PER_HEMISPHERE,
    CYCLES_PER_US,
    DRIVERS_PER_HEMISPHERE,
    HEMISPHERES,
    LABELS_PER_DRIVER,
    SPEEDUP,
    WEIGHT_MAX,
)

FORMAT = "fs-hw-bss2-export"
VERSION = 1
#: source kinds
HOST_INPUT, BIAS, NEURON = 0, 1, 2


def event_label(driver: np.ndarray, synapse_label: np.ndarray) -> np.ndarray:
    """16-bit spike label: bits 14-15 the PADI bus (driver // 32), bits 6-10 the row
    select (driver % 32), bits 0-5 the synapse label."""
    driver = np.asarray(driver, np.int64)
    return (((driver // 32) << 14) | ((driver % 32) << 6) | np.asarray(synapse_label, np.int64)).astype(np.uint16)


def label_fields(label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(driver, synapse label)`` of 16-bit spike labels."""
    label = np.asarray(label, np.int64)
    return ((label >> 14) & 0x3) * 32 + ((label >> 6) & 0x1F), label & 0x3F


@dataclass
class Export:
    """Everything the chip and the host need, as flat arrays (see docs/bss2-format.md)."""

    manifest: dict
    tables: dict[str, np.ndarray]
    events: dict[str, np.ndarray] = field(default_factory=dict)

    def write(self, folder: Path) -> list[Path]:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        out = []
        for name, arrays in (("network.npz", self.tables), ("events.npz", self.events)):
            tmp = folder / f".{name}.tmp"
            with open(tmp, "wb") as fh:
                np.savez_compressed(fh, **arrays)
            tmp.replace(folder / name)
            out.append(folder / name)
        out.insert(0, atomic_write_json(folder / "manifest.json", self.manifest))
        return out


def read_export(folder: Path) -> Export:
    """An export read back (no pickle: ``allow_pickle=False``); a malformed one is refused
    naming the file and the problem."""
    folder = Path(folder)
    try:
        manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValidationError(str(folder / "manifest.json"), "manifest", f"unreadable ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ValidationError(str(folder / "manifest.json"), "format", f"is not {FORMAT!r}")
    if manifest.get("version") != VERSION:
        raise ValidationError(str(folder / "manifest.json"), "version",
                              f"is {manifest.get('version')!r}; this replayer reads version {VERSION}")
    arrays = {}
    for name in ("network.npz", "events.npz"):
        try:
            with np.load(folder / name, allow_pickle=False) as z:
                arrays[name] = {k: z[k] for k in z.files}
        except (OSError, ValueError, EOFError) as exc:
            raise ValidationError(str(folder / name), "arrays", f"unreadable ({exc})") from None
    missing = [k for k in TABLE_FIELDS if k not in arrays["network.npz"]]
    if missing:
        raise ValidationError(str(folder / "network.npz"), "tables", f"missing {missing}")
    return Export(manifest, arrays["network.npz"], arrays["events.npz"])


TABLE_FIELDS = (
    "source_kind", "source_layer", "source_cell",
    "neuron_instance", "neuron_layer", "neuron_cell", "neuron_threshold", "neuron_rest", "neuron_readout",
    "neuron_hemisphere", "neuron_first_column", "neuron_circuits", "neuron_label",
    "synapse_instance", "synapse_hemisphere", "synapse_row", "synapse_column", "synapse_weight", "synapse_label",
    "route_instance", "route_source", "route_hemisphere", "route_label",
)


@dataclass
class _Neuron:
    layer: int
    cell: int
    threshold: int
    rest: int
    readout: bool
    inputs: list[tuple[int, int]]  # (source id, signed weight within [-63, 63]), one per synapse


def _split(weight: int) -> list[int]:
    """A weight as synapses of at most 63 (same sign)."""
    sign = 1 if weight > 0 else -1
    mag = abs(int(weight))
    parts = [WEIGHT_MAX] * (mag // WEIGHT_MAX)
    if mag % WEIGHT_MAX:
        parts.append(mag % WEIGHT_MAX)
    return [sign * p for p in parts]


def build_export(network: Network, unrolled: UnrolledNetwork | None = None, step_cycles: int = 1250) -> Export:
    """Instances, placement and routing of the integer ``network`` (no events yet:
    :func:`add_events` adds a batch's)."""
    u = unrolled if unrolled is not None else unroll(network)
    layer_names = [n for n in u.layers]
    layer_index = {n: i for i, n in enumerate(layer_names)}
    # sources: every cell of every layer (host inputs, the bias source, FS cells)
    src_base: dict[str, int] = {}
    kinds, s_layer, s_cell = [], [], []
    for name, layer in u.layers.items():
        src_base[name] = len(kinds)
        kind = {"input": HOST_INPUT, "bias": BIAS}.get(layer.kind, NEURON)
        kinds.extend([kind] * layer.cells)
        s_layer.extend([layer_index[name]] * layer.cells)
        s_cell.extend(range(layer.cells))
    # the inputs of every receiver cell
    inputs: dict[str, list[list[tuple[int, int]]]] = {
        name: [[] for _ in range(layer.cells)] for name, layer in u.layers.items() if layer.kind in ("fs", "readout")}
    for g in u.groups:
        base = src_base[g.pre]
        dst = inputs[g.post]
        for pre, post, w in zip(g.pre_idx.tolist(), g.post_idx.tolist(), g.weight.tolist()):
            for part in _split(w):
                dst[post].append((base + pre, part))
    # instances: per receiver layer (stage order) and step, packed onto chips
    order = sorted((ly for ly in u.layers.values() if ly.kind in ("fs", "readout")), key=lambda ly: ly.stage)
    instances: list[dict] = []
    neurons: list[tuple[int, _Neuron, int, int, int]] = []  # (instance, neuron, hemisphere, column, circuits)
    synapses: list[tuple[int, int, int, int, int, int]] = []  # instance, hemisphere, row, column, weight, label
    routes: list[tuple[int, int, int, int]] = []  # instance, source, hemisphere, label
    for layer in order:
        cpn = layer.cells_per_neuron
        for t in range(cpn):
            cells = [j * cpn + t for j in range(layer.neurons)]
            chip = _Chip(len(instances))
            for cell in cells:
                ins = sorted(inputs[layer.name][cell])
                rest = -int(layer.gate[t]) if layer.kind == "fs" else 0
                neuron = _Neuron(layer_index[layer.name], cell,
                                 int(layer.threshold[t]) if layer.kind == "fs" else 2**62, rest,
                                 layer.kind == "readout", ins)
                n_circ = max(1, math.ceil(len(ins) / DRIVERS_PER_HEMISPHERE))
                check_usage(BSS2_LIMITS, {"circuits_per_neuron": n_circ}, layer.name,
                            part=f"step {t}, cell {cell}",
                            hint=f"its fan-in is {len(ins)} synapses (6-bit parts of every weight, bias, reset)")
                placed = chip.place(neuron, n_circ)
                if placed is None:
                    instances.append(chip.summary(layer.name, t))
                    chip.emit(neurons, synapses, routes)
                    chip = _Chip(len(instances))
                    placed = chip.place(neuron, n_circ)
                    if placed is None:  # pragma: no cover - an empty chip takes any neuron that passed the check
                        raise FSHWError(f"layer {layer.name!r}: a neuron does not fit an empty chip")
            instances.append(chip.summary(layer.name, t))
            chip.emit(neurons, synapses, routes)
    n = np.array
    tables = {
        "source_kind": n(kinds, np.uint8), "source_layer": n(s_layer, np.int32), "source_cell": n(s_cell, np.int64),
        "neuron_instance": n([x[0] for x in neurons], np.int32),
        "neuron_layer": n([x[1].layer for x in neurons], np.int32),
        "neuron_cell": n([x[1].cell for x in neurons], np.int64),
        "neuron_threshold": n([x[1].threshold for x in neurons], np.int64),
        "neuron_rest": n([x[1].rest for x in neurons], np.int64),
        "neuron_readout": n([x[1].readout for x in neurons], np.bool_),
        "neuron_hemisphere": n([x[2] for x in neurons], np.uint8),
        "neuron_first_column": n([x[3] for x in neurons], np.uint16),
        "neuron_circuits": n([x[4] for x in neurons], np.uint16),
        "neuron_label": n([x[2] * CIRCUITS_PER_HEMISPHERE + x[3] for x in neurons], np.uint16),
        "synapse_instance": n([x[0] for x in synapses], np.int32),
        "synapse_hemisphere": n([x[1] for x in synapses], np.uint8),
        "synapse_row": n([x[2] for x in synapses], np.uint16),
        "synapse_column": n([x[3] for x in synapses], np.uint16),
        "synapse_weight": n([x[4] for x in synapses], np.uint8),
        "synapse_label": n([x[5] for x in synapses], np.uint8),
        "route_instance": n([x[0] for x in routes], np.int32),
        "route_source": n([x[1] for x in routes], np.int64),
        "route_hemisphere": n([x[2] for x in routes], np.uint8),
        "route_label": n([x[3] for x in routes], np.uint16),
    }
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "units": {
            "time": "FPGA clock cycles (uint64)", "cycles_per_us": CYCLES_PER_US, "speedup": SPEEDUP,
            "step_cycles": int(step_cycles),
            "weight": "unsigned 6-bit magnitude (0..63) per synapse; even rows excitatory, odd rows inhibitory",
            "threshold": "weight steps above the rest level (integer)",
        },
        "K": u.K,
        "layers": [{"name": name, "kind": u.layers[name].kind, "shape": list(u.layers[name].shape),
                    "stage": u.layers[name].stage, "cells": u.layers[name].cells} for name in layer_names],
        "input_layer": layer_index[u.input], "readout_layer": layer_index[u.readout],
        "bias_source": src_base[BIAS_SOURCE],
        "instances": instances,
        "chips": len(instances),
        "circuits": int(sum(x[4] for x in neurons)),
        "rows": int(len({(x[0], x[1], x[2]) for x in synapses})),
        "synapses": len(synapses),
        "realisation": REALISATION,
    }
    return Export(manifest, tables)


REALISATION = {
    "threshold schedule": "time-unrolled: one logical neuron per FS step t with the fixed threshold T(t)",
    "reset": "the neuron's spikes at earlier steps s < t are replayed by the host to step t's instance on an "
             "inhibitory row with weight h(s) (split over synapses of <= 63)",
    "d(t) weighting": "per-step weights w*d(s) in 6 bits + sign per synapse, one synapse per (source step, "
                      "decision step)",
    "skip alignment": "the host replays recorded spikes of any earlier instance: no on-chip delays are needed",
    "bias": "one host source per sample, sent to every neuron with a bias (split over synapses of <= 63)",
    "threshold <= 0": "the neuron rests at -G (G > -T) and the bias source adds +G in its step (a gate)",
    "read-out": "the membrane of the read-out neurons at the end of their step window (CADC read)",
    "unsupported": "analog leak, synaptic time constants and membrane noise are not part of the digital "
                   "semantics; the Monte-Carlo model varies weights, thresholds and adds noise",
}


class _Chip:
    """Greedy packing of one (layer, step) instance's logical neurons onto one chip."""

    def __init__(self, instance: int):
        self.instance = instance
        self.free = [0] * HEMISPHERES  # next free column per hemisphere
        self.labels: list[list[dict[int, int]]] = [[{} for _ in range(DRIVERS_PER_HEMISPHERE)]
                                                  for _ in range(HEMISPHERES)]
        self.placed: list[tuple[_Neuron, int, int, int]] = []

    def place(self, neuron: _Neuron, n_circ: int) -> tuple[int, int] | None:
        for hemi in range(HEMISPHERES):
            col = self.free[hemi]
            if col + n_circ > CIRCUITS_PER_HEMISPHERE:
                continue
            # every input slot k uses driver k % 128 of circuit col + k // 128; its source
            # needs a synapse label there (at most 64 sources per driver)
            drivers = self.labels[hemi]
            new: dict[int, set[int]] = {}
            ok = True
            for k, (src, _) in enumerate(neuron.inputs):
                d = k % DRIVERS_PER_HEMISPHERE
                if src in drivers[d] or src in new.get(d, ()):
                    continue
                new.setdefault(d, set()).add(src)
                if len(drivers[d]) + len(new[d]) > LABELS_PER_DRIVER:
                    ok = False
                    break
            if not ok:
                continue
            for d, srcs in new.items():
                for src in sorted(srcs):
                    drivers[d][src] = len(drivers[d])
            self.free[hemi] = col + n_circ
            self.placed.append((neuron, hemi, col, n_circ))
            return hemi, col
        return None

    def summary(self, layer: str, step: int) -> dict:
        return {"layer": layer, "step": step, "neurons": len(self.placed),
                "circuits": sum(self.free), "drivers_used": sum(1 for h in self.labels for d in h if d)}

    def emit(self, neurons, synapses, routes) -> None:
        for neuron, hemi, col, n_circ in self.placed:
            neurons.append((self.instance, neuron, hemi, col, n_circ))
            for k, (src, w) in enumerate(neuron.inputs):
                d = k % DRIVERS_PER_HEMISPHERE
                row = 2 * d + (0 if w > 0 else 1)
                synapses.append((self.instance, hemi, row, col + k // DRIVERS_PER_HEMISPHERE, abs(w),
                                 self.labels[hemi][d][src]))
        for hemi in range(HEMISPHERES):
            for d, srcs in enumerate(self.labels[hemi]):
                for src, lab in srcs.items():
                    routes.append((self.instance, src, hemi, int(event_label(d, lab))))


def add_events(export: Export, input_spikes: np.ndarray, expected: dict | None = None) -> None:
    """Per sample, the host's events (input code spikes and the bias source, as (cycle,
    hemisphere, label) per instance) and, when ``expected`` (the reference's spike trains
    per layer and read-outs) is given, the expected output events and read-out values."""
    t = export.tables
    m = export.manifest
    K = m["K"]
    step = m["units"]["step_cycles"]
    N = len(input_spikes)
    z = np.asarray(input_spikes).reshape(N, K, -1)
    inp_layer = m["input_layer"]
    kinds = t["source_kind"]
    src_ids = np.flatnonzero(t["source_layer"] == inp_layer)
    host_sources = np.flatnonzero(kinds != NEURON)
    # spikes of host sources per sample: input cells (j*K + s) and the bias source
    spiking = []
    for n in range(N):
        cells = np.flatnonzero(z[n].T.reshape(-1))  # cell index j*K + s
        spiking.append(np.concatenate([src_ids[cells], [m["bias_source"]]]))
    is_host_route = np.isin(t["route_source"], host_sources)
    r_inst, r_src = t["route_instance"][is_host_route], t["route_source"][is_host_route]
    r_hemi, r_lab = t["route_hemisphere"][is_host_route], t["route_label"][is_host_route]
    order = np.argsort(r_src, kind="stable")
    r_inst, r_src, r_hemi, r_lab = r_inst[order], r_src[order], r_hemi[order], r_lab[order]
    ev_sample, ev_inst, ev_cycle, ev_hemi, ev_label = [], [], [], [], []
    for n, srcs in enumerate(spiking):
        lo = np.searchsorted(r_src, srcs, side="left")
        hi = np.searchsorted(r_src, srcs, side="right")
        idx = np.concatenate([np.arange(a, b) for a, b in zip(lo, hi)]) if len(srcs) else np.zeros(0, np.int64)
        ev_sample.append(np.full(len(idx), n, np.int64))
        ev_inst.append(r_inst[idx])
        ev_cycle.append(np.full(len(idx), n * step, np.uint64))
        ev_hemi.append(r_hemi[idx])
        ev_label.append(r_lab[idx])
    cat = np.concatenate
    order = np.lexsort((cat(ev_label), cat(ev_hemi), cat(ev_cycle), cat(ev_inst))) if N else np.zeros(0, np.int64)
    export.events = {
        "samples": np.array(N, np.int64),
        "input_sample": cat(ev_sample)[order], "input_instance": cat(ev_inst)[order].astype(np.int32),
        "input_cycle": cat(ev_cycle)[order].astype(np.uint64), "input_hemisphere": cat(ev_hemi)[order],
        "input_label": cat(ev_label)[order].astype(np.uint16),
    }
    if expected is not None:
        out_sample, out_inst, out_cycle, out_label = [], [], [], []
        nl, nc = t["neuron_layer"], t["neuron_cell"]
        names = [ly["name"] for ly in m["layers"]]
        for i in np.flatnonzero(~t["neuron_readout"]):
            name = names[nl[i]]
            cpn = m["K"]
            j, s = divmod(int(nc[i]), cpn)
            fired = np.flatnonzero(np.asarray(expected[name]).reshape(N, K, -1)[:, s, j])
            out_sample.append(fired)
            out_inst.append(np.full(len(fired), t["neuron_instance"][i], np.int32))
            out_cycle.append((fired * step + step - 1).astype(np.uint64))
            out_label.append(np.full(len(fired), t["neuron_label"][i], np.uint16))
        order = np.lexsort((cat(out_label), cat(out_cycle), cat(out_inst))) if out_sample else np.zeros(0, np.int64)
        export.events.update({
            "expected_sample": cat(out_sample)[order].astype(np.int64) if out_sample else np.zeros(0, np.int64),
            "expected_instance": cat(out_inst)[order] if out_sample else np.zeros(0, np.int32),
            "expected_cycle": cat(out_cycle)[order] if out_sample else np.zeros(0, np.uint64),
            "expected_label": cat(out_label)[order] if out_sample else np.zeros(0, np.uint16),
            "expected_readout": np.asarray(expected["__readout__"], np.int64),
        })


def check_fits(export: Export, max_instances: int) -> None:
    n = len(export.manifest["instances"])
    if n > max_instances:
        raise ResourceError(
            f"the network needs {n} execution instances (one chip configuration per layer and FS step, "
            f"{export.manifest['circuits']} circuits in all), above the limit {max_instances} (config max_instances)"
        )
