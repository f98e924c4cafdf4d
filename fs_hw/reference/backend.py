"""The reference target: the numpy simulator behind the Backend API."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from fs_hw.backend import FLOAT64, Artifact, Capabilities, RunResult
from fs_hw.errors import ValidationError
from fs_hw.ir.io import save_network
from fs_hw.ir.network import Network
from fs_hw.ir.nodes import NODE_TYPES
from fs_hw.outputs import atomic_write_json
from fs_hw.reference.simulator import MODES, run_reference

CONFIG_KEYS = {"mode": str, "library": str, "batch_size": int}


class ReferenceBackend:
    """Runs the IR as written, in float64: the semantics itself.

    Config keys: ``mode`` (``"fast"`` or ``"spike"``), ``library`` (``"numpy"`` or
    ``"torch"`` kernels), ``batch_size``.
    """

    name = "reference"
    capabilities = Capabilities(node_kinds=frozenset(NODE_TYPES), notes="no hardware limits")

    def lower(self, network: Network, config: Mapping[str, Any]) -> Artifact:
        options = {"mode": "spike", "library": "numpy", "batch_size": 256}
        for key, value in dict(config).items():
            if key not in CONFIG_KEYS:
                raise ValidationError("reference config", key, f"unknown key; known: {sorted(CONFIG_KEYS)}")
            if not isinstance(value, CONFIG_KEYS[key]):
                raise ValidationError("reference config", key, f"must be {CONFIG_KEYS[key].__name__}, got {value!r}")
            options[key] = value
        if options["mode"] not in MODES:
            raise ValidationError("reference config", "mode", f"must be one of {MODES}, got {options['mode']!r}")
        return Artifact(
            target=self.name,
            network=network,
            profile=FLOAT64,
            payload=options,
            resources={"neurons": sum(network.neuron_counts().values()), "time_steps": network.time_steps},
        )

    def run(self, artifact: Artifact, inputs: np.ndarray, record_spikes: bool = False) -> RunResult:
        options = artifact.payload
        result = run_reference(
            artifact.network, inputs, mode=options["mode"], profile=artifact.profile,
            record_spikes=record_spikes, library=options["library"], batch_size=options["batch_size"],
        )
        result.info["mode"] = options["mode"]
        return result

    def export(self, artifact: Artifact, path: Path) -> list[Path]:
        # Each file is written to a fresh temporary and renamed into place (save_network does
        # that itself), so an interrupted export never leaves a half-written file.
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        net = save_network(artifact.network, path / "network.fsnet", overwrite=True)
        meta = atomic_write_json(path / "reference.json", {"target": self.name, "options": artifact.payload})
        return [net, meta]
