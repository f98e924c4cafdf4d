"""Model zoo designed for few-spike (FS) conversion.

Every model is built only from modules a converter can see: ``Linear``, ``Conv2d``,
``BatchNorm1d/2d``, ``ReLU``/``SiLU``/``Sigmoid`` modules (one instance per use),
``AvgPool2d``, ``AdaptiveAvgPool2d(1)``, ``Flatten``, and residual adds written as ``+``
in :class:`BasicBlock`. No max pooling, no functional activations. Inputs are
Fashion-MNIST pixels in [0, 1], shape (N, 1, 28, 28), 10 classes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

try:
    import torch
    from torch import nn
except ImportError:  # pragma: no cover - exercised only without torch
    torch = None
    nn = None

from fs_hw.errors import FormatError, MissingDependencyError, ValidationError

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"

ZOO = ("mlp", "lenet", "sigmoid_mlp", "swish_cnn", "resnet8", "resnet14", "resnet20")

#: module types a zoo model may contain (containers and BasicBlock aside)
ALLOWED_LEAF_TYPES = ("Linear", "Conv2d", "BatchNorm1d", "BatchNorm2d", "ReLU", "SiLU",
                      "Sigmoid", "AvgPool2d", "AdaptiveAvgPool2d", "Flatten")


def _need_torch():
    if torch is None:
        raise MissingDependencyError("the model zoo needs torch; install it with: pip install torch")


def _conv_bn(cin, cout, k, stride=1, padding=0):
    return [nn.Conv2d(cin, cout, k, stride=stride, padding=padding, bias=False), nn.BatchNorm2d(cout)]


if nn is not None:

    class BasicBlock(nn.Module):
        """He et al. basic block; option-B (1x1 conv + BN) shortcut when the shape changes.

        ``out = relu2(bn2(conv2(relu1(bn1(conv1(x))))) + shortcut(x))``; ``shortcut`` is
        an empty ``nn.Sequential`` (identity) when shapes match.
        """

        def __init__(self, cin: int, cout: int, stride: int = 1):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.relu1 = nn.ReLU()
            self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            if stride != 1 or cin != cout:
                self.shortcut = nn.Sequential(*_conv_bn(cin, cout, 1, stride=stride))
            else:
                self.shortcut = nn.Sequential()
            self.relu2 = nn.ReLU()

        def forward(self, x):
            out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
            return self.relu2(out + self.shortcut(x))

    class ResNet(nn.Module):
        """CIFAR-style ResNet-(6n+2), stages 16/32/64, adapted to 28x28x1 input."""

        def __init__(self, n: int, num_classes: int = 10):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 16, 3, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(16)
            self.relu = nn.ReLU()
            layers, cin = [], 16
            for i, cout in enumerate((16, 32, 64)):
                blocks = []
                for j in range(n):
                    stride = 2 if (i > 0 and j == 0) else 1
                    blocks.append(BasicBlock(cin, cout, stride))
                    cin = cout
                layers.append(nn.Sequential(*blocks))
            self.layer1, self.layer2, self.layer3 = layers
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.flatten = nn.Flatten()
            self.fc = nn.Linear(64, num_classes)
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

        def forward(self, x):
            x = self.relu(self.bn1(self.conv1(x)))
            x = self.layer3(self.layer2(self.layer1(x)))
            return self.fc(self.flatten(self.pool(x)))


def _mlp():
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(),
                         nn.Linear(128, 10))


def _sigmoid_mlp():
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.Sigmoid(), nn.Linear(256, 128), nn.Sigmoid(),
                         nn.Linear(128, 10))


def _lenet():
    # LeNet-5 with ReLU and average pooling: 28x28 -> conv5 pad2 -> 28 -> pool 14 -> conv5 -> 10 -> pool 5
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.AvgPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.AvgPool2d(2),
        nn.Flatten(), nn.Linear(16 * 5 * 5, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10))


def _swish_cnn():
    return nn.Sequential(
        *_conv_bn(1, 32, 3, padding=1), nn.SiLU(),
        *_conv_bn(32, 32, 3, padding=1), nn.SiLU(), nn.AvgPool2d(2),   # 14x14
        *_conv_bn(32, 64, 3, padding=1), nn.SiLU(), nn.AvgPool2d(2),   # 7x7
        *_conv_bn(64, 64, 3, padding=1), nn.SiLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))


_BUILDERS = {
    "mlp": _mlp,
    "sigmoid_mlp": _sigmoid_mlp,
    "lenet": _lenet,
    "swish_cnn": _swish_cnn,
    "resnet8": lambda: ResNet(1),
    "resnet14": lambda: ResNet(2),
    "resnet20": lambda: ResNet(3),
}


def _check_name(name: str):
    if name not in _BUILDERS:
        raise ValidationError("zoo", "name", f"unknown model {name!r}; known: {', '.join(ZOO)}")


def build(name: str):
    """Return an untrained zoo model (train mode)."""
    _check_name(name)
    _need_torch()
    return _BUILDERS[name]()


def weights_paths(name: str, weights_dir: Path | None = None) -> tuple[Path, Path]:
    d = Path(weights_dir) if weights_dir is not None else WEIGHTS_DIR
    return d / f"{name}.npz", d / f"{name}.json"


def save(name: str, model, meta: dict, weights_dir: Path | None = None) -> tuple[Path, Path]:
    """Write ``<name>.npz`` (state_dict as plain numpy arrays) and ``<name>.json``."""
    npz, js = weights_paths(name, weights_dir)
    npz.parent.mkdir(parents=True, exist_ok=True)
    arrays = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    with open(npz, "wb") as f:
        np.savez_compressed(f, **arrays)
    js.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return npz, js


def metadata(name: str, weights_dir: Path | None = None) -> dict:
    """The training metadata of a stored zoo model."""
    _check_name(name)
    _, js = weights_paths(name, weights_dir)
    if not js.is_file():
        raise MissingDependencyError(f"zoo metadata {js} is missing; train it with: python scripts/train_zoo.py {name}")
    try:
        return json.loads(js.read_text())
    except ValueError as e:
        raise FormatError(f"{js}: not valid JSON: {e}") from e


def load(name: str, weights_dir: Path | None = None):
    """Return the trained zoo model in eval mode (weights from ``weights/<name>.npz``)."""
    model = build(name)
    npz, _ = weights_paths(name, weights_dir)
    if not npz.is_file():
        raise MissingDependencyError(
            f"zoo weights {npz} are missing; train them with: python scripts/train_zoo.py {name}")
    try:
        with np.load(npz, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise FormatError(f"{npz}: cannot read weights: {e}") from e
    expected = model.state_dict()
    missing = sorted(set(expected) - set(arrays))
    extra = sorted(set(arrays) - set(expected))
    if missing or extra:
        raise FormatError(
            f"{npz}: state_dict keys differ from model {name!r}: missing {missing[:5]}, unexpected {extra[:5]}")
    state = {}
    for k, t in expected.items():
        a = arrays[k]
        if tuple(a.shape) != tuple(t.shape):
            raise FormatError(f"{npz}: {k}: shape {tuple(a.shape)}, model {name!r} expects {tuple(t.shape)}")
        state[k] = torch.from_numpy(np.ascontiguousarray(a)).to(t.dtype)
    model.load_state_dict(state)
    return model.eval()


def check_architecture(model) -> list[str]:
    """Names of modules whose type a FS converter does not support (empty list = ok)."""
    bad = []
    for mname, m in model.named_modules():
        t = type(m).__name__
        if t in ("Sequential", "BasicBlock", "ResNet") or t in ALLOWED_LEAF_TYPES:
            continue
        bad.append(f"{mname or '<root>'}: {t}")
    return bad
