r"""The fast mode at float32 speed, with float64's spikes: compute in float32, check, repair.

The float64 fast mode (:func:`fs_hw.reference.simulator._run_fast`) defines the spikes.
This module computes the same spikes, read-out values and predictions, bit for bit, with
the linear maps in float32 (torch's oneDNN convolutions, float32 BLAS) plus a check:

1. Every linear node that feeds an FS node is computed in float32, its values held in a
   unit :math:`\sigma` (the grid step :math:`s = \alpha 2^{-K}` of the ReLU code it feeds,
   folded into the weights, so the check needs no extra pass; 1 otherwise). A ReLU-coded
   node passes on its integer level :math:`q` (exact in float32), not :math:`q s`.
2. For every neuron a bound :math:`E` with :math:`|\sigma t_{32} - v_{64}| \le E` holds,
   where :math:`t_{32}` is the float32 value and :math:`v_{64}` what the float64 fast mode
   computes. Both approximate the exact real value :math:`v` of the same terms, so
   :math:`E = e_{32} + e_{64}` with the a-priori bounds below, propagated node by node.
3. An FS neuron is *decided* when its code gives the same spike train for every input in
   :math:`[\sigma t_{32} - E, \sigma t_{32} + E]`; then its float64 spikes are those of
   :math:`t_{32}`. For the ReLU code the trains change only at the grid points
   :math:`k s`, :math:`1 \le k \le 2^K - 1` (:mod:`fs_hw.codes.relu`), so the test is
   "no integer :math:`k` within :math:`E/s` of :math:`t`". For any other code, the train
   of the interval's two ends is computed with :func:`fs_hw.dynamics.simulate_fs`: if
   they are equal every point between has the same train, because with a fixed history
   :math:`v(t)` is a non-decreasing function of the input (each step subtracts the same
   :math:`h(t)`, and rounded subtraction is monotone), so each decision
   :math:`[v(t) > T(t)]` is too, and by induction over :math:`t` the whole train is fixed.
4. The other neurons (typically well under 1%) are recomputed in float64 from exactly
   the values the float64 mode holds (their receptive fields gathered, one dot product
   each), giving :math:`\tilde v` with :math:`|\tilde v - v_{64}| \le D`; they are
   decided by the same interval test on :math:`[\tilde v - D, \tilde v + D]`. A neuron
   still undecided lies within float64 rounding of a boundary, where the decision
   depends on the order of the float64 sums: its layer is recomputed by the float64
   mode's own kernels on the whole batch (``_Chunk.full64``), which gives :math:`v_{64}` itself.
5. Linear nodes that feed only the read-out are computed by the float64 mode's kernels
   from the (identical) spikes, so read-out values and predictions are bit-identical.

The per-neuron loops (decision, per-sample bound, recomputation) are
:mod:`fs_hw.reference.kernels`; images are held channels last; parts of a batch run
every layer in parallel threads (:func:`_run`).

**The bounds.** :math:`u` is the unit roundoff (:math:`2^{-24}` for float32,
:math:`2^{-53}` for float64), :math:`\gamma_n = nu/(1-nu)`. A sum of :math:`m` terms each
computed with at most :math:`j` roundings, in any order, with or without FMA, has error
at most :math:`\gamma_{m-1+j} \sum |\text{terms}|` (Higham, *Accuracy and Stability of
Numerical Algorithms*, 2nd ed., Lemma 3.1 and eq. 3.5). Per node, with :math:`M` a bound
on the exact :math:`|v|` of each input and :math:`e` the error of its computed value:

* dense / conv2d with fan-in :math:`n`: :math:`M' = |W| M + |b|`;
  :math:`e' = |W| e + \gamma_{n+4} (|W|(M + e) + |b|)` (float32: weights
  :math:`W \sigma_{in}/\sigma` and bias rounded to float32, two roundings each, one per
  product, :math:`n` additions); float64 the same with :math:`\gamma_{n+2}`;
* add of :math:`k` operands: :math:`M' = \sum M_i`;
  :math:`e' = \sum e_i + \gamma_{k+3} \sum (M_i + e_i)` (an operand in another unit is
  multiplied by a rounded ratio);
* average pooling over :math:`n` cells: :math:`M' = \mathrm{mean}\, M`,
  :math:`e' = \mathrm{mean}\, e + \gamma_{n+3}\, \mathrm{mean}(M + e)`;
* spiking nodes output exact table values: :math:`e = 0` for the ReLU levels
  :math:`q`; a rounding of :math:`y` to float32 otherwise (:math:`e = u M`).

The maps are computed per neuron (padding borders get smaller bounds) with the
network's own kernels applied to :math:`|W|` and the bound maps, in float64, and
multiplied by ``SLACK`` to cover the rounding of the bound computation itself. The
check's own float32 arithmetic (clipping, adding and subtracting :math:`E`) adds
at most a few roundings of numbers below :math:`2^K + 1`, covered by
``8 u (2^K + 2)``. In the recomputation, :math:`\tilde v` and :math:`v_{64}` are sums of
the same exact terms, so :math:`D = 2\gamma_{n+2}(|W||y| + |b|)` per neuron, with the
actual gathered :math:`y` (no a-priori :math:`M`).
"""

from __future__ import annotations

import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from fs_hw.backend import RunResult
from fs_hw.codes.relu import _POPCOUNT16, _popcount, relu_closed_form
from fs_hw.dynamics import simulate_fs
from fs_hw.ir.network import Network
from fs_hw.ir.nodes import Add, AvgPool2d, Conv2d, Dense, Flatten, FSActivation, Input
from fs_hw.reference import kernels
from fs_hw.reference.ops import apply_linear

U32 = 2.0**-24
U64 = 2.0**-53
#: covers the float64 rounding of the bound computations themselves (relative ~1e-13 at most)
SLACK = 1.0 + 2.0**-20
#: samples per internal chunk (the unit of the parallel parts, see _run): a batch of 256
#: on two threads is one chunk per thread (128 ran 3-7 % faster than 64 there)
CHUNK = 128
#: the fewest samples a parallel part gets
PART_MIN = 16


