r"""The reference simulator: the semantics every backend reproduces.

Two modes compute the same network and must give the same spikes:

**fast** (``mode="fast"``): nodes in topological order, each once, on whole batches.
A spiking node runs :func:`fs_hw.dynamics.simulate_fs` on its input

.. math:: y_j = \sum_{t<K} d(t)\, z_j(t), \qquad z_j = \mathrm{FS}(x_j)

and a linear node applies its map to the decoded outputs :math:`y` of its inputs
(:math:`W y + b` for dense and conv2d, window means for pooling, sums for residual
adds). This is valid because :math:`\sum_t W d(t) z(t) = W y`.

**spike** (``mode="spike"``): time is stepped globally. Stage :math:`s` (see
:class:`fs_hw.ir.network.Network`) runs during steps :math:`[sK, (s+1)K)`. At its first
step a spiking node sets :math:`v = ` (bias part of its input) + (everything its
accumulator received); at every step it calls :func:`fs_hw.dynamics.fs_step`, and each
spike is delivered at once through the bias-free linear maps, weighted by
:math:`w \cdot d(t)`, into the accumulators of the spiking nodes and read-out
downstream. Those accumulators keep their sums until their own stage starts, which is
what aligns a residual connection that skips stages (a chip needs delays or relays for
this). The read-out is read after the last stage.

**Per-step weights.** A Dense/Conv2d with ``step_weight`` (see
:class:`fs_hw.ir.nodes.Dense`) computes :math:`b + \sum_t W_t \cdot C(z_S(t))` from the
raw spikes of its source ``S`` through its bias-free chain ``C``
(:meth:`fs_hw.ir.network.Network.step_source`). The fast mode simulates S with its
spike trains and applies the chain and ``step_weight[t]`` once per step; the spike
mode propagates S's raw spikes ``z`` (beside the ``d``-weighted events) along the chain
and delivers :math:`W_t \cdot C(z)` at S's step ``t``. Nodes without ``step_weight``
cost what they cost without the feature.

Arithmetic follows a :class:`fs_hw.backend.NumericProfile`: ``float64`` for the FS
semantics of the IR, or an integer type for a chip's fixed-point state, in which case
every weight, table entry and scaled input must be an integer and every sum is exact,
so both modes agree bit for bit and the result predicts the chip exactly. In float64 the
two modes add the same terms in a different order, so read-out values can differ in the
last bits; spikes are compared exactly by the tests.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from fs_hw.backend import FLOAT64, NumericProfile, RunResult
from fs_hw.codes.relu import relu_closed_form, relu_grid
from fs_hw.dynamics import fs_step, simulate_fs
from fs_hw.errors import ValidationError
from fs_hw.ir.code import FSCode
from fs_hw.ir.network import Network
from fs_hw.ir.nodes import FSActivation, Input, Node, Readout
from fs_hw.reference import fast32
from fs_hw.reference.ops import LIBRARIES, apply_linear

MODES = ("fast", "spike")


class _StepPlan:
    """What both modes need for the network's step-weighted nodes, computed once per run.

    ``weights``: ``{node: step_weight}`` in the profile's dtype (integer-valued when the
    profile is integer, else a ValidationError naming the node); ``sources``: ``{node:
    (source, chain)}``; ``spike_sources``: spiking nodes whose raw spikes some
    step-weighted node reads; ``raw_nodes``: chain nodes that carry raw spikes;
    ``needed``: nodes whose ordinary (decoded / ``d``-weighted) value something other
    than a step-weighted node reads (the others are skipped).
    """

    def __init__(self, network: Network, profile: NumericProfile):
        dtype = np.dtype(profile.dtype)
        self.sources = network.step_sources
        self.weights: dict[str, np.ndarray] = {}
        for name in self.sources:
            node = network.by_name[name]
            sw = node.step_weight  # type: ignore[attr-defined]
            if dtype.kind in "iu":
                bad = sw != np.round(sw)
                if bad.any():
                    idx = tuple(int(i) for i in np.argwhere(bad)[0])
                    raise ValidationError(
                        node.label, "step_weight",
                        f"profile {profile.name!r} needs integer step weights, got {sw[idx]!r} at index {idx}",
                    )
            self.weights[name] = sw.astype(dtype)
        self.spike_sources = {source for source, _ in self.sources.values()}
        self.raw_nodes = {c for _, chain in self.sources.values() for c in chain}
        self.needed: set[str] = set()
        for node in reversed(network.order):
            for c in network.consumers[node.name]:
                if c not in self.sources and (
                    isinstance(network.by_name[c], (FSActivation, Readout)) or c in self.needed
                ):
                    self.needed.add(node.name)
                    break

    def bias_only(self, network: Network, node: Node, n: int, dtype: np.dtype) -> np.ndarray:
        """A step-weighted node's output with no spikes: its bias, broadcast (its chain has none)."""
        shape = network.shapes[node.name]
        bias = node.bias  # type: ignore[attr-defined]
        b = bias.astype(dtype) if bias.ndim == len(shape) else bias.astype(dtype).reshape(-1, *([1] * (len(shape) - 1)))
        return np.broadcast_to(b, (n, *shape)).copy()

    def apply(self, network: Network, node: Node, u: np.ndarray, t: int, library: str,
              dtype: np.dtype) -> np.ndarray:
        """``W_t · u``: the node's own bias-free operation with ``step_weight[t]``."""
        return apply_linear(node, [u], False, library, dtype, weight=self.weights[node.name][t])


