"""Train a narrow CIFAR-style ResNet on mean/std-normalised Fashion-MNIST, as an outside user
would, and save it with torch.export (the file fs-convert reads). Used to check issue 11's
path: fs-convert --input-mean/--input-std --search with spike input, reference, Loihi lowering.

    .venv/bin/python scripts/train_user_resnet.py OUT.pt2 [--epochs 4] [--width 8]
"""

import argparse
import time

import numpy as np
import torch
from torch import nn

from fs_hw.data import load_dataset
from fs_hw.zoo.models import BasicBlock

MEAN, STD = 0.2860, 0.3530


class NarrowResNet(nn.Module):
    """ResNet-(6n+2) with stages w/2w/4w (the zoo's are 16/32/64)."""

    def __init__(self, width: int = 8, n: int = 1, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        blocks, cin = [], width
        for i, cout in enumerate((width, 2 * width, 4 * width)):
            for j in range(n):
                blocks.append(BasicBlock(cin, cout, 2 if (i > 0 and j == 0) else 1))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        return self.fc(self.flatten(self.pool(self.blocks(self.relu(self.bn1(self.conv1(x)))))))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--width", type=int, default=8)
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(2)
    x, y = load_dataset("fashion-mnist", "train")
    xt, yt = load_dataset("fashion-mnist", "test")
    xn, yn = (torch.from_numpy(x) - MEAN) / STD, torch.from_numpy(y)
    model = NarrowResNet(args.width)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
    steps = args.epochs * ((len(xn) + 127) // 128)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 0.1, total_steps=steps)
    t0 = time.time()
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(len(xn))
        for i in range(0, len(xn), 128):
            idx = perm[i:i + 128]
            opt.zero_grad()
            nn.functional.cross_entropy(model(xn[idx]), yn[idx]).backward()
            opt.step()
            sched.step()
        model.eval()
        with torch.no_grad():
            pred = torch.cat([model((torch.from_numpy(xt[i:i + 1000]) - MEAN) / STD).argmax(1)
                              for i in range(0, len(xt), 1000)])
        print(f"epoch {epoch + 1}: test accuracy {100 * float((pred.numpy() == yt).mean()):.2f}% "
              f"({time.time() - t0:.0f} s)", flush=True)
    torch.export.save(torch.export.export(model, (torch.rand(2, 1, 28, 28),)), args.out)
    print(f"saved {args.out}")


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
