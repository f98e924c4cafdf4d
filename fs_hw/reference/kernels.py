"""Fused per-neuron loops of the float32 fast mode (:mod:`fs_hw.reference.fast32`).

Two loops dominate the float32 path once its convolutions are float32: the check that
decides each ReLU-coded neuron (clip, interval test, level, spike count) and the float64
recomputation of the rare undecided neurons (a gathered receptive field and two dot
products). In numpy each is several passes over memory; compiled with numba each is one.
Both are written once, as plain loops, and run

* compiled by numba (``nogil``, so the chunks' threads run them in parallel) when numba
  is installed (the ``speed`` extra; ``scripts/setup.sh`` installs it), else
* as the same code in numpy's array passes (``_numpy_*`` below), slower and identical.

``FORCE_NUMPY = True`` (tests) selects the numpy versions. The two agree exactly: the
decision is made from the same float64 values with the same comparisons, and the
recomputed dot products may sum in another order, which the bound ``D`` of the caller
covers (fast32 module doc, step 4), so the levels they decide are the same.
"""

from __future__ import annotations

import numpy as np

from fs_hw.codes.relu import _POPCOUNT16

#: tests set this to run the numpy versions even where numba is installed
FORCE_NUMPY = False

try:  # numba is optional (the ``speed`` extra)
    import numba as _numba
except ImportError:  # pragma: no cover - exercised where numba is absent
    _numba = None


def _jit(func, **options):
    """numba's compiled ``func`` (cached on disk where the package directory or the user's
    cache directory is writable), or None without numba."""
    if _numba is None:  # pragma: no cover
        return None
    try:
        return _numba.njit(nogil=True, cache=True, **options)(func)
    except RuntimeError:  # no writable cache location: compile per process
        return _numba.njit(nogil=True, **options)(func)


def compiled() -> bool:
    """Whether the numba versions run."""
    return _numba is not None and not FORCE_NUMPY


# -- the ReLU decision ------------------------------------------------------------------
def _decide_relu_loop(t, n_out, ratio, E0, r, B, levels, q, counts, flagged):  # pragma: no cover - compiled
    # Three passes over one (sample, channel) row, each a simple float32 loop LLVM
    # vectorizes: the levels and how many are undecided; (rarely) which; the spikes.
    n, _, P = t.shape
    k = r.shape[0]
    top = np.float32(levels + 0.5)
    half = np.float32(0.5)
    nf = 0
    zeros = np.zeros(P, np.float32)
    for s in range(n):
        spikes = 0
        for o in range(n_out):
            e0 = E0[o]
            to = t[s, o]
            qo = q[s, o]
            r0 = r[0, o] if k > 0 else np.float32(0.0)
            r1 = r[1, o] if k > 1 else np.float32(0.0)
            b0 = B[0, s] if k > 0 else zeros
            b1 = B[1, s] if k > 1 else zeros
            undecided = 0
            for p in range(P):
                e = e0[p] + r0 * b0[p] + r1 * b1[p]
                x = min(max(to[p] * ratio, half), top)
                level = np.floor(x + e)
                qo[p] = min(level, levels)
                undecided += level >= x - e  # an integer (grid point) lies in [x - e, x + e]
            if undecided:
                for p in range(P):
                    e = e0[p] + r0 * b0[p] + r1 * b1[p]
                    x = min(max(to[p] * ratio, half), top)
                    if np.floor(x + e) >= x - e:
                        flagged[nf] = (s * n_out + o) * P + p
                        nf += 1
                        qo[p] = 0.0
            for p in range(P):  # the level's binary digits are its spikes (levels < 2^24)
                bits = np.int32(qo[p])
                bits = bits - ((bits >> 1) & 0x55555555)
                bits = (bits & 0x33333333) + ((bits >> 2) & 0x33333333)
                bits = (bits + (bits >> 4)) & 0x0F0F0F0F
                spikes += (bits * 0x01010101) >> 24
        counts[s] = spikes
    return nf


_decide_relu_jit = _jit(_decide_relu_loop)