class _Tables:
    """A code's tables in the profile's dtype (integer-valued when the profile is)."""

    def __init__(self, code: FSCode, profile: NumericProfile):
        dtype = np.dtype(profile.dtype)
        self.code = code
        self.rule = code.rule
        self.grid = relu_grid(code) if dtype.kind == "f" else None
        if dtype.kind in "iu":
            for key in "Thd":
                table = getattr(code, key)
                if not np.array_equal(table, np.round(table)):
                    raise ValidationError(
                        f"FSCode {code.name!r}", key,
                        f"profile {profile.name!r} needs integer tables, got {table[table != np.round(table)][0]}",
                    )
        self.T, self.h, self.d = (getattr(code, k).astype(dtype) for k in "Thd")


def prepare_inputs(network: Network, inputs: np.ndarray, profile: NumericProfile) -> np.ndarray:
    """Check the input batch and convert it to the profile's units and dtype."""
    node = network.input
    x = np.asarray(inputs)
    if x.ndim == len(node.shape):
        x = x[None]
    if x.shape[1:] != node.shape:
        raise ValidationError(
            f"input {node.name!r}", "shape", f"expects samples of shape {node.shape}, got {x.shape[1:]}"
        )
    if not np.issubdtype(x.dtype, np.number):
        raise ValidationError(f"input {node.name!r}", "dtype", f"must be numeric, got {x.dtype}")
    x = x.astype(np.float64)
    if not np.all(np.isfinite(x)):
        raise ValidationError(f"input {node.name!r}", "values", f"{int((~np.isfinite(x)).sum())} non-finite values")
    x = x * profile.input_scale
    if profile.is_integer:
        x = np.floor(x + 0.5) if profile.input_rounding == "nearest" else np.floor(x)
    return x.astype(profile.dtype)


def run_reference(
    network: Network,
    inputs: np.ndarray,
    mode: str = "fast",
    profile: NumericProfile = FLOAT64,
    record_spikes: bool = False,
    library: str = "numpy",
    batch_size: int | None = None,
    progress: Iterable | None = None,
    float32: bool | None = None,
) -> RunResult:
    """Run ``network`` on ``inputs`` (``(N, *input_shape)``) and return a :class:`RunResult`.

    ``batch_size`` splits the batch (results are concatenated); ``library`` picks the
    kernel library for convolutions (``"numpy"`` or ``"torch"``, same float64 sums).
    ``float32``: compute the fast mode's linear maps in float32 and repair, in float64,
    every neuron the float32 values cannot provably decide (:mod:`fs_hw.reference.fast32`):
    the same spikes, read-out values and predictions as the float64 fast mode with the
    same ``library``, several times faster. ``None`` (default) uses it where it applies and
    pays: fast mode, ``library="torch"``, the float64 profile, no per-step weights, ReLU
    codes only.
    """
    if mode not in MODES:
        raise ValidationError("run_reference", "mode", f"must be one of {MODES}, got {mode!r}")
    if library not in LIBRARIES:
        raise ValidationError("run_reference", "library", f"must be one of {LIBRARIES}, got {library!r}")
    x = prepare_inputs(network, inputs, profile)
    tables = {name: _Tables(code, profile) for name, code in network.codes.items()}
    plan = _StepPlan(network, profile)
    step = batch_size or len(x) or 1
    use32 = fast32.supported(network, profile, record_spikes) and (
        mode == "fast" or fast32.spike_supported(network, tables))
    use32 = use32 and (library == "torch" and fast32.worthwhile(network, tables) if float32 is None else float32)
    if float32 and not use32:
        raise ValidationError("run_reference", "float32",
                              "needs the float64 profile, no per-step weights, torch with IEEE float32 "
                              "(float32 matmul precision 'highest'), and in the spike "
                              "mode ReLU codes on every FS node and on the spiking nodes the read-out reads")
    plan32 = fast32.plan_for(network, tables, float(np.abs(x).max(initial=0)), library, mode) if use32 else None
    parts = []
    for start in range(0, max(len(x), 1), step):
        chunk = x[start : start + step]
        if plan32 is not None:
            parts.append(fast32.run_fast32(plan32, chunk, record_spikes))
        else:
            runner = _run_fast if mode == "fast" else _run_spike
            parts.append(runner(network, chunk, profile, tables, record_spikes, library, plan))
        if progress is not None:
            progress.update(len(chunk))  # type: ignore[attr-defined]
    return concat_results(parts)


