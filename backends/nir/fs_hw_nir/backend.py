"""`NIRBackend`: the ``nir`` target of fs-deploy (entry point ``fs_hw.backends``).

``lower`` builds the exact graph (:mod:`fs_hw_nir.exact`) of the network on the NIR grid
(:mod:`fs_hw_nir.profile`); ``run`` writes it to a file, reads it back with ``nir.read``
and runs what was read with the independent interpreter (:mod:`fs_hw_nir.interpret`);
``export`` writes ``exact.nir``, ``compact.nir`` (:mod:`fs_hw_nir.compact`) and the grid's
network as ``nir_grid.fsnet``.
"""

from __future__ import annotations

import io
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nir
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
from fs_hw.errors import ValidationError
from fs_hw.ir import NODE_TYPES, Network
from fs_hw.ir.io import save_network
from fs_hw.lower.limits import LimitTable
from fs_hw.outputs import atomic_write_bytes
from fs_hw_nir.compact import build_compact
from fs_hw_nir.config import NIRConfig
from fs_hw_nir.exact import METADATA_KEY, ExactGraph, build_exact
from fs_hw_nir.interpret import Interpreter
from fs_hw_nir.profile import FLOAT64_EXACT, GridInfo, nir_grid

EXACT_FILE, COMPACT_FILE, GRID_FILE = "exact.nir", "compact.nir", "nir_grid.fsnet"


@dataclass
class NIRPayload:
    """What lower made: the exact graph, the grid, and (after the first run) the graph as
    ``nir.read`` gave it back from the written file."""

    exact: ExactGraph
    grid: GridInfo
    read_back: Any = None
    file_bytes: int = 0


def graph_bytes(graph) -> bytes:
    """The NIR file of ``graph`` (HDF5, gzip) as bytes."""
    buf = io.BytesIO()
    nir.write(buf, graph)
    return buf.getvalue()