def rank_one_majorant(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``r`` (rows) and ``a`` (columns) with ``r[o] * a[c] >= m[o, c]`` for a non-negative
    matrix ``m``, alternately tightened (each step keeps the inequality and never
    loosens it); checked exactly at the end."""
    m = np.asarray(m, np.float64)
    a = m.max(axis=0)
    r = np.ones(m.shape[0])
    with np.errstate(divide="ignore", invalid="ignore"):
        for _ in range(8):
            r = np.where(a[None, :] > 0, m / a[None, :], 0.0).max(axis=1)
            a = np.where(r[:, None] > 0, m / r[:, None], 0.0).max(axis=0)
    a = a * (1 + 8 * U64)  # the divisions' rounding
    if not np.all(r[:, None] * a[None, :] >= m):  # pragma: no cover - a bug, not an input
        raise AssertionError("rank-one majorant below the matrix")
    return r, a


def gamma(n: int, u: float) -> float:
    return n * u / (1.0 - n * u)


def _torch():
    import torch

    return torch


_PLANS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def plan_for(network: Network, tables: dict, x_abs_max: float, library: str, mode: str = "fast") -> Plan:
    """The network's plan, reused across calls (building it costs a few float64
    convolutions per layer) while the input range, library and mode are the same."""
    key = (x_abs_max if any(isinstance(n, Input) and n.code is None for n in network.nodes) else None,
           library, mode)
    cached = _PLANS.get(network)
    if cached is None or cached[0] != key:
        cached = (key, Plan(network, tables, x_abs_max, library, mode))
        _PLANS[network] = cached
    return cached[1]


def spike_supported(network: Network, tables: dict) -> bool:
    """Whether the spike-level mode can take the float32 path: every FS node has a ReLU
    code (the check is the ReLU grid test) and so has every spiking node the read-out
    reads through linear nodes (its value is replayed from the levels' bits). A
    spike-coded input with another code (the zoo's round codes) is simulated exactly."""
    from fs_hw.reference.simulator import _linear_cone

    readout_sources = [network.by_name[n] for n in _linear_cone(network, network.readout.input)]
    return worthwhile(network, tables) and all(
        tables[n.code].grid is not None for n in readout_sources if network.is_spiking(n))


def worthwhile(network: Network, tables: dict) -> bool:
    """Whether the float32 path is the faster one: every FS node has a ReLU code. Other
    codes are checked by simulating both ends of every neuron's interval, which costs
    more than the float64 convolutions save (the swish CNN: 2.6x slower); ``float32=True``
    still asks for it."""
    return all(tables[n.code].grid is not None for n in network.nodes if isinstance(n, FSActivation))


def supported(network: Network, profile, record: bool) -> bool:
    """Whether this path applies: float profile, no per-step weights, torch installed."""
    if np.dtype(profile.dtype).kind != "f" or np.dtype(profile.dtype) != np.float64:
        return False
    if network.step_sources:
        return False
    try:
        torch = _torch()
    except ImportError:
        return False
    return _ieee_float32(torch)


def _ieee_float32(torch) -> bool:
    """Whether torch's float32 convolutions and products round as IEEE float32: the
    bounds assume it; a process that allowed bf16/tf32 internals (``torch.
    set_float32_matmul_precision("medium")``, ``torch.backends.mkldnn.*.fp32_precision``)
    gets the float64 path instead."""
    if torch.get_float32_matmul_precision() != "highest":
        return False
    mkldnn = torch.backends.mkldnn
    for setting in (mkldnn, getattr(mkldnn, "conv", None), getattr(mkldnn, "matmul", None)):
        if getattr(setting, "fp32_precision", "none") not in ("none", "ieee"):
            return False
    return True


@dataclass
class _Code:
    name: str
    tables: object  # simulator._Tables
    grid: float | None
    levels: int


class Plan:
    """What the float32 path needs for one network and one input range, computed once."""

    def __init__(self, network: Network, tables: dict, x_abs_max: float, library: str, mode: str = "fast"):
        torch = _torch()
        self.net = network
        self.tables = tables
        self.library = library
        #: whose float64 values the spikes must equal: the fast mode's or the spike mode's
        self.mode = mode
        #: spike mode: per FS input node, what the recomputation's bound D adds (_fs_check)
        self.spike_extra: dict[str, np.ndarray] = {}
        order = network.order
        spiking = {n.name for n in network.spiking_nodes()}
        # nodes computed in float32: linear nodes from which an FS node is reachable
        # through linear nodes only; the rest of the linear nodes feed only the read-out
        self.f32: set[str] = set()
        for node in reversed(order):
            if node.linear and any(
                isinstance(network.by_name[c], FSActivation) or c in self.f32
                for c in network.consumers[node.name]
            ):
                self.f32.add(node.name)
        self.codes: dict[str, _Code] = {}
        for node in order:
            if node.name in spiking:
                tab = tables[node.code]
                self.codes[node.name] = _Code(node.code, tab, tab.grid, 2 ** tab.code.K - 1)
        # units sigma: a ReLU code's levels are in its grid; a float32 linear node takes
        # the grid of the ReLU-coded FS node it alone feeds (through adds)
        self.sigma: dict[str, float] = {}
        for node in reversed(order):
            if node.name in spiking:
                c = self.codes[node.name]
                self.sigma[node.name] = c.grid if c.grid is not None else 1.0
            elif isinstance(node, (Conv2d, Dense, Add)) and node.name in self.f32:
                cons = network.consumers[node.name]
                s = 1.0
                if len(cons) == 1:
                    c = network.by_name[cons[0]]
                    if isinstance(c, FSActivation) and tables[c.code].grid is not None:
                        s = tables[c.code].grid
                    elif isinstance(c, Add) and c.name in self.f32:
                        s = self.sigma[c.name]
                self.sigma[node.name] = s
        for node in order:  # pooling and flatten keep their input's unit
            if isinstance(node, (AvgPool2d, Flatten)) or (isinstance(node, Input) and node.name not in spiking):
                self.sigma[node.name] = self.sigma[node.inputs[0]] if node.inputs else 1.0
        # float32 weights with the units folded in
        self.w32: dict[str, object] = {}
        self.b32: dict[str, object] = {}
        for node in order:
            if node.name in self.f32 and isinstance(node, (Conv2d, Dense)):
                ratio = self.sigma[node.inputs[0]] / self.sigma[node.name]
                w = (node.weight * ratio).astype(np.float32)
                b = (node.bias / self.sigma[node.name]).astype(np.float32)
                if isinstance(node, Conv2d):
                    # images are held channels last (NHWC): oneDNN's convolutions run
                    # 20-40 % faster on them than on NCHW, which it reorders internally
                    self.w32[node.name] = torch.from_numpy(np.ascontiguousarray(w)).contiguous(
                        memory_format=torch.channels_last)
                    # a bias map is added after the convolution, per output neuron
                    self.b32[node.name] = b if node.has_bias_map else torch.from_numpy(b)
                else:
                    self.w32[node.name] = torch.from_numpy(np.ascontiguousarray(w.T))
                    self.b32[node.name] = b
        self._data_bounds(network)
        self._bounds(network, spiking, x_abs_max)
        self._lifetimes(network)
        #: neurons checked, recomputed in float64, and settled by the float64 mode's kernels
        self.stats = {"checked": 0, "recomputed": 0, "full64": 0}

    def bound_map(self, name: str, extra: dict) -> np.ndarray:
        """The whole bound of FS node ``name`` (``(m, *input shape)``, float64) from the
        per-sample maps ``extra`` of ``_forward32``: ``E0 + sum_j r_j[o] B_j``. The
        kernels add it per neuron instead; this is for tests and non-ReLU codes."""
        E = self.check[name].astype(np.float64)
        for r, conv in zip(self.data_r.get(name, ()), self.data_fs.get(name, ())):
            B = extra[conv].astype(np.float64)
            E = E + r.astype(np.float64)[None, :, None, None] * B[:, None]
        return E

    def _lifetimes(self, network: Network) -> None:
        """``free_after[i]``: spiking nodes no spiking node after the i-th one (nor the
        read-out) reads, so a batch's levels are dropped once they are spent (a 10k-image
        batch would otherwise hold every layer)."""
        spiking = network.spiking_nodes()

        def sources(name: str) -> set[str]:
            node = network.by_name[name]
            if network.is_spiking(node) or isinstance(node, Input):
                return {name}
            return set().union(*(sources(s) for s in node.inputs))

        last = {n.name: len(spiking) for n in spiking}  # never read: dropped at the end
        for i, node in enumerate(spiking):
            last[node.name] = i  # its own counts and trains are taken at once
        for i, node in enumerate(spiking):
            if isinstance(node, FSActivation):
                for src in sources(node.input):
                    last[src] = max(last.get(src, i), i)
        for src in sources(network.readout.input):
            last[src] = len(spiking)
        self.free_after: dict[int, list[str]] = {}
        for name, i in last.items():
            self.free_after.setdefault(i, []).append(name)

    def _data_bounds(self, network: Network) -> None:
        """Convolutions of spiking inputs whose float32 rounding is bounded per sample.

        The a-priori term :math:`\\gamma_{n+4} |W| M` uses the largest input everywhere.
        With the inputs at hand, :math:`\\sum |w_{oc\\tau}| |y_c| \\le r_o \\sum_{c,\\tau} a_c
        |y_c|` for a rank-one majorant :math:`r_o a_c \\ge \\max_\\tau |w_{oc\\tau}|`
        (:func:`rank_one_majorant`): a weighted sum over input channels at every input
        pixel, then over each window (``kernels.window_sums``), a few percent of the
        convolution's work. Computed in float32 (numba's loop, or a float32 convolution
        without numba), a sum of :math:`m` non-negative rounded terms, it is at least the
        exact value times :math:`1 - \\gamma_m`, which :math:`r_o` covers.
        ``data_fs``: per FS node, the convolutions (direct, or through one add) whose
        maps enter its check, and ``data_r`` their :math:`r_o` stacked ``(k, O)``, in
        the FS node's grid units; ``bound_a``: each convolution's :math:`a_c`."""
        self.data_fs: dict[str, list[str]] = {}
        self.data_r: dict[str, np.ndarray] = {}
        self.bound_a: dict[str, np.ndarray] = {}
        by = network.by_name

        def eligible(name: str, via: str | None) -> bool:
            node = by[name]
            if not isinstance(node, Conv2d) or name not in self.f32 or node.inputs[0] not in self.codes:
                return False
            return via is None or network.consumers[name] == (via,)

        for node in network.order:
            if not isinstance(node, FSActivation) or node.input not in self.f32:
                continue
            unit = self.tables[node.code].grid or 1.0  # the check's unit (see _fs_check)
            src = by[node.input]
            convs = []
            if eligible(src.name, None):
                convs = [src.name]
            elif isinstance(src, Add) and network.consumers[src.name] == (node.name,):
                convs = [op for op in src.inputs if eligible(op, src.name)]
            rows = []
            for name in convs:
                conv = by[name]
                w = conv.weight
                co, cin, kh, kw = w.shape
                n = cin * kh * kw
                s_in = self.sigma[conv.inputs[0]]
                r, a = rank_one_majorant(np.abs(w).max(axis=(2, 3)))
                self.bound_a[name] = (a * (1 + 4 * U32)).astype(np.float32)  # rounded up
                rows.append(r * (gamma(n + 4, U32) * s_in / unit / (1 - gamma(n, U32)) * SLACK))
            if convs:
                self.data_fs[node.name] = convs
                self.data_r[node.name] = (np.stack(rows) * (1 + 4 * U32)).astype(np.float32)  # rounded up

    # -- a-priori bounds (absolute units, per neuron, no batch axis) ---------------------
    def _bounds(self, network: Network, spiking: set[str], x_abs_max: float) -> None:
        M: dict[str, np.ndarray] = {}
        e32: dict[str, np.ndarray] = {}
        e64: dict[str, np.ndarray] = {}
        self.check: dict[str, np.ndarray] = {}  # per FS node: E in its input's units (float32)
        self.check_last: dict[str, np.ndarray] = {}  # ReLU codes: the same, channels last (pixels, C)
        #: convolutions recomputed in float64: weights (times the input grid) channels last
        self.w64_last: dict[tuple, np.ndarray] = {}
        for node in network.order:
            shape = network.shapes[node.name]
            name = node.name
            if name in spiking:
                c = self.codes[name]
                if c.grid is not None:
                    M[name] = np.full(shape, c.levels * c.grid)
                    e32[name] = np.zeros(shape)
                    e64[name] = np.zeros(shape)
                else:
                    M[name] = np.full(shape, float(np.abs(c.tables.d).sum()))
                    e32[name] = U32 * M[name]
                    # the spike mode delivers d(t) z(t) step by step: their exact sum is
                    # within gamma_K sum|d| of the output y the fast mode passes on
                    K = c.tables.code.K
                    e64[name] = gamma(K, U64) * M[name] if self.mode == "spike" else np.zeros(shape)
                if isinstance(node, FSActivation) and node.input in self.f32:
                    self._fs_check(node, M, e32, e64)
                continue
            if isinstance(node, Input):  # analog input
                M[name] = np.full(shape, x_abs_max)
                e32[name] = U32 * M[name]
                e64[name] = np.zeros(shape)
                continue
            if name not in self.f32:
                continue
            ins = node.inputs
            if isinstance(node, (Conv2d, Dense)):
                n = int(np.prod(node.weight.shape[1:]))
                absb = np.abs(node.bias_for_output() if isinstance(node, Conv2d) else node.bias)
                mag = self._abs_map(node, M[ins[0]])
                M[name] = mag + absb
                if name in self.bound_a:  # the rounding of |W||y| is added per sample (_data_bounds)
                    e32[name] = self._abs_map(node, e32[ins[0]]) + gamma(n + 4, U32) * absb
                else:
                    e32[name] = self._abs_map(node, e32[ins[0]]) + gamma(n + 4, U32) * (
                        self._abs_map(node, M[ins[0]] + e32[ins[0]]) + absb)
                e64[name] = self._abs_map(node, e64[ins[0]]) + gamma(n + 2, U64) * (
                    self._abs_map(node, M[ins[0]] + e64[ins[0]]) + absb)
            elif isinstance(node, Add):
                k = len(ins)
                M[name] = sum(M[i] for i in ins)
                e32[name] = sum(e32[i] for i in ins) + gamma(k + 3, U32) * sum(M[i] + e32[i] for i in ins)
                e64[name] = sum(e64[i] for i in ins) + gamma(k + 2, U64) * sum(M[i] + e64[i] for i in ins)
            elif isinstance(node, AvgPool2d):
                (kh, kw), _ = node.window(network.shapes[ins[0]])
                n = kh * kw

                def pool(a, node=node):
                    return apply_linear(node, [a[None]], True)[0]

                M[name] = pool(M[ins[0]])
                e32[name] = pool(e32[ins[0]]) + gamma(n + 3, U32) * pool(M[ins[0]] + e32[ins[0]])
                e64[name] = pool(e64[ins[0]]) + gamma(n + 3, U64) * pool(M[ins[0]] + e64[ins[0]])
            elif isinstance(node, Flatten):
                M[name], e32[name], e64[name] = (a[ins[0]].reshape(-1) for a in (M, e32, e64))
            else:  # pragma: no cover - every linear kind is listed above
                raise TypeError(node.label)

    def _abs_map(self, node, m: np.ndarray) -> np.ndarray:
        """``|W| m`` (bias-free) for a per-neuron map ``m``, with the node's own kernel."""
        return apply_linear(node, [m[None]], False, "torch", weight=np.abs(node.weight))[0]

    def _fs_check(self, node, M, e32, e64) -> None:
        c = self.codes[node.name]
        src = node.input
        total = SLACK * (e32[src] + e64[src])
        if self.mode == "spike":
            # The spike mode's membrane is base + the deliveries of G = stage * K global
            # steps, each computed through the same bias-free chain of maps, added in
            # step order. The error formulas are linear in (M, e, |b|), the pieces' exact
            # magnitudes sum to at most M, so the chains' errors sum to at most e64; the
            # G + 1 additions of pieces (each at most M + e64 in sum) add
            # gamma_{G+1} (M + e64) (module doc: "The spike-level mode").
            G = self.net.stages[node.name] * self.net.K
            accumulate = gamma(G + 1, U64) * (M[src] + e64[src])
            total = total + SLACK * accumulate
            # |v~ - v_spike| <= D (vs the fast mode's v64) + |v64 - v| + |v - v_spike|
            extra = (2 * e64[src] + accumulate) * SLACK * SLACK
            self.spike_extra[src] = np.maximum(self.spike_extra.get(src, extra), extra)
        if c.grid is not None:
            E = total / c.grid + 8 * U32 * (c.levels + 2)
        else:
            E = total * SLACK + 4 * U64 * M[src]
        self.check[node.name] = (E * SLACK).astype(np.float32 if c.grid is not None else np.float64)
        if c.grid is not None:  # as kernels.decide_relu reads it
            self.check_last[node.name] = kernels.channels_last(self.check[node.name][None])[0]


class _Chunk:
    """One chunk's state: float32 values, spiking outputs, lazily built float64 values."""

    def __init__(self, plan: Plan, x: np.ndarray, whole_batch: bool = True):
        self.plan = plan
        self.x = x
        #: False for a part of the batch: float64 values of the whole batch are not at hand
        self.whole_batch = whole_batch
        self.parts = 1  # how many parts ran in parallel to give this batch's levels
        self.n = len(x)
        self.q: dict[str, np.ndarray] = {}  # ReLU-coded nodes: levels (float32)
        self.y64: dict[str, np.ndarray] = {}  # other spiking nodes: outputs (float64)
        self.y32: dict[str, np.ndarray] = {}  # ... rounded to float32 (the float32 path's input)
        self.full: dict[str, np.ndarray] = {}
        self.spike_membranes: dict[str, np.ndarray] | None = None  # spike mode, see exact64
        self.lock = threading.RLock()
        self.pool = None  # a thread pool over chunks, set by run_fast32
        self.threads = _torch().get_num_threads()  # the caller's

    def drop(self, names) -> None:
        """Forget spent spiking nodes and the float64 values built from them (rebuilt,
        identically, if ever asked for again)."""
        for name in names:
            for store in (self.q, self.y64, self.y32):
                store.pop(name, None)
        if names:
            self.full = {k: v for k, v in self.full.items() if k in self.q or k in self.y64}

    def merge(self, parts: list[_Chunk]) -> None:
        """The spiking outputs the parts (in order) still hold, for the whole batch."""
        for store in ("q", "y64"):
            for name in getattr(parts[0], store):
                getattr(self, store)[name] = np.concatenate([getattr(p, store)[name] for p in parts])

    # float64 values exactly as the float64 fast mode computes them
    def full64(self, name: str) -> np.ndarray:
        # chunks run in threads (torch set to one thread each, see run_fast32); the float64
        # kernels run with the caller's thread count, as in the float64 mode, in case a
        # library's sums depend on it; the lock builds each array once
        with self.lock, self.caller_threads():
            return self._full64(name)

    @contextmanager
    def caller_threads(self):
        """torch with the caller's thread count (the float64 kernels), restored after."""
        torch = _torch()
        inner = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            yield
        finally:
            torch.set_num_threads(inner)

    def exact64(self, name: str) -> np.ndarray:
        """The value of FS input node ``name`` exactly as the float64 mode being
        reproduced computes it: the fast mode's ``full64``, or the spike mode's membrane at
        the stage's first step (a spike-level run of the batch, once, for the rare neurons
        on a decision boundary)."""
        if self.plan.mode != "spike":
            return self.full64(name)
        if not self.whole_batch:
            raise _NeedsWholeBatch(name)
        with self.lock:
            if self.spike_membranes is None:
                from fs_hw.backend import FLOAT64
                from fs_hw.reference.simulator import _run_spike, _StepPlan

                net = self.plan.net
                membranes: dict[str, np.ndarray] = {}
                with self.caller_threads():
                    _run_spike(net, self.x, FLOAT64, self.plan.tables, False, self.plan.library,
                               _StepPlan(net, FLOAT64), membranes_out=membranes)
                self.spike_membranes = {net.by_name[k].input: v for k, v in membranes.items()
                                        if isinstance(net.by_name[k], FSActivation)}
            return self.spike_membranes[name]

    def _full64(self, name: str) -> np.ndarray:
        if name in self.full:
            return self.full[name]
        net = self.plan.net
        node = net.by_name[name]
        if name in self.q:  # in C order: the float64 kernels then sum as the float64 mode does
            out = np.ascontiguousarray(self.q[name], np.float64) * self.plan.codes[name].grid
        elif name in self.y64:
            out = self.y64[name]
        elif isinstance(node, Input):
            out = self.x
        elif not self.whole_batch:  # the float64 kernels' sums may depend on the batch size
            raise _NeedsWholeBatch(name)
        else:
            out = apply_linear(node, [self.full64(s) for s in node.inputs], True, self.plan.library)
        self.full[name] = out
        return out


def run_fast32(plan: Plan, x: np.ndarray, record: bool) -> RunResult:
    """One batch (the caller's ``batch_size`` chunk). Float64 values, where needed (the
    read-out, the rare neurons only the float64 kernels can settle), are computed on the
    whole batch, as the float64 fast mode does, so that they are the same to the last bit
    (float64 BLAS may sum in another order for another batch size).

    Parts of the batch run in a pool of as many threads as torch has (``_run``), each
    with single-threaded torch kernels: the kernels between the convolutions are
    single-threaded, and torch's idle workers spinning beside them cost more than they
    gain."""
    torch = _torch()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(threads) if threads > 1 and len(x) >= 2 * PART_MIN else _NoPool() as pool:
            return _run(plan, x, record, pool, threads)
    finally:
        torch.set_num_threads(threads)


class _NoPool:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


class _NeedsWholeBatch(Exception):
    """A part of the batch needed float64 values of the whole batch (see _run)."""


def _run(plan: Plan, x: np.ndarray, record: bool, pool, threads: int) -> RunResult:
    """Parts of the batch run through every layer in parallel, one part per thread, with
    no barrier between layers. Float64 values of the whole batch (the read-out; the rare
    neurons only the float64 kernels can settle) are batch-size dependent, so a part that
    needs them mid-way stops, and the batch is run again layer by layer, each layer's
    chunks in the pool (``_levels`` with the whole batch)."""
    from fs_hw.reference.simulator import _result

    net = plan.net
    before = dict(plan.stats)
    ch = None
    if pool is not None:
        bounds = np.linspace(0, len(x), min(threads, len(x) // PART_MIN) + 1).astype(int)
        parts = [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]
        try:
            done = list(pool.map(lambda part: _levels(_Chunk(plan, x[part], whole_batch=False), record), parts))
            ch = _Chunk(plan, x)
            ch.threads, ch.parts = threads, len(parts)
            ch.merge([part for part, _, _ in done])
            counts = {k: np.concatenate([d[1][k] for d in done]) for k in done[0][1]}
            trains = {k: np.concatenate([d[2][k] for d in done]) for k in done[0][2]} if record else None
        except _NeedsWholeBatch:
            with _STATS_LOCK:
                plan.stats.update(before)
            ch = None
    if ch is None:
        ch = _Chunk(plan, x)
        ch.pool, ch.threads = pool, threads
        ch, counts, trains = _levels(ch, record)
    if plan.mode == "spike":
        result = _result(net, _spike_readout(ch), counts, trains)
    else:
        result = _result(net, ch.full64(net.readout.input), counts, trains)
    # how many FS neurons were checked, recomputed in float64, settled by the float64 kernels
    result.info.update({f"float32_{k}": plan.stats[k] - before[k] for k in plan.stats})
    result.info["float32_parallel_parts"] = ch.parts  # 1: layer by layer (see above)
    return result


def _levels(ch: _Chunk, record: bool):
    """Every spiking node of ``ch``'s samples, in order: ``(ch, counts, trains)``, ``ch``
    holding the levels the read-out reads."""
    plan = ch.plan
    counts: dict[str, np.ndarray] = {}
    trains: dict[str, np.ndarray] | None = {} if record else None
    for i, node in enumerate(plan.net.spiking_nodes()):
        c = plan.codes[node.name]
        if isinstance(node, Input):
            _spike_exact(ch, node, c, ch.x, counts, trains)
        elif node.input in plan.f32:
            _spike_checked(ch, node, c, counts, trains)
        else:  # reads the sample or another spiking node directly: float64 values at hand
            _spike_exact(ch, node, c, ch.full64(node.input), counts, trains)
        ch.drop(plan.free_after.get(i, ()))
    return ch, counts, trains


def _spike_readout(ch: _Chunk) -> np.ndarray:
    """The spike mode's read-out value: its deliveries replayed, step by step, from the
    spike trains of the ReLU levels the read-out's cone reads (kept to the end, see
    Plan._lifetimes), with the spike mode's own code, so it is the same to the last bit."""
    from fs_hw.backend import FLOAT64
    from fs_hw.reference.simulator import _StepPlan, spike_readout

    plan = ch.plan
    net = plan.net
    trains = {name: _relu_train(q, plan.codes[name].tables.code.K) for name, q in ch.q.items()}
    with ch.caller_threads():
        return spike_readout(net, ch.x, trains, plan.tables, plan.library, _StepPlan(net, FLOAT64))


def _cone(plan: Plan, name: str) -> list[str]:
    """The float32 linear nodes that ``name`` (included) is computed from, in order."""
    net = plan.net
    seen: set[str] = set()
    stack = [name]
    while stack:
        n = stack.pop()
        if n in seen or n not in plan.f32:
            continue
        seen.add(n)
        stack.extend(net.by_name[n].inputs)
    return [n.name for n in net.order if n.name in seen]


def _forward32(ch: _Chunk, cone: list[str], rows: slice, defer_add: str | None = None) -> tuple[dict, dict]:
    """float32 values of the cone's nodes for samples ``rows``, and the per-sample bound
    maps of its data-bounded convolutions (``_data_bounds``). ``defer_add``: an add of
    two operands not summed here (``vals[name]`` is ``None``), its operands and their
    float32 ratios in ``extra[("add", name)]``, for the kernel that adds them itself."""
    torch = _torch()
    plan = ch.plan
    net = plan.net
    vals: dict[str, np.ndarray] = {}
    extra: dict[str, np.ndarray] = {}

    def value(name: str) -> np.ndarray:
        if name in vals:
            return vals[name]
        if name in ch.q:
            return ch.q[name][rows]
        if name in ch.y64:
            if name not in ch.y32:
                ch.y32[name] = ch.y64[name].astype(np.float32)
            return ch.y32[name][rows]
        return ch.x[rows].astype(np.float32)  # analog input

    for name in cone:
        node = net.by_name[name]
        ins = [value(s) for s in node.inputs]
        n = len(ins[0])
        if isinstance(node, Conv2d):
            bmap = node.has_bias_map
            xin = torch.from_numpy(ins[0]).contiguous(memory_format=torch.channels_last)  # (a view if it is)
            with torch.no_grad():
                # (an input of one channel is NCHW too, and torch then answers in NCHW)
                out = torch.nn.functional.conv2d(xin, plan.w32[name], None if bmap else plan.b32[name],
                                                 stride=node.stride, padding=node.padding).contiguous(
                    memory_format=torch.channels_last).numpy()
            if name in plan.bound_a:
                extra[name] = kernels.window_sums(ins[0], plan.bound_a[name], node.weight.shape[2:], node.stride,
                                                  node.padding, out.shape[2:])
            if bmap:
                out += plan.b32[name]
        elif isinstance(node, Dense):
            # torch's matmul, single-threaded in the chunks' pool (numpy's multithreaded
            # BLAS called from the pool's threads contends with them)
            with torch.no_grad():
                out = torch.from_numpy(np.ascontiguousarray(ins[0])).matmul(plan.w32[name]).numpy()
            out += plan.b32[name]
        elif isinstance(node, Add) and name == defer_add and len(ins) == 2:
            sig = plan.sigma[name]
            extra[("add", name)] = [(v, np.float32(plan.sigma[s] / sig)) for s, v in zip(node.inputs, ins)]
            out = None
        elif isinstance(node, Add):
            sig = plan.sigma[name]
            out = None
            for s, v in zip(node.inputs, ins):
                r = np.float32(plan.sigma[s] / sig)
                term = v if r == 1 else v * r  # (kernels.decide_relu adds a deferred add the same way)
                if out is None:
                    out = term.copy(order="K") if term is v else term  # K: stays channels last
                else:
                    out += term
        elif isinstance(node, AvgPool2d):
            (kh, kw), (sh, sw) = node.window(ins[0].shape[1:])
            with torch.no_grad():
                out = torch.nn.functional.avg_pool2d(torch.from_numpy(ins[0]), (kh, kw), (sh, sw)).numpy()
        elif isinstance(node, Flatten):
            out = ins[0].reshape(n, -1)
        else:  # pragma: no cover
            raise TypeError(node.label)
        vals[name] = out
    return vals, extra


_POPCOUNT_F32 = _POPCOUNT16[:256].astype(np.float32)


def _popcount_sum(q: np.ndarray, levels: int) -> np.ndarray:
    n = len(q)
    if levels < 256 and q[0].size * 8 < 2**24:  # float32 sums of integers below 2^24: exact
        return _POPCOUNT_F32.take(q.astype(np.uint8)).reshape(n, -1).sum(axis=1).astype(np.int64)
    return _popcount(q.astype(np.int64)).reshape(n, -1).sum(axis=1)


def _relu_train(q: np.ndarray, K: int) -> np.ndarray:
    qi = q.astype(np.int64)
    return np.stack([((qi >> (K - 1 - t)) & 1).astype(np.uint8) for t in range(K)], axis=1)


def _spike_exact(ch: _Chunk, node, c: _Code, v: np.ndarray, counts, trains) -> None:
    """A spiking node whose input is float64 already (the sample, or float64 values)."""
    tab = c.tables
    if c.grid is not None:
        y, _ = relu_closed_form(v, tab.code, c.grid)
        q = np.rint(y / c.grid).astype(np.float32)  # y = q s exactly, q < 2^24
        _store_relu(ch, node, c, q, counts, trains)
    else:
        res = simulate_fs(v, tab.T, tab.h, tab.d, tab.rule, record_spikes=trains is not None)
        ch.y64[node.name] = res.output
        counts[node.name] = res.spike_count.reshape(len(v), -1).sum(axis=1).astype(np.int64)
        if trains is not None:
            trains[node.name] = np.moveaxis(res.spikes, 0, 1).astype(np.uint8)


def _store_relu(ch: _Chunk, node, c: _Code, q: np.ndarray, counts, trains, count=None) -> None:
    ch.q[node.name] = q
    counts[node.name] = _popcount_sum(q, c.levels) if count is None else count
    if trains is not None:
        trains[node.name] = _relu_train(q, c.tables.code.K)


def _spike_checked(ch: _Chunk, node, c: _Code, counts, trains) -> None:
    plan = ch.plan
    src = node.input
    cone = _cone(plan, src)
    shape = plan.net.shapes[src]
    size = int(np.prod(shape))
    relu = c.grid is not None
    if relu and len(shape) == 3:  # levels held channels last, as the next convolution reads them
        out = np.moveaxis(np.empty((ch.n, *shape[1:], shape[0]), np.float32), -1, 1)
    else:
        out = np.empty((ch.n, *shape), np.float32 if relu else np.float64)
    count = np.empty(ch.n, np.int64)

    convs = plan.data_fs.get(node.name, ())
    r = plan.data_r.get(node.name, np.zeros((0, shape[0]), np.float32))
    E0 = plan.check_last[node.name] if relu else plan.check[node.name]

    def work(start: int) -> None:
        rows = slice(start, min(start + CHUNK, ch.n))
        vals, extra = _forward32(ch, cone, rows, defer_add=src if relu and kernels.compiled() else None)
        operands = extra.get(("add", src)) or [(vals[src], np.float32(1))]
        m = rows.stop - rows.start
        # the per-sample bound maps, one per data-bounded convolution: (k, m, pixels)
        B = np.empty((len(convs), m, size // shape[0]), np.float32)
        for j, conv in enumerate(convs):
            B[j] = extra[conv].reshape(m, -1)
        if relu:
            _decide_relu(ch, src, c, operands, E0, r, B, start * size, out[rows], count[rows])
        else:
            t = vals[src]
            out[rows] = _decide_generic(ch, src, c, t, plan.bound_map(node.name, extra), start * size)

    starts = range(0, ch.n, CHUNK)
    if ch.pool is None or len(starts) < 2:
        for start in starts:
            work(start)
    else:
        list(ch.pool.map(work, starts))  # list(): re-raises a worker's exception here
    if relu:
        _store_relu(ch, node, c, out, counts, trains, count)
    else:
        _spike_exact(ch, node, c, out, counts, trains)


def _decide_relu(ch: _Chunk, src: str, c: _Code, operands, E0, r, B, offset: int, q: np.ndarray,
                 count: np.ndarray) -> None:
    """Write into ``q`` the float64 mode's levels for the float32 values of ``src`` (rows
    of the batch from flat index ``offset``; ``operands``: ``[(value, 1)]``, or an add's
    two operands and their ratios), and into ``count`` their spikes per sample. The bound
    is ``E0 + sum_j r[j] B[j]`` (a-priori map, per-sample maps)."""
    plan = ch.plan
    m = len(q)
    flagged = kernels.decide_relu(operands, plan.sigma[src] / c.grid, E0, r, B, c.levels, q, count)
    _tally(plan, q.size, flagged.size)
    if flagged.size:
        v, D = _recompute(ch, src, flagged + offset)
        if plan.mode == "spike":
            D = D + plan.spike_extra[src].reshape(-1)[flagged % plan.spike_extra[src].size]
        lo, hi = _interval(v, D)
        qlo = _relu_levels(lo, c)
        bad = qlo != _relu_levels(hi, c)
        _tally(plan, full64=int(bad.sum()))
        if bad.any():
            exact = ch.exact64(src).reshape(-1)[flagged[bad] + offset]
            qlo[bad] = _relu_levels(exact, c)
        q[np.unravel_index(flagged, q.shape)] = qlo
        np.add.at(count, flagged // (q.size // m), _popcount(qlo.astype(np.int64)))


def _decide_generic(ch: _Chunk, src: str, c: _Code, t: np.ndarray, E, offset: int) -> np.ndarray:
    """A float64 input with the float64 mode's spike train, for every neuron of ``t``."""
    plan = ch.plan
    tab = c.tables
    K = tab.code.K
    t64 = t.astype(np.float64) * plan.sigma[src]
    lo, hi = _interval(t64, E)
    a = simulate_fs(lo, tab.T, tab.h, tab.d, tab.rule, record_spikes=True).spikes
    b = simulate_fs(hi, tab.T, tab.h, tab.d, tab.rule, record_spikes=True).spikes
    flagged = np.flatnonzero((a != b).reshape(K, -1).any(axis=0))
    _tally(plan, t.size, flagged.size)
    if flagged.size:
        v, D = _recompute(ch, src, flagged + offset)
        vlo, vhi = _interval(v, D)
        a = simulate_fs(vlo, tab.T, tab.h, tab.d, tab.rule, record_spikes=True).spikes
        b = simulate_fs(vhi, tab.T, tab.h, tab.d, tab.rule, record_spikes=True).spikes
        bad = (a != b).any(axis=0)
        _tally(plan, full64=int(bad.sum()))
        if bad.any():
            vlo[bad] = ch.full64(src).reshape(-1)[flagged[bad] + offset]
        lo.reshape(-1)[flagged] = vlo
    return lo


_STATS_LOCK = threading.Lock()


def _tally(plan: Plan, checked: int = 0, flagged: int = 0, full64: int = 0) -> None:
    with _STATS_LOCK:
        plan.stats["checked"] += checked
        plan.stats["recomputed"] += flagged
        plan.stats["full64"] += full64


def _relu_levels(v: np.ndarray, c: _Code) -> np.ndarray:
    y, _ = relu_closed_form(v, c.tables.code, c.grid)
    return np.rint(y / c.grid).astype(np.float32)


def _interval(v: np.ndarray, D) -> tuple[np.ndarray, np.ndarray]:
    """``[v - D, v + D]`` rounded outwards (float64)."""
    v = np.asarray(v, np.float64)
    D = np.asarray(D, np.float64)
    return np.nextafter(v - D, -np.inf), np.nextafter(v + D, np.inf)


# -- recomputing undecided neurons in float64 -------------------------------------------
def _recompute(ch: _Chunk, name: str, flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float64 values ``v`` of node ``name`` at flat indices ``flat`` (over the chunk) and
    bounds ``D`` with ``|v - v64| <= D``, ``v64`` the float64 fast mode's value."""
    plan = ch.plan
    net = plan.net
    node = net.by_name[name]
    if name in ch.q:  # q s is exact: the float64 mode's value (gathered, not built whole)
        q = ch.q[name]
        return q[np.unravel_index(flat, q.shape)].astype(np.float64) * plan.codes[name].grid, np.zeros(len(flat))
    if name in ch.y64 or isinstance(node, Input):
        src = ch.y64[name] if name in ch.y64 else ch.x
        return src.reshape(-1)[flat], np.zeros(len(flat))
    if name not in plan.f32:
        return ch.full64(name).reshape(-1)[flat], np.zeros(len(flat))
    if isinstance(node, Flatten):
        return _recompute(ch, node.inputs[0], flat)
    if isinstance(node, Add):
        parts = [_recompute(ch, s, flat) for s in node.inputs]
        v = parts[0][0].copy()
        for p in parts[1:]:
            v += p[0]
        D = sum(p[1] for p in parts)
        if np.any(D):
            k = len(parts)
            D = D + gamma(k + 1, U64) * (2 * sum(np.abs(p[0]) for p in parts) + D)
        return v, D * SLACK
    if isinstance(node, Dense):
        n_out = node.weight.shape[0]
        b, j = np.divmod(flat, n_out)
        rows = _rows64(ch, node.inputs[0], b)  # (P, n_in)
        w = node.weight[j]
        v = np.einsum("pi,pi->p", rows, w)
        mag = np.einsum("pi,pi->p", np.abs(rows), np.abs(w)) + np.abs(node.bias[j])
        v += node.bias[j]
        n = node.weight.shape[1]
        return v, 2 * gamma(n + 2, U64) * mag * SLACK
    if isinstance(node, Conv2d):
        return _recompute_conv(ch, node, flat)
    # pooling and anything else: the float64 mode's own kernel on whole arrays
    return ch.full64(name).reshape(-1)[flat], np.zeros(len(flat))


def _rows64(ch: _Chunk, name: str, b: np.ndarray) -> np.ndarray:
    """float64 values of node ``name`` for samples ``b``, flattened per sample."""
    if name in ch.q:
        return ch.q[name][b].reshape(len(b), -1).astype(np.float64) * ch.plan.codes[name].grid
    return ch.full64(name).reshape(ch.n, -1)[b]


def _recompute_conv(ch: _Chunk, node: Conv2d, flat: np.ndarray):
    """float64 values of a convolution at flat output indices: each neuron's receptive
    field and weights, one dot product (``kernels.conv_dots``)."""
    src = node.inputs[0]
    co = node.weight.shape[0]
    _, Ho, Wo = ch.plan.net.shapes[node.name]
    b, c, i, j = np.unravel_index(flat, (ch.n, co, Ho, Wo))
    relu = src in ch.q
    x = ch.q[src] if relu else ch.full64(src)
    w = ch.plan.w64_last.get((node.name, relu))
    if w is None:  # w s rounds once more than w (q s): gamma_{n+2} below covers it
        w = np.ascontiguousarray(np.moveaxis(node.weight * (ch.plan.codes[src].grid if relu else 1.0), 1, -1))
        ch.plan.w64_last[(node.name, relu)] = w
    v, mag = kernels.conv_dots(x, w, node.bias_for_output(), node.stride, node.padding, b, c, i, j)
    n = int(np.prod(node.weight.shape[1:]))
    return v, 2 * gamma(n + 2, U64) * mag * SLACK
