r"""An interpreter of NIR graphs, written from NIR's documented node semantics.

It knows nothing of FS neurons: it evaluates a graph of NIR's stateless nodes and delays
on a batch, in float64, and returns the values of the (node, tick) pairs asked for. What
it implements (shapes per sample, the batch is the leading axis):

=============  ================================================================
Input          the value given for that tick (zero after the last one given)
Output         its input
Affine         ``W x + b``;  Linear ``W x``;  Scale ``s * x`` (elementwise)
Conv2d         cross-correlation, zero padding, stride (dilation 1, groups 1)
SumPool2d      window sums (zero padding);  AvgPool2d window means
Flatten        dims ``start_dim..end_dim`` of a sample into one
Threshold      ``1`` where ``x > threshold``, else ``0`` (strict)
Delay          ``y(t) = x(t - delay)``, ``0`` before the start; delay in ticks
=============  ================================================================

Edges are identities; a node with several incoming edges receives their sum. Time is
counted in ticks of one ``dt``. Two schedules compute the same values: ``every_tick``
evaluates every node at every tick in topological order (what a stepping simulator does),
``demand`` evaluates only the (node, tick) pairs a requested value depends on, in order
of (tick, topological position), and frees each value after its last use.

Any other node type (a neuron with state: IF, LIF, CubaLIF, LI, I, ...) is refused naming
the node: its result would depend on an integration scheme this interpreter does not define.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping

import numpy as np

from fs_hw.errors import UnsupportedError, ValidationError

STATELESS = ("Input", "Output", "Affine", "Linear", "Scale", "Conv2d", "SumPool2d", "AvgPool2d", "Flatten",
             "Threshold", "Delay")
SCHEDULES = ("demand", "every_tick")


def _pair(value, name: str, what: str) -> tuple[int, int]:
    arr = np.atleast_1d(np.asarray(value))
    if arr.dtype.kind in "US":
        raise UnsupportedError(f"NIR node {name!r}: {what} {value!r} (a string) is not supported; give integers")
    if arr.size == 1:
        arr = np.repeat(arr, 2)
    if arr.shape != (2,) or np.any(arr != np.round(arr)) or np.any(arr < 0):
        raise ValidationError(f"NIR node {name!r}", what, f"must be two non-negative integers, got {value!r}")
    return int(arr[0]), int(arr[1])


class Interpreter:
    """Evaluates a ``nir.NIRGraph`` of stateless nodes and delays (module docstring)."""

    def __init__(self, graph):
        self.nodes = dict(graph.nodes)
        self.kind = {name: type(node).__name__ for name, node in self.nodes.items()}
        for name, kind in self.kind.items():
            if kind not in STATELESS:
                raise UnsupportedError(
                    f"NIR node {name!r} is a NIR {kind}: this interpreter runs NIR's stateless nodes and delays only "
                    f"({', '.join(STATELESS)}); a neuron with state needs an integration scheme NIR leaves to "
                    "each tool")
        self.preds: dict[str, list[str]] = {name: [] for name in self.nodes}
        for src, dst in graph.edges:
            for end in (src, dst):
                if end not in self.nodes:
                    raise ValidationError("NIR graph", "edges", f"edge {src!r} -> {dst!r} names no node {end!r}")
            self.preds[dst].append(src)
        for name, kind in self.kind.items():
            if kind != "Input" and not self.preds[name]:
                raise ValidationError(f"NIR node {name!r}", "inputs", f"a {kind} with no incoming edge")
        self.order = self._topological(graph.edges)
        self.position = {name: i for i, name in enumerate(self.order)}
        self.delays = {name: self._delay(name) for name, k in self.kind.items() if k == "Delay"}

    def _topological(self, edges: Iterable[tuple[str, str]]) -> list[str]:
        indegree = Counter(dst for _, dst in edges)
        succ: dict[str, list[str]] = {name: [] for name in self.nodes}
        for src, dst in edges:
            succ[src].append(dst)
        ready = [n for n in self.nodes if indegree[n] == 0]
        order = []
        while ready:
            n = ready.pop()
            order.append(n)
            for m in succ[n]:
                indegree[m] -= 1
                if indegree[m] == 0:
                    ready.append(m)
        if len(order) != len(self.nodes):
            cyclic = sorted(set(self.nodes) - set(order))[:3]
            raise UnsupportedError(f"NIR graph: a cycle through {cyclic}; this interpreter runs acyclic graphs")
        return order

    def _delay(self, name: str) -> np.ndarray:
        d = np.asarray(self.nodes[name].delay, np.float64)
        if np.any(d < 0) or np.any(d != np.round(d)):
            bad = d.flat[int(np.flatnonzero((d < 0) | (d != np.round(d)))[0])]
            raise ValidationError(f"NIR node {name!r}", "delay", f"must be whole ticks >= 0, got {bad!r}")
        return d.astype(np.int64)

    # -- one node -----------------------------------------------------------------------

    def apply(self, name: str, x: np.ndarray) -> np.ndarray:
        """A stateless node's output for its summed input ``x`` (batch first)."""
        node, kind = self.nodes[name], self.kind[name]
        if kind in ("Output", "Delay"):  # Delay: the caller picked x at the earlier tick
            return x
        if kind == "Affine":
            return x.reshape(len(x), -1) @ np.asarray(node.weight, np.float64).T + np.asarray(node.bias, np.float64)
        if kind == "Linear":
            return x.reshape(len(x), -1) @ np.asarray(node.weight, np.float64).T
        if kind == "Scale":
            return x * np.asarray(node.scale, np.float64)
        if kind == "Threshold":
            return (x > np.asarray(node.threshold, np.float64)).astype(np.float64)
        if kind == "Flatten":
            shape = x.shape[1:]
            start, end = int(node.start_dim) % len(shape), int(node.end_dim) % len(shape)
            return x.reshape(len(x), *shape[:start], int(np.prod(shape[start:end + 1])), *shape[end + 1:])
        if kind == "Conv2d":
            return self._conv2d(name, node, x)
        if kind in ("SumPool2d", "AvgPool2d"):
            k = _pair(node.kernel_size, name, "kernel_size")
            total = _windows(x, None, _pair(node.stride, name, "stride"), _pair(node.padding, name, "padding"), k)
            return total if kind == "SumPool2d" else total / (k[0] * k[1])
        raise UnsupportedError(f"NIR node {name!r}: type {kind} has no rule here")  # excluded in __init__

    def _conv2d(self, name: str, node, x: np.ndarray) -> np.ndarray:
        if int(np.max(node.groups)) != 1 or _pair(node.dilation, name, "dilation") != (1, 1):
            raise UnsupportedError(f"NIR node {name!r}: Conv2d with groups {node.groups!r} or dilation "
                                   f"{node.dilation!r}; this interpreter runs groups 1, dilation 1")
        padding = (0, 0) if isinstance(node.padding, str) and node.padding == "valid" else \
            _pair(node.padding, name, "padding")
        w = np.asarray(node.weight, np.float64)
        out = _windows(x, w, _pair(node.stride, name, "stride"), padding, w.shape[2:])
        return out + np.asarray(node.bias, np.float64).reshape(-1, 1, 1)

    # -- schedules ----------------------------------------------------------------------

    def _summed(self, name: str, tick: int, value) -> np.ndarray | None:
        """The sum over incoming edges at ``tick`` (``value(src, tick)``; None: nothing yet)."""
        total = None
        for src in self.preds[name]:
            v = value(src, tick)
            if v is not None:
                total = v.copy() if total is None else total + v
        return total

    def _at(self, name: str, tick: int, value, inputs: Mapping[str, np.ndarray], zeros) -> np.ndarray:
        kind = self.kind[name]
        if kind == "Input":
            given = inputs[name]
            return given[:, tick].astype(np.float64) if tick < given.shape[1] else zeros(name)
        if kind == "Delay":
            d = self.delays[name]
            out = None
            for lag in np.unique(d):
                x = self._summed(name, tick - int(lag), value) if tick - int(lag) >= 0 else None
                x = zeros(name) if x is None else x
                out = x if out is None else np.where(d == lag, x, out)
            return out
        x = self._summed(name, tick, value)
        return self.apply(name, zeros(self.preds[name][0]) if x is None else x)

    def evaluate(self, inputs: Mapping[str, np.ndarray], requests: Iterable[tuple[str, int]],
                 schedule: str = "demand") -> dict[tuple[str, int], np.ndarray]:
        """Values of the requested ``(node, tick)`` pairs. ``inputs[name]``: ``(N, ticks given,
        *shape)`` for every Input node."""
        requests = list(dict.fromkeys(requests))
        for name, kind in self.kind.items():
            if kind == "Input" and name not in inputs:
                raise ValidationError("NIR interpreter", "inputs", f"no values for the Input node {name!r}")
        for name, tick in requests:
            if name not in self.nodes or tick < 0:
                raise ValidationError("NIR interpreter", "requests", f"({name!r}, {tick}) is no node and tick")
        n = len(next(iter(inputs.values())))
        shapes = self._shapes(inputs)

        def zeros(name: str) -> np.ndarray:
            return np.zeros((n, *shapes[name]))

        if schedule == "every_tick":
            return self._every_tick(inputs, requests, zeros)
        if schedule != "demand":
            raise ValidationError("NIR interpreter", "schedule", f"must be one of {SCHEDULES}, got {schedule!r}")
        return self._demand(inputs, requests, zeros)

    def _shapes(self, inputs: Mapping[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
        """Each node's per-sample output shape: one pass on one zero sample (delays as identity)."""
        values: dict[str, np.ndarray] = {}
        for name in self.order:
            if self.kind[name] == "Input":
                values[name] = np.zeros((1, *inputs[name].shape[2:]))
            else:
                values[name] = self.apply(name, sum(values[p] for p in self.preds[name]))
        return {name: v.shape[1:] for name, v in values.items()}

    def _every_tick(self, inputs, requests, zeros) -> dict[tuple[str, int], np.ndarray]:
        last = max((t for _, t in requests), default=-1)
        history: dict[tuple[str, int], np.ndarray] = {}

        def value(src: str, tick: int) -> np.ndarray:
            return history[(src, tick)]

        for tick in range(last + 1):
            for name in self.order:
                history[(name, tick)] = self._at(name, tick, value, inputs, zeros)
        return {r: history[r] for r in requests}

    def _dependencies(self, name: str, tick: int) -> list[tuple[str, int]]:
        if self.kind[name] == "Input":
            return []
        if self.kind[name] == "Delay":
            lags = [int(lag) for lag in np.unique(self.delays[name]) if tick - int(lag) >= 0]
            return [(p, tick - lag) for lag in lags for p in self.preds[name]]
        return [(p, tick) for p in self.preds[name]]

    def _demand(self, inputs, requests, zeros) -> dict[tuple[str, int], np.ndarray]:
        needed: set[tuple[str, int]] = set()
        uses: Counter = Counter()
        stack = list(requests)
        while stack:
            pair = stack.pop()
            if pair in needed:
                continue
            needed.add(pair)
            for dep in self._dependencies(*pair):
                uses[dep] += 1
                stack.append(dep)
        keep = set(requests)
        values: dict[tuple[str, int], np.ndarray] = {}

        def value(src: str, tick: int) -> np.ndarray:
            return values[(src, tick)]

        for name, tick in sorted(needed, key=lambda p: (p[1], self.position[p[0]])):
            values[(name, tick)] = self._at(name, tick, value, inputs, zeros)
            for dep in self._dependencies(name, tick):
                uses[dep] -= 1
                if uses[dep] == 0 and dep not in keep:
                    del values[dep]
        return {r: values[r] for r in requests}


def _windows(x: np.ndarray, weight: np.ndarray | None, stride: tuple[int, int], padding: tuple[int, int],
             kernel: tuple[int, int]) -> np.ndarray:
    """Cross-correlation with ``weight`` (C_out, C_in, kh, kw), or window sums when
    ``weight`` is None, tap by tap: out = sum over (dy, dx) of the shifted input."""
    (sh, sw), (ph, pw), (kh, kw) = stride, padding, kernel
    if ph or pw:
        x = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    n, c, hp, wp = x.shape
    ho, wo = (hp - kh) // sh + 1, (wp - kw) // sw + 1
    out = np.zeros((n, c if weight is None else weight.shape[0], ho, wo))
    for dy in range(kh):
        for dx in range(kw):
            tap = x[:, :, dy:dy + sh * (ho - 1) + 1:sh, dx:dx + sw * (wo - 1) + 1:sw]
            if weight is None:
                out += tap
            else:
                out += np.einsum("oc,nchw->nohw", weight[:, :, dy, dx], tap, optimize=True)
    return out