class NIRBackend:
    """NIR as two files (exact and compact graphs) and an interpreter of NIR's semantics
    (runner ``interpreter``) that runs the exact graph as read back from its file."""

    name = "nir"
    capabilities = Capabilities(
        node_kinds=frozenset(NODE_TYPES),
        firing_rules=frozenset({">", ">="}),
        notes="exact graph: NIR's stateless nodes (Affine, Conv2d, SumPool2d, Flatten, Scale, Threshold, Delay) "
              "on an integer grid; compact graph: IF nodes with the FS tables in metadata",
    )
    config_type = NIRConfig
    limits = LimitTable(())
    runners = (Runner("interpreter", "the independent NIR interpreter on the exact graph read back by nir.read"),)
    exactness = BIT_EXACT
    unsupported_scenarios: dict[str, str] = {}

    def quantize(self, network: Network, config: Any = None) -> Quantized:
        cfg = parse_target_config(self, config)
        check_config_K(self.name, cfg, network)
        int_net, profile, notes, info = nir_grid(network, cfg.weight_bits, cfg.input_scale)
        return Quantized(self.name, int_net, profile, notes, info)

    def lower(self, quantized: Quantized | Network, config: Any = None) -> Artifact:
        cfg = parse_target_config(self, config)
        q = as_quantized(self, quantized, cfg)
        exact = build_exact(q.network, q.info)
        plan = exact.plan
        layers = {}
        for entry in plan["spiking"]:
            neurons = int(np.prod(entry["shape"]))
            layers[entry["node"]] = LayerResources(
                name=entry["node"], kind=entry["kind"], parts=len(entry["cells"]), neurons_per_part=neurons,
                units=neurons * len(entry["cells"]),
                split="one Threshold node per FS step (decision tick stage*K + t)")
        resources = Resources(
            neurons=sum(ly.units for ly in layers.values()), time_steps_per_sample=plan["ticks"],
            latency_steps=plan["ticks"], layers=layers,
            extra={"nir_nodes": exact.nodes, "nir_node_types": dict(sorted(exact.node_types.items())),
                   "nir_edges": len(exact.graph.edges), "grid_weight_bits": cfg.weight_bits,
                   "grid_max_abs_sum": q.info.max_abs_sum, "float32_exact": q.info.float32_exact,
                   "note": "neurons = Threshold cells (K per FS neuron); ticks = FS steps until the read-out"})
        notes = [*q.notes, "NIR exact graph: time-unrolled FS neurons as Threshold nodes (threshold T-1 on the "
                 "integer grid: NIR fires on '>'), resets as Scale(-h) through Delay(1), per-step weights through "
                 "Delay((b-a)K - s); the interpreter runs the file as read back by nir.read"]
        return Artifact(self.name, q.network, q.profile, payload=NIRPayload(exact, q.info), resources=resources,
                        notes=notes, config=cfg)

    def _read_back(self, payload: NIRPayload):
        """The exact graph written to a file and read back with ``nir.read`` (once per artifact)."""
        if payload.read_back is None:
            data = graph_bytes(payload.exact.graph)
            payload.file_bytes = len(data)
            with tempfile.TemporaryDirectory(prefix="fs-hw-nir-") as tmp:
                path = Path(tmp) / EXACT_FILE
                path.write_bytes(data)
                payload.read_back = nir.read(path)
        return payload.read_back

    def run(self, artifact: Artifact, inputs: np.ndarray, record_spikes: bool = False,
            runner: str | None = None) -> RunResult:
        choose_runner(self.runners, runner, self.name)
        cfg: NIRConfig = artifact.config
        payload: NIRPayload = artifact.payload
        t0 = time.perf_counter()
        graph = self._read_back(payload)
        plan = json.loads(graph.metadata[METADATA_KEY])
        interpreter = Interpreter(graph)
        x = grid_inputs(plan, inputs)
        requests = [(cell, _decision_tick(graph, cell)) for entry in plan["spiking"] for cell in entry["cells"]]
        requests.append((plan["readout"]["node"], plan["readout"]["tick"]))
        trains = {e["node"]: np.zeros((len(x), len(e["cells"]), *e["shape"]), np.uint8) for e in plan["spiking"]}
        outputs = np.zeros((len(x), *artifact.network.shapes[plan["readout"]["node"]]))
        for start in range(0, len(x), cfg.batch_size):
            chunk = slice(start, start + cfg.batch_size)
            values = interpreter.evaluate({plan["input"]["node"]: x[chunk, None]}, requests, cfg.schedule)
            for entry in plan["spiking"]:
                for t, cell in enumerate(entry["cells"]):
                    trains[entry["node"]][chunk, t] = values[(cell, _decision_tick(graph, cell))]
            outputs[chunk] = values[(plan["readout"]["node"], plan["readout"]["tick"])]
        if np.all(outputs == np.rint(outputs)):
            outputs = np.rint(outputs).astype(np.int64)
        flat = outputs.reshape(len(outputs), -1)
        return RunResult(
            outputs=outputs, predictions=np.argmax(flat, axis=1),
            spike_counts={k: v.reshape(len(v), -1).sum(axis=1).astype(np.int64) for k, v in trains.items()},
            neurons={k: int(np.prod(v.shape[2:])) for k, v in trains.items()},
            time_steps=artifact.network.time_steps, spike_trains=trains if record_spikes else None,
            info={"runner": "interpreter", "schedule": cfg.schedule, "samples": len(x),
                  "nir_nodes": len(graph.nodes), "exact_file_bytes": payload.file_bytes,
                  "seconds": time.perf_counter() - t0},
            input_name=artifact.network.input.name,
        )

    def export(self, artifact: Artifact, path: Path) -> list[Path]:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        payload: NIRPayload = artifact.payload
        return [atomic_write_bytes(path / EXACT_FILE, graph_bytes(payload.exact.graph)),
                atomic_write_bytes(path / COMPACT_FILE, graph_bytes(build_compact(payload.grid.source))),
                save_network(artifact.network, path / GRID_FILE, overwrite=True)]


def _decision_tick(graph, cell: str) -> int:
    return int(graph.nodes[cell].metadata["decision_tick"])


def grid_inputs(plan: dict, inputs: np.ndarray) -> np.ndarray:
    """Samples on the grid, as the exact graph's Input takes them: ``floor(x * scale)``."""
    x = np.asarray(inputs, np.float64)
    shape = tuple(plan["input"]["shape"])
    if x.shape == shape:
        x = x[None]
    if x.shape[1:] != shape:
        raise ValidationError(f"input {plan['input']['node']!r}", "shape",
                              f"expects samples of shape {shape}, got {x.shape[1:]}")
    if not np.all(np.isfinite(x)):
        raise ValidationError(f"input {plan['input']['node']!r}", "values", "non-finite values")
    g = np.floor(x * plan["input"]["scale"])
    if g.size and float(np.abs(g).max()) >= FLOAT64_EXACT:
        raise ValidationError(f"input {plan['input']['node']!r}", "values",
                              f"|x| * 2^input_bits reaches {float(np.abs(g).max()):.3g}, above 2^53")
    return g
