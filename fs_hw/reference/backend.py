"""The reference target: the numpy simulator behind the Backend API."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fs_hw.backend import (
    BIT_EXACT,
    FLOAT64,
    Artifact,
    Capabilities,
    Quantized,
    Resources,
    Runner,
    RunResult,
    as_quantized,
    choose_runner,
    parse_target_config,
)
from fs_hw.ir.io import save_network
from fs_hw.ir.network import Network
from fs_hw.ir.nodes import NODE_TYPES
from fs_hw.lower.config import config_to_dict, setting
from fs_hw.lower.limits import LimitTable
from fs_hw.outputs import atomic_write_json
from fs_hw.reference.simulator import MODES, run_reference


@dataclass(frozen=True)
class ReferenceConfig:
    """Settings of the reference target (the ``[target]`` table)."""

    mode: str = setting("spike", "spike: step global time and deliver every spike; fast: decoded outputs",
                        choices=MODES)
    library: str = setting("numpy", "kernels of the linear maps", choices=("numpy", "torch"))
    batch_size: int = setting(256, "samples per vectorised call", range=(1, 10**6))


class ReferenceBackend:
    """Runs the IR as written, in float64: the semantics itself."""

    name = "reference"
    capabilities = Capabilities(node_kinds=frozenset(NODE_TYPES), notes="no hardware limits")
    config_type = ReferenceConfig
    limits = LimitTable(())
    runners = (Runner("simulator", "fs_hw.reference numpy simulator"),)
    exactness = BIT_EXACT
    unsupported_scenarios: dict[str, str] = {}

    def quantize(self, network: Network, config: Any = None) -> Quantized:
        return Quantized(self.name, network, FLOAT64, [])

    def lower(self, quantized: Quantized | Network, config: Any = None) -> Artifact:
        cfg = parse_target_config(self, config)
        q = as_quantized(self, quantized, cfg)
        network = q.network
        return Artifact(
            target=self.name,
            network=network,
            profile=q.profile,
            payload=cfg,
            resources=Resources(neurons=sum(network.neuron_counts().values()),
                                latency_steps=network.time_steps),
            notes=list(q.notes),
            config=cfg,
        )

    def run(self, artifact: Artifact, inputs: np.ndarray, record_spikes: bool = False,
            runner: str | None = None) -> RunResult:
        choose_runner(self.runners, runner, self.name)
        cfg = artifact.payload
        result = run_reference(
            artifact.network, inputs, mode=cfg.mode, profile=artifact.profile,
            record_spikes=record_spikes, library=cfg.library, batch_size=cfg.batch_size,
        )
        result.info["mode"] = cfg.mode
        result.info["runner"] = "simulator"
        return result

    def export(self, artifact: Artifact, path: Path) -> list[Path]:
        # Each file is written to a fresh temporary and renamed into place (save_network does
        # that itself), so an interrupted export never leaves a half-written file.
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        net = save_network(artifact.network, path / "network.fsnet", overwrite=True)
        meta = atomic_write_json(path / "reference.json",
                                 {"target": self.name, "options": config_to_dict(artifact.payload)})
        return [net, meta]
