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
        out = exact_matmul(x, w.T) if dtype.kind in "iu" else x @ w.T
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
    w = weight.astype(dtype, copy=False)
    if dtype.kind in "iu":
        out = exact_conv(x, w, node.stride)
        if bias:
            out += node.bias_for_output().astype(dtype, copy=False)[None]
        return out
    windows = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw]
    # windows: (N, C_in, H_out, W_out, kh, kw) -> (N, H_out, W_out, C_out)
    out = np.tensordot(windows, w, axes=([1, 4, 5], [1, 2, 3]))
    if bias and not node.has_bias_map:
        out += node.bias.astype(dtype, copy=False)
    out = np.ascontiguousarray(out.transpose(0, 3, 1, 2))
    if bias and node.has_bias_map:
        out += node.bias.astype(dtype, copy=False)[None]
    return out


#: float64 holds every integer below 2**53 exactly
_EXACT_FLOAT = 2.0**53
#: float32 holds every integer below 2**24 exactly
_EXACT_FLOAT32 = 2**24
#: more float32 digits than this and one float64 product is as fast
_MAX_DIGITS = 4


def _float32_digits(amax: float, b_abs_sum_max: float) -> int | None:
    """Bits per digit ``m`` such that products of base-``2**m`` digits of ``a`` (each in
    ``[-2**m, 2**m]``) with ``b`` are exact in float32, or None.

    With ``|digit| <= 2**m`` every product and every partial sum, in any order and with or
    without FMA, is an integer of magnitude at most ``2**m * max(b_abs_sums) < 2**24``, so
    float32 computes it exactly; ``a = sum_d 2**(m d) a_d`` then gives the exact result
    from one float32 product per digit (oneDNN / float32 BLAS: several times faster than
    float64 convolutions)."""
    if b_abs_sum_max <= 0 or b_abs_sum_max >= _EXACT_FLOAT32 / 2:
        return None
    m = int(np.floor(np.log2((_EXACT_FLOAT32 - 1) / b_abs_sum_max)))
    while m > 0 and 2**m * b_abs_sum_max >= _EXACT_FLOAT32:  # guard log2's rounding
        m -= 1
    if m < 1 or -(-max(int(amax), 1).bit_length() // m) > _MAX_DIGITS:
        return None
    return m


def _split_digits(a: np.ndarray, m: int, amax: float) -> list[np.ndarray]:
    """``a`` (integer-valued) as float32 digits: ``a = sum_d 2**(m d) digits[d]``; all but
    the last in ``[0, 2**m)``, the last (the signed rest) in ``[-2**m, 2**m]``."""
    rest = np.rint(a).astype(np.int64) if a.dtype.kind == "f" else a.astype(np.int64)
    count = -(-max(int(amax), 1).bit_length() // m)
    digits = []
    for _ in range(count - 1):
        digits.append((rest & (2**m - 1)).astype(np.float32))
        rest = rest >> m  # floor division: the remainder above is in [0, 2**m)
    digits.append(rest.astype(np.float32))
    return digits


def _sum_digits(parts: list[np.ndarray], m: int) -> np.ndarray:
    out = np.rint(parts[-1]).astype(np.int64)
    for part in reversed(parts[:-1]):
        out <<= m
        out += np.rint(part).astype(np.int64)
    return out


def exact_tensordot(a: np.ndarray, b: np.ndarray, axes, b_abs_sums: np.ndarray) -> np.ndarray:
    """``np.tensordot`` of integer arrays, exactly: through float32 BLAS, one product per
    base-2**m digit of ``a``, when few digits suffice (:func:`_float32_digits`); else float64
    BLAS when every sum is provably below 2**53 (``max|a| * max(b_abs_sums)``, the largest
    possible |sum|); else in int64 (exact, much slower: numpy has no integer BLAS)."""
    amax = float(np.abs(a).max(initial=0))
    bsum = float(np.max(b_abs_sums, initial=0))
    bound = amax * bsum
    m = _float32_digits(amax, bsum)
    if m is not None:
        bf = b.astype(np.float32)
        parts = [np.tensordot(d, bf, axes=axes) for d in _split_digits(a, m, amax)]
        out = _sum_digits(parts, m)
        return out.astype(a.dtype) if a.dtype.kind in "iu" else out
    if bound < _EXACT_FLOAT:
        out = np.tensordot(a.astype(np.float64), b.astype(np.float64), axes=axes)
        return np.rint(out).astype(a.dtype if a.dtype.kind in "iu" else np.int64)
    return np.tensordot(a, b, axes=axes)


def exact_conv(x: np.ndarray, w: np.ndarray, stride: tuple[int, int]) -> np.ndarray:
    """Cross-correlation of integer arrays (``x`` already padded), exactly: with torch, in
    float32 digits when few suffice (:func:`_float32_digits`); else in float64 (torch's
    conv2d when torch is installed, else one BLAS product per kernel tap) when every sum is
    provably below 2**53; else in int64. Returns (N, C_out, H', W') int64."""
    co, ci, kh, kw = w.shape
    (sh, sw) = stride
    n, _, hp, wp = x.shape
    ho, wo = (hp - kh) // sh + 1, (wp - kw) // sw + 1
    amax = float(np.abs(x).max(initial=0))
    wsum = float(np.abs(w).reshape(co, -1).sum(axis=1).max(initial=0))
    bound = amax * wsum
    try:
        torch = _torch()
    except Exception:  # torch is optional: the numpy paths below are exact too
        torch = None
    m = _float32_digits(amax, wsum) if torch is not None else None
    if m is not None:
        wt = torch.from_numpy(np.ascontiguousarray(w, np.float32))
        with torch.no_grad():
            parts = [torch.nn.functional.conv2d(torch.from_numpy(d), wt, stride=stride).numpy()
                     for d in _split_digits(x, m, amax)]
        return _sum_digits(parts, m)
    if bound >= _EXACT_FLOAT:
        windows = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw]
        out = np.tensordot(windows, w, axes=([1, 4, 5], [1, 2, 3]))
        return np.ascontiguousarray(out.transpose(0, 3, 1, 2)).astype(np.int64)
    xf, wf = np.ascontiguousarray(x, np.float64), np.ascontiguousarray(w, np.float64)
    if torch is not None:
        with torch.no_grad():
            out = torch.nn.functional.conv2d(torch.from_numpy(xf), torch.from_numpy(wf), stride=stride).numpy()
    else:
        out = np.zeros((co, n, ho, wo))
        for dy in range(kh):
            for dx in range(kw):
                xs = xf[:, :, dy:dy + sh * (ho - 1) + 1:sh, dx:dx + sw * (wo - 1) + 1:sw]
                out += np.tensordot(wf[:, :, dy, dx], xs, axes=([1], [1]))
        out = out.transpose(1, 0, 2, 3)
    return np.rint(out).astype(np.int64)


def exact_matmul(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``x @ w`` of integer arrays (``w``: (n_in, n_out)), exactly (see :func:`exact_tensordot`)."""
    return exact_tensordot(x, w, ([x.ndim - 1], [0]), np.abs(w).sum(axis=0))


def _conv2d_torch(node: Conv2d, x: np.ndarray, bias: bool, weight: np.ndarray) -> np.ndarray:
    torch = _torch()
    with torch.no_grad():
        out = torch.nn.functional.conv2d(
            torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64)),
            torch.tensor(weight, dtype=torch.float64),
            torch.tensor(node.bias, dtype=torch.float64) if bias and not node.has_bias_map else None,
            stride=node.stride,
            padding=node.padding,
        )
        if bias and node.has_bias_map:
            out += torch.tensor(node.bias, dtype=torch.float64)[None]
    return out.numpy()


def _avgpool(node: AvgPool2d, x: np.ndarray, dtype: np.dtype) -> np.ndarray:
    (kh, kw), (sh, sw) = node.window(x.shape[1:])
    windows = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw]
    total = windows.sum(axis=(4, 5))
    if dtype.kind in "iu":
        # Integer profiles must lower pooling to integer weights before running.
        raise TypeError(f"{node.label}: average pooling has no exact integer form; lower it to a conv")
    return total / (kh * kw)
