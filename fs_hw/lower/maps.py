"""Each receiver's input as integer linear maps of the spiking nodes it listens to.

On a chip a receiver (an FS node or the read-out) adds, from every spiking source
``S`` it depends on, ``M_S y_S`` with ``y_S = sum_t d_S(t) z_S(t)``, plus its bias.
The chain of linear IR nodes between them (dense, conv, pooling as a window sum,
flatten, residual add, scaling) is composed here, exactly, in integers (int64):

* convolutions stay :class:`ConvMap` kernels, so a chip can share them across
  positions. Two convolutions in a row compose into ONE strided conv whenever that is
  exact: the outer one has no padding, or the inner one has no padding and windows that
  do not overlap (``kernel <= stride``, e.g. pooling). Pooling (a window-sum conv with
  ``kernel == stride``) before or after a conv is therefore folded into the conv's kernel
  (``s1*(k2-1)+k1`` taps, stride ``s1*s2``, padding ``p1 + s1*p2``); rows and columns a
  pooling drops (input size not a multiple of its stride) are recorded in
  :attr:`ConvMap.in_used`;
* the sum of two conv maps of one source is one conv map when their windows align;
* anything else is multiplied out to a :class:`DenseMap` (``n_out x n_in``), refused
  (:class:`~fs_hw.errors.ResourceError`, naming the sizes) beyond
  :data:`MAX_DENSE_ENTRIES`;
* a dense or conv node with per-step weights (``step_weight``, see
  docs/ir-format.md) gives a :class:`StepMap`: one map per source step ``s``, applied to
  the raw spikes ``z_S(s)`` (no ``d_S(s)`` factor: it is inside the step's weights).

:meth:`ReceiverInput.steps` hides the difference: for every source it lists, per step
``s``, the map and the integer factor the spikes ``z_S(s)`` are multiplied by.

No SDK imports: every chip backend can use it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from fs_hw.errors import ResourceError
from fs_hw.ir import Add, Conv2d, Dense, Flatten, FSActivation, Input, Network, Readout
from fs_hw.ir.nodes import Node
from fs_hw.reference.ops import apply_linear, exact_conv, exact_matmul

MAX_DENSE_ENTRIES = 20_000_000

_I64 = np.dtype(np.int64)


def _check_dense(n_out: int, n_in: int, what: str) -> None:
    if n_out * n_in > MAX_DENSE_ENTRIES:
        raise ResourceError(
            f"{what}: composing it with another linear node needs a {n_out}x{n_in} matrix "
            f"({n_out * n_in} entries, limit {MAX_DENSE_ENTRIES})"
        )


@dataclass
class DenseMap:
    matrix: np.ndarray  # (n_out, n_in) int64

    @property
    def n_out(self) -> int:
        return self.matrix.shape[0]

    def to_dense(self) -> np.ndarray:
        return self.matrix

    def apply(self, x: np.ndarray) -> np.ndarray:
        """The map applied to a batch of source outputs ``(N, ...)`` -> ``(N, n_out)``."""
        x = np.asarray(x, np.int64)
        return exact_matmul(x.reshape(len(x), -1), self.matrix.T)

    def row_sums(self) -> tuple[np.ndarray, np.ndarray]:
        m = self.matrix
        return np.where(m > 0, m, 0).sum(axis=1), np.where(m < 0, m, 0).sum(axis=1)

    def nnz(self) -> int:
        return int(np.count_nonzero(self.matrix))

    def triplets(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every non-zero entry as ``(output index, input index, value)``."""
        rows, cols = np.nonzero(self.matrix)
        return rows.astype(np.int64), cols.astype(np.int64), self.matrix[rows, cols]

    def max_abs(self) -> int:
        """Largest |entry|: the largest single weight the map adds."""
        return int(np.abs(self.matrix).max(initial=0))

    def n_weights(self) -> int:
        """Weights of the map as the chip stores them (dense: every matrix entry)."""
        return int(self.matrix.size)


def _conv_int(x: np.ndarray, kernel: np.ndarray, stride: tuple[int, int],
              padding: tuple[int, int]) -> np.ndarray:
    """Exact int64 conv of ``x`` (N, C_in, H, W) -> (N, C_out, H', W')."""
    co, ci, kh, kw = kernel.shape
    (sh, sw), (ph, pw) = stride, padding
    if ph or pw:
        x = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    return exact_conv(x, kernel, (sh, sw))


