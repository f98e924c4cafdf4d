"""The ``spinnaker`` runner: the same PyNN model on sPyNNaker.

No board is reachable from this project's machines, so the runner maps on sPyNNaker's
*virtual board* (:mod:`fs_hw_spinnaker.vboard`): partitioning, placement, routing, key
allocation and data generation run as for a board, nothing executes and no spikes come
back. The run result says so (``info["spikes_returned"] = False``) and carries what the
mapping produced; the artifact's resources are replaced by the mapped numbers, and the
ring-buffer shifts sPyNNaker chose are checked against the profile's (the weights the
board would hold are then the profile's, bit for bit).

A user whose own sPyNNaker config names a real machine is told that running on it is not
supported yet, rather than running something this project never tested.
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from fs_hw.backend import Artifact, RunResult
from fs_hw.errors import FSHWError, TargetNotFoundError
from fs_hw.ir import Network
from fs_hw.lower.unroll import unroll


def _user_names_a_board() -> str | None:
    """The machine the user's own sPyNNaker config names (``machine_name``/``spalloc_server``), if any."""
    import configparser

    for base in (os.environ.get("XDG_CONFIG_HOME"), os.path.expanduser("~")):
        if not base:
            continue
        path = Path(base) / ".spynnaker.cfg"
        if not path.is_file():
            continue
        cp = configparser.ConfigParser()
        try:
            cp.read(path, encoding="utf-8")
        except (configparser.Error, OSError, UnicodeDecodeError):
            continue
        for key in ("machine_name", "spalloc_server", "remote_spinnaker_url"):
            value = cp.get("Machine", key, fallback="").strip()
            if value and value.lower() != "none" and not cp.getboolean("Machine", "virtual_board", fallback=False):
                return f"{key} = {value} in {path}"
    return None


def build_for_spinnaker(sim, *, network: Network, gate_grid: dict[str, int], input_spikes: np.ndarray,
                        timestep_ms: float, max_summed: dict[str, dict[str, float]],
                        cells_per_population: int) -> None:
    """Module-level (picklable) build: unroll ``network`` in the mapping process and create
    the PyNN model, with each population's ``max_expected_summed_weight``."""
    from fs_hw_spinnaker.build import build_model
    from fs_hw_spinnaker.pynn_compat import connect_arrays

    u = unroll(network, gate_grid=gate_grid)

    def extra(name: str) -> dict:
        if name not in max_summed:
            return {}
        m = max_summed[name]
        return {"additional_parameters": {"max_expected_summed_weight": [m["excitatory"], m["inhibitory"]]}}

    build_model(sim, u, u.input_spike_ticks(input_spikes), len(input_spikes), timestep_ms, max_summed,
                connect=connect_arrays, record=True, extra_population_args=extra,
                cells_per_population=cells_per_population)


def map_artifact(artifact: Artifact, x: np.ndarray) -> RunResult:
    from fs_hw.reference.simulator import run_reference
    from fs_hw_spinnaker.vboard import map_on_virtual_board

    named = _user_names_a_board()
    if named is not None:
        raise TargetNotFoundError(
            f"target 'spinnaker': your sPyNNaker config names a real machine ({named}); running on a board is not "
            "supported by this version (only sPyNNaker's virtual board, for the mapping): use --runner nest for "
            "spikes"
        )
    cfg = artifact.config
    info_profile = artifact.network.metadata.get("spinnaker_profile", {})
    layers = info_profile.get("layers", {})
    max_summed = {k: v["max_summed_weight_mv"] for k, v in layers.items()}
    shifts = {k: v["ring_buffer_shift"] for k, v in layers.items()}
    gate_grid = {k: 2 ** int(v["ring_buffer_shift"]["excitatory"]) for k, v in layers.items()}
    host = run_reference(artifact.network, x, "fast", artifact.profile, record_spikes=True)
    spikes = host.spike_trains[artifact.network.input.name]
    u = artifact.payload
    run_ms = (u.ticks(len(x)) + 1) * cfg.timestep_ms
    build = functools.partial(build_for_spinnaker, network=artifact.network, gate_grid=gate_grid,
                              input_spikes=spikes, timestep_ms=cfg.timestep_ms, max_summed=max_summed,
                              cells_per_population=cfg.neurons_per_core)
    # sPyNNaker's reports go to a temporary folder (never the working folder); fs-deploy
    # --out copies them (export), and the folder is removed when the process ends
    report_dir = Path(tempfile.mkdtemp(prefix="fs-hw-spinnaker-"))
    atexit.register(shutil.rmtree, report_dir, True)
    report = map_on_virtual_board(build, report_dir=report_dir, machine=cfg.machine(), timestep_ms=cfg.timestep_ms,
                                  run_ms=run_ms, neurons_per_core=cfg.neurons_per_core)
    def layer_of(label: str) -> str:  # receivers are core-sized populations "name[k]"
        return label.split("[", 1)[0] if label.endswith("]") else label

    mapped_shifts = {label: list(pop.ring_buffer_shifts) for label, pop in report.populations.items()
                     if layer_of(label) in shifts and pop.ring_buffer_shifts is not None}
    mismatched = {label: (got, [shifts[layer_of(label)]["excitatory"], shifts[layer_of(label)]["inhibitory"]])
                  for label, got in mapped_shifts.items()
                  if got[:2] != [shifts[layer_of(label)]["excitatory"], shifts[layer_of(label)]["inhibitory"]]}
    cores_by_layer: dict[str, int] = {}
    for label, pop in report.populations.items():
        cores_by_layer[layer_of(label)] = cores_by_layer.get(layer_of(label), 0) + int(pop.n_cores)
    if mismatched:
        raise FSHWError(f"sPyNNaker chose other ring-buffer shifts than the profile (mapped, profile): {mismatched}; "
                        "the board would not hold the predicted weights")
    res = artifact.resources
    res.cores = int(report.cores_used)
    res.chips = int(report.chips_used)
    res.extra.update({
        "estimate": "mapped by sPyNNaker on a virtual board",
        "board": report.machine.describe(),
        "system_cores": dict(report.system_cores),
        "sdram_per_core_max_bytes": int(report.sdram_per_core_max_bytes),
        "sdram_total_bytes": int(report.sdram_total_bytes),
        "routing_entries_max": int(report.routing_entries_max),
        "routing_entries_total": int(report.routing_entries_total),
        "routing_entries_compressed_max": report.routing_entries_compressed_max,
        "ring_buffer_shifts_checked": f"{len(mapped_shifts)} populations: sPyNNaker chose the profile's shifts",
        "mapping_seconds": round(float(report.timings.get("total", report.timings.get("map", 0.0)) or 0.0), 3),
        "report_dir": str(report_dir),
    })
    for name, cores in cores_by_layer.items():
        if name in res.layers:
            res.layers[name].parts = cores
    n = len(x)
    empty = {k: np.zeros(n, np.int64) for k in host.spike_counts}
    return RunResult(input_name=artifact.network.input.name, outputs=np.zeros((n, 0)), predictions=np.full(n, -1),
                     spike_counts=empty,
                     neurons=dict(host.neurons), time_steps=host.time_steps, spike_trains=None,
                     info={"runner": "spinnaker", "spikes_returned": False,
                           "why_no_spikes": "sPyNNaker's virtual board maps but does not execute",
                           "samples": n, "seconds": float(report.timings.get("total", 0.0) or 0.0),
                           "mapping": report.summary() if hasattr(report, "summary") else ""})
