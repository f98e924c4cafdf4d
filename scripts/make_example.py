"""Regenerate the bundled example: a small Fashion-MNIST MLP as an FS network.

    .venv/bin/python scripts/make_example.py

Trains a 784-100-10 ReLU MLP (fixed seed, 3 epochs, ~30 s on 2 cores), converts it by
hand (the example must not depend on the converter): inputs enter through the K-step
binary pixel code (alpha = 1), the hidden ReLU becomes the exact ReLU code with alpha =
the 99.9th percentile of its calibration pre-activations plus a half-step offset in the
bias (the ReLU code truncates), and the read-out is the membrane of the last dense
layer. Writes fs_hw/examples/fashion_mlp.fsnet and fashion_test.npz (first 1000 test
images as uint8, labels).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fs_hw.codes import relu_code
from fs_hw.data import load_dataset
from fs_hw.ir import Dense, Flatten, FSActivation, Input, Network, Readout, save_network

K = 8
OUT = Path(__file__).resolve().parents[1] / "fs_hw" / "examples"


def main() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    x_train, y_train = load_dataset("fashion-mnist", "train")
    x_test, y_test = load_dataset("fashion-mnist", "test")
    model = torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(784, 100), torch.nn.ReLU(), torch.nn.Linear(100, 10)
    )
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    xt, yt = torch.from_numpy(x_train), torch.from_numpy(y_train)
    for epoch in range(3):
        perm = torch.randperm(len(xt))
        for i in range(0, len(xt), 128):
            idx = perm[i : i + 128]
            loss = torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            acc = (model(torch.from_numpy(x_test)).argmax(1).numpy() == y_test).mean()
        print(f"epoch {epoch + 1}: ANN test accuracy {acc:.4f}")
    w1, b1 = (p.detach().double().numpy() for p in model[1].parameters())
    w2, b2 = (p.detach().double().numpy() for p in model[3].parameters())
    calib = x_train[:5000].reshape(5000, -1).astype(np.float64) @ w1.T + b1
    alpha = float(np.float32(np.percentile(calib[calib > 0], 99.9)))
    pixels = relu_code(1.0, K, ">=", name="pixels_k8")
    hidden = relu_code(alpha, K, ">=", name="relu_hidden")
    half_step = alpha * 2.0**-K / 2
    net = Network(
        (
            Input("image", (1, 28, 28), pixels.name),
            Flatten("flat", "image"),
            Dense("dense1", "flat", w1, b1 + half_step),
            FSActivation("relu1", "dense1", hidden.name),
            Dense("dense2", "relu1", w2, b2),
            Readout("logits", "dense2"),
        ),
        {pixels.name: pixels, hidden.name: hidden},
        {
            "name": "fashion_mlp",
            "description": "784-100-10 MLP on Fashion-MNIST, FS-converted (example)",
            "dataset": "fashion-mnist",
            "ann_test_accuracy": float(acc),
            "classes": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                        "Sneaker", "Bag", "Ankle boot"],
        },
    )
    OUT.mkdir(parents=True, exist_ok=True)
    save_network(net, OUT / "fashion_mlp.fsnet", overwrite=True)
    images = np.round(x_test[:1000] * 255).astype(np.uint8)
    np.savez_compressed(OUT / "fashion_test.npz", images=images, labels=y_test[:1000], scale=np.float64(1 / 255))
    print(f"wrote {OUT / 'fashion_mlp.fsnet'} (alpha {alpha:.4g}) and fashion_test.npz")


if __name__ == "__main__":
    main()
