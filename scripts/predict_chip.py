"""Predicted chip accuracy of zoo networks, before any SDK is touched.

For each network: the target's ``quantize`` (SDK-free), then the reference on the
quantized network in the target's integer profile, on the first N test images of the
network's data set, against the float FS reference on the same images.

    .venv/bin/python scripts/predict_chip.py --target loihi --images 1000 mlp resnet8 my_network.fsnet
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from fs_hw.backend import FLOAT64, get_backend, parse_target_config
from fs_hw.data import load_dataset
from fs_hw.errors import FSHWError
from fs_hw.ir.io import load_network
from fs_hw.reference.simulator import run_reference

ZOO = Path(__file__).resolve().parents[1] / "fs_hw" / "zoo" / "networks"
ALL = ("mlp", "lenet", "sigmoid_mlp", "swish_cnn", "resnet8", "resnet14", "resnet20")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("networks", nargs="*", default=list(ALL))
    ap.add_argument("--target", default="loihi")
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--config", type=Path, default=None,
                    help="a TOML file whose [target] table sets the target's quantization (default: its defaults)")
    args = ap.parse_args(argv)
    backend = get_backend(args.target)
    settings = {}
    if args.config is not None:
        import tomllib

        settings = tomllib.loads(args.config.read_text()).get("target", {})
    cfg = parse_target_config(backend, settings)
    print("| network | images | float FS % | predicted % | difference (points) | agreement % | quantize s |")
    print("|---|---|---|---|---|---|---|")
    for name in args.networks:
        net = load_network(name if name.endswith(".fsnet") else ZOO / f"{name}.fsnet")  # a zoo name or a file
        x, y = load_dataset(net.metadata.get("dataset", "fashion-mnist"), "test")
        x, y = x[: args.images], y[: args.images]
        t0 = time.perf_counter()
        try:
            q = backend.quantize(net, cfg)
        except FSHWError as exc:
            print(f"| {name} | - | - | refused: {exc} | - | - | - |", flush=True)
            continue
        tq = time.perf_counter() - t0
        fs = run_reference(net, x, "fast", FLOAT64, batch_size=250)
        chip = run_reference(q.network, x, "fast", q.profile, batch_size=250)
        a_fs = 100 * float(np.mean(fs.predictions == y))
        a_chip = 100 * float(np.mean(chip.predictions == y))
        agree = 100 * float(np.mean(fs.predictions == chip.predictions))
        print(f"| {name} | {len(y)} | {a_fs:.2f} | {a_chip:.2f} | {a_chip - a_fs:+.2f} | {agree:.2f} | {tq:.1f} |",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
