"""Linear node kernels (the synapses), in numpy with an optional torch path.

Each kernel maps a batch ``(N, *in_shape)`` to ``(N, *out_shape)``; ``bias=False``
computes the bias-free map used to deliver spike events. ``weight=`` replaces a
Dense/Conv2d node's ``weight`` (the reference passes ``step_weight[t]`` for a
step-weighted node); without it the node's own ``weight`` is used. The torch path
computes the same float64 sums with torch's kernels (faster convolutions); tests check
that the two give identical spikes.
"""

from __future__ import annotations

import numpy as np

from fs_hw.errors import MissingDependencyError
from fs_hw.ir.nodes import Add, AvgPool2d, Conv2d, Dense, Flatten, Node

LIBRARIES = ("numpy", "torch")
FLOAT64_DTYPE = np.dtype(np.float64)


def _torch():
    try:
        import torch
    except ImportError:
        raise MissingDependencyError(
            "the torch compute path needs torch: pip install 'fs-hw[torch]' (torch==2.13.0)"
        ) from None
    return torch


def apply_linear(node: Node, values: list[np.ndarray], bias: bool, library: str = "numpy",
                 dtype: np.dtype = FLOAT64_DTYPE, weight: np.ndarray | None = None) -> np.ndarray:
    if isinstance(node, Add):
        out = values[0].copy()
        for v in values[1:]:
            out += v
        return out
    (x,) = values
    if isinstance(node, Flatten):
        return x.reshape(x.shape[0], -1)
    if isinstance(node, Dense):
        w = (node.weight if weight is None else weight).astype(dtype, copy=False)
        out = x @ w.T
        if bias:
            out += node.bias.astype(dtype, copy=False)
        return out
    if isinstance(node, Conv2d):
        w = node.weight if weight is None else weight
        if library == "torch" and dtype.kind == "f":
            return _conv2d_torch(node, x, bias, w)
        return _conv2d_numpy(node, x, bias, dtype, w)
    if isinstance(node, AvgPool2d):
        return _avgpool(node, x, dtype)
    raise TypeError(f"{node.label} is not a linear node")


def _conv2d_numpy(node: Conv2d, x: np.ndarray, bias: bool, dtype: np.dtype, weight: np.ndarray) -> np.ndarray:
    co, ci, kh, kw = weight.shape
    (sh, sw), (ph, pw) = node.stride, node.padding
    if ph or pw:
        x = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    windows = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw]
    # windows: (N, C_in, H_out, W_out, kh, kw) -> (N, H_out, W_out, C_out)
    out = np.tensordot(windows, weight.astype(dtype, copy=False), axes=([1, 4, 5], [1, 2, 3]))
    if bias:
        out += node.bias.astype(dtype, copy=False)
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2))


def _conv2d_torch(node: Conv2d, x: np.ndarray, bias: bool, weight: np.ndarray) -> np.ndarray:
    torch = _torch()
    with torch.no_grad():
        out = torch.nn.functional.conv2d(
            torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64)),
            torch.tensor(weight, dtype=torch.float64),
            torch.tensor(node.bias, dtype=torch.float64) if bias else None,
            stride=node.stride,
            padding=node.padding,
        )
    return out.numpy()


def _avgpool(node: AvgPool2d, x: np.ndarray, dtype: np.dtype) -> np.ndarray:
    (kh, kw), (sh, sw) = node.window(x.shape[1:])
    windows = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw]
    total = windows.sum(axis=(4, 5))
    if dtype.kind in "iu":
        # Integer profiles must lower pooling to integer weights before running.
        raise TypeError(f"{node.label}: average pooling has no exact integer form; lower it to a conv")
    return total / (kh * kw)
