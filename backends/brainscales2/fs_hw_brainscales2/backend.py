"""`BrainScaleS2Backend`: the ``brainscales2`` target of fs-deploy (entry point ``fs_hw.backends``)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from fs_hw.backend import (
    BIT_EXACT,
    Artifact,
    Capabilities,
    LayerResources,
    Quantized,
    Resources,
    Runner,
    RunResult,
    as_quantized,
    check_config_K,
    choose_runner,
    parse_target_config,
)
from fs_hw.ir import NODE_TYPES, Network
from fs_hw.ir.io import save_network
from fs_hw.lower.unroll import check_alignment, unroll
from fs_hw.reference.simulator import concat_results, run_reference
from fs_hw_brainscales2.config import BSS2_LIMITS, BrainScaleS2Config
from fs_hw_brainscales2.export import Export, add_events, build_export, check_fits
from fs_hw_brainscales2.profile import bss2_profile
from fs_hw_brainscales2.replay import Replayer, Variation, compare_with_expected, replay

MAPPING_NOTE = (
    "mapping: time-unrolled FS neurons; every (layer, FS step) is an execution instance whose logical neurons "
    "decide once per sample from host events (input spikes, the bias source, recorded spikes of earlier "
    "instances: resets and skip connections need no on-chip delays); 6-bit weights + sign per synapse, larger "
    "integers split over several synapses"
)


class BrainScaleS2Backend:
    """BrainScaleS-2 as a file export (docs/bss2-format.md) and its replayer (runner
    ``replay``: the chip's digital semantics, read from the written files only)."""

    name = "brainscales2"
    capabilities = Capabilities(
        node_kinds=frozenset(NODE_TYPES),
        firing_rules=frozenset({">", ">="}),
        weight_bits=6,
        fan_in=128,
        neurons_per_core=512,
        max_K=None,
        notes="512 circuits per chip, signed fan-in 128 per circuit (logical neurons merge circuits); "
              "6-bit weights; one execution instance per layer and FS step",
    )
    config_type = BrainScaleS2Config
    limits = BSS2_LIMITS
    runners = (Runner("replay", "the export's independent replayer (the chip's digital semantics)"),)
    exactness = BIT_EXACT
    unsupported_scenarios: dict[str, str] = {}

    def quantize(self, network: Network, config: Any = None) -> Quantized:
        cfg = parse_target_config(self, config)
        check_config_K(self.name, cfg, network)
        int_net, profile, notes, info = bss2_profile(network, cfg.synapses_per_weight)
        return Quantized(self.name, int_net, profile, notes, info)

    def lower(self, quantized: Quantized | Network, config: Any = None) -> Artifact:
        cfg = parse_target_config(self, config)
        q = as_quantized(self, quantized, cfg)
        u = unroll(q.network)
        check_alignment(u)
        export = build_export(q.network, u, cfg.step_cycles)
        check_fits(export, cfg.max_instances)
        m = export.manifest
        # synapses per layer: each instance belongs to one layer
        inst_layer = np.array([i["layer"] for i in m["instances"]], dtype=object)
        per_inst = np.bincount(export.tables["synapse_instance"], minlength=len(inst_layer))
        layers = {}
        for name, layer in u.layers.items():
            insts = [i for i in m["instances"] if i["layer"] == name]
            layers[name] = LayerResources(
                name=name, kind=layer.kind, parts=len(insts), neurons_per_part=layer.neurons,
                units=sum(i["circuits"] for i in insts) if insts else layer.cells,
                weights=u.weights.get(name, 0),
                synapse_entries=int(per_inst[inst_layer == name].sum()),
                split=f"{len(insts)} instance(s): one per FS step, split where a chip's 512 circuits or 64 labels "
                      "per driver run out" if insts else "host",
            )
        resources = Resources(
            cores=m["chips"], chips=m["chips"], neurons=int(sum(ly.cells for ly in u.layers.values()
                                                                if ly.kind in ("fs", "readout"))),
            time_steps_per_sample=1, latency_steps=len(m["instances"]), layers=layers,
            extra={"execution_instances": len(m["instances"]), "circuits": m["circuits"], "rows": m["rows"],
                   "synapses": m["synapses"], "step_cycles": cfg.step_cycles,
                   "note": "cores = chip configurations (execution instances); each runs one step of one layer"},
        )
        return Artifact(target=self.name, network=q.network, profile=q.profile, payload=export,
                        resources=resources, notes=[*q.notes, MAPPING_NOTE], config=cfg)

    def _batch(self, artifact: Artifact, x: np.ndarray) -> tuple[Export, RunResult]:
        """The export with this batch's host events and the reference's expected outputs."""
        expected = run_reference(artifact.network, x, "fast", artifact.profile, record_spikes=True)
        trains = dict(expected.spike_trains)
        trains["__readout__"] = expected.outputs
        export: Export = artifact.payload
        add_events(export, expected.spike_trains[artifact.network.input.name], trains)
        return export, expected

    def run(self, artifact: Artifact, inputs: np.ndarray, record_spikes: bool = False,
            runner: str | None = None, variation: Variation | None = None) -> RunResult:
        choose_runner(self.runners, runner, self.name)
        cfg: BrainScaleS2Config = artifact.config
        x = np.asarray(inputs)
        if x.ndim == len(artifact.network.input.shape):
            x = x[None]
        parts = []
        for i in range(0, max(len(x), 1), cfg.batch_size):
            chunk = x[i : i + cfg.batch_size]
            export, expected = self._batch(artifact, chunk)
            # the proof: the replayer reads only the written files
            with tempfile.TemporaryDirectory(prefix="fs-hw-bss2-") as tmp:
                export.write(Path(tmp))
                result = replay(Path(tmp), variation)
                check = compare_with_expected(Path(tmp), result)
            part = _run_result(export, result, artifact, chunk, expected.spike_trains[artifact.network.input.name])
            # the export's own expected events against its replay (every event of every instance)
            part.info["export_events_expected"] = check.get("events", 0)
            part.info["export_events_missing"] = check.get("missing", 0)
            part.info["export_events_extra"] = check.get("extra", 0)
            part.info["chip_events"] = result.events
            part.info["output_events"] = len(result.out_label)
            parts.append(part)
        return concat_results(parts)

    def monte_carlo(self, artifact: Artifact, images: np.ndarray, labels: np.ndarray,
                    scales: tuple[float, ...] = (0.0, 0.5, 1.0, 2.0)) -> dict:
        """Accuracy over ``monte_carlo_chips`` simulated analog chips at the configured
        mismatch, and at multiples of it (``scales``): mean and spread."""
        cfg: BrainScaleS2Config = artifact.config
        chips = cfg.monte_carlo_chips
        if chips == 0:
            return {"chips": 0}
        # the exact replay of these files is what run() proves; the simulated chips vary
        # the same tables in memory
        ex, _ = self._batch(artifact, images)
        replayer = Replayer(ex)
        out = {"chips": chips, "weight_mismatch": cfg.weight_mismatch, "threshold_mismatch_lsb": cfg.threshold_mismatch,
               "noise_lsb": cfg.noise, "sweep": []}
        for scale in scales:
            accs = []
            for c in range(chips if scale > 0 else 1):
                var = Variation(cfg.weight_mismatch * scale, cfg.threshold_mismatch * scale, cfg.noise * scale,
                                seed=cfg.seed + 1000 * c + 1)
                r = _run_result(ex, replayer.run(var), artifact, images)
                accs.append(float(np.mean(r.predictions == labels)))
            out["sweep"].append({"scale": scale, "mean": float(np.mean(accs)), "std": float(np.std(accs)),
                                 "min": float(np.min(accs)), "max": float(np.max(accs))})
        at1 = next(s for s in out["sweep"] if s["scale"] == 1.0)
        out["mean"], out["std"] = at1["mean"], at1["std"]
        return out

    def export(self, artifact: Artifact, path: Path) -> list[Path]:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        files = artifact.payload.write(path / "bss2_export")
        files.append(save_network(artifact.network, path / "brainscales2_profile.fsnet", overwrite=True))
        return files


def _run_result(export: Export, result, artifact: Artifact, x: np.ndarray,
                host_input: np.ndarray | None = None) -> RunResult:
    t, m = export.tables, export.manifest
    N = len(x)
    names = [ly["name"] for ly in m["layers"]]
    K = m["K"]
    trains: dict[str, np.ndarray] = {}
    net = artifact.network
    if host_input is not None:  # the input code runs on the host: its spikes are what it sent
        trains[net.input.name] = np.asarray(host_input, np.uint8)
    for li, name in enumerate(names):
        ly = m["layers"][li]
        if ly["kind"] != "fs":
            continue
        sel = np.flatnonzero((t["neuron_layer"] == li) & ~t["neuron_readout"])
        z = np.zeros((N, ly["cells"]), np.uint8)
        z[:, t["neuron_cell"][sel]] = result.fired[:, sel]
        trains[name] = z.reshape(N, -1, K).transpose(0, 2, 1).reshape(N, K, *ly["shape"])
    ro_sel = np.flatnonzero(t["neuron_readout"])
    outputs = np.zeros((N, len(ro_sel)))
    outputs[:, t["neuron_cell"][ro_sel]] = result.membrane[:, ro_sel]
    if np.all(np.abs(outputs - np.rint(outputs)) == 0):
        outputs = np.rint(outputs).astype(np.int64)
    counts = {k: v.reshape(N, -1).sum(axis=1).astype(np.int64) for k, v in trains.items()}
    neurons = {k: int(np.prod(v.shape[2:])) for k, v in trains.items()}
    return RunResult(outputs=outputs, predictions=np.argmax(outputs, axis=1), spike_counts=counts,
                     neurons=neurons, time_steps=net.time_steps, spike_trains=trains,
                     info={"runner": "replay", "samples": N, "instances": len(m["instances"])},
                     input_name=net.input.name)
