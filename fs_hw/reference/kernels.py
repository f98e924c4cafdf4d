"""Fused per-neuron loops of the float32 fast mode (:mod:`fs_hw.reference.fast32`).

Once its convolutions are float32, three loops make most of the rest of the float32
path's time: the check that decides each ReLU-coded neuron (clip, interval test, level,
spike count), the per-sample rounding bound of a convolution (a weighted channel sum and
window sums), and the float64 recomputation of the rare undecided neurons (a receptive
field, two dot products). In numpy each is several passes over memory; compiled by numba
each is one pass. Each is written once as a plain loop and runs

* compiled by numba (``nogil``, so the batch's parts run them in parallel threads) when
  numba is installed (part of the ``torch`` extra; ``scripts/setup.sh`` installs it), else
* as numpy array passes (``_numpy_*``, ``FORCE_NUMPY = True`` in tests), slower.

Both give the same spikes: the decision is the same float32 operations in the same
order (no fast-math there), so the same neurons are decided with the same levels; window
sums and dot products may sum in another order, which the bounds that use them cover
(any order of a sum is inside Higham's bound). Images are read channels last (NHWC), as
the float32 path holds them.
"""

from __future__ import annotations

import numpy as np

from fs_hw.codes.relu import _popcount

#: tests set this to run the numpy versions even where numba is installed
FORCE_NUMPY = False


class _Lazy:
    """numba's compiled version of a loop, built on first use (``import numba`` takes a
    fifth of a second, which a run that never reaches the float32 path should not pay)."""

    def __init__(self, func, **options):
        self.func, self.options, self.compiled = func, options, None

    def __call__(self, *args):
        if self.compiled is None:
            import numba

            try:  # cached on disk where the package or the user's cache directory is writable
                self.compiled = numba.njit(nogil=True, cache=True, **self.options)(self.func)
            except RuntimeError:  # no writable cache location: compiled once per process
                self.compiled = numba.njit(nogil=True, **self.options)(self.func)
        return self.compiled(*args)


def _has_numba() -> bool:
    import importlib.util

    return importlib.util.find_spec("numba") is not None


_NUMBA = _has_numba()


def compiled() -> bool:
    """Whether the numba versions run."""
    return _NUMBA and not FORCE_NUMPY


def channels_last(a: np.ndarray) -> np.ndarray:
    """``(n, C, *pixels)`` (any strides) as C-contiguous ``(n, pixels, C)``; a view when
    ``a`` is held channels last (as the float32 path holds its images), else a copy."""
    rows = np.moveaxis(a, 1, -1) if a.ndim > 2 else a[:, None, :]
    return np.ascontiguousarray(rows).reshape(len(a), -1, a.shape[1])


# -- the ReLU decision ------------------------------------------------------------------
def _make_decide_relu(ADD: bool, K: int):
    """The decision loop for an add or not and ``K`` (0-2) per-sample maps: numba takes
    the closure's ``ADD`` and ``K`` as constants, so each variant is only its own
    arithmetic (twice as fast as one loop for all, which multiplies by 0 and 1)."""

    def loop(t, u, ra, rb, ratio, E0, r, B, levels, q, counts, flagged):  # pragma: no cover - compiled
        # Per (sample, pixel): three loops over the channels, each a float32 loop LLVM
        # vectorizes: the levels and how many are undecided; (rarely) which; the spikes.
        n, P, C = t.shape
        top = np.float32(levels + 0.5)
        half = np.float32(0.5)
        zero = np.float32(0.0)
        nf = 0
        zeros = np.zeros(C, np.float32)
        r0 = r[0] if K > 0 else zeros
        r1 = r[1] if K > 1 else zeros
        for s in range(n):
            spikes = 0
            for p in range(P):
                e0 = E0[p]
                to = t[s, p]
                qo = q[s, p]
                uo = u[s, p]
                b0 = B[0, s, p] if K > 0 else zero
                b1 = B[1, s, p] if K > 1 else zero
                undecided = 0
                for o in range(C):
                    # the bound e0 + r0 b0 + r1 b1, left to right as the numpy version
                    e = e0[o] if K == 0 else (e0[o] + r0[o] * b0 if K == 1 else e0[o] + r0[o] * b0 + r1[o] * b1)
                    # an add: fl(fl(t ra) + fl(u rb)), as fast32._forward32 adds
                    v = to[o] * ra + uo[o] * rb if ADD else to[o]
                    x = min(max(v * ratio, half), top)
                    level = np.floor(x + e)
                    qo[o] = min(level, levels)
                    undecided += level >= x - e  # an integer (grid point) lies in [x - e, x + e]
                if undecided:
                    for o in range(C):
                        e = e0[o] if K == 0 else (e0[o] + r0[o] * b0 if K == 1 else e0[o] + r0[o] * b0 + r1[o] * b1)
                        v = to[o] * ra + uo[o] * rb if ADD else to[o]
                        x = min(max(v * ratio, half), top)
                        if np.floor(x + e) >= x - e:
                            flagged[nf] = (s * C + o) * P + p  # flat index over (n, C, pixels)
                            nf += 1
                            qo[o] = zero
                for o in range(C):  # the level's binary digits are its spikes (levels < 2^24)
                    bits = np.int32(qo[o])
                    bits = bits - ((bits >> 1) & 0x55555555)
                    bits = (bits & 0x33333333) + ((bits >> 2) & 0x33333333)
                    bits = (bits + (bits >> 4)) & 0x0F0F0F0F
                    spikes += (bits * 0x01010101) >> 24
            counts[s] = spikes
        return nf

    return _Lazy(loop)