def concat_results(parts: list[RunResult]) -> RunResult:
    """Concatenate the RunResults of consecutive sample chunks (samples in order).

    Per-sample arrays are joined; numbers in ``info`` that count work (``steps``,
    ``samples``, ``seconds``, the ``float32_*`` neuron counts) are summed, the rest is taken
    from the first chunk.
    """
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    trains = None
    if first.spike_trains is not None:
        trains = {k: np.concatenate([p.spike_trains[k] for p in parts]) for k in first.spike_trains}
    return RunResult(
        outputs=np.concatenate([p.outputs for p in parts]),
        predictions=np.concatenate([p.predictions for p in parts]),
        spike_counts={k: np.concatenate([p.spike_counts[k] for p in parts]) for k in first.spike_counts},
        neurons=first.neurons,
        time_steps=first.time_steps,
        spike_trains=trains,
        info=_merge_info([p.info for p in parts]),
        input_name=first.input_name,
    )


def _merge_info(infos: list[dict]) -> dict:
    merged = dict(infos[0])
    for key in ("steps", "samples", "seconds", "float32_checked", "float32_recomputed", "float32_full64"):
        if all(isinstance(i.get(key), (int, float)) and not isinstance(i.get(key), bool) for i in infos):
            merged[key] = sum(i[key] for i in infos)
    return merged


def _check_membrane(node: Node, v: np.ndarray, profile: NumericProfile) -> None:
    if profile.membrane_bits is None or v.size == 0:
        return
    limit = 2 ** (profile.membrane_bits - 1)
    lo, hi = int(v.min()), int(v.max())
    if lo < -limit or hi >= limit:
        raise ValidationError(
            node.label, "membrane",
            f"overflow in profile {profile.name!r}: value {hi if hi >= limit else lo} outside "
            f"the {profile.membrane_bits}-bit range [{-limit}, {limit - 1}]",
        )


def _fs(tables: _Tables, v: np.ndarray, record: bool):
    if tables.grid is not None and not record:
        y, count = relu_closed_form(v, tables.code, tables.grid)
        return y, count, None
    result = simulate_fs(v, tables.T, tables.h, tables.d, tables.rule, record_spikes=record)
    return result.output, result.spike_count, result.spikes


def _result(network: Network, outputs: np.ndarray, counts: dict, trains: dict | None) -> RunResult:
    flat = outputs.reshape(len(outputs), -1)
    return RunResult(
        outputs=outputs,
        predictions=np.argmax(flat, axis=1) if flat.shape[1] else np.zeros(len(flat), int),
        spike_counts=counts,
        neurons=network.neuron_counts(),
        time_steps=network.time_steps,
        spike_trains=trains,
        input_name=network.input.name if network.input.code is not None else None,
    )


def _count(c: np.ndarray) -> np.ndarray:
    return c.reshape(len(c), -1).sum(axis=1).astype(np.int64)


def _as_train(spikes: np.ndarray) -> np.ndarray:
    # (K, N, ...) -> (N, K, ...) uint8
    return np.moveaxis(np.asarray(spikes), 0, 1).astype(np.uint8)


