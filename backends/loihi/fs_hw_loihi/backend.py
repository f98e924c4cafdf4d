"""`LoihiBackend`: the ``loihi`` target of fs-deploy (entry point ``fs_hw.backends``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fs_hw.backend import (
    BIT_EXACT,
    Artifact,
    Capabilities,
    Quantized,
    Runner,
    RunResult,
    as_quantized,
    check_config_K,
    choose_runner,
    parse_target_config,
)
from fs_hw.ir import NODE_TYPES, Network
from fs_hw.ir.io import save_network
from fs_hw.outputs import atomic_write_json
from fs_hw.reference.simulator import concat_results
from fs_hw_loihi.config import LOIHI_LIMITS, LoihiConfig
from fs_hw_loihi.profile import fit_profile
from fs_hw_loihi.program import lower_network
from fs_hw_loihi.runner import has_hardware, run_program

MAPPING_NOTE = (
    "mapping: time-unrolled FS neurons (K compartments each, on-chip clock rings of 2K "
    "compartments), data synapses per source step with rows shared by the K decision units "
    "(K entries per weight) or replicated (K x K entries, K times fewer axons), or with the "
    "source steps as atoms of about two weight planes (convs of spiking images short of output axons), "
    "as each layer's split says, relays for skip connections, read-out = accumulator membrane; pipeline: one "
    "sample every 2K steps"
)


def _calibration_inputs(network: Network, n: int) -> tuple[np.ndarray | None, str]:
    """The first ``n`` training images of the network's data set, or why there are none."""
    from fs_hw.data import load_dataset
    from fs_hw.errors import FSHWError

    name = network.metadata.get("dataset")
    if not isinstance(name, str):
        return None, ("membrane ranges: the worst case of every spike pattern (the network's metadata "
                      "names no data set to measure them on)")
    try:
        x, _ = load_dataset(name, "train")
    except FSHWError as exc:
        return None, f"membrane ranges: the worst case of every spike pattern ({name!r} training data: {exc})"
    return x[:n], ""


class LoihiBackend:
    """Loihi through nengo-loihi: the ``hardware`` runner when NxSDK is importable, else
    nengo-loihi's ``emulator`` (strict overflow checks).

    Settings: :class:`fs_hw_loihi.config.LoihiConfig`; limits: ``LOIHI_LIMITS``.
    """

    name = "loihi"
    capabilities = Capabilities(
        node_kinds=frozenset(NODE_TYPES),
        firing_rules=frozenset({">", ">="}),
        weight_bits=8,
        fan_in=None,
        neurons_per_core=1024,
        max_K=int(LOIHI_LIMITS.value("K")),
        notes=(
            "1024 compartments per core = 1024/K FS neurons; 7-bit weight mantissas with a "
            "per-format exponent; inputs must be spike-coded"
        ),
    )
    config_type = LoihiConfig
    limits = LOIHI_LIMITS
    runners = (
        Runner("hardware", "Loihi through NxSDK", has_hardware, "needs Intel's NxSDK and a Loihi board"),
        Runner("emulator", "nengo-loihi's numpy emulator, overflow checks strict"),
    )
    exactness = BIT_EXACT
    unsupported_scenarios: dict[str, str] = {}

    def quantize(self, network: Network, config: Any = None,
                 calibration: np.ndarray | None = None) -> Quantized:
        """The Loihi profile. ``calibration`` inputs (default: ``range_samples`` training
        images of the data set named in the network's metadata) set the membrane ranges."""
        cfg = parse_target_config(self, config)
        check_config_K(self.name, cfg, network)
        LOIHI_LIMITS.check({"K": network.K}, "network", hint="choose codes with fewer steps")
        extra: list[str] = []
        if calibration is None and cfg.range_samples > 0:
            calibration, why = _calibration_inputs(network, cfg.range_samples)
            if why:
                extra.append(why)
        int_net, profile, notes, info = fit_profile(network, cfg, calibration)
        return Quantized(self.name, int_net, profile, [*extra, *notes], info)

    def lower(self, quantized: Quantized | Network, config: Any = None) -> Artifact:
        cfg = parse_target_config(self, config)
        q = as_quantized(self, quantized, cfg)
        observed = getattr(q.info, "observed", None)
        program = lower_network(q.network, cfg, observed)
        return Artifact(
            target=self.name,
            network=q.network,
            profile=q.profile,
            payload=program,
            resources=program.resources,
            notes=[*q.notes, MAPPING_NOTE],
            config=cfg,
        )

    def run(self, artifact: Artifact, inputs: np.ndarray, record_spikes: bool = False,
            runner: str | None = None) -> RunResult:
        chosen = choose_runner(self.runners, runner, self.name).name
        program = artifact.payload
        x = np.asarray(inputs)
        if x.ndim == len(artifact.network.input.shape):
            x = x[None]
        chunk = program.config.batch_size
        parts = [
            run_program(program, x[i : i + chunk], artifact.profile, record_spikes, chosen)
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
            "resources": artifact.resources.to_dict(),
            "notes": artifact.notes,
            "cores": cores,
        })
        return [net, meta]
