#!/usr/bin/env python
"""Train fs_hw zoo models on Fashion-MNIST and write fs_hw/zoo/weights/<name>.{npz,json}.

    python scripts/train_zoo.py NAME [NAME...] [--epochs E] [--seed S] [--threads T]

Reproducible: fixed seeds, data order and augmentation drawn from a seeded generator,
one CPU thread by default (results are bit-identical for the same torch build and
thread count). Augmentation (where configured): random crop after 2-pixel zero padding
and horizontal flip, implemented in torch. The model of the last epoch is saved (no
selection on the test set).
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
import torch.nn.functional as F

from fs_hw.data import load_dataset
from fs_hw.zoo.models import ZOO, build, save

DATASET = "fashion-mnist"

# per-model recipe: optimizer, peak lr, weight decay, epochs, augmentation
SGD = dict(opt="sgd", lr=0.1, wd=5e-4, crop=2, flip=True)
CONFIGS = {
    "mlp": dict(opt="adam", lr=1e-3, wd=0.0, epochs=40, crop=0, flip=True),
    "sigmoid_mlp": dict(opt="adam", lr=1e-3, wd=0.0, epochs=40, crop=0, flip=True),
    "lenet": dict(opt="adam", lr=2e-3, wd=0.0, epochs=40, crop=0, flip=True),
    "swish_cnn": dict(SGD, epochs=10),
    "resnet8": dict(SGD, epochs=20),
    "resnet14": dict(SGD, epochs=12),
    "resnet20": dict(SGD, epochs=25),
}
BATCH = 128
EVAL_BATCH = 500
WARMUP_EPOCHS = 1


def augment(x: torch.Tensor, crop: int, flip: bool, gen: torch.Generator) -> torch.Tensor:
    n, _, h, w = x.shape
    if crop:
        xp = F.pad(x, (crop, crop, crop, crop))
        dy = torch.randint(0, 2 * crop + 1, (n,), generator=gen)
        dx = torch.randint(0, 2 * crop + 1, (n,), generator=gen)
        rows = (dy[:, None] + torch.arange(h)[None, :])[:, :, None]  # (n, h, 1)
        cols = (dx[:, None] + torch.arange(w)[None, :])[:, None, :]  # (n, 1, w)
        x = xp[torch.arange(n)[:, None, None], 0, rows, cols].unsqueeze(1)
    if flip:
        m = torch.rand(n, generator=gen) < 0.5
        x = torch.where(m[:, None, None, None], x.flip(3), x)
    return x


@torch.no_grad()
def evaluate(model, x: torch.Tensor, y: torch.Tensor, channels_last: bool = False) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(x), EVAL_BATCH):
        xb = x[i:i + EVAL_BATCH]
        if channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        correct += (model(xb).argmax(1) == y[i:i + EVAL_BATCH]).sum().item()
    return 100.0 * correct / len(x)


def train(name: str, epochs: int | None, seed: int, weights_dir: Path | None) -> dict:
    cfg = dict(CONFIGS[name])
    if epochs is not None:
        cfg["epochs"] = epochs
    E = cfg["epochs"]
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    xtr, ytr = (torch.from_numpy(a) for a in load_dataset(DATASET, "train"))
    xte, yte = (torch.from_numpy(a) for a in load_dataset(DATASET, "test"))
    model = build(name)
    conv = any(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    if conv:
        model = model.to(memory_format=torch.channels_last)
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [dict(params=decay, weight_decay=cfg["wd"]), dict(params=no_decay, weight_decay=0.0)]
    if cfg["opt"] == "sgd":
        opt = torch.optim.SGD(groups, lr=cfg["lr"], momentum=0.9, nesterov=True)
    else:
        opt = torch.optim.Adam(groups, lr=cfg["lr"])
    steps_per_epoch = math.ceil(len(xtr) / BATCH)
    total, warm = E * steps_per_epoch, WARMUP_EPOCHS * steps_per_epoch

    def lr_at(step):  # linear warmup, then cosine to zero
        if step < warm:
            return cfg["lr"] * (step + 1) / warm
        return cfg["lr"] * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))

    print(f"[{name}] {sum(p.numel() for p in model.parameters())} params, config {cfg}, seed {seed}, "
          f"threads {torch.get_num_threads()}", flush=True)
    history, step, t0 = [], 0, time.time()
    for epoch in range(1, E + 1):
        model.train()
        te = time.time()
        perm = torch.randperm(len(xtr), generator=gen)
        loss_sum, correct = 0.0, 0
        for i in range(0, len(xtr), BATCH):
            idx = perm[i:i + BATCH]
            xb = augment(xtr[idx], cfg["crop"], cfg["flip"], gen)
            if conv:
                xb = xb.contiguous(memory_format=torch.channels_last)
            yb = ytr[idx]
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            out = model(xb)
            loss = F.cross_entropy(out, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            loss_sum += loss.item() * len(idx)
            correct += (out.argmax(1) == yb).sum().item()
        acc = evaluate(model, xte, yte, conv)
        rec = dict(epoch=epoch, loss=round(loss_sum / len(xtr), 5), train_acc=round(100.0 * correct / len(xtr), 3),
                   test_acc=round(acc, 3), epoch_s=round(time.time() - te, 1))
        history.append(rec)
        print(f"[{name}] epoch {epoch}/{E} loss {rec['loss']:.4f} train {rec['train_acc']:.2f}% "
              f"test {acc:.2f}% ({rec['epoch_s']:.0f} s, total {time.time() - t0:.0f} s)", flush=True)
    train_time = time.time() - t0
    model = model.to(memory_format=torch.contiguous_format).eval()
    acc = evaluate(model, xte, yte)
    acc2000 = evaluate(model, xte[:2000], yte[:2000])
    meta = dict(
        name=name, dataset=DATASET, test_accuracy=round(acc, 3), test2000_accuracy=round(acc2000, 3),
        epochs=E, seed=seed, train_time_s=round(train_time, 1), batch_size=BATCH,
        optimizer=cfg["opt"], lr=cfg["lr"], weight_decay=cfg["wd"],
        schedule=f"linear warmup {WARMUP_EPOCHS} epoch + cosine",
        augmentation=dict(crop_pad=cfg["crop"], hflip=cfg["flip"]), input="pixels/255 in [0,1], (N,1,28,28)",
        params=sum(p.numel() for p in model.parameters()), threads=torch.get_num_threads(),
        torch_version=torch.__version__, numpy_version=np.__version__, python=platform.python_version(),
        command=f"python scripts/train_zoo.py {name} --epochs {E} --seed {seed}", history=history)
    npz, js = save(name, model, meta, weights_dir)
    print(f"[{name}] done: test {acc:.2f}% (test[:2000] {acc2000:.2f}%), {train_time:.0f} s; wrote {npz} "
          f"({npz.stat().st_size} bytes) and {js}", flush=True)
    return meta


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="+", choices=ZOO, metavar="NAME", help=f"one of {', '.join(ZOO)}")
    ap.add_argument("--epochs", type=int, default=None, help="override the per-model epoch count")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: leave cores free)")
    ap.add_argument("--weights-dir", type=Path, default=None, help="output folder (default fs_hw/zoo/weights)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    for name in args.names:
        train(name, args.epochs, args.seed, args.weights_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
