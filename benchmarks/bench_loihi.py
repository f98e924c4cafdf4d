"""Loihi target benchmark: compile time, emulator time per sample, synapse memory per weight.

Runs nengo-loihi's emulator (strict) on an MLP (784-256-10, K=8, random weights) and a
small CNN (1x12x12 -> conv 8 -> conv 8 -> dense 10, K=6), checks each run equals the
reference on the Loihi profile spike for spike, and prints one JSON line per network::

    .venv/bin/python benchmarks/bench_loihi.py [--samples 4] [--out bench.json]

Emulator time is nengo-loihi's own (it steps every compartment and every spike in
Python); nothing here simulates around it.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import warnings

import numpy as np
from fs_hw_loihi.backend import LoihiBackend

from fs_hw.codes import relu_code
from fs_hw.conformance import compare_runs
from fs_hw.ir import Conv2d, Dense, Flatten, FSActivation, Input, Network, Readout
from fs_hw.reference.simulator import run_reference


def mlp(n_in=784, n_hidden=256, n_out=10, K=8, seed=0) -> Network:
    rng = np.random.default_rng(seed)
    inp, act = relu_code(1.0, K, ">=", name="pixels"), relu_code(4.0, K, ">=", name="relu")
    nodes = (
        Input("x", (n_in,), "pixels"),
        Dense("d0", "x", rng.normal(0, 2 / np.sqrt(n_in), (n_hidden, n_in)), rng.normal(0, 0.1, n_hidden)),
        FSActivation("hidden", "d0", "relu"),
        Dense("d1", "hidden", rng.normal(0, 1 / np.sqrt(n_hidden), (n_out, n_hidden)), np.zeros(n_out)),
        Readout("out", "d1"),
    )
    return Network(nodes, {"pixels": inp, "relu": act}, {"name": f"mlp{n_in}-{n_hidden}-{n_out}"})


def cnn(size=12, C=8, K=6, seed=0) -> Network:
    rng = np.random.default_rng(seed)
    inp, act = relu_code(1.0, K, ">=", name="pixels"), relu_code(2.0, K, ">=", name="relu")
    nodes = (
        Input("x", (1, size, size), "pixels"),
        Conv2d("c0", "x", rng.normal(0, 0.5, (C, 1, 3, 3)), rng.normal(0, 0.1, C), padding=1),
        FSActivation("f0", "c0", "relu"),
        Conv2d("c1", "f0", rng.normal(0, 0.25, (C, C, 3, 3)), rng.normal(0, 0.1, C), stride=2, padding=1),
        FSActivation("f1", "c1", "relu"),
        Flatten("flat", "f1"),
        Dense("fc", "flat", rng.normal(0, 0.1, (10, C * (size // 2) ** 2)), np.zeros(10)),
        Readout("out", "fc"),
    )
    return Network(nodes, {"pixels": inp, "relu": act}, {"name": f"cnn{size}x{size}"})


def bench(net: Network, samples: int, seed: int = 1) -> dict:
    x = np.random.default_rng(seed).uniform(0, 1, (samples, *net.input.shape))
    backend = LoihiBackend()
    t0 = time.perf_counter()
    art = backend.lower(net, {"batch_size": samples})
    t_lower = time.perf_counter() - t0
    res = backend.run(art, x, record_spikes=True)
    ref = run_reference(art.network, x, "spike", art.profile, record_spikes=True)
    comp = compare_runs(ref, res)
    r = art.resources
    return {
        "network": net.metadata["name"],
        "K": net.K,
        "samples": samples,
        "compile_s": round(t_lower, 3),
        "emulator_s_per_sample": res.info["seconds_per_sample"],
        "emulator_ms_per_step": res.info["ms_per_step"],
        "steps_per_sample": res.info["steps_per_sample"],
        "latency_steps": res.info["latency_steps"],
        "spike_mismatches": comp.spike_mismatches,
        "agreement": comp.agreement,
        "cores": r["cores"],
        "compartments": r["compartments"],
        "synapse_memory_bits": r["synapse_memory_bits"],
        "synapse_entries_per_weight": r["synapse_entries_per_weight"],
        "synapse_bits_per_weight": r["synapse_bits_per_weight"],
        "entries_per_weight_by_layer": r["entries_per_weight_by_layer"],
        "machine": platform.processor() or platform.machine(),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--out", help="also write the results as a JSON list here")
    args = p.parse_args(argv)
    warnings.simplefilter("ignore")
    results = []
    for net in (mlp(), cnn()):
        r = bench(net, args.samples)
        print(json.dumps(r), flush=True)
        results.append(r)
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(results, fh, indent=1)
    return 0 if all(r["spike_mismatches"] == 0 for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
