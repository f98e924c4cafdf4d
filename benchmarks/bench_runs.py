"""Whole runs of the trained ResNet-20 (zoo, K=8): a 10k-image reference run, a Loihi-profile
prediction, and throughput against batch size.

    .venv/bin/python benchmarks/bench_runs.py [--images 10000] [--loihi 1000] [--threads 2]
                                              [--plot docs/performance-throughput.png]

Everything is measured in this run, each figure beside its baseline measured the same way:

* reference run: ``run_reference(net, x, "fast", library="torch", batch_size=256)`` on
  ``--images`` Fashion-MNIST test images (the float32 + check fast mode), against the
  torch ANN (float32) in batches of 256 on the same images; issue 12's goal: under 30 s
  for 10k images;
* Loihi profile (``--loihi N`` images, 0 to skip; needs ``backends/loihi`` installed):
  ``LoihiBackend().quantize`` (SDK-free; membrane ranges observed on calibration images)
  and the prediction ``run_reference`` on the integer network and profile; issue 12's
  goal: prediction of 1000 images under 60 s;
* ``--plot``: images/s of the ANN, the fast mode and the spike-level mode for a range of
  batch sizes (both reference modes take their float32 path with torch kernels), as a PNG.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from fs_hw.data import load_dataset
from fs_hw.ir.io import load_network
from fs_hw.reference.simulator import run_reference
from fs_hw.zoo import load

ROOT = Path(__file__).resolve().parents[1]


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def ann_run(model, x: np.ndarray, batch: int) -> None:
    with torch.no_grad():
        for s in range(0, len(x), batch):
            model(torch.as_tensor(x[s:s + batch]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=10000)
    ap.add_argument("--loihi", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--plot", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    net = load_network(ROOT / "fs_hw" / "zoo" / "networks" / "resnet20.fsnet")
    model = load("resnet20")
    x, y = load_dataset("fashion-mnist", "test")
    print(f"resnet20 (zoo, K={net.K}), torch threads {torch.get_num_threads()}")

    xs = x[: args.images]
    run_reference(net, xs[:16], "fast", library="torch")  # warm-up (plan, kernels)
    t_ann = timed(lambda: ann_run(model, xs, 256))
    result = {}
    t_ref = timed(lambda: result.update(r=run_reference(net, xs, "fast", library="torch", batch_size=256)))
    r = result["r"]
    acc = float((r.predictions == y[: len(xs)]).mean()) * 100
    print(f"reference run, {len(xs)} images (fast mode, float32 + check, batches of 256): {t_ref:.1f} s "
          f"(ANN float32, same images and batches: {t_ann:.1f} s, ratio {t_ann / t_ref:.2f}x); accuracy {acc:.2f}%; "
          f"neurons recomputed in float64 {r.info['float32_recomputed']} of {r.info['float32_checked']}, "
          f"settled by the float64 kernels {r.info['float32_full64']}")
    goal = 30.0 * len(xs) / 10000
    print(f"goal: {len(xs)} images under {goal:.0f} s -> {'met' if t_ref < goal else 'NOT met'}")

    if args.loihi:
        from fs_hw_loihi.backend import LoihiBackend

        xl = x[: args.loihi]
        holder = {}
        t_q = timed(lambda: holder.update(q=LoihiBackend().quantize(net)))
        q = holder["q"]
        t_p = timed(lambda: holder.update(r=run_reference(q.network, xl, "fast", q.profile, batch_size=250)))
        acc = float((holder["r"].predictions == y[: len(xl)]).mean()) * 100
        print(f"Loihi profile: quantize {t_q:.1f} s; prediction of {len(xl)} images {t_p:.1f} s "
              f"(accuracy {acc:.2f}%); total {t_q + t_p:.1f} s")
        goal = 60.0 * len(xl) / 1000
        print(f"goal: prediction of {len(xl)} images under {goal:.0f} s -> {'met' if t_p < goal else 'NOT met'}")

    if args.plot:
        batches = [1, 4, 16, 64, 256]
        rows = []
        for b in batches:
            xb = x[:b]
            reps = max(1, 64 // b)
            t_a = min(timed(lambda xb=xb, b=b: ann_run(model, xb, b)) for _ in range(reps + 1))
            t_f = min(timed(lambda xb=xb: run_reference(net, xb, "fast", library="torch")) for _ in range(2))
            xsb = xb  # the spike-level mode's float32 path runs at the fast mode's speed
            t_s = min(timed(lambda xsb=xsb: run_reference(net, xsb, "spike", library="torch")) for _ in range(2))
            rows.append((b, b / t_a, b / t_f, len(xsb) / t_s))
            print(f"batch {b:>4}: ANN {b / t_a:8.1f} img/s, fast {b / t_f:8.1f}, spike {len(xsb) / t_s:8.1f}",
                  flush=True)
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        rows_a = np.array(rows)
        for col, label in ((1, "torch ANN float32"), (2, "reference fast (float32 + check)"),
                           (3, "reference spike-level (float32 + check)")):
            ax.plot(rows_a[:, 0], rows_a[:, col], "o-", label=label)
        ax.set(xscale="log", yscale="log", xlabel="batch size", ylabel="images / s",
               title=f"ResNet-20 (K={net.K}), {torch.get_num_threads()} torch threads")
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.plot, dpi=110)
        print(f"plot written to {args.plot}")


if __name__ == "__main__":
    main()