def decide_relu(t: np.ndarray, n_out: int, ratio: float, E0: np.ndarray, r: np.ndarray, B: np.ndarray,
                levels: int, q: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Decide the ReLU levels of the float32 values ``t[:, :n_out]`` (``t`` C-contiguous
    ``(n, channels, P)``; channels beyond ``n_out`` are ignored) in the code's grid units
    times ``ratio``, with the bound ``E0[o, p] + sum_j r[j, o] B[j, s, p]`` (``E0``
    ``(n_out, P)`` a-priori, ``B`` ``(k, n, P)`` float64 per-sample maps, ``r``
    ``(k, n_out)``).

    A neuron is decided when no grid point ``1..levels`` lies within the bound of
    ``x = clip(t ratio, 0.5, levels + 0.5)``; its level ``floor(x + e)`` goes to ``q``
    (float32 ``(n, n_out, P)``) and its spikes to ``counts[s]``. The others get level 0 and
    no count here; their flat indices (over ``(n, n_out, P)``) are returned, ascending."""
    if levels >= 2**24:  # pragma: no cover - float32 levels are exact below 2^24 (fast32)
        raise ValueError(f"levels {levels} above 2^24")
    if compiled() and r.shape[0] <= 2:  # (an add of more data-bounded convolutions: numpy)
        flagged = np.empty(q.size, np.int64)
        nf = _decide_relu_jit(t, n_out, np.float32(ratio), E0, r, B, np.float32(levels), q,
                              counts, flagged)
        return flagged[:nf].copy()
    return _numpy_decide_relu(t[:, :n_out], ratio, E0, r, B, levels, q, counts)


def _numpy_decide_relu(t, ratio, E0, r, B, levels, q, counts):
    e = E0[None]
    for j in range(r.shape[0]):
        e = e + r[j][None, :, None] * B[j][:, None, :]
    x = np.clip(t * np.float32(ratio), np.float32(0.5), np.float32(levels + 0.5))
    level = np.floor(x + e)
    undecided = level >= x - e
    level[undecided] = 0.0
    q[...] = level
    counts[...] = popcount(level.astype(np.int64)).reshape(len(t), -1).sum(axis=1)
    return np.flatnonzero(undecided)


def popcount(values: np.ndarray) -> np.ndarray:
    """Binary digits set in each non-negative integer of ``values`` (int64)."""
    count = _POPCOUNT16[values & 0xFFFF].astype(np.int64)
    rest = values >> 16
    while np.any(rest):
        count += _POPCOUNT16[rest & 0xFFFF]
        rest = rest >> 16
    return count


# -- the float64 recomputation of a convolution's neurons --------------------------------
def _conv_dots_loop(x, w, bias, sh, sw, ph, pw, b, c, i, j, v, mag):  # pragma: no cover - compiled
    _, C, H, W = x.shape
    _, _, kh, kw = w.shape
    Hb, Wb = bias.shape[1], bias.shape[2]
    for u in range(b.shape[0]):
        acc = 0.0
        m = 0.0
        top = i[u] * sh - ph
        left = j[u] * sw - pw
        xs = x[b[u]]
        wc = w[c[u]]
        # taps inside the image only (the zero padding adds nothing)
        for dy in range(max(0, -top), min(kh, H - top)):
            for dx in range(max(0, -left), min(kw, W - left)):
                for ch in range(C):
                    term = np.float64(xs[ch, top + dy, left + dx]) * wc[ch, dy, dx]
                    acc += term
                    m += abs(term)
        bb = bias[c[u], i[u] if Hb > 1 else 0, j[u] if Wb > 1 else 0]
        v[u] = acc + bb
        mag[u] = m + abs(bb)


# Any order of the sums, with or without fused multiply-adds, is inside the caller's
# bound D (Higham's bound holds for every order), so LLVM may reassociate and contract
# them: independent partial sums instead of one chain of dependent additions.
_conv_dots_jit = _jit(_conv_dots_loop, fastmath={"reassoc", "contract"})


def conv_dots(x: np.ndarray, w: np.ndarray, bias: np.ndarray, stride, padding, b, c, i, j):
    """float64 values ``v`` and magnitudes ``sum |w||x| + |b|`` of a convolution's neurons
    ``(b, c, i, j)`` (sample, output channel, row, column), from input ``x`` ``(n, C, H,
    W)`` (float32 or float64, widened exactly), float64 weights ``w`` and ``bias``
    ``(co, Hb, Wb)`` (``Hb``, ``Wb`` 1 for a per-channel bias). Taps in the zero padding
    add nothing."""
    P = len(b)
    v, mag = np.empty(P), np.empty(P)
    if compiled():
        _conv_dots_jit(x, w, bias, int(stride[0]), int(stride[1]), int(padding[0]), int(padding[1]),
                       b, c, i, j, v, mag)
    else:
        _numpy_conv_dots(x, w, bias, stride, padding, b, c, i, j, v, mag)
    return v, mag


def _numpy_conv_dots(x, w, bias, stride, padding, b, c, i, j, v, mag):
    _, C, H, W = x.shape
    _, _, kh, kw = w.shape
    (sh, sw), (ph, pw) = stride, padding
    xp = np.zeros((x.shape[0], C, H + 2 * ph + kh, W + 2 * pw + kw), np.float64)
    xp[:, :, ph:ph + H, pw:pw + W] = x
    rows = (i * sh)[:, None] + np.arange(kh)[None, :]  # padded coordinates
    cols = (j * sw)[:, None] + np.arange(kw)[None, :]
    # one sample's planes at a time keeps the gathered patches small
    for s in np.unique(b):
        sel = np.flatnonzero(b == s)
        patch = xp[s][:, rows[sel][:, :, None], cols[sel][:, None, :]]  # (C, P, kh, kw)
        patch = np.moveaxis(patch, 0, 1).reshape(len(sel), -1)
        wr = w[c[sel]].reshape(len(sel), -1)
        v[sel] = np.einsum("pn,pn->p", patch, wr)
        mag[sel] = np.einsum("pn,pn->p", np.abs(patch), np.abs(wr))
    bb = bias[c, i if bias.shape[1] > 1 else 0, j if bias.shape[2] > 1 else 0]
    v += bb
    mag += np.abs(bb)


# -- the per-sample rounding bound of a convolution ------------------------------------
def _window_sums_loop(x, a, kh, kw, sh, sw, ph, pw, out):  # pragma: no cover - compiled
    # (numba adds a negative-index fix-up to an index it cannot prove >= 0, which stops
    # vectorization: inner loops index slices with the bare loop variable)
    n, C, H, W = x.shape
    _, Ho, Wo = out.shape
    HW = H * W
    S = np.empty(HW, np.float32)
    Hp = max(H + 2 * ph, (Ho - 1) * sh + kh)
    padded = np.zeros((Hp, max(W + 2 * pw, (Wo - 1) * sw + kw)), np.float32)
    across = np.empty((Hp, Wo), np.float32)
    for s in range(n):
        x0 = x[s, 0].reshape(HW)
        a0 = a[0]
        for p in range(HW):  # the weighted channel sum of |x| at every input pixel
            S[p] = a0 * abs(x0[p])
        for c in range(1, C):
            xc = x[s, c].reshape(HW)
            ac = a[c]
            for p in range(HW):
                S[p] += ac * abs(xc[p])
        for y in range(H):  # the zero padding adds nothing
            padded[ph + y, pw:pw + W] = S[y * W:(y + 1) * W]
        for y in range(Hp):  # summed over each window: along the rows, then the columns
            row = across[y]
            row[:] = padded[y, 0:(Wo - 1) * sw + 1:sw]
            for dx in range(1, kw):
                seg = padded[y, dx:dx + (Wo - 1) * sw + 1:sw]
                for j in range(Wo):
                    row[j] += seg[j]
        for i in range(Ho):
            row = out[s, i]
            row[:] = across[i * sh]
            for dy in range(1, kh):
                seg = across[i * sh + dy]
                for j in range(Wo):
                    row[j] += seg[j]


_window_sums_jit = _jit(_window_sums_loop)


def window_sums(x: np.ndarray, a: np.ndarray, kernel, stride, padding, out_hw) -> np.ndarray:
    """``sum_c a[c] sum_(window) |x[s, c]|`` over each window of a convolution
    (``(n, Ho, Wo)`` float32), for float32 inputs ``x`` ``(n, C, H, W)`` and float32
    ``a >= 0``. A sum of non-negative terms, each rounded at most ``m = C kh kw`` times
    (a product, then sums), in any order: at least the exact value times
    ``1 - gamma_m`` (float32), which the caller's factor covers."""
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    if compiled():
        out = np.empty((len(x), *out_hw), np.float32)
        _window_sums_jit(x, a, kh, kw, sh, sw, ph, pw, out)
        return out
    import torch

    w = torch.from_numpy(np.repeat(a, kh * kw).reshape(1, len(a), kh, kw))
    with torch.no_grad():
        return torch.nn.functional.conv2d(torch.from_numpy(np.abs(x)), w, None, stride, padding).numpy()[:, 0]