def _run_fast(network, x, profile, tables, record, library, plan) -> RunResult:
    dtype = np.dtype(profile.dtype)
    values: dict[str, np.ndarray] = {}
    raw: dict[str, np.ndarray] = {}  # spike trains (K, N, ...) of the step-weighted nodes' sources
    counts: dict[str, np.ndarray] = {}
    trains: dict[str, np.ndarray] | None = {} if record else None
    outputs = None
    for node in network.order:
        if isinstance(node, Input):
            values[node.name] = x
        elif node.name in plan.sources:
            values[node.name] = _step_weighted_fast(network, node, raw, library, dtype, plan)
        elif node.linear:
            if node.name not in plan.needed:
                continue  # read only by step-weighted nodes, which read the raw spikes instead
            values[node.name] = apply_linear(node, [values[s] for s in node.inputs], True, library, dtype)
        elif isinstance(node, Readout):
            outputs = values[node.input]
            _check_membrane(node, outputs, profile)
            continue
        if network.is_spiking(node):
            membrane = values[node.input] if isinstance(node, FSActivation) else values[node.name]
            _check_membrane(node, membrane, profile)
            keep = node.name in plan.spike_sources
            y, count, spikes = _fs(tables[node.code], membrane, record or keep)
            values[node.name] = y
            counts[node.name] = _count(count)
            if keep:
                raw[node.name] = spikes
            if record:
                trains[node.name] = _as_train(spikes)  # type: ignore[index]
    return _result(network, outputs, counts, trains)


def _step_weighted_fast(network, node, raw, library, dtype, plan) -> np.ndarray:
    """``b + sum_t W_t · C(z_S(t))`` on whole batches: the chain once on all K steps stacked
    along the batch, then the node once per step with ``step_weight[t]``."""
    source, chain = plan.sources[node.name]
    z = raw[source]  # (K, N, *shape of S), bool
    K, n = z.shape[:2]
    u = z.reshape(K * n, *z.shape[2:]).astype(dtype)
    for name in chain:
        u = apply_linear(network.by_name[name], [u], False, library, dtype)
    u = u.reshape(K, n, *u.shape[1:])
    out = plan.apply(network, node, u[0], 0, library, dtype)
    for t in range(1, K):
        out += plan.apply(network, node, u[t], t, library, dtype)
    out += plan.bias_only(network, node, 1, dtype)
    return out


def _run_spike(network, x, profile, tables, record, library, plan, membranes_out: dict | None = None) -> RunResult:
    """The spike-level mode on one batch. ``membranes_out``, if given, receives every FS
    node's membrane at its stage's first step (base + accumulated deliveries), which is
    what :mod:`fs_hw.reference.fast32` falls back to for neurons on a decision boundary."""
    dtype = np.dtype(profile.dtype)
    K = network.K
    stages = network.stages
    n = len(x)
    spiking = network.spiking_nodes()
    receivers = [node for node in network.order if isinstance(node, (FSActivation, Readout))]

    # Bias part of every receiver's input: the linear graph with no spikes at all
    # (analog inputs, if the IR states any, enter here too).
    base = _propagate(network, {}, x, bias=True, library=library, dtype=dtype, n=n, plan=plan)
    accumulators = {r.name: np.zeros((n, *network.shapes[r.name]), dtype) for r in receivers}
    membranes: dict[str, np.ndarray] = {}
    counts = {node.name: np.zeros(n, np.int64) for node in spiking}
    trains = {node.name: np.zeros((n, K, *network.shapes[node.name]), np.uint8) for node in spiking} if record else None
    last = max(stages[network.readout.name], 0) * K
    for g in range(last):
        events: dict[str, np.ndarray] = {}
        raw: dict[str, np.ndarray] = {}  # raw spikes z (0/1) of step-weighted nodes' sources
        for node in spiking:
            t = g - stages[node.name] * K
            if not 0 <= t < K:
                continue
            tab = tables[node.code]
            if t == 0:
                if isinstance(node, Input):
                    v = x.copy()
                else:
                    v = _value(base, node.input, n, network, dtype) + accumulators[node.name]
                _check_membrane(node, v, profile)
                membranes[node.name] = v
                if membranes_out is not None:
                    membranes_out[node.name] = v.copy()
            v, z = fs_step(membranes[node.name], t, tab.T, tab.h, tab.rule)
            membranes[node.name] = v
            counts[node.name] += _count(z)
            if record:
                trains[node.name][:, t] = z  # type: ignore[index]
            if z.any():
                events[node.name] = tab.d[t] * z
                if node.name in plan.spike_sources:
                    raw[node.name] = z.astype(dtype)
        if events:
            delivered = _propagate(network, events, x, bias=False, library=library, dtype=dtype, n=n,
                                   plan=plan, raw=raw, g=g)
            for r in receivers:
                value = delivered.get(r.input)
                if value is not None:
                    accumulators[r.name] += value
    readout = network.readout
    outputs = _value(base, readout.input, n, network, dtype) + accumulators[readout.name]
    _check_membrane(readout, outputs, profile)
    return _result(network, outputs, counts, trains)


