"""Running a lowered program on nengo-loihi's emulator or on Loihi, and reading it back."""

from __future__ import annotations

import time
import warnings
from collections import defaultdict

import numpy as np
from nengo_loihi.emulator import EmulatorInterface

from fs_hw.backend import NumericProfile, RunResult
from fs_hw.dynamics import simulate_fs
from fs_hw.errors import FSHWError, MissingDependencyError
from fs_hw.reference.simulator import prepare_inputs
from fs_hw_loihi.fixedpoint import CHIP_UNIT
from fs_hw_loihi.program import Program, progress


class StrictEmulator(EmulatorInterface):
    """nengo-loihi's emulator with overflow checks raising errors (``strict``)."""

    strict = True


class TimingError(FSHWError, RuntimeError):
    """A compartment fired outside its decision step: a range bound did not hold."""


def has_hardware() -> bool:
    from nengo_loihi.hardware.nxsdk_shim import HAS_NXSDK

    return bool(HAS_NXSDK)


def host_spikes(program: Program, x_int: np.ndarray) -> np.ndarray:
    """The input code's spike train (N, K, *shape), computed by the host."""
    net = program.network
    code = net.code_of(net.input)
    T, h, d = (getattr(code, k).astype(np.int64) for k in "Thd")
    res = simulate_fs(x_int, T, h, d, code.rule, record_spikes=True)
    return np.moveaxis(np.asarray(res.spikes), 0, 1).astype(np.uint8)


def _queue_inputs(program: Program, train: np.ndarray) -> None:
    K = program.K
    host = program.layers[program.network.input.name]
    N = train.shape[0]
    flat = train.reshape(N, K, -1)
    for part in host.parts:
        local = flat[:, :, part.neurons]  # (N, K, n_local)
        for (stage, s), si in part.inputs.items():
            si.spikes.clear()
            si.permanent.clear()
            times: dict[int, list[int]] = defaultdict(list)
            n_idx, a_idx = np.nonzero(local[:, s])
            ti = np.array([program.origin(int(n)) for n in n_idx], np.int64) + stage * K + s
            comp = a_idx
            order = np.argsort(ti, kind="stable")
            for t, c in zip(ti[order], comp[order]):
                times[int(t)].append(int(c))
            for t, idxs in times.items():
                si.add_spikes(t, np.array(idxs, np.int64))
    program.clock_start.spikes.clear()
    program.clock_start.permanent.clear()
    program.clock_start.add_spikes(1, np.array([0]))


#: how often a long emulator run says how far it is (seconds)
PROGRESS_EVERY_S = 30.0


def _run_with_progress(emu: EmulatorInterface, steps: int, program: Program) -> None:
    """``emu.run_steps(steps)``, one step at a time (the same steps: nengo-loihi's own
    ``run_steps`` is this loop), saying every :data:`PROGRESS_EVERY_S` seconds how many
    steps are done and about how long the rest takes: a large network runs for hours."""
    started = last = time.perf_counter()
    for done in range(1, steps + 1):
        emu.step()
        now = time.perf_counter()
        if now - last >= PROGRESS_EVERY_S and done < steps:
            last = now
            per_step = (now - started) / done
            progress.info("emulator: step %d of %d, %.1f s a step, about %.0f s left (%d cores, %d axon objects)",
                          done, steps, per_step, per_step * (steps - done), program.resources.cores,
                          program.resources.extra["axon_objects"])


