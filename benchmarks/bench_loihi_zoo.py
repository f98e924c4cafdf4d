"""Loihi lowering of the zoo: quantize and lower times, cores, chips, synapse memory.

For each network: ``LoihiBackend.quantize`` (SDK-free; membrane ranges measured on 200
training images) and ``lower`` (partitioning, synapses, nengo-loihi's validators and
allocator), timed separately. The baseline, measured in the same run, is the bundled
Fashion MLP; each line prints the ratio of its lowering time to the baseline's, so the
figure means the same on a faster or slower machine::

    .venv/bin/python benchmarks/bench_loihi_zoo.py [resnet20 lenet ...] [--chips 64] [--out f.json]
                                                   [--no-split-reuse]

Optionally ``--run N`` runs N test images on nengo-loihi's emulator and compares them
with the reference on the Loihi profile spike for spike (slow for the large networks).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

from fs_hw_loihi.backend import LoihiBackend

from fs_hw.conformance import compare_runs
from fs_hw.data import load_dataset
from fs_hw.ir.io import load_network
from fs_hw.reference.simulator import run_reference

ROOT = Path(__file__).resolve().parents[1]
ZOO = ROOT / "fs_hw" / "zoo" / "networks"
ALL = ("mlp", "sigmoid_mlp", "lenet", "swish_cnn", "resnet8", "resnet14", "resnet20")


def measure(name: str, path: Path, config: dict, run: int) -> dict:
    backend = LoihiBackend()
    net = load_network(path)
    t0 = time.perf_counter()
    q = backend.quantize(net, config)
    t1 = time.perf_counter()
    art = backend.lower(q, config)
    t2 = time.perf_counter()
    r = art.resources
    row = {
        "network": name, "quantize_s": round(t1 - t0, 2), "lower_s": round(t2 - t1, 2),
        "cores": r.cores, "chips": r.chips, "compartments": r.extra["compartments"],
        "synapse_bits_per_weight": r.extra["synapse_bits_per_weight"],
        "synapse_entries_per_weight": r.extra["synapse_entries_per_weight"],
        "reused_splits_last_build": len(art.payload.reused_splits),
        "axon_objects": r.extra["axon_objects"],
    }
    if run:
        x, _ = load_dataset(net.metadata.get("dataset", "fashion-mnist"), "test")
        t3 = time.perf_counter()
        res = backend.run(art, x[:run], record_spikes=True)
        t4 = time.perf_counter()
        ref = run_reference(art.network, x[:run], "fast", art.profile, record_spikes=True)
        comp = compare_runs(ref, res, input_name=art.network.input.name)
        row.update(emulator_s_per_sample=round((t4 - t3) / run, 2), spike_mismatches=comp.spike_mismatches,
                   spikes_compared=comp.spikes_compared, agreement=comp.agreement)
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("networks", nargs="*", default=list(ALL))
    ap.add_argument("--chips", type=int, default=64, help="chips on the board (default 64)")
    ap.add_argument("--run", type=int, default=0, help="test images to run on the emulator (default 0)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--no-split-reuse", action="store_true",
                    help="search every layer's split in every rebuild (the lowering before the reuse, to compare)")
    args = ap.parse_args(argv)
    if args.no_split_reuse:
        import fs_hw_loihi.program as program

        program.Lowering._decision_key = lambda self, layer, cap: object()  # never equal: never reused
    config = {"chips": args.chips}
    base = measure("bundled-mlp (baseline)", ROOT / "fs_hw" / "examples" / "fashion_mlp.fsnet", config, 0)
    rows = [base]
    print(json.dumps(base), flush=True)
    for name in args.networks:
        row = measure(name, ZOO / f"{name}.fsnet", config, args.run)
        row["lower_vs_baseline"] = round(row["lower_s"] / max(base["lower_s"], 1e-9), 1)
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"machine": platform.platform(), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