@dataclass
class ConvMap:
    """``y = conv(x[:, :, :in_used[0], :in_used[1]], kernel, stride, padding)``.

    ``in_used`` (rows, cols) is the part of the input the map reads (``None``: all of
    it); padding applies after the crop.
    """

    kernel: np.ndarray  # (C_out, C_in, kh, kw) int64
    stride: tuple[int, int]
    padding: tuple[int, int]
    in_shape: tuple[int, int, int]
    out_shape: tuple[int, int, int]
    in_used: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        self.kernel = np.asarray(self.kernel, np.int64)
        self.stride = (int(self.stride[0]), int(self.stride[1]))
        self.padding = (int(self.padding[0]), int(self.padding[1]))
        self.in_shape = tuple(int(v) for v in self.in_shape)  # type: ignore[assignment]
        self.out_shape = tuple(int(v) for v in self.out_shape)  # type: ignore[assignment]
        if self.in_used is not None:
            used = (int(self.in_used[0]), int(self.in_used[1]))
            self.in_used = None if used == tuple(self.in_shape[1:]) else used

    @property
    def used(self) -> tuple[int, int]:
        """Rows and columns of the input the map reads."""
        return self.in_used if self.in_used is not None else (self.in_shape[1], self.in_shape[2])

    @property
    def n_out(self) -> int:
        return int(np.prod(self.out_shape))

    @property
    def n_in(self) -> int:
        return int(np.prod(self.in_shape))

    def _apply(self, kernel: np.ndarray, x: np.ndarray) -> np.ndarray:
        """``kernel`` (this map's geometry) applied to ``x`` (N, *in_shape), exactly."""
        hu, wu = self.used
        x = np.asarray(x, np.int64).reshape(len(x), *self.in_shape)[:, :, :hu, :wu]
        return _conv_int(x, np.asarray(kernel, np.int64), self.stride, self.padding)

    def apply(self, x: np.ndarray) -> np.ndarray:
        """The map applied to a batch ``(N, C, H, W)`` (or flat ``(N, n_in)``) of int64
        source outputs -> ``(N, C', H', W')``."""
        return self._apply(self.kernel, x)

    def row_sums(self) -> tuple[np.ndarray, np.ndarray]:
        ones = np.ones((1, *self.in_shape), np.int64)
        pos = self._apply(np.where(self.kernel > 0, self.kernel, 0), ones).reshape(-1)
        neg = self._apply(np.where(self.kernel < 0, self.kernel, 0), ones).reshape(-1)
        return pos, neg

    def triplets(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every non-zero entry of the map as ``(output index, input index, value)``
        (flat C-order indices), without building the dense matrix."""
        co, ci, kh, kw = self.kernel.shape
        _, H, W = self.in_shape
        hu, wu = self.used
        _, Ho, Wo = self.out_shape
        (sh, sw), (ph, pw) = self.stride, self.padding
        # rows of the input read by output row y at tap dy (and columns likewise)
        r = np.arange(Ho)[:, None] * sh - ph + np.arange(kh)[None, :]  # (Ho, kh)
        c = np.arange(Wo)[:, None] * sw - pw + np.arange(kw)[None, :]  # (Wo, kw)
        y, dy = np.nonzero((r >= 0) & (r < hu))
        x, dx = np.nonzero((c >= 0) & (c < wu))
        rr, cc = r[y, dy], c[x, dx]
        # every (output pixel, input pixel) pair is hit by at most one tap: no sums needed
        f, ch, ky, kx = np.nonzero(self.kernel)
        vals = self.kernel[f, ch, ky, kx]
        outs, ins, values = [], [], []
        for tap_y in range(kh):
            sel_y = dy == tap_y
            for tap_x in range(kw):
                sel_x = dx == tap_x
                k = (ky == tap_y) & (kx == tap_x)
                if not k.any() or not sel_y.any() or not sel_x.any():
                    continue
                Y, RR = y[sel_y], rr[sel_y]
                X, CC = x[sel_x], cc[sel_x]
                pix_out = (Y[:, None] * Wo + X[None, :]).reshape(-1)
                pix_in = (RR[:, None] * W + CC[None, :]).reshape(-1)
                outs.append((f[k][:, None] * (Ho * Wo) + pix_out[None, :]).reshape(-1))
                ins.append((ch[k][:, None] * (H * W) + pix_in[None, :]).reshape(-1))
                values.append(np.repeat(vals[k], len(pix_out)))
        if not outs:
            empty = np.zeros(0, np.int64)
            return empty, empty, empty
        return np.concatenate(outs), np.concatenate(ins), np.concatenate(values)

    def to_dense(self) -> np.ndarray:
        _check_dense(self.n_out, self.n_in, f"conv map {self.in_shape}->{self.out_shape}")
        rows, cols, vals = self.triplets()
        m = np.zeros((self.n_out, self.n_in), np.int64)
        m[rows, cols] = vals
        return m

    def nnz(self) -> int:
        return int(np.count_nonzero(self.kernel))

    def max_abs(self) -> int:
        return int(np.abs(self.kernel).max(initial=0))

    def n_weights(self) -> int:
        """Weights of the kernel (shared by every position)."""
        return int(self.kernel.size)

    def is_identity(self) -> bool:
        co, ci, kh, kw = self.kernel.shape
        return (
            (kh, kw) == (1, 1) and self.stride == (1, 1) and self.padding == (0, 0) and self.in_used is None
            and co == ci and np.array_equal(self.kernel[:, :, 0, 0], np.eye(co, dtype=np.int64))
        )


@dataclass
class IdentityMap:
    """A spiking vector node read directly (expanded only when it must be)."""

    n: int

    @property
    def n_out(self) -> int:
        return self.n

    def to_dense(self) -> np.ndarray:
        if self.n * self.n > MAX_DENSE_ENTRIES:
            raise ResourceError(
                f"identity map of {self.n} neurons is too large to expand "
                f"({self.n}x{self.n} matrix, limit {MAX_DENSE_ENTRIES} entries)"
            )
        return np.eye(self.n, dtype=np.int64)

    @property
    def matrix(self) -> np.ndarray:
        return self.to_dense()

    def apply(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.int64)
        return x.reshape(len(x), -1)

    def row_sums(self) -> tuple[np.ndarray, np.ndarray]:
        return np.ones(self.n, np.int64), np.zeros(self.n, np.int64)

    def nnz(self) -> int:
        return self.n

    def triplets(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        idx = np.arange(self.n, dtype=np.int64)
        return idx, idx, np.ones(self.n, np.int64)

    def max_abs(self) -> int:
        return 1 if self.n else 0

    def n_weights(self) -> int:
        return self.n


@dataclass
class StepMap:
    """One map per source step: the contribution of step ``s`` is ``steps[s] z(s)``."""

    steps: tuple[DenseMap | ConvMap | IdentityMap, ...]

    @property
    def n_out(self) -> int:
        return self.steps[0].n_out

    def n_weights(self) -> int:
        """Weights of the node (one step's set: the IR's count; a chip may store one per step)."""
        return int(self.steps[0].n_weights())

    def nnz(self) -> int:
        return int(sum(m.nnz() for m in self.steps))


Map = DenseMap | ConvMap | IdentityMap | StepMap


@dataclass
class ReceiverInput:
    """Integer maps from each source into one receiver, and its total bias."""

    maps: dict[str, Map]
    bias: np.ndarray  # (n,) int64

    def steps(self, src: str, d: np.ndarray) -> list[tuple[DenseMap | ConvMap | IdentityMap, int]]:
        """Per source step ``s``: ``(map, factor)``, the receiver adds ``factor * map(z_src(s))``.

        ``d`` is the source's integer output weights; a plain map is shared by every step
        (the same object, factor ``d(s)``), a :class:`StepMap` has its own map per step.
        """
        m = self.maps[src]
        if isinstance(m, StepMap):
            return [(ms, 1) for ms in m.steps]
        return [(m, int(ds)) for ds in np.asarray(d, np.int64)]


def _identity(shape: tuple[int, ...]) -> Map:
    if len(shape) == 3:
        C = shape[0]
        return ConvMap(np.eye(C, dtype=np.int64)[:, :, None, None], (1, 1), (0, 0), shape, shape)
    return IdentityMap(int(np.prod(shape)))


def _dense_matrix(m: Map) -> np.ndarray:
    return m.to_dense()


def compose_convs(outer: ConvMap, inner: ConvMap) -> ConvMap | None:
    """``outer ∘ inner`` as one conv map, or ``None`` where that would not be exact.

    Per axis, with inner (k1, s1, p1, reading ``u1`` rows, giving ``H1``) and outer
    (k2, s2, p2): the composed kernel has ``s1*(k2-1)+k1`` taps (outer tap ``a`` times
    inner tap ``b`` lands at ``s1*a + b``), stride ``s1*s2`` and padding ``p1 + s1*p2``.
    It is exact when ``p2 == 0`` (the outer conv reads only real inner outputs), or when
    ``p1 == 0`` and ``k1 <= s1``: an outer zero-padded position then covers only input
    positions outside the ``(H1-1)*s1 + k1`` rows the inner conv reads, which the
    composed map crops (``in_used``) and pads with zeros.
    """
    if inner.out_shape != outer.in_shape or outer.in_used is not None:
        return None
    K2, K1 = outer.kernel, inner.kernel
    c2, c1, k2h, k2w = K2.shape
    c1b, c0, k1h, k1w = K1.shape
    if c1 != c1b:
        return None
    used, pad = [], []
    for ax in range(2):
        k1, s1, p1 = K1.shape[2 + ax], inner.stride[ax], inner.padding[ax]
        p2 = outer.padding[ax]
        h1 = inner.out_shape[1 + ax]
        if p2 == 0:
            used.append(inner.used[ax])
        elif p1 == 0 and k1 <= s1:
            used.append((h1 - 1) * s1 + k1)
        else:
            return None
        pad.append(p1 + s1 * p2)
    (s1h, s1w), (s2h, s2w) = inner.stride, outer.stride
    kh, kw = s1h * (k2h - 1) + k1h, s1w * (k2w - 1) + k1w
    # T[p, q, a, a', b, b'] = sum_m K2[p, m, a, a'] K1[m, q, b, b']
    T = np.einsum("pmac,mqbd->pqacbd", K2, K1)
    kernel = np.zeros((c2, c0, kh, kw), np.int64)
    for b in range(k1h):
        for d in range(k1w):
            kernel[:, :, b:b + s1h * k2h:s1h, d:d + s1w * k2w:s1w] += T[:, :, :, :, b, d]
    out = ConvMap(kernel, (s1h * s2h, s1w * s2w), (pad[0], pad[1]), inner.in_shape, outer.out_shape,
                  (used[0], used[1]))
    # the composed geometry gives the outer output size (guaranteed by the conditions above)
    hu, wu = out.used
    assert (hu + 2 * pad[0] - kh) // out.stride[0] + 1 == outer.out_shape[1]
    assert (wu + 2 * pad[1] - kw) // out.stride[1] + 1 == outer.out_shape[2]
    return out


def _apply_node(node: Node, m: Map, network: Network) -> Map:
    if isinstance(m, StepMap):
        return StepMap(tuple(_apply_node(node, ms, network) for ms in m.steps))
    if isinstance(node, Flatten):
        return m
    if isinstance(node, Dense):
        W = node.weight.astype(np.int64)
        if isinstance(m, IdentityMap):
            return DenseMap(W)
        _check_dense(W.shape[0], _n_in(m), f"{node.label}: dense after a {type(m).__name__}")
        return DenseMap(W @ _dense_matrix(m))
    if isinstance(node, Conv2d):
        K = node.weight.astype(np.int64)
        out_shape = network.shapes[node.name]
        in_shape = network.shapes[node.input]
        conv = ConvMap(K, node.stride, node.padding, in_shape, out_shape)
        if isinstance(m, ConvMap):
            if m.is_identity():
                return ConvMap(K, node.stride, node.padding, m.in_shape, out_shape)
            composed = compose_convs(conv, m)
            if composed is not None:
                return composed
        _check_dense(conv.n_out, _n_in(m), f"{node.label}: conv {in_shape}->{out_shape} after a "
                                           f"{type(m).__name__} it cannot fold into one conv")
        return DenseMap(conv.to_dense() @ _dense_matrix(m))
    raise TypeError(f"{node.label}: not a map node")


def _n_in(m: Map) -> int:
    if isinstance(m, ConvMap):
        return m.n_in
    if isinstance(m, IdentityMap):
        return m.n
    return int(m.matrix.shape[1])


def _align(m: ConvMap, pad: tuple[int, int], size: tuple[int, int]) -> ConvMap | None:
    """``m`` with padding ``pad`` and a zero-extended kernel of ``size`` taps (same map)."""
    co, ci, kh, kw = m.kernel.shape
    oh, ow = pad[0] - m.padding[0], pad[1] - m.padding[1]
    if oh < 0 or ow < 0 or oh + kh > size[0] or ow + kw > size[1]:
        return None
    hu, wu = m.used
    if ((hu + 2 * pad[0] - size[0]) // m.stride[0] + 1, (wu + 2 * pad[1] - size[1]) // m.stride[1] + 1) \
            != tuple(m.out_shape[1:]):
        return None
    kernel = np.zeros((co, ci, *size), np.int64)
    kernel[:, :, oh:oh + kh, ow:ow + kw] = m.kernel
    return ConvMap(kernel, m.stride, pad, m.in_shape, m.out_shape, m.in_used)


def _scaled(m: Map, factor: int) -> Map:
    """``factor * m`` (an integer)."""
    if isinstance(m, ConvMap):
        return ConvMap(m.kernel * factor, m.stride, m.padding, m.in_shape, m.out_shape, m.in_used)
    if isinstance(m, IdentityMap):
        return DenseMap(m.to_dense() * factor)
    return DenseMap(m.matrix * factor)


def _add_maps(a: Map, b: Map, d: np.ndarray) -> Map:
    """``a + b``, two maps of one source whose integer output weights are ``d``."""
    if isinstance(a, StepMap) or isinstance(b, StepMap):
        # a plain map delivers d(s) z(s) at step s: as a step map, d(s) times the map
        sa = a.steps if isinstance(a, StepMap) else tuple(_scaled(a, int(v)) for v in d)
        sb = b.steps if isinstance(b, StepMap) else tuple(_scaled(b, int(v)) for v in d)
        return StepMap(tuple(_add_maps(x, y, d) for x, y in zip(sa, sb)))
    if (
        isinstance(a, ConvMap) and isinstance(b, ConvMap) and a.stride == b.stride
        and a.in_shape == b.in_shape and a.out_shape == b.out_shape and a.in_used == b.in_used
        and a.kernel.shape[:2] == b.kernel.shape[:2]
    ):
        pad = (max(a.padding[0], b.padding[0]), max(a.padding[1], b.padding[1]))
        size = tuple(
            max(pad[i] - a.padding[i] + a.kernel.shape[2 + i], pad[i] - b.padding[i] + b.kernel.shape[2 + i])
            for i in range(2)
        )
        aa, bb = _align(a, pad, size), _align(b, pad, size)  # type: ignore[arg-type]
        if aa is not None and bb is not None:
            return ConvMap(aa.kernel + bb.kernel, a.stride, pad, a.in_shape, a.out_shape, a.in_used)
    _check_dense(a.n_out, _n_in(a), f"sum of a {type(a).__name__} and a {type(b).__name__}")
    return DenseMap(_dense_matrix(a) + _dense_matrix(b))


def _step_map(node: Dense | Conv2d, chain: Map, network: Network) -> StepMap:
    """A node with per-step weights after the (plain) chain map from its one source."""
    if isinstance(chain, StepMap):  # the IR's validation forbids it; never compose two
        raise ValueError(f"{node.label}: step weights after another node with step weights")
    steps = []
    for w in node.step_weight:
        plain = dataclasses.replace(node, weight=w, step_weight=None)
        steps.append(_apply_node(plain, chain, network))
    return StepMap(tuple(steps))


def receiver_inputs(network: Network) -> dict[str, ReceiverInput]:
    """Maps and bias of every receiver (FS node and read-out) of an integer network."""
    maps: dict[str, dict[str, Map]] = {}
    zero = {}
    for node in network.order:
        name = node.name
        if network.is_spiking(node):
            maps[name] = {name: _identity(network.shapes[name])}
            zero[name] = np.zeros((1, *network.shapes[name]), np.int64)
        elif isinstance(node, Input):
            raise ValueError(f"{node.label}: analog inputs are not supported")
        elif node.linear:
            if isinstance(node, Add):
                merged: dict[str, Map] = {}
                for op in node.operands:
                    for src, m in maps[op].items():
                        d = network.code_of(network.by_name[src]).d
                        merged[src] = _add_maps(merged[src], m, d) if src in merged else m
                maps[name] = merged
            elif getattr(node, "step_weight", None) is not None:
                maps[name] = {src: _step_map(node, m, network) for src, m in maps[node.input].items()}
            else:
                maps[name] = {src: _apply_node(node, m, network) for src, m in maps[node.input].items()}
            zero[name] = apply_linear(node, [zero[s] for s in node.inputs], True, "numpy", _I64)
    out = {}
    for node in network.order:
        if isinstance(node, (FSActivation, Readout)):
            src = node.input
            out[node.name] = ReceiverInput(dict(maps[src]), zero[src].reshape(-1).astype(np.int64))
    return out