_DECIDE_RELU = {(add, k): _make_decide_relu(add, k) for add in (False, True) for k in (0, 1, 2)}


def decide_relu(operands: list, ratio: float, E0: np.ndarray, r: np.ndarray, B: np.ndarray, levels: int,
                q: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Decide the ReLU levels of float32 values ``t`` (``(n, C, *pixels)``) in the code's
    grid units times ``ratio``; ``operands`` is ``[(t, 1)]`` or ``[(a, ra), (b, rb)]`` for
    ``t = fl(fl(a ra) + fl(b rb))`` (an add, summed as ``fast32._forward32`` sums it,
    without a pass of its own). The bound is ``E0[p, c] + sum_j r[j, c] B[j, s, p]``
    (``E0`` ``(P, C)`` a-priori, channels last: ``channels_last(E[None])[0]``; ``B``
    ``(k, n, P)`` per-sample maps, ``r`` ``(k, C)``, float32, ``P`` the number of pixels).

    A neuron is decided when no grid point ``1..levels`` lies within the bound of
    ``x = clip(t ratio, 0.5, levels + 0.5)``; its level ``floor(x + e)`` goes to ``q``
    (float32, shaped as ``t``, best held channels last) and its spikes to ``counts[s]``.
    The others get level 0 and no count here; their flat indices over ``(n, C, *pixels)``
    are returned. float32 arithmetic, as the caller's margin assumes (fast32)."""
    if levels >= 2**24:  # pragma: no cover - float32 levels are exact below 2^24 (fast32)
        raise ValueError(f"levels {levels} above 2^24")
    (a, ra), (b, rb) = operands if len(operands) == 2 else (operands[0], (operands[0][0], np.float32(0)))
    if compiled() and r.shape[0] <= 2:  # (an add of more data-bounded convolutions: numpy)
        q3 = channels_last(q)
        a3 = channels_last(a)
        flagged = np.empty(q.size, np.int64)
        loop = _DECIDE_RELU[len(operands) == 2, r.shape[0]]
        nf = loop(a3, a3 if b is a else channels_last(b), np.float32(ra), np.float32(rb), np.float32(ratio),
                  E0, r, B, np.float32(levels), q3, counts, flagged)
        if not np.shares_memory(q3, q):  # q was not held channels last
            q[...] = np.moveaxis(q3.reshape(len(q), *q.shape[2:], q.shape[1]), -1, 1) if q.ndim > 2 else q3[:, 0]
        return np.sort(flagged[:nf])
    t = a if ra == 1 else a * ra
    if len(operands) == 2:
        t = t + (b if rb == 1 else b * rb)
    m = len(t)
    return _numpy_decide_relu(t.reshape(m, t.shape[1], -1), ratio, E0.T, r, B, levels, q, counts)


def _numpy_decide_relu(t, ratio, E0, r, B, levels, q, counts):
    e = E0[None]
    for j in range(r.shape[0]):
        e = e + r[j][None, :, None] * B[j][:, None, :]
    x = np.clip(t * np.float32(ratio), np.float32(0.5), np.float32(levels + 0.5))
    level = np.floor(x + e)
    undecided = level >= x - e
    level[undecided] = 0.0
    q[...] = level.reshape(q.shape)
    counts[...] = _popcount(level.astype(np.int64)).reshape(len(t), -1).sum(axis=1)
    return np.flatnonzero(undecided)


# -- the float64 recomputation of a convolution's neurons --------------------------------
def _conv_dots_loop(x, w, bias, sh, sw, ph, pw, b, c, i, j, v, mag):  # pragma: no cover - compiled
    # x (n, H, W, C) and w (co, kh, kw, C): the channels, innermost, are contiguous
    _, H, W, C = x.shape
    _, kh, kw, _ = w.shape
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
                xr = xs[top + dy, left + dx]
                wr = wc[dy, dx]
                for ch in range(C):
                    term = np.float64(xr[ch]) * wr[ch]
                    acc += term
                    m += abs(term)
        bb = bias[c[u], i[u] if Hb > 1 else 0, j[u] if Wb > 1 else 0]
        v[u] = acc + bb
        mag[u] = m + abs(bb)


# Any order of the sums, with or without fused multiply-adds, is inside the caller's
# bound D (Higham's bound holds for every order), so LLVM may reassociate and contract
# them: independent partial sums instead of one chain of dependent additions.
_conv_dots_jit = _Lazy(_conv_dots_loop, fastmath={"reassoc", "contract"})


def conv_dots(x: np.ndarray, w_last: np.ndarray, bias: np.ndarray, stride, padding, b, c, i, j):
    """float64 values ``v`` and magnitudes ``sum |w||x| + |b|`` of a convolution's neurons
    ``(b, c, i, j)`` (sample, output channel, row, column), from input ``x`` ``(n, C, H,
    W)`` (float32 or float64, widened exactly; best held channels last), float64 weights
    channels last ``w_last`` ``(co, kh, kw, C)`` and ``bias`` ``(co, Hb, Wb)`` (``Hb``,
    ``Wb`` 1 for a per-channel bias). Taps in the zero padding add nothing."""
    P = len(b)
    v, mag = np.empty(P), np.empty(P)
    w = np.moveaxis(w_last, -1, 1)
    if compiled():
        _conv_dots_jit(np.ascontiguousarray(np.moveaxis(x, 1, -1)), np.ascontiguousarray(w_last),
                       bias, int(stride[0]), int(stride[1]), int(padding[0]), int(padding[1]), b, c, i, j, v, mag)
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
    # x (n, H, W, C). (numba adds a negative-index fix-up to an index it cannot prove
    # >= 0, which stops vectorization: inner loops index slices with the loop variable.)
    n, H, W, C = x.shape
    _, Ho, Wo = out.shape
    Hp = max(H + 2 * ph, (Ho - 1) * sh + kh)
    padded = np.zeros((Hp, max(W + 2 * pw, (Wo - 1) * sw + kw)), np.float32)
    across = np.empty((Hp, Wo), np.float32)
    for s in range(n):
        for y in range(H):  # the weighted channel sum of |x| at every input pixel
            row = padded[ph + y]
            for z in range(W):
                xp = x[s, y, z]
                acc = np.float32(0.0)
                for ch in range(C):
                    acc += a[ch] * abs(xp[ch])
                row[pw + z] = acc
        for y in range(Hp):  # summed over each window (the padding adds nothing): rows,
            row = across[y]
            row[:] = padded[y, 0:(Wo - 1) * sw + 1:sw]
            for dx in range(1, kw):
                seg = padded[y, dx:dx + (Wo - 1) * sw + 1:sw]
                for j in range(Wo):
                    row[j] += seg[j]
        for i in range(Ho):  # then columns
            row = out[s, i]
            row[:] = across[i * sh]
            for dy in range(1, kh):
                seg = across[i * sh + dy]
                for j in range(Wo):
                    row[j] += seg[j]


# a sum of non-negative terms: any order keeps it >= (1 - gamma_m) times the exact one
_window_sums_jit = _Lazy(_window_sums_loop, fastmath={"reassoc", "contract"})


def window_sums(x: np.ndarray, a: np.ndarray, kernel, stride, padding, out_hw) -> np.ndarray:
    """``sum_c a[c] sum_(window) |x[s, c]|`` over each window of a convolution
    (``(n, Ho, Wo)`` float32), for float32 inputs ``x`` ``(n, C, H, W)`` and float32
    ``a >= 0``. A sum of non-negative terms, each rounded at most ``m = C kh kw`` times
    (a product, then sums), in any order: at least the exact value times
    ``1 - gamma_m`` (float32), which the caller's factor covers."""
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    if compiled():
        out = np.empty((len(x), *out_hw), np.float32)
        _window_sums_jit(np.ascontiguousarray(np.moveaxis(x, 1, -1)), a, kh, kw, sh, sw, ph, pw, out)
        return out
    import torch

    w = torch.from_numpy(np.repeat(a, kh * kw).reshape(1, len(a), kh, kw))
    with torch.no_grad():
        return torch.nn.functional.conv2d(torch.from_numpy(np.abs(x)), w, None, stride, padding).numpy()[:, 0]
