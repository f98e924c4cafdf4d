"""Reference throughput on a ResNet-20-shaped network against its ANN in torch.

    .venv/bin/python benchmarks/bench_reference.py [--batch 256] [--K 8] [--repeats 3]

Random weights (He-scaled) until the zoo has a trained ResNet-20; the shapes are the
CIFAR ResNet-20 adapted to 28x28x1 (16/32/64 channels, 3 basic blocks per stage, 1x1
shortcuts when the shape changes). Prints images/s of: the torch ANN (float32, the
baseline), the reference fast mode (numpy kernels and torch kernels) and the spike-level
mode, each measured in this run, and their ratios to the ANN in float32 (the goal's
baseline) and in float64 (the reference's own arithmetic).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from fs_hw.codes import relu_code
from fs_hw.ir import Add, AvgPool2d, Conv2d, Dense, Flatten, FSActivation, Input, Network, Readout
from fs_hw.reference.simulator import run_reference


def resnet20(K: int, seed: int = 0) -> tuple[Network, torch.nn.Module]:
    """The IR network and a torch ANN with the same weights (ReLU where the IR has FS)."""
    rng = np.random.default_rng(seed)
    pixels = relu_code(1.0, K, ">=", name="pixels")
    act = relu_code(4.0, K, ">=", name="relu")
    nodes: list = [Input("x", (1, 28, 28), pixels.name)]
    torch_layers: dict[str, tuple] = {}

    def conv(name, src, cin, cout, k, stride):
        w = rng.normal(0, np.sqrt(2.0 / (cin * k * k)), (cout, cin, k, k)) * 0.7
        b = rng.normal(0, 0.05, cout)
        nodes.append(Conv2d(name, src, w, b, stride=stride, padding=k // 2))
        torch_layers[name] = (w, b, stride, k // 2)
        return name

    def fs(name, src):
        nodes.append(FSActivation(name, src, act.name))
        return name

    x = fs("stem_fs", conv("stem", "x", 1, 16, 3, 1))
    cin = 16
    for stage, cout in enumerate((16, 32, 64)):
        for block in range(3):
            stride = 2 if stage > 0 and block == 0 else 1
            p = f"s{stage}b{block}"
            h = fs(f"{p}_fs1", conv(f"{p}_conv1", x, cin, cout, 3, stride))
            h = conv(f"{p}_conv2", h, cout, cout, 3, 1)
            short = x if (stride == 1 and cin == cout) else conv(f"{p}_short", x, cin, cout, 1, stride)
            nodes.append(Add(f"{p}_add", operands=(h, short)))
            x = fs(f"{p}_fs2", f"{p}_add")
            cin = cout
    nodes.append(AvgPool2d("pool", x, kernel=None))
    nodes.append(Flatten("flat", "pool"))
    fc_w, fc_b = rng.normal(0, 0.3, (10, 64)), np.zeros(10)
    nodes.append(Dense("fc", "flat", fc_w, fc_b))
    nodes.append(Readout("out", "fc"))
    net = Network(tuple(nodes), {pixels.name: pixels, act.name: act}, {"name": "resnet20-random"})

    class ANN(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.convs = torch.nn.ModuleDict()
            for name, (w, b, s, p) in torch_layers.items():
                c = torch.nn.Conv2d(w.shape[1], w.shape[0], w.shape[2], stride=s, padding=p)
                c.weight.data = torch.tensor(w, dtype=torch.float32)
                c.bias.data = torch.tensor(b, dtype=torch.float32)
                self.convs[name] = c
            self.fc = torch.nn.Linear(64, 10)
            self.fc.weight.data = torch.tensor(fc_w, dtype=torch.float32)
            self.fc.bias.data = torch.tensor(fc_b, dtype=torch.float32)

        def forward(self, x):
            c, r = self.convs, torch.relu
            x = r(c["stem"](x))
            for stage in range(3):
                for block in range(3):
                    p = f"s{stage}b{block}"
                    h = c[f"{p}_conv2"](r(c[f"{p}_conv1"](x)))
                    short = c[f"{p}_short"](x) if f"{p}_short" in c else x
                    x = r(h + short)
            return self.fc(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(x, 1), 1))

    return net, ANN().eval()


def best_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--K", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--spike-batch", type=int, default=32, help="spike-level mode is timed on this many images")
    args = parser.parse_args()
    net, ann = resnet20(args.K)
    x = np.random.default_rng(1).uniform(0, 1, (args.batch, 1, 28, 28))
    xt = torch.tensor(x, dtype=torch.float32)
    print(f"ResNet-20-shaped network, K={args.K}, batch {args.batch}, torch threads {torch.get_num_threads()}")

    def ann_run():
        with torch.no_grad():
            ann(xt)

    t_ann = best_time(ann_run, args.repeats)
    ann64 = resnet20(args.K)[1].double()
    xt64 = xt.double()

    def ann64_run():
        with torch.no_grad():
            ann64(xt64)

    t_ann64 = best_time(ann64_run, args.repeats)
    rows = [("torch ANN float32 (baseline)", args.batch / t_ann), ("torch ANN float64", args.batch / t_ann64)]
    for library in ("numpy", "torch"):
        t = best_time(lambda library=library: run_reference(net, x, "fast", library=library), args.repeats)
        rows.append((f"reference fast, {library} kernels", args.batch / t))
    xs = x[: args.spike_batch]
    for library in ("numpy", "torch"):
        t = best_time(lambda library=library: run_reference(net, xs, "spike", library=library), 1)
        rows.append((f"reference spike-level, {library} kernels ({len(xs)} imgs)", len(xs) / t))
    base, base64 = rows[0][1], rows[1][1]
    print(f"{'run':<52} {'images/s':>10} {'x ANN f32':>10} {'x ANN f64':>10}")
    for name, rate in rows:
        print(f"{name:<52} {rate:>10.1f} {rate / base:>10.3f} {rate / base64:>10.3f}")
    print("The reference computes in float64 (exact FS semantics); 'x ANN f64' compares the same arithmetic.")


if __name__ == "__main__":
    main()
