"""`SpiNNakerBackend`: the ``spinnaker`` target of fs-deploy (entry point ``fs_hw.backends``)."""

from __future__ import annotations

import math
import shutil
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
from fs_hw.errors import ValidationError
from fs_hw.ir import NODE_TYPES, Network
from fs_hw.ir.io import save_network
from fs_hw.lower.limits import check_usage
from fs_hw.lower.unroll import UnrolledNetwork, check_alignment, unroll
from fs_hw.outputs import atomic_write_json
from fs_hw.reference.simulator import concat_results, run_reference
from fs_hw_spinnaker.config import (
    BOARD_APP_CORES,
    BOARD_CHIPS,
    SPINNAKER_LIMITS,
    SpiNNakerConfig,
    native_delay_ticks,
    spinnaker_limits,
)
from fs_hw_spinnaker.profile import ProfileInfo, spinnaker_profile

MAPPING_NOTE = (
    "mapping: time-unrolled FS neurons (K IF_curr_delta cells each, threshold T(t), memoryless: "
    "tau_m = tick/1000), synapses per (source cell, receiver cell) pair with delays that land every "
    "input in its cell's decision tick (K x K synapses per weight), resets as delayed inhibitory "
    "synapses inside a neuron, skip connections as longer delays, biases from one bias source; "
    "read-out = accumulator membrane; pipeline: one sample every K ticks"
)


