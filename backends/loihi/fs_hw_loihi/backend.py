"""`LoihiBackend`: the ``loihi`` target of fs-deploy (entry point ``fs_hw.backends``)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from fs_hw.backend import Artifact, Capabilities, RunResult
from fs_hw.errors import ValidationError
from fs_hw.ir import NODE_TYPES, Network
from fs_hw.ir.io import save_network
from fs_hw.outputs import atomic_write_json
from fs_hw.reference.simulator import concat_results
from fs_hw_loihi.config import LoihiConfig
from fs_hw_loihi.profile import fit_profile
from fs_hw_loihi.program import lower_network
from fs_hw_loihi.runner import choose_runner, run_program

MAPPING_NOTE = (
    "mapping: time-unrolled FS neurons (K compartments each, on-chip clock ring of 2K "
    "compartments), weight-shared data synapses (K entries per weight), relays for skip "
    "connections, read-out = accumulator membrane; pipeline: one sample every 2K steps"
)


class LoihiBackend:
    """Loihi through nengo-loihi: hardware when NxSDK is importable, else the emulator.

    Config keys (``[target]`` table): see :class:`fs_hw_loihi.config.LoihiConfig`.
    """

    name = "loihi"
    capabilities = Capabilities(
        node_kinds=frozenset(NODE_TYPES),
        firing_rules=frozenset({">", ">="}),
        weight_bits=8,
        fan_in=None,
        neurons_per_core=1024,
        max_K=32,
        notes=(
            "1024 compartments per core = 1024/K FS neurons; 7-bit weight mantissas with a "
            "per-format exponent; inputs must be spike-coded"
        ),
    )

    def lower(self, network: Network, config: Mapping[str, Any]) -> Artifact:
        cfg = LoihiConfig.from_mapping(config)
        if cfg.K is not None and network.K != cfg.K:
            raise ValidationError(
                "loihi config", "K", f"is {cfg.K} but the network's codes have K={network.K}"
            )
        if network.K > self.capabilities.max_K:
            raise ValidationError("network", "K",
                                  f"{network.K} exceeds the Loihi target's max {self.capabilities.max_K}")
        int_net, profile, notes, info = fit_profile(network, cfg)
        program = lower_network(int_net, cfg)
        runner = choose_runner(program)
        resources = dict(program.resources)
        resources["runner"] = runner
        return Artifact(
            target=self.name,
            network=int_net,
            profile=profile,
            payload=program,
            resources=resources,
            notes=[*notes, MAPPING_NOTE],
        )

    def run(self, artifact: Artifact, inputs: np.ndarray, record_spikes: bool = False) -> RunResult:
        program = artifact.payload
        x = np.asarray(inputs)
        if x.ndim == len(artifact.network.input.shape):
            x = x[None]
        chunk = program.config.batch_size
        parts = [
            run_program(program, x[i : i + chunk], artifact.profile, record_spikes)
            for i in range(0, max(len(x), 1), chunk)
        ]
        result = concat_results(parts)
        if len(parts) > 1:  # concat_results summed steps, samples and seconds
            result.info["seconds"] = round(result.info["seconds"], 3)
            result.info["seconds_per_sample"] = round(result.info["seconds"] / max(len(x), 1), 4)
        return result

    def export(self, artifact: Artifact, path: Path) -> list[Path]:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        net = save_network(artifact.network, path / "loihi_profile.fsnet", overwrite=True)
        program = artifact.payload
        cores = []
        for block in program.model.blocks:
            util = block.utilization()
            cores.append({
                "block": block.label,
                "compartments": util["compartments"][0],
                "in_axons": util["in-axons"][0],
                "out_axons": util["out-axons"][0],
                "synapse_bits": util["synapses"][0],
                "vth": int(block.compartment.vth[0]),
                "weight_exponents": sorted({int(s.synapse_cfg.weight_exp) for s in block.synapses}),
            })
        # written to a fresh temporary and renamed into place (save_network does the same)
        meta = atomic_write_json(path / "loihi.json", {
            "target": self.name,
            "config": program.config.to_dict(),
            "profile": {
                "name": artifact.profile.name,
                "input_scale": artifact.profile.input_scale,
                "membrane_bits": artifact.profile.membrane_bits,
            },
            "resources": artifact.resources,
            "notes": artifact.notes,
            "cores": cores,
        })
        return [net, meta]
