"""Quickstart: train a small MLP, convert it to an FS network, deploy it on two targets, plot.

    .venv/bin/python docs/examples/quickstart.py [OUT_DIR]

Written as notebook cells (``# %%``): each step is a few lines of the Python API that the
commands (``fs-convert``, ``fs-deploy``) are shells over. It trains for a few seconds on a
Fashion-MNIST subset (CPU), converts with :func:`fs_hw.convert.from_torch`, runs the FS
network on the ``reference`` target and on ``loihi`` (nengo-loihi's emulator when there is
no Loihi), and writes each target's JSON report and figure, plus one figure comparing them,
into OUT_DIR (default: a new temporary folder). Needs torch, matplotlib and the Loihi
backend (``pip install -e backends/loihi``); tests/test_deploy_api.py runs it.
"""

# %% set-up
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

import fs_hw
from fs_hw.convert import from_torch
from fs_hw.data import load_dataset

TARGETS = ("reference", "loihi")
SAMPLES = 10  # per target: the Loihi emulator takes about a second per sample here
out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="fs-hw-quickstart-"))
out.mkdir(parents=True, exist_ok=True)
torch.manual_seed(0)

# %% train a 784-64-10 ReLU MLP on 6000 training images (a few seconds)
x_train, y_train = load_dataset("fashion-mnist", "train")  # float32 (N, 1, 28, 28) in [0, 1]
x_test, y_test = load_dataset("fashion-mnist", "test")
x, y = torch.from_numpy(x_train[:6000]), torch.from_numpy(y_train[:6000])
model = nn.Sequential(nn.Flatten(), nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 10))
optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
t0 = time.perf_counter()
for _epoch in range(3):
    for i in torch.randperm(len(x)).split(100):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x[i]), y[i]).backward()
        optimizer.step()
model.eval()
with torch.no_grad():
    ann_accuracy = float((model(torch.from_numpy(x_test)).argmax(1).numpy() == y_test).mean())
print(f"trained in {time.perf_counter() - t0:.1f} s; ANN test accuracy {ann_accuracy:.4f}")

# %% convert: each ReLU becomes an FS neuron (K steps), calibrated on training images
network = from_torch(model, calibration_data=x[:512], name="quickstart_mlp",
                     metadata={"ann_test_accuracy": ann_accuracy})
print(network.summary())

# %% deploy on two targets: lower, run, compare spike for spike with the reference
reports = {}
for target in TARGETS:
    report = fs_hw.deploy(network, target, inputs=x_test[:SAMPLES], labels=y_test[:SAMPLES], progress=False)
    print(report)  # a notebook shows report as a table
    report.save(out / f"{target}.json")  # what `fs-deploy --report` writes
    report.plot(out / f"{target}.png")  # spikes per layer, when they fire, a spike raster
    reports[target] = report

# %% compare the targets: spikes per neuron per layer, and accuracy
fig = Figure(figsize=(9, 3.5))
ax1, ax2 = fig.subplots(1, 2)
layers = list(reports[TARGETS[0]].layers)
width = 0.8 / len(TARGETS)
for k, (target, report) in enumerate(reports.items()):
    ax1.bar(np.arange(len(layers)) + k * width, [report.layers[n]["spikes_per_neuron"] for n in layers],
            width, label=target)
ax1.set_xticks(np.arange(len(layers)) + width * (len(TARGETS) - 1) / 2, layers)
ax1.set_ylabel("spikes per neuron per sample")
ax1.legend(loc="lower right", fontsize=8)
ax2.bar(["ANN", *reports], [ann_accuracy, *(r.accuracy for r in reports.values())], color="tab:gray")
ax2.set_ylabel(f"accuracy ({SAMPLES} test samples; ANN: all)")
fig.tight_layout()
fig.savefig(out / "compare.png", dpi=110)

for target, report in reports.items():
    print(f"{target}: accuracy {report.accuracy:.2f}, spike mismatches {report.spike_mismatches}, "
          f"passed {report.passed}")
print(f"wrote {', '.join(sorted(p.name for p in out.iterdir()))} to {out}")
