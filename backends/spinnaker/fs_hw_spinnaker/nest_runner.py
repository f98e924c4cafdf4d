"""Run the PyNN model on PyNN's NEST backend and read back spikes and read-outs.

The quirks of PyNN 0.13 on NEST 3.10 handled here (measured, see docs/spinnaker.md):

* ``PYNEST_QUIET`` is set before NEST is imported (else a 16-line banner);
* PyNN tries to cmake its NEST extensions at import whenever ``nest-config`` is on PATH
  (a venv's ``bin/``), building into the package or the *current folder*: the import runs
  with those PATH entries removed;
* ``import nest`` sets torch to one thread, and NEST's ``ResetKernel`` (inside PyNN's
  ``setup``) crashes the process (segmentation fault) when torch runs more than one
  thread at that moment (they share the OpenMP runtime): torch runs one thread while NEST
  is in use and gets its count back afterwards;
* ``IF_curr_delta`` has no ``variable_map`` in pyNN.nest, so ``v`` could not be recorded:
  the class gets ``{"v": "V_m"}`` (unit factor 1), once;
* ``setup`` gets ``spike_precision="on_grid"`` (the off-grid model rejects a refractory
  period of one tick) and explicit ``min_delay``/``max_delay``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import time
import warnings

import numpy as np

from fs_hw.backend import RunResult
from fs_hw.lower.unroll import FIRST_TICK, UnrolledNetwork
from fs_hw_spinnaker.build import UNITS_PER_MV, Connect, build_model


@contextlib.contextmanager
def torch_single_threaded():
    """Torch on one thread inside the block (NEST shares its OpenMP runtime)."""
    torch = sys.modules.get("torch")
    threads = torch.get_num_threads() if torch is not None else None
    if torch is not None:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if torch is not None and threads:
            torch.set_num_threads(threads)


@contextlib.contextmanager
def _quiet_import_env():
    old_path = os.environ.get("PATH", "")
    nest_config = shutil.which("nest-config")
    if nest_config:
        drop = os.path.dirname(nest_config)
        os.environ["PATH"] = os.pathsep.join(p for p in old_path.split(os.pathsep) if p != drop)
    os.environ.setdefault("PYNEST_QUIET", "1")
    try:
        yield
    finally:
        os.environ["PATH"] = old_path


def import_pynn_nest():
    """``pyNN.nest``, imported with the quirks above handled."""
    sim = sys.modules.get("pyNN.nest")
    if sim is None:
        torch = sys.modules.get("torch")
        threads = torch.get_num_threads() if torch is not None else None
        with _quiet_import_env(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import pyNN.nest as sim
        if torch is not None and threads:
            torch.set_num_threads(threads)
    # also when someone else imported pyNN.nest first
    cls = sim.IF_curr_delta
    if "v" not in getattr(cls, "variable_map", {}):
        cls.variable_map = {"v": "V_m"}
        cls.scale_factors = {"v": 1}
    return sim


def setup(sim, timestep_ms: float, max_delay_ticks: int) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sim.setup(timestep=timestep_ms, min_delay=timestep_ms, max_delay=max(2, max_delay_ticks) * timestep_ms,
                  spike_precision="on_grid")
    import nest

    nest.set_verbosity("M_ERROR")


def run_on_nest(unrolled: UnrolledNetwork, input_spikes: np.ndarray, timestep_ms: float,
                connect: Connect, cells_per_population: int | None = None,
                ) -> tuple[dict[str, np.ndarray], np.ndarray, dict]:
    """Build the model for the batch, run it, and return ``(spike trains, read-outs, info)``.

    Spike trains are ``(N, K, *shape)`` ``uint8`` per FS layer, read-outs ``(N, *shape)``
    integers of 2^-15 mV. A spike off its cell's decision tick raises ``RuntimeError``.
    """
    # PyNN 0.13 calls NEST's deprecated SetStatus/GetStatus (a UserWarning per call)
    with torch_single_threaded(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"\s*(Set|Get)Status\(\) is deprecated", category=UserWarning)
        return _run_on_nest(unrolled, input_spikes, timestep_ms, connect, cells_per_population)


def _run_on_nest(unrolled: UnrolledNetwork, input_spikes: np.ndarray, timestep_ms: float,
                 connect: Connect, cells_per_population: int | None,
                 ) -> tuple[dict[str, np.ndarray], np.ndarray, dict]:
    sim = import_pynn_nest()
    u = unrolled
    N = len(input_spikes)
    t0 = time.perf_counter()
    setup(sim, timestep_ms, u.max_delay)
    model = build_model(sim, u, u.input_spike_ticks(input_spikes), N, timestep_ms, connect=connect,
                        cells_per_population=cells_per_population)
    t_build = time.perf_counter() - t0
    ticks = u.ticks(N)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sim.run((ticks + 1) * timestep_ms)
    t_run = time.perf_counter() - t0
    trains: dict[str, np.ndarray] = {u.input: np.asarray(input_spikes, np.uint8)}
    readout = np.zeros(0)
    for name, layer in u.layers.items():
        if layer.kind not in ("fs", "readout"):
            continue
        parts = [(pop.get_data(clear=True).segments[0], first) for pop, first in model.populations[name]]
        if layer.kind == "fs":
            trains[name] = _decode_spikes(u, name, parts, N, timestep_ms)
        else:
            readout = _decode_readout(u, parts, N, timestep_ms, layer)
    sim.end()
    info = {"build_seconds": round(t_build, 3), "simulate_seconds": round(t_run, 3), "ticks": int(ticks),
            "synapses": dict(model.synapses), "populations": sum(len(p) for p in model.populations.values()),
            "projections": len(model.projections)}
    return trains, readout, info


def _decode_spikes(u: UnrolledNetwork, name: str, parts, N: int, dt: float) -> np.ndarray:
    layer = u.layers[name]
    K = layer.K
    out = np.zeros((N, K, layer.neurons), np.uint8)
    trains = [(st, first) for block, first in parts for st in block.spiketrains]
    for st, first in trains:
        cell = first + int(st.annotations["source_index"])
        j, t = divmod(cell, K)
        times = np.asarray(st.magnitude, np.float64)
        if not len(times):
            continue
        tick = np.rint(times / dt).astype(np.int64)
        rel = tick - FIRST_TICK - layer.stage * u.period
        sample, step = np.divmod(rel, u.period)
        bad = (step != t) | (sample < 0) | (sample >= N)
        if bad.any():
            raise RuntimeError(
                f"layer {name!r} cell {cell} (neuron {j}, step {t}) spiked at tick {int(tick[bad][0])}, "
                "off its decision ticks"
            )
        out[sample, t, j] = 1
    return out.reshape(N, K, *layer.shape)


def _decode_readout(u: UnrolledNetwork, parts, N: int, dt: float, layer) -> np.ndarray:
    values = np.zeros((N, layer.cells))
    ticks = np.array([u.readout_tick(m) for m in range(N)])
    for block, first in parts:
        sig = block.analogsignals[0]
        v = np.asarray(sig.magnitude, np.float64)  # (time points, cells)
        t_start = float(sig.t_start.rescale("ms").magnitude)
        rows = np.rint((ticks * dt - t_start) / dt).astype(np.int64)
        idx = np.asarray(sig.array_annotations.get("channel_index", np.arange(v.shape[1])), np.int64)
        values[:, first + idx] = v[rows]
    return np.rint(values * UNITS_PER_MV).astype(np.int64).reshape(N, *layer.shape)


def result_from(trains: dict[str, np.ndarray], readout: np.ndarray, info: dict, input_name: str,
                time_steps: int) -> RunResult:
    counts = {k: v.reshape(len(v), -1).sum(axis=1).astype(np.int64) for k, v in trains.items()}
    neurons = {k: int(np.prod(v.shape[2:])) for k, v in trains.items()}
    outputs = readout.reshape(len(readout), -1)
    return RunResult(outputs=outputs, predictions=np.argmax(outputs, axis=1), spike_counts=counts, neurons=neurons,
                     time_steps=time_steps, spike_trains=trains, info=info, input_name=input_name)
