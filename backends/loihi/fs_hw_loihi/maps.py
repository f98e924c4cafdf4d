"""Each receiver's input as integer linear maps of the spiking nodes it listens to.

On the chip a receiver (an FS node or the read-out) adds, from every spiking source
``S`` it depends on, ``M_S y_S`` with ``y_S = sum_t d_S(t) z_S(t)``, plus its bias.
The chain of linear IR nodes between them (dense, conv, pooling as a window sum,
flatten, residual add, scaling) is composed here, exactly, in integers:

* a conv (or pooling) applied directly to a source stays a :class:`ConvMap`, so the
  chip can share its kernel across positions;
* anything else is multiplied out to a :class:`DenseMap` (``n_out x n_in``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fs_hw.errors import ResourceError
from fs_hw.ir import Add, Conv2d, Dense, Flatten, FSActivation, Input, Network, Readout
from fs_hw.ir.nodes import Node
from fs_hw.reference.ops import apply_linear

MAX_DENSE_ENTRIES = 20_000_000


@dataclass
class DenseMap:
    matrix: np.ndarray  # (n_out, n_in) int64

    @property
    def n_out(self) -> int:
        return self.matrix.shape[0]

    def to_dense(self) -> np.ndarray:
        return self.matrix

    def row_sums(self) -> tuple[np.ndarray, np.ndarray]:
        m = self.matrix
        return np.where(m > 0, m, 0).sum(axis=1), np.where(m < 0, m, 0).sum(axis=1)

    def nnz(self) -> int:
        return int(np.count_nonzero(self.matrix))

    def n_weights(self) -> int:
        """Weights of the map as the chip stores them (dense: every matrix entry)."""
        return int(self.matrix.size)


@dataclass
class ConvMap:
    kernel: np.ndarray  # (C_out, C_in, kh, kw) int64
    stride: tuple[int, int]
    padding: tuple[int, int]
    in_shape: tuple[int, int, int]
    out_shape: tuple[int, int, int]

    @property
    def n_out(self) -> int:
        return int(np.prod(self.out_shape))

    def _apply(self, kernel: np.ndarray, x: np.ndarray) -> np.ndarray:
        node = Conv2d("m", "x", kernel.astype(np.float64), np.zeros(kernel.shape[0]),
                      stride=self.stride, padding=self.padding)
        return apply_linear(node, [x], False, "numpy", np.dtype(np.int64))

    def row_sums(self) -> tuple[np.ndarray, np.ndarray]:
        ones = np.ones((1, *self.in_shape), np.int64)
        pos = self._apply(np.where(self.kernel > 0, self.kernel, 0), ones).reshape(-1)
        neg = self._apply(np.where(self.kernel < 0, self.kernel, 0), ones).reshape(-1)
        return pos, neg

    def to_dense(self) -> np.ndarray:
        n_in = int(np.prod(self.in_shape))
        if n_in * self.n_out > MAX_DENSE_ENTRIES:
            raise ResourceError(
                f"conv map {self.in_shape}->{self.out_shape}: composing it with another linear node "
                f"needs a {self.n_out}x{n_in} matrix (limit {MAX_DENSE_ENTRIES} entries)"
            )
        co, ci, kh, kw = self.kernel.shape
        _, H, W = self.in_shape
        _, Ho, Wo = self.out_shape
        (sh, sw), (ph, pw) = self.stride, self.padding
        f, y, x, c, dy, dx = np.meshgrid(
            np.arange(co), np.arange(Ho), np.arange(Wo), np.arange(ci), np.arange(kh), np.arange(kw),
            indexing="ij",
        )
        r = y * sh - ph + dy
        col = x * sw - pw + dx
        ok = (r >= 0) & (r < H) & (col >= 0) & (col < W)
        rows = (f * Ho + y) * Wo + x
        cols = (c * H + r) * W + col
        vals = self.kernel[f, c, dy, dx]
        m = np.zeros((self.n_out, n_in), np.int64)
        np.add.at(m, (rows[ok], cols[ok]), vals[ok])
        return m

    def nnz(self) -> int:
        return int(np.count_nonzero(self.kernel))

    def n_weights(self) -> int:
        """Weights of the kernel (shared by every position)."""
        return int(self.kernel.size)

    def is_identity(self) -> bool:
        co, ci, kh, kw = self.kernel.shape
        return (
            (kh, kw) == (1, 1) and self.stride == (1, 1) and self.padding == (0, 0)
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
            raise ResourceError(f"identity map of {self.n} neurons is too large to expand")
        return np.eye(self.n, dtype=np.int64)

    @property
    def matrix(self) -> np.ndarray:
        return self.to_dense()

    def row_sums(self) -> tuple[np.ndarray, np.ndarray]:
        return np.ones(self.n, np.int64), np.zeros(self.n, np.int64)

    def nnz(self) -> int:
        return self.n

    def n_weights(self) -> int:
        return self.n


Map = DenseMap | ConvMap | IdentityMap


@dataclass
class ReceiverInput:
    """Integer maps from each source into one receiver, and its total bias."""

    maps: dict[str, Map]
    bias: np.ndarray  # (n,) int64


def _identity(shape: tuple[int, ...]) -> Map:
    if len(shape) == 3:
        C = shape[0]
        return ConvMap(np.eye(C, dtype=np.int64)[:, :, None, None], (1, 1), (0, 0), shape, shape)
    return IdentityMap(int(np.prod(shape)))


def _dense_matrix(m: Map) -> np.ndarray:
    return m.to_dense()


def _apply_node(node: Node, m: Map, network: Network) -> Map:
    if isinstance(node, Flatten):
        return m
    if isinstance(node, Dense):
        W = node.weight.astype(np.int64)
        if isinstance(m, IdentityMap):
            return DenseMap(W)
        return DenseMap(W @ _dense_matrix(m))
    if isinstance(node, Conv2d):
        K = node.weight.astype(np.int64)
        out_shape = network.shapes[node.name]
        in_shape = network.shapes[node.input]
        if isinstance(m, ConvMap) and m.is_identity():
            return ConvMap(K, node.stride, node.padding, in_shape, out_shape)
        conv = ConvMap(K, node.stride, node.padding, in_shape, out_shape)
        return DenseMap(conv.to_dense() @ _dense_matrix(m))
    raise TypeError(f"{node.label}: not a map node")


def _add_maps(a: Map, b: Map) -> Map:
    if (
        isinstance(a, ConvMap) and isinstance(b, ConvMap) and a.kernel.shape == b.kernel.shape
        and a.stride == b.stride and a.padding == b.padding and a.in_shape == b.in_shape
    ):
        return ConvMap(a.kernel + b.kernel, a.stride, a.padding, a.in_shape, a.out_shape)
    return DenseMap(_dense_matrix(a) + _dense_matrix(b))


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
                        merged[src] = _add_maps(merged[src], m) if src in merged else m
                maps[name] = merged
            else:
                maps[name] = {src: _apply_node(node, m, network) for src, m in maps[node.input].items()}
            zero[name] = apply_linear(node, [zero[s] for s in node.inputs], True, "numpy", np.dtype(np.int64))
    out = {}
    for node in network.order:
        if isinstance(node, (FSActivation, Readout)):
            src = node.input
            out[node.name] = ReceiverInput(dict(maps[src]), zero[src].reshape(-1).astype(np.int64))
    return out