def spike_readout(network: Network, x: np.ndarray, trains: dict, tables: dict, library: str,
                  plan: _StepPlan) -> np.ndarray:
    """The spike-level mode's read-out value from known spike trains (``{node: (N, K, ...)}``
    for every spiking node the read-out's linear cone reads): the same deliveries, in the
    same global step order, as :func:`_run_spike`, restricted to that cone, so the value is
    the same to the last bit (each node's value depends only on its own inputs)."""
    dtype = np.dtype(np.float64)
    n = len(x)
    K, stages = network.K, network.stages
    cone = _linear_cone(network, network.readout.input)
    sources = [network.by_name[s] for s in cone if network.is_spiking(network.by_name[s])]
    base = _propagate(network, {}, x, bias=True, library=library, dtype=dtype, n=n, plan=plan, only=cone)
    acc = np.zeros((n, *network.shapes[network.readout.name]), dtype)
    for g in range(max(stages[network.readout.name], 0) * K):
        events = {}
        for node in sources:
            t = g - stages[node.name] * K
            if 0 <= t < K:
                z = trains[node.name][:, t]
                if z.any():
                    events[node.name] = tables[node.code].d[t] * z
        if events:
            value = _propagate(network, events, x, bias=False, library=library, dtype=dtype, n=n, plan=plan,
                               only=cone).get(network.readout.input)
            if value is not None:
                acc += value
    return _value(base, network.readout.input, n, network, dtype) + acc


def _linear_cone(network: Network, name: str) -> set[str]:
    """``name`` and every node it is computed from through linear nodes (the spiking nodes
    and the analog input where that stops included)."""
    cone: set[str] = set()
    stack = [name]
    while stack:
        node = network.by_name[stack.pop()]
        if node.name in cone:
            continue
        cone.add(node.name)
        if node.linear and not network.is_spiking(node):
            stack.extend(node.inputs)
    return cone


def _value(values: dict, name: str, n: int, network: Network, dtype) -> np.ndarray:
    v = values.get(name)
    return np.zeros((n, *network.shapes[name]), dtype) if v is None else v


def _propagate(network, events, x, bias, library, dtype, n, plan, raw=None, g=0,
               only: set[str] | None = None) -> dict[str, np.ndarray | None]:
    """Values of all non-spiking nodes given the spiking nodes' events this step.

    With ``bias=False`` a node none of whose inputs carries an event stays ``None``
    (nothing delivered); with ``bias=True`` only biases and analog inputs enter.
    ``raw`` holds this step's raw spikes ``z`` of step-weighted nodes' sources; they are
    carried along the chains (``plan.raw_nodes``) and a step-weighted node receives
    ``W_t · C(z)`` with ``t`` its source's local step at global step ``g``.
    """
    values: dict[str, np.ndarray | None] = {}
    carried: dict[str, np.ndarray | None] = dict(raw or {})
    stages, K = network.stages, network.K
    for node in network.order:
        if only is not None and node.name not in only:
            continue
        if network.is_spiking(node):
            values[node.name] = events.get(node.name)
        elif isinstance(node, Input):  # analog input, stated in the IR
            values[node.name] = x if bias else None
        elif node.name in plan.sources:
            if bias:  # no spikes: the chain is bias-free and has no analog input
                values[node.name] = plan.bias_only(network, node, n, dtype)
                continue
            u = carried.get(node.input)
            source = plan.sources[node.name][0]
            t = g - stages[source] * K
            values[node.name] = None if u is None else plan.apply(network, node, u, t, library, dtype)
        elif node.linear:
            if not bias and node.name in plan.raw_nodes:
                u = carried.get(node.input)
                carried[node.name] = None if u is None else apply_linear(node, [u], False, library, dtype)
            ins = [values[s] for s in node.inputs]
            if not bias and (node.name not in plan.needed or all(v is None for v in ins)):
                values[node.name] = None
                continue
            ins = [(_value(values, s, n, network, dtype) if v is None else v) for s, v in zip(node.inputs, ins)]
            values[node.name] = apply_linear(node, ins, bias, library, dtype)
    return values
