"""ResNet-20 conversion time, and reference throughput against the torch ANN on the same inputs.

    .venv/bin/python benchmarks/bench_convert.py [--batch 256] [--K 6] [--calibration 2000] [--repeats 3]
                                                 [--threads N] [--model resnet20]

Uses the zoo's trained ResNet-20 (``fs_hw.zoo.load``); if its weights are missing, the
same architecture with its random initialisation (seeded), which converts and runs at
the same speed. Inputs are the first ``--batch`` Fashion-MNIST test images (random
images if the data set is not installed). Everything below is measured in this run:

* conversion: ``from_torch`` with ``--calibration`` train images (trace, BatchNorm
  folding, self-check, calibration, IR); best of ``--repeats``;
* throughput (images/s) of the torch ANN in float32 (the baseline) and in float64,
  the reference fast mode with numpy and with torch kernels, the float32 FS twin
  (``fs_hw.convert.search.FSTwin``, used for operating-point search), and the reference
  spike-level mode on a few images; each printed with its ratio to the ANN.

The issue's goal for the reference fast mode is at least 0.8x the ANN.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
from bench_reference import best_time

from fs_hw.convert import from_torch
from fs_hw.convert.search import FSTwin
from fs_hw.reference.simulator import run_reference


def load_model(name: str):
    from fs_hw import zoo
    from fs_hw.errors import MissingDependencyError

    try:
        return zoo.load(name), "trained zoo weights"
    except MissingDependencyError:
        torch.manual_seed(0)
        return zoo.build(name).eval(), "random initialisation (zoo weights missing)"


def load_inputs(n_test: int, n_cal: int):
    try:
        from fs_hw.data import load_dataset

        x_train, _ = load_dataset("fashion-mnist", "train")
        x_test, _ = load_dataset("fashion-mnist", "test")
        return x_test[:n_test], x_train[:n_cal], "Fashion-MNIST"
    except Exception:
        rng = np.random.default_rng(0)
        return (rng.uniform(0, 1, (n_test, 1, 28, 28)).astype(np.float32),
                rng.uniform(0, 1, (n_cal, 1, 28, 28)).astype(np.float32), "random images")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--K", type=int, default=6)
    ap.add_argument("--calibration", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--spike-batch", type=int, default=16)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model, weights = load_model(args.model)
    x, x_cal, data = load_inputs(args.batch, args.calibration)
    print(f"{args.model} ({weights}), K={args.K}, {len(x)} {data} test inputs, {len(x_cal)} calibration "
          f"images, torch threads {torch.get_num_threads()}")

    net = None

    def convert():
        nonlocal net
        net = from_torch(model, x_cal[:2], x_cal, K=args.K, alpha_policy="percentile:99.99")

    t_conv = best_time(convert, args.repeats)
    stages = net.time_steps // net.K
    print(f"conversion (from_torch, {len(x_cal)} calibration images): {t_conv:.2f} s "
          f"({len(net.nodes)} IR nodes, {stages} stages, {sum(net.neuron_counts().values())} spiking neurons)")

    xt = torch.as_tensor(x)
    xt64 = xt.to(torch.float64)
    model64 = None

    def ann():
        with torch.no_grad():
            return model(xt)

    def ann64():
        nonlocal model64
        if model64 is None:
            import copy

            model64 = copy.deepcopy(model).to(torch.float64)
        with torch.no_grad():
            return model64(xt64)

    twin = FSTwin(model, x_cal[:2], x_cal[:500])
    alphas = {layer["node"]: layer["alpha"] for layer in net.metadata["conversion"]["layers"] if "alpha" in layer}

    rows = []
    t_ann = best_time(ann, args.repeats)
    rows.append(("torch ANN float32 (baseline)", len(x) / t_ann))
    rows.append(("torch ANN float64", len(x) / best_time(ann64, args.repeats)))
    preds = {}
    for library, bs in (("numpy", None), ("torch", None), ("torch", 100)):
        def ref(library=library, bs=bs):
            preds[library] = run_reference(net, x, "fast", library=library, batch_size=bs).predictions

        label = f"reference fast, {library} kernels" + (f", batches of {bs}" if bs else ", one batch")
        rows.append((label, len(x) / best_time(ref, args.repeats)))
    rows.append(("FS twin float32 (search), batches of 128",
                 len(x) / best_time(lambda: twin.run(x, args.K, alphas, batch_size=128), args.repeats)))
    xs = x[: args.spike_batch]
    t = best_time(lambda: run_reference(net, xs, "spike", library="torch"), 1)
    rows.append((f"reference spike-level, torch kernels ({len(xs)} imgs)", len(xs) / t))

    ann_pred = ann().argmax(1).numpy()
    base = rows[0][1]
    print(f"{'run':<52} {'images/s':>10} {'x ANN':>7}")
    for name, rate in rows:
        print(f"{name:<52} {rate:>10.1f} {rate / base:>7.3f}")
    agree = float((preds["torch"] == ann_pred).mean()) * 100
    print(f"reference FS and ANN predict the same class on {agree:.1f}% of these inputs; "
          f"numpy and torch kernels agree on {float((preds['numpy'] == preds['torch']).mean()) * 100:.1f}%")
    fast = max(rate for name, rate in rows if name.startswith("reference fast")) / base
    print(f"goal: reference fast mode >= 0.8x the ANN: best {fast:.2f}x -> {'met' if fast >= 0.8 else 'NOT met'}")


if __name__ == "__main__":
    main()
