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
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from fs_hw.errors import FormatError, FSHWError, ValidationError
from fs_hw.ir import Network
from fs_hw.lower.limits import LimitTable, check_usage
from fs_hw.lower.unroll import BIAS_SOURCE, UnrolledNetwork, unroll
from fs_hw.outputs import atomic_write_json
from fs_hw.safe_archive import SafeArchive
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
#: the most inflated bytes one npz of an export may hold (a lenet export holds ~0.6 GB)
MAX_EXPORT_BYTES = 8 * 2**30
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
        # fs-hw's bounded zip reader: no pickle, sizes checked before anything is allocated
        try:
            with SafeArchive(folder / name, MAX_EXPORT_BYTES, "BrainScaleS-2 export") as archive:
                arrays[name] = {n[:-4]: archive.read_npy(n, kinds="biuf", where=f"{folder / name}: {n[:-4]}")
                                for n in archive.names if n.endswith(".npy")}
        except (FormatError, OSError) as exc:
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


def split_weights(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every integer weight as synapses of at most 63 (same sign): ``(index of the weight
    each synapse belongs to, the synapse's signed weight)``."""
    w = np.asarray(weight, np.int64)
    mag = np.abs(w)
    parts = -(-mag // WEIGHT_MAX)  # ceil
    owner = np.repeat(np.arange(len(w)), parts)
    first = np.repeat(np.cumsum(parts) - parts, parts)
    k = np.arange(len(owner)) - first  # part number within its weight
    full = mag[owner] // WEIGHT_MAX
    value = np.where(k < full, WEIGHT_MAX, mag[owner] - full * WEIGHT_MAX)
    return owner, np.sign(w[owner]) * value


def build_export(network: Network, unrolled: UnrolledNetwork | None = None, step_cycles: int = 1250) -> Export:
    """Instances, placement and routing of the integer ``network`` (no events yet:
    :func:`add_events` adds a batch's)."""
    u = unrolled if unrolled is not None else unroll(network)
    layer_names = list(u.layers)
    layer_index = {n: i for i, n in enumerate(layer_names)}
    # sources: every cell of every layer (host inputs, the bias source, FS cells)
    src_base: dict[str, int] = {}
    kinds, s_layer, s_cell = [], [], []
    for name, layer in u.layers.items():
        src_base[name] = sum(len(k) for k in kinds)
        kind = {"input": HOST_INPUT, "bias": BIAS}.get(layer.kind, NEURON)
        kinds.append(np.full(layer.cells, kind, np.uint8))
        s_layer.append(np.full(layer.cells, layer_index[name], np.int32))
        s_cell.append(np.arange(layer.cells, dtype=np.int64))
    n_sources = int(sum(len(k) for k in kinds))
    # every synapse: (receiver layer, receiver cell, source id, weight <= 63)
    post_layer, post_cell, source, weight = [], [], [], []
    for g in u.groups:
        owner, w = split_weights(g.weight)
        post_layer.append(np.full(len(w), layer_index[g.post], np.int32))
        post_cell.append(g.post_idx[owner])
        source.append(src_base[g.pre] + g.pre_idx[owner])
        weight.append(w)
    cat = np.concatenate
    post_layer, post_cell, source, weight = cat(post_layer), cat(post_cell), cat(source), cat(weight)
    order = np.lexsort((weight, source, post_cell, post_layer))
    post_layer, post_cell, source, weight = post_layer[order], post_cell[order], source[order], weight[order]
    key = post_layer.astype(np.int64) * (1 << 40) + post_cell
    # instances: per receiver layer (stage order) and step, packed onto chips
    layers = sorted((ly for ly in u.layers.values() if ly.kind in ("fs", "readout")), key=lambda ly: ly.stage)
    instances: list[dict] = []
    out = _Tables()
    for layer in layers:
        li = layer_index[layer.name]
        cpn = layer.cells_per_neuron
        for t in range(cpn):
            chip = _Chip(len(instances), n_sources)
            for j in range(layer.neurons):
                cell = j * cpn + t
                k0, k1 = np.searchsorted(key, [li * (1 << 40) + cell, li * (1 << 40) + cell + 1])
                src, w = source[k0:k1], weight[k0:k1]
                n_circ = max(1, math.ceil(len(w) / DRIVERS_PER_HEMISPHERE))
                check_usage(BSS2_LIMITS, {"circuits_per_neuron": n_circ}, layer.name, part=f"step {t}, cell {cell}",
                            hint=f"its fan-in is {len(w)} synapses (6-bit parts of every weight, bias, reset)")
                neuron = (li, cell, int(layer.threshold[t]) if layer.kind == "fs" else 2**62,
                          -int(layer.gate[t]) if layer.kind == "fs" else 0, layer.kind == "readout")
                if not chip.place(neuron, src, w, n_circ):
                    instances.append(chip.summary(layer.name, t))
                    chip.emit(out)
                    chip = _Chip(len(instances), n_sources)
                    if not chip.place(neuron, src, w, n_circ):  # pragma: no cover - checked above
                        raise FSHWError(f"layer {layer.name!r}: a neuron does not fit an empty chip")
            instances.append(chip.summary(layer.name, t))
            chip.emit(out)
    tables = {"source_kind": cat(kinds), "source_layer": cat(s_layer), "source_cell": cat(s_cell), **out.arrays()}
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
        "circuits": int(tables["neuron_circuits"].sum()),
        "rows": int(sum(i["drivers_used"] for i in instances) * 2),
        "synapses": int(len(tables["synapse_weight"])),
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


class _Tables:
    """Columns of the neuron, synapse and route tables, appended chip by chip."""

    def __init__(self):
        self.cols: dict[str, list[np.ndarray]] = {}

    def add(self, **columns: np.ndarray) -> None:
        for k, v in columns.items():
            self.cols.setdefault(k, []).append(np.asarray(v))

    def arrays(self) -> dict[str, np.ndarray]:
        dtypes = {
            "neuron_instance": np.int32, "neuron_layer": np.int32, "neuron_cell": np.int64,
            "neuron_threshold": np.int64, "neuron_rest": np.int64, "neuron_readout": np.bool_,
            "neuron_hemisphere": np.uint8, "neuron_first_column": np.uint16, "neuron_circuits": np.uint16,
            "neuron_label": np.uint16, "synapse_instance": np.int32, "synapse_hemisphere": np.uint8,
            "synapse_row": np.uint16, "synapse_column": np.uint16, "synapse_weight": np.uint8,
            "synapse_label": np.uint8, "route_instance": np.int32, "route_source": np.int64,
            "route_hemisphere": np.uint8, "route_label": np.uint16,
        }
        return {k: (np.concatenate(self.cols[k]) if self.cols.get(k) else np.zeros(0)).astype(dt)
                for k, dt in dtypes.items()}


class _Chip:
    """Greedy packing of one (layer, step) instance's logical neurons onto one chip.

    Input slot ``k`` of a logical neuron uses synapse driver ``k % 128`` of its circuit
    ``k // 128``; each (driver, source) pair of a hemisphere gets a 6-bit synapse label,
    at most 64 per driver. A neuron that would exceed that, or the hemisphere's 256
    columns, goes to the other hemisphere or the next chip.
    """

    def __init__(self, instance: int, n_sources: int):
        self.instance = instance
        self.n_sources = n_sources
        self.free = [0] * HEMISPHERES
        self.keys = [np.zeros(0, np.int64) for _ in range(HEMISPHERES)]  # sorted driver * n_sources + source
        self.key_labels = [np.zeros(0, np.int64) for _ in range(HEMISPHERES)]
        self.per_driver = [np.zeros(DRIVERS_PER_HEMISPHERE, np.int64) for _ in range(HEMISPHERES)]
        self.neurons: list[tuple] = []
        self.synapses: list[tuple] = []

    def place(self, neuron: tuple, src: np.ndarray, w: np.ndarray, n_circ: int) -> bool:
        k = np.arange(len(w))
        driver = k % DRIVERS_PER_HEMISPHERE
        keys = driver * self.n_sources + src
        for hemi in range(HEMISPHERES):
            col = self.free[hemi]
            if col + n_circ > CIRCUITS_PER_HEMISPHERE:
                continue
            known = self.keys[hemi]
            pos = np.searchsorted(known, keys)
            hit = (pos < len(known)) & (known[np.minimum(pos, len(known) - 1)] == keys) if len(known) else \
                np.zeros(len(keys), bool)
            new = np.unique(keys[~hit])
            new_driver = new // self.n_sources
            counts = self.per_driver[hemi] + np.bincount(new_driver, minlength=DRIVERS_PER_HEMISPHERE)
            if counts.max(initial=0) > LABELS_PER_DRIVER:
                continue
            # labels for the new pairs: the next free ones of their driver
            rank = np.arange(len(new)) - np.searchsorted(new_driver, new_driver)
            new_labels = self.per_driver[hemi][new_driver] + rank
            self.per_driver[hemi] = counts
            merged = np.concatenate([known, new])
            labels = np.concatenate([self.key_labels[hemi], new_labels])
            order = np.argsort(merged, kind="stable")
            self.keys[hemi], self.key_labels[hemi] = merged[order], labels[order]
            syn_label = self.key_labels[hemi][np.searchsorted(self.keys[hemi], keys)]
            self.free[hemi] = col + n_circ
            self.neurons.append((*neuron, hemi, col, n_circ))
            self.synapses.append((hemi, 2 * driver + (w < 0), col + k // DRIVERS_PER_HEMISPHERE, np.abs(w),
                                  syn_label))
            return True
        return False

    def summary(self, layer: str, step: int) -> dict:
        return {"layer": layer, "step": step, "neurons": len(self.neurons), "circuits": int(sum(self.free)),
                "drivers_used": int(sum(int(np.count_nonzero(d)) for d in self.per_driver))}

    def emit(self, out: _Tables) -> None:
        if self.neurons:
            nz = list(zip(*self.neurons))
            hemi, col = np.array(nz[5]), np.array(nz[6])
            out.add(neuron_instance=np.full(len(self.neurons), self.instance), neuron_layer=nz[0],
                    neuron_cell=nz[1], neuron_threshold=nz[2], neuron_rest=nz[3], neuron_readout=nz[4],
                    neuron_hemisphere=hemi, neuron_first_column=col, neuron_circuits=nz[7],
                    neuron_label=hemi * CIRCUITS_PER_HEMISPHERE + col)
        for hemi_, row, column, weight, label in self.synapses:
            out.add(synapse_instance=np.full(len(row), self.instance), synapse_hemisphere=np.full(len(row), hemi_),
                    synapse_row=row, synapse_column=column, synapse_weight=weight, synapse_label=label)
        for hemi in range(HEMISPHERES):
            keys = self.keys[hemi]
            if len(keys):
                driver, src = np.divmod(keys, self.n_sources)
                out.add(route_instance=np.full(len(keys), self.instance), route_source=src,
                        route_hemisphere=np.full(len(keys), hemi),
                        route_label=event_label(driver, self.key_labels[hemi]))


def add_events(export: Export, input_spikes: np.ndarray, expected: dict | None = None) -> None:
    """Per sample, the host's spikes (the input code's cells and the bias source) as
    ``(sample, cycle, source)``; the chip events they become are each spike times the
    source's routes (one ``(instance, hemisphere, label)`` per route, at the same cycle
    within the instance's run). With ``expected`` (the reference's spike trains per layer
    and ``"__readout__"``): the expected output events and read-out values."""
    t = export.tables
    m = export.manifest
    K = m["K"]
    step = m["units"]["step_cycles"]
    N = len(input_spikes)
    z = np.asarray(input_spikes).reshape(N, K, -1)
    src_ids = np.flatnonzero(t["source_layer"] == m["input_layer"])
    smp, s, j = np.nonzero(z)
    sample = np.concatenate([smp, np.arange(N)])
    source = np.concatenate([src_ids[j * K + s], np.full(N, m["bias_source"])])
    order = np.lexsort((source, sample))
    export.events = {
        "samples": np.array(N, np.int64),
        "host_sample": sample[order].astype(np.int64),
        "host_cycle": (sample[order] * step).astype(np.uint64),
        "host_source": source[order].astype(np.int64),
    }
    if expected is not None:
        # a neuron's expected spikes: its layer's reference spike train at (step, neuron)
        names = [ly["name"] for ly in m["layers"]]
        fs = np.flatnonzero(~t["neuron_readout"])
        out_sample, out_neuron = [], []
        for li in np.unique(t["neuron_layer"][fs]):
            sel = fs[t["neuron_layer"][fs] == li]
            j, s = np.divmod(t["neuron_cell"][sel], K)
            z_l = np.asarray(expected[names[li]]).reshape(N, K, -1)[:, s, j]  # (N, neurons)
            smp, idx = np.nonzero(z_l)
            out_sample.append(smp)
            out_neuron.append(sel[idx])
        smp = np.concatenate(out_sample) if out_sample else np.zeros(0, np.int64)
        neu = np.concatenate(out_neuron) if out_neuron else np.zeros(0, np.int64)
        inst = t["neuron_instance"][neu]
        cycle = (smp * step + step - 1).astype(np.uint64)
        label = t["neuron_label"][neu]
        order = np.lexsort((label, cycle, inst))
        export.events.update({
            "expected_sample": smp[order].astype(np.int64), "expected_instance": inst[order].astype(np.int32),
            "expected_cycle": cycle[order], "expected_label": label[order].astype(np.uint16),
            "expected_readout": np.asarray(expected["__readout__"], np.int64),
        })


def check_fits(export: Export, max_instances: int) -> None:
    """The instance count against the config's limit, through the shared limits checker."""
    limit = replace(BSS2_LIMITS["instances"], value=max_instances)
    check_usage(LimitTable((limit,)), {"instances": len(export.manifest["instances"])}, "network",
                hint=f"one chip configuration per layer and FS step, {export.manifest['circuits']} circuits in "
                     "all; raise max_instances in the [target] table or use a smaller network")
