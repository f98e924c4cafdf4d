"""Which FS codes and K survive BrainScaleS-2's analog variation: accuracy of the exact
replay and over simulated chips at 1x and 2x the configured mismatch, per network.

    .venv/bin/python scripts/bss2_robustness.py --images 200 --chips 3 example mlp sigmoid_mlp
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from fs_hw.backend import get_backend
from fs_hw.data import load_dataset
from fs_hw.ir.io import load_network

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("networks", nargs="*", default=["example", "mlp", "sigmoid_mlp"])
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--chips", type=int, default=3)
    args = ap.parse_args(argv)
    backend = get_backend("brainscales2")
    print("| network | codes (K) | float FS % | exact 6-bit % | 1x mismatch % (mean +- std) | 2x mismatch % | s |")
    print("|---|---|---|---|---|---|---|")
    for name in args.networks:
        path = ROOT / "fs_hw" / "examples" / "fashion_mlp.fsnet" if name == "example" else \
            ROOT / "fs_hw" / "zoo" / "networks" / f"{name}.fsnet"
        net = load_network(path)
        x, y = load_dataset(net.metadata.get("dataset", "fashion-mnist"), "test")
        x, y = x[: args.images], y[: args.images]
        t0 = time.perf_counter()
        art = backend.lower(backend.quantize(net, {}), {"monte_carlo_chips": args.chips})
        from fs_hw.backend import FLOAT64
        from fs_hw.reference.simulator import run_reference

        fs = 100 * float(np.mean(run_reference(net, x, "fast", FLOAT64).predictions == y))
        mc = backend.monte_carlo(art, x, y, scales=(0.0, 1.0, 2.0))
        s = {p["scale"]: p for p in mc["sweep"]}
        codes = sorted({c.name.split("@")[0] for c in net.codes.values()})
        print(f"| {name} | {', '.join(codes)} (K={net.K}) | {fs:.1f} | {100 * s[0.0]['mean']:.1f} | "
              f"{100 * s[1.0]['mean']:.1f} +- {100 * s[1.0]['std']:.1f} | {100 * s[2.0]['mean']:.1f} +- "
              f"{100 * s[2.0]['std']:.1f} | {time.perf_counter() - t0:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