def _has(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _has_nest() -> bool:
    return _has("pyNN") and _has("nest")


def _has_spynnaker() -> bool:
    return _has("spynnaker")


class SpiNNakerBackend:
    """SpiNNaker through PyNN: one PyNN model, run on ``pyNN.nest`` (runner ``nest``,
    spike-exact against the SpiNNaker profile) or on sPyNNaker (runner ``spinnaker``: its
    virtual board, which maps the model and returns no spikes; a real board named in the
    user's sPyNNaker config is refused as not supported yet).

    Settings: :class:`fs_hw_spinnaker.config.SpiNNakerConfig`; limits: ``SPINNAKER_LIMITS``.
    """

    name = "spinnaker"
    capabilities = Capabilities(
        node_kinds=frozenset(NODE_TYPES),
        firing_rules=frozenset({">", ">="}),
        weight_bits=16,
        fan_in=None,
        neurons_per_core=256,
        max_K=None,
        notes=(
            "K IF_curr_delta cells per FS neuron (256 cells per core); 16-bit weight magnitudes "
            "with a per-population shift; s16.15 membranes; inputs must be spike-coded"
        ),
    )
    config_type = SpiNNakerConfig
    limits = SPINNAKER_LIMITS
    runners = (
        Runner("nest", "PyNN's NEST simulator running the same quantized model", _has_nest,
               "pip install PyNN==0.13.0 nest-simulator==3.10.0"),
        Runner("spinnaker", "sPyNNaker's virtual board: the board's mapping (cores, SDRAM, routing), no spikes",
               _has_spynnaker, "pip install 'sPyNNaker==1!7.4.1'"),
    )
    exactness = BIT_EXACT
    unsupported_scenarios: dict[str, str] = {}

    def quantize(self, network: Network, config: Any = None) -> Quantized:
        cfg = parse_target_config(self, config)
        check_config_K(self.name, cfg, network)
        int_net, profile, notes, info = spinnaker_profile(network)
        return Quantized(self.name, int_net, profile, notes, info)

    def lower(self, quantized: Quantized | Network, config: Any = None) -> Artifact:
        cfg = parse_target_config(self, config)
        q = as_quantized(self, quantized, cfg)
        info: ProfileInfo = q.info
        unrolled = unroll(q.network, gate_grid={k: v.grid("excitatory") for k, v in info.layers.items()})
        check_alignment(unrolled)
        resources = _resources(q.network, unrolled, cfg, info)
        return Artifact(target=self.name, network=q.network, profile=q.profile, payload=unrolled,
                        resources=resources, notes=[*q.notes, MAPPING_NOTE], config=cfg)

    def run(self, artifact: Artifact, inputs: np.ndarray, record_spikes: bool = False,
            runner: str | None = None) -> RunResult:
        chosen = choose_runner(self.runners, runner, self.name).name
        cfg: SpiNNakerConfig = artifact.config
        x = np.asarray(inputs)
        if x.ndim == len(artifact.network.input.shape):
            x = x[None]
        if chosen == "spinnaker":
            return self._run_spinnaker(artifact, x)
        from fs_hw_spinnaker.nest_runner import result_from, run_on_nest
        from fs_hw_spinnaker.pynn_compat import connect_arrays

        unrolled: UnrolledNetwork = artifact.payload
        parts = []
        for i in range(0, max(len(x), 1), cfg.batch_size):
            chunk = x[i : i + cfg.batch_size]
            # the host runs the input code (the board receives its spikes)
            host = run_reference(artifact.network, chunk, "fast", artifact.profile, record_spikes=True)
            spikes = host.spike_trains[artifact.network.input.name]
            trains, readout, info = run_on_nest(unrolled, spikes, cfg.timestep_ms, connect_arrays,
                                                cells_per_population=cfg.neurons_per_core)
            info.update(runner="nest", samples=len(chunk), seconds=info["build_seconds"] + info["simulate_seconds"])
            parts.append(result_from(trains, readout, info, artifact.network.input.name,
                                     artifact.network.time_steps))
        result = concat_results(parts)
        result.info["seconds_per_sample"] = round(result.info.get("seconds", 0.0) / max(len(x), 1), 4)
        return result

    def _run_spinnaker(self, artifact: Artifact, x: np.ndarray) -> RunResult:
        from fs_hw_spinnaker.spinnaker_runner import map_artifact

        return map_artifact(artifact, x)

    def export(self, artifact: Artifact, path: Path) -> list[Path]:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        net = save_network(artifact.network, path / "spinnaker_profile.fsnet", overwrite=True)
        written = [net]
        reports = artifact.resources.extra.get("report_dir")
        if reports and Path(reports).is_dir():
            dest = path / "spinnaker_reports"
            if dest.exists():
                shutil.rmtree(dest)
            shutil.copytree(reports, dest)
            written.append(dest)
        info: ProfileInfo = artifact.network.metadata.get("spinnaker_profile", {})
        meta = atomic_write_json(path / "spinnaker.json", {
            "target": self.name,
            "config": artifact.config.to_dict(),
            "profile": {"name": artifact.profile.name, "input_scale": artifact.profile.input_scale,
                        "membrane_bits": artifact.profile.membrane_bits, "layers": info.get("layers", {})},
            "resources": artifact.resources.to_dict(),
            "notes": artifact.notes,
        })
        written.append(meta)
        return written


def column_sums(unrolled: UnrolledNetwork) -> dict[str, dict[str, float]]:
    """Per receiver population and receptor, the largest sum of weight magnitudes one cell
    can receive in a tick (integers of 2^-15 mV): what its ring buffer must hold."""
    out: dict[str, dict[str, np.ndarray]] = {}
    for name, layer in unrolled.layers.items():
        if layer.kind in ("fs", "readout"):
            out[name] = {"excitatory": np.zeros(layer.cells), "inhibitory": np.zeros(layer.cells)}
    for g in unrolled.groups:
        sums = out[g.post]
        pos = g.weight > 0
        sums["excitatory"] += np.bincount(g.post_idx[pos], g.weight[pos], minlength=len(sums["excitatory"]))
        sums["inhibitory"] += np.bincount(g.post_idx[~pos], -g.weight[~pos], minlength=len(sums["inhibitory"]))
    return {k: {r: float(v.max(initial=0.0)) for r, v in d.items()} for k, d in out.items()}


def _resources(network: Network, unrolled: UnrolledNetwork, cfg: SpiNNakerConfig, info: ProfileInfo) -> Resources:
    npc = cfg.neurons_per_core
    limits = spinnaker_limits(npc, cfg.board_cores())
    synapses: dict[str, int] = {}
    kinds: dict[str, set[str]] = {}
    inputs: dict[str, set[str]] = {}
    for g in unrolled.groups:
        synapses[g.post] = synapses.get(g.post, 0) + len(g)
        kinds.setdefault(g.post, set()).add(g.kind)
        inputs.setdefault(g.post, set()).add(g.pre)
        check_usage(limits, {"delay": int(g.delay.max(initial=1))}, g.post,
                    hint="skip connections over this many stages need more delay than sPyNNaker offers")
    weights = unrolled.weights
    layers: dict[str, LayerResources] = {}
    for name, layer in unrolled.layers.items():
        cores = 1 if layer.kind in ("bias", "input") else math.ceil(layer.cells / min(npc, 256))
        layers[name] = LayerResources(
            name=name, kind=layer.kind, parts=cores, neurons_per_part=min(npc, layer.cells), units=layer.cells,
            weights=weights.get(name, 0), synapse_entries=synapses.get(name, 0),
            split=f"{layer.cells} cells ({layer.neurons} neurons x {layer.cells_per_neuron}) over {cores} core(s) "
                  f"of <= {npc}",
            inputs=tuple(sorted(inputs.get(name, ()))), connection_kinds=tuple(sorted(kinds.get(name, ()))),
        )
    # cores as sPyNNaker places them: neuron populations split at npc, one core per spike
    # source, a delay extension (split like its source) for each source sending beyond the
    # receivers' native delay slots
    from fs_hw_spinnaker.vboard import cores_per_population, estimate_cores

    neurons = {n: ly.cells for n, ly in unrolled.layers.items() if ly.kind in ("fs", "readout")}
    sources = {n: ly.cells for n, ly in unrolled.layers.items() if ly.kind in ("input", "bias")}
    native = native_delay_ticks(npc)
    delayed = sorted({g.pre for g in unrolled.groups if int(g.delay.max(initial=0)) > native})
    total_cores = estimate_cores(neurons, npc, sources=sources, delay_extensions=delayed)
    per_pop = cores_per_population(neurons, npc)
    for name, layer in layers.items():
        layer.parts = per_pop.get(name, 1)
    biggest = max(per_pop, key=per_pop.get)
    check_usage(limits, {"cores": total_cores}, "network",
                hint=f"{cfg.machine().describe()}; the largest, layer {biggest!r}, needs {per_pop[biggest]} cores for "
                     f"{neurons[biggest]} cells at {min(npc, 256)} per core; give width/height in the [target] table "
                     f"for a larger machine (the count includes {len(sources)} spike-source core(s) and delay "
                     f"extensions for {delayed or 'no source'})")
    sums = column_sums(unrolled)
    for name, s in sums.items():
        bound = info.layers[name].max_summed
        for r in ("excitatory", "inhibitory"):
            if s[r] / 2.0**15 > bound[r] * (1 + 1e-12) + 1e-12:
                raise ValidationError(f"layer {name!r}", "max_expected_summed_weight",
                                      f"{r} column sum {s[r] / 2**15:.6g} mV above the profile's bound "
                                      f"{bound[r]:.6g} mV (internal error)")
    n_syn = sum(synapses.values())
    n_weights = sum(weights.values())
    counts = unrolled.synapse_counts()
    return Resources(
        cores=total_cores,
        chips=math.ceil(total_cores / (BOARD_APP_CORES / BOARD_CHIPS)),
        neurons=sum(ly.cells for ly in unrolled.layers.values() if ly.kind in ("fs", "readout")),
        time_steps_per_sample=unrolled.period,
        latency_steps=unrolled.readout_tick(0),
        layers=layers,
        extra={
            "estimate": "cores as sPyNNaker splits and places them (chips: cores / 15.8 per chip); --runner "
                        "spinnaker maps them",
            "delay_extensions": delayed,
            "synapses": n_syn,
            "synapses_by_kind": counts,
            "synapses_per_weight": round(counts.get("data", 0) / n_weights, 3) if n_weights else None,
            "max_delay_ticks": unrolled.max_delay,
            "K": unrolled.K,
            "ring_buffer_shifts": {k: dict(v.shift) for k, v in info.layers.items()},
            "max_expected_summed_weight_mv": {k: dict(v.max_summed) for k, v in info.layers.items()},
        },
    )