def run_program(program: Program, inputs: np.ndarray, profile: NumericProfile,
                record_spikes: bool = True, runner: str = "emulator") -> RunResult:
    net = program.network
    x_int = prepare_inputs(net, inputs, profile)
    N = len(x_int)
    K, P = program.K, program.period
    in_train = host_spikes(program, x_int)
    _queue_inputs(program, in_train)
    steps = program.steps_for(N)
    t0 = time.perf_counter()
    probes = [tp.probe for layer in program.layers.values() if layer.kind in ("fs", "readout")
              for tp in layer.parts]
    if runner == "emulator":
        with warnings.catch_warnings():
            # nengo-loihi fills unused state with NaN before casting to int32: harmless
            warnings.filterwarnings("ignore", "invalid value encountered in cast", RuntimeWarning)
            emu = StrictEmulator(program.model, seed=program.config.seed)
        with emu:
            _run_with_progress(emu, steps, program)
            data = {id(p): np.asarray(emu.collect_probe_output(p)) for p in probes}
    else:  # pragma: no cover - needs NxSDK and a Loihi board
        data = _run_hardware(program, steps, probes)
    seconds = time.perf_counter() - t0
    for layer in program.layers.values():
        for part in layer.parts:
            for si in part.inputs.values():
                si.spikes.clear()

    trains: dict[str, np.ndarray] = {net.input.name: in_train}
    origins = np.array([program.origin(n) for n in range(N)], np.int64)
    outputs = None
    for name, layer in program.layers.items():
        if layer.kind == "fs":
            train = np.zeros((N, K, layer.n), np.uint8)
            for part in layer.parts:
                spk = data[id(part.probe)]
                _check_timing(name, spk, layer.stage, K, P)
                for t in range(K):
                    rows = origins + layer.stage * K + t - 1
                    train[:, t, part.neurons] = spk[rows][:, np.arange(part.n) * K + t]
            if layer.copy_of is not None:
                # a copy computes its layer's spikes again for other readers: the chip checks itself
                if not np.array_equal(train.reshape(N, K, *layer.shape), trains[layer.copy_of]):
                    raise TimingError(f"layer {name!r}, a copy of {layer.copy_of!r}, fired differently from it")
                continue
            trains[name] = train.reshape(N, K, *layer.shape)
        elif layer.kind == "readout":
            out = np.zeros((N, layer.n), np.int64)
            rows = origins + layer.stage * K - 1
            for part in layer.parts:
                v = data[id(part.probe)][rows].astype(np.int64)
                # every input the chip adds is a multiple of CHIP_UNIT (see fixedpoint)
                if np.any(v % CHIP_UNIT):
                    raise TimingError(f"read-out {name!r}: membrane not a multiple of {CHIP_UNIT}")
                # a fan-in split read-out: each part holds a partial sum with its own offset
                offset = part.partial.offset if part.partial else layer.range.offset[part.neurons]
                out[:, part.neurons] += v // CHIP_UNIT - offset[None, :]
                if np.any(data[id(part.probe)] < 0):
                    raise TimingError(f"read-out {name!r}: negative membrane (clipping)")
            outputs = out.reshape(N, *layer.shape)
    counts = {k: v.reshape(N, -1).sum(axis=1).astype(np.int64) for k, v in trains.items()}
    flat = outputs.reshape(N, -1)
    info = {
        "runner": runner,
        "steps": int(steps),
        "samples": int(N),
        "steps_per_sample": int(P),
        "latency_steps": int(program.readout_stage * K),
        "seconds": round(seconds, 3),
        "seconds_per_sample": round(seconds / max(N, 1), 4),
        "ms_per_step": round(1000 * seconds / max(steps, 1), 3),
        "readout": "membrane of one accumulator compartment per output, minus its baseline",
    }
    return RunResult(
        outputs=outputs,
        predictions=np.argmax(flat, axis=1),
        spike_counts=counts,
        neurons=net.neuron_counts(),
        time_steps=net.time_steps,
        spike_trains=trains if record_spikes else None,
        info=info,
        input_name=net.input.name,
    )


def _check_timing(name: str, spk: np.ndarray, stage: int, K: int, P: int) -> None:
    rows, cols = np.nonzero(spk)
    if rows.size == 0:
        return
    steps = rows + 1
    t = cols % K
    bad = (steps - 2 - stage * K - t) % P != 0
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise TimingError(
            f"layer {name!r}: compartment {int(cols[i])} fired at step {int(steps[i])}, outside its "
            f"decision steps: a worst-case range did not hold"
        )


def _run_hardware(program: Program, steps: int, probes) -> dict:  # pragma: no cover
    try:
        from nengo_loihi.hardware.allocators import Greedy
        from nengo_loihi.hardware.interface import HardwareInterface
    except ImportError as exc:
        raise MissingDependencyError(f"Loihi hardware needs NxSDK ({exc})") from None
    cfg = program.config
    hw = HardwareInterface(
        program.model, use_snips=False, seed=cfg.seed, n_chips=cfg.chips,
        allocator=Greedy(cores_per_chip=cfg.cores_per_chip),
    )
    with hw:
        hw.run_steps(steps, blocking=True)
        return {id(p): np.asarray(hw.collect_probe_output(p)) for p in probes}
