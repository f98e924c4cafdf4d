r"""`from_torch`: a trained PyTorch network as an FS network in the IR.

The pipeline, as a straight list of steps (each a function of this package):

1. :func:`~fs_hw.convert.frontend.trace`: torch.fx (``nn.Module``) or torch.export
   (``ExportedProgram``) graph into canonical ops; unsupported layers are refused here.
2. :func:`~fs_hw.convert.passes.remove_identities`, then
   :func:`~fs_hw.convert.passes.fold_affines` (BatchNorm into Conv2d/Linear).
3. Self-check: the canonical graph, run in float64 on the example input, must
   reproduce the model's output.
4. Codes: one ``K`` for the whole network; ReLU layers get the exact ReLU code, other
   activations the shipped fitted code of that function with that ``K``.
5. :func:`~fs_hw.convert.calibrate.collect`: pre-activation statistics on the
   calibration data; each ReLU layer's :math:`\alpha` from the alpha policy.
6. Offsets folded into biases: the half-step offset of every ReLU layer, and the
   shift of a signed input code.
7. IR nodes, the :class:`~fs_hw.ir.Network`, and metadata recording every choice.

The read-out is the membrane of the last layer (normally the logits of a Linear);
nothing stays analog unless ``input_code=None`` is asked for.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from fs_hw.codes import published_codes, relu_code, shipped_codes
from fs_hw.convert import calibrate as cal
from fs_hw.convert.frontend import Op, TorchGraph, trace
from fs_hw.convert.passes import (
    add_bias,
    check_ops,
    conv_offset,
    fold_affines,
    prepend_normalization,
    remove_identities,
)
from fs_hw.errors import UnsupportedError, ValidationError
from fs_hw.ir import (
    Add,
    AvgPool2d,
    Conv2d,
    Dense,
    Flatten,
    FSActivation,
    FSCode,
    Input,
    Network,
    Provenance,
    Readout,
)

#: K used when the network has only ReLU activations and no K is given.
DEFAULT_K = 8
#: Largest K: a float32 alpha has 24 significant bits, and the reference's exact
#: closed form of the ReLU code needs alpha's bits + K + 1 <= 52.
MAX_K = 27
INPUT_CODES = ("round", "truncate", None)
#: Tolerance of the self-check (relative to the output's scale).
SELF_CHECK_RTOL = 1e-3


def from_torch(
    model: Any,
    example_input: Any = None,
    calibration_data: Any = None,
    *,
    K: int | None = None,
    alpha_policy: Any = cal.DEFAULT_ALPHA_POLICY,
    half_step: bool = True,
    input_code: str | None = "round",
    input_range: tuple[float, float] | None = None,
    codes: Mapping[str, FSCode] | None = None,
    relu_rule: str = ">=",
    input_normalization: tuple[Any, Any] | None = None,
    calibration_stats: tuple[Mapping[str, Any], tuple[float, float], int] | None = None,
    batch_size: int = 256,
    name: str | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Network:
    r"""Convert a trained torch network into an FS :class:`~fs_hw.ir.Network`.

    Parameters
    ----------
    model : torch.nn.Module (in eval mode) or torch.export.ExportedProgram
        The network. It is traced (torch.fx / torch.export), so any forward() built
        from the supported layers works; see docs/convert.md for the table.
    example_input : tensor or array ``(N, *input_shape)``, optional
        Traces the shapes; defaults to the first calibration samples (or, for an
        ExportedProgram, to the shape it was exported with).
    calibration_data : tensor, array ``(N, *input_shape)`` or iterable of batches
        Inputs in the model's own units (already normalised, if the model expects
        that). Sets every ReLU layer's :math:`\alpha` and the input range.
    K : int, optional
        Time steps of every FS phase, one K for the whole network (input code
        included). Default: :data:`DEFAULT_K` for ReLU-only networks; with swish,
        sigmoid, tanh or GELU layers, the largest K for which a shipped code exists for
        every such function.
    alpha_policy : str, float or mapping
        ``"percentile:<p>"`` (default ``"percentile:99.9"``), ``"max"``, a fixed number,
        or ``{layer: policy, "*": default}``; see :mod:`fs_hw.convert.calibrate`.
    half_step : bool
        Add half a grid step :math:`\alpha 2^{-K}/2` to each ReLU layer's input (in the
        bias of the layer before it), so the code rounds to the nearest level instead
        of truncating. The truncation bias otherwise accumulates over depth.
    input_code : {"round", "truncate", None}
        How the input enters as spikes. ``"round"`` (default): a K-step binary code of
        :math:`x - x_{lo}` rounded to the nearest of :math:`2^K` levels spanning
        ``input_range`` exactly (the shift :math:`x_{lo}` lives in the thresholds and is
        folded back into the first layers' biases), so signed inputs work.
        ``"truncate"``: exactly ``relu_code(alpha_in, K, ">=")`` with
        :math:`\alpha_{in} = x_{hi} 2^K / (2^K - 1)`, for non-negative inputs. ``None``:
        the input stays analog (stated in the IR as an input without a code).
    input_range : (lo, hi), optional
        Range the input code spans. Default: ``(min(0, data min), data max)`` over the
        calibration data.
    codes : mapping function -> FSCode, optional
        Codes to use instead of the shipped ones, keyed ``"swish"``, ``"sigmoid"``,
        ``"tanh"``, ``"gelu"``; each must have the network's K.
    relu_rule : {">=", ">"}
        Firing rule of the ReLU codes (and the truncating input code).
    input_normalization : (mean, std), optional
        The model was trained on ``(x - mean) / std`` (numbers, or one per input channel)
        and is given *raw* ``x``: ``example_input`` and ``calibration_data`` are then raw
        samples (e.g. pixels in [0, 1]). The normalisation is folded into the first layers
        (exactly, zero-padded convs included: a bias map) and recorded on the IR's input
        node; the converted network takes raw samples. A normalisation module at the front of
        the model is folded and recorded the same way.
    calibration_stats : (stats, data range, samples), optional
        Statistics already collected on the calibration data by the same canonical graph
        (:class:`~fs_hw.convert.search.FSTwin` keeps them): they are used instead of
        running the calibration again (``calibration_data`` is then not read).
    batch_size : int
        Calibration batch size.
    name, metadata :
        Network name and extra metadata (dataset, accuracy...) to record.

    Returns
    -------
    Network
        With ``metadata["conversion"]`` recording K, the policy, the input code and,
        per FS layer, the torch layer, code, :math:`\alpha`, offset and calibration
        statistics.

    Raises
    ------
    UnsupportedError
        A layer has no FS form (named, with its place in the graph and an alternative).
    ValidationError
        Bad arguments or data.
    """
    import torch

    if input_code not in INPUT_CODES:
        raise ValidationError("from_torch", "input_code", f"must be one of {INPUT_CODES}, got {input_code!r}")
    if relu_rule not in (">=", ">"):
        raise ValidationError("from_torch", "relu_rule", f"must be '>=' or '>', got {relu_rule!r}")
    default_policy, layer_policies = cal.resolve_policies(alpha_policy)
    if example_input is None and calibration_data is not None:
        first = next(iter(cal.batches(calibration_data, 2)), None)
        example_input = None if first is None else first[:2]

    # 1-3: trace, passes, self-check
    graph, folded = canonical_graph(model, example_input, input_normalization)
    _self_check(graph)

    acts = [op for op in graph.ops.values() if op.kind == "act"]
    unknown = set(layer_policies) - {op.name for op in acts} - {op.source for op in acts}
    if unknown:
        raise ValidationError("from_torch", "alpha_policy", f"names no activation layer: {sorted(unknown)}")

    # 4: one K, and the codes of non-ReLU activations
    K = _choose_K(K, acts, graph, codes)
    functions = sorted({op.attrs["function"] for op in acts})
    fitted = {fn: _select_code(fn, K, acts, graph, codes) for fn in functions if fn != "relu"}

    _refuse_unabsorbable_shift_early(graph, input_code, input_range, calibration_data)

    # 5: calibration
    relu_ops = {op.name for op in acts if op.attrs["function"] == "relu"}
    needs_data = any(layer_policies.get(op.name, layer_policies.get(op.source, default_policy)).needs_data
                     for op in acts if op.name in relu_ops)
    ranges = {op.name: (None if op.name in relu_ops else _code_range(fitted[op.attrs["function"]])) for op in acts}
    stats: dict[str, cal.LayerStats] = {}
    data_range = None
    n_calib = 0
    if calibration_stats is not None:
        stats, data_range, n_calib = dict(calibration_stats[0]), calibration_stats[1], calibration_stats[2]
    elif calibration_data is not None:
        stats, data_range, n_calib = cal.collect(graph, calibration_data, ranges, relu_ops, batch_size)
    elif needs_data or (input_code is not None and input_range is None):
        raise ValidationError("from_torch", "calibration_data",
                              "is required (for the alpha policy and the input range); "
                              "or pass a fixed alpha and input_range")

    # input code
    lo, hi = _input_range(input_range, data_range, input_code)
    input_info, in_code = _input_code(input_code, K, lo, hi, relu_rule)

    # 6: per-layer codes and offsets
    consumers = graph.consumers()
    bias_delta: dict[str, np.ndarray] = {}
    code_of: dict[str, FSCode] = {}
    layers = []
    for op in acts:
        fn = op.attrs["function"]
        entry: dict[str, Any] = {"node": op.name, "torch": op.source, "graph_node": op.node, "layer": op.label,
                                 "function": fn}
        st = stats.get(op.name)
        if fn == "relu":
            policy = layer_policies.get(op.name, layer_policies.get(op.source, default_policy))
            raw = st.alpha(policy) if (st is not None and policy.needs_data) else float(policy.value or 0.0)
            note = None
            if not raw > 0:
                note = "no positive pre-activation in the calibration data: alpha set to 1"
                raw = 1.0
            clip = op.attrs.get("clip")
            if clip is not None and raw > clip:
                raw = clip
            alpha = float(np.float32(raw))
            code = relu_code(alpha, K, relu_rule, name=f"relu.{op.name}")
            offset = alpha * 2.0 ** -(K + 1) if half_step else 0.0
            offset_in = None
            if offset:
                carrier = _bias_carrier(graph, op.inputs[0], consumers)
                if carrier is not None:
                    bias_delta[carrier] = bias_delta.get(carrier, 0.0) + offset
                    offset_in = f"bias of {carrier!r}"
                else:
                    code = FSCode(code.name, code.T - offset, code.h, code.d, code.rule, Provenance(
                        "relu", (0.0, alpha), source="analytic ReLU code, thresholds lowered by half a step"))
                    offset_in = "code thresholds"
            entry.update({"code": code.name, "alpha": alpha, "alpha_policy": str(policy),
                          "grid": alpha * 2.0 ** -K, "offset": offset, "offset_in": offset_in})
            if clip is not None:
                entry["clip"] = clip
            if note:
                entry["note"] = note
            code_of[op.name] = code
        else:
            code = fitted[fn]
            code_of[op.name] = code
            entry.update({"code": code.name, "offset": 0.0, "offset_in": None})
            if fn == "gelu" and op.attrs.get("approximate", "none") != "none":
                entry["note"] = f"torch GELU(approximate={op.attrs['approximate']!r}) uses the exact-GELU code"
        if st is not None:
            entry["calibration"] = st.summary()
            if ranges.get(op.name) is not None:
                entry["calibration"]["outside_code_range"] = st.outside / st.count if st.count else 0.0
                entry["calibration"]["code_range"] = list(ranges[op.name])
        layers.append(entry)

    shift_into: list[str] = []
    if in_code is not None and input_info.get("shift", 0.0) != 0.0:
        shift_into = _fold_input_shift(graph, input_info["shift"], consumers, bias_delta)
        input_info["shift_folded_into"] = shift_into

    # 7: IR
    nodes = []
    all_codes: dict[str, FSCode] = {}
    if in_code is not None:
        all_codes[in_code.name] = in_code
    for op in graph.ops.values():
        nodes.append(_ir_node(op, bias_delta, code_of, in_code))
        if op.name in code_of:
            all_codes[code_of[op.name].name] = code_of[op.name]
    nodes.append(Readout("readout", graph.output))

    inp = next(op for op in graph.ops.values() if op.kind == "input")
    if "normalization" in inp.attrs:
        mean, std = inp.attrs["normalization"]
        input_info["normalization"] = {"mean": mean, "std": std, "given": input_normalization is not None}
    meta: dict[str, Any] = {"name": name or graph.model_name}
    meta.update(dict(metadata or {}))
    meta["conversion"] = {
        "tool": "fs_hw.convert.from_torch",
        "frontend": graph.frontend,
        "torch_version": torch.__version__,
        "K": K,
        "alpha_policy": str(default_policy) if not layer_policies else
        {"*": str(default_policy), **{k: str(v) for k, v in layer_policies.items()}},
        "half_step": bool(half_step),
        "relu_rule": relu_rule,
        "calibration_samples": n_calib,
        "input": input_info,
        "folded": folded,
        "expanded": [f"{op.label}: {op.attrs['expanded']}" for op in graph.ops.values() if "expanded" in op.attrs],
        "layers": layers,
    }
    return Network(tuple(nodes), all_codes, _jsonable(meta))


# ---------------------------------------------------------------------------------------


def _refuse_unabsorbable_shift_early(graph: TorchGraph, input_code: str | None, input_range: Any,
                                     calibration_data: Any) -> None:
    """Refuse before calibration a signed input that no layer can take the code's shift back
    from (the input read directly by an activation or an add): the data's minimum decides."""
    if input_code != "round":
        return
    try:
        _fold_input_shift(graph, -1.0, graph.consumers(), {})
        return  # every reader absorbs a shift
    except UnsupportedError:
        pass
    if input_range is not None:
        lo = float(np.asarray(input_range, np.float64).reshape(-1)[0])
    elif isinstance(calibration_data, np.ndarray) or hasattr(calibration_data, "min"):
        lo = float(calibration_data.min())
    else:
        return  # an iterable of batches: found during calibration
    if lo < 0:
        _fold_input_shift(graph, lo, graph.consumers(), {})


def canonical_graph(model: Any, example_input: Any, input_normalization: tuple[Any, Any] | None = None,
                    ) -> tuple[TorchGraph, list[str]]:
    """Steps 1-2: the traced graph (taking raw samples when ``input_normalization`` is
    given) with identities removed and affine ops folded; and the folding log."""
    if input_normalization is not None:
        mean, std = _parse_normalization(input_normalization)
        graph = trace(model, None if example_input is None else _normalise(example_input, mean, std))
        graph = prepend_normalization(graph, mean, std)
    else:
        graph = trace(model, example_input)
    graph = remove_identities(graph)
    graph, folded = fold_affines(graph)
    check_ops(graph)
    return graph, folded


def _parse_normalization(value: Any) -> tuple[np.ndarray, np.ndarray]:
    try:
        mean, std = value
        mean = np.asarray(mean, np.float64).reshape(-1)
        std = np.asarray(std, np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise ValidationError("from_torch", "input_normalization",
                              f"must be (mean, std), numbers or one per channel, got {value!r}") from None
    if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(std)) and np.all(std > 0)) or not mean.size \
            or not std.size:
        raise ValidationError("from_torch", "input_normalization",
                              f"needs finite means and stds > 0, got mean {mean.tolist()}, std {std.tolist()}")
    return mean, std


def _normalise(x: Any, mean: np.ndarray, std: np.ndarray) -> Any:
    """``(x - mean) / std`` per channel (axis 1), for tracing the model on what it was trained on."""
    import torch

    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    t = t.to(torch.float32) if not t.is_floating_point() else t
    channels = t.shape[1] if t.dim() > 1 else 1
    for key, arr in (("mean", mean), ("std", std)):
        if arr.size not in (1, channels):
            raise ValidationError("from_torch", f"input_normalization {key}",
                                  f"has {arr.size} values; the input has {channels} channels (give 1 or {channels})")
    shape = (1, -1) + (1,) * (t.dim() - 2)
    m, sd = torch.as_tensor(mean, dtype=t.dtype).reshape(shape), torch.as_tensor(std, dtype=t.dtype).reshape(shape)
    return (t - m) / sd


def _self_check(graph: TorchGraph) -> None:
    import torch

    if graph.example is None:
        return
    with torch.no_grad():
        out, _ = graph.run(graph.example, dtype=torch.float64)
    ref = graph.example_output.to(torch.float64)
    if out.shape != ref.shape:
        raise UnsupportedError(
            f"model {graph.model_name}: the traced graph's output has shape {tuple(out.shape)}, the model's "
            f"{tuple(ref.shape)}; please report this with the model"
        )
    scale = max(1.0, float(ref.abs().max()))
    err = float((out - ref).abs().max())
    tol = SELF_CHECK_RTOL * scale if graph.example_output.dtype != torch.float64 else 1e-9 * scale
    if not err <= tol:
        raise UnsupportedError(
            f"model {graph.model_name}: the converted graph does not reproduce the model's output on the example "
            f"input (max difference {err:.3g}, tolerance {tol:.3g}): a layer's semantics were not captured; "
            "please report this with the model"
        )


def _available(function: str, user: Mapping[str, FSCode] | None) -> list[FSCode]:
    """Candidate codes for ``function``: user-given, then shipped (fitted), then published."""
    out: list[FSCode] = []
    if user and function in user:
        out.append(user[function])
    for pool in (shipped_codes(), published_codes()):
        group = [c for c in pool.values() if c.provenance is not None and c.provenance.function == function]
        group.sort(key=lambda c: (math.inf if c.provenance.mse is None else c.provenance.mse, c.name))
        out.extend(group)
    return out


def _choose_K(K: int | None, acts: list[Op], graph: TorchGraph, user: Mapping[str, FSCode] | None) -> int:
    if K is not None:
        if isinstance(K, bool) or not isinstance(K, (int, np.integer)) or not 1 <= int(K) <= MAX_K:
            raise ValidationError("from_torch", "K", f"must be an integer in [1, {MAX_K}], got {K!r}")
        return int(K)
    fns = sorted({op.attrs["function"] for op in acts} - {"relu"})
    if not fns:
        return DEFAULT_K
    common: set[int] | None = None
    for fn in fns:
        ks = {user[fn].K} if user and fn in user else {c.K for c in _available(fn, None)}
        common = ks if common is None else common & ks
    if not common:
        listing = "; ".join(f"{fn}: K in {sorted({c.K for c in _available(fn, user)}) or 'none'}" for fn in fns)
        raise UnsupportedError(
            f"model {graph.model_name}: no single K has a shipped FS code for every activation it uses "
            f"({listing}). Use instead: codes of one K, fitted with fs_hw.codes.fit.fit_code and passed as "
            "codes={function: code}"
        )
    return max(common)


def _select_code(fn: str, K: int, acts: list[Op], graph: TorchGraph, user: Mapping[str, FSCode] | None) -> FSCode:
    op = next(o for o in acts if o.attrs["function"] == fn)
    if user and fn in user:
        code = user[fn]
        if not isinstance(code, FSCode):
            raise ValidationError("from_torch", f"codes[{fn!r}]", f"must be an FSCode, got {type(code).__name__}")
        if code.K != K:
            raise ValidationError("from_torch", f"codes[{fn!r}]", f"has K={code.K}, the network uses K={K}")
        return code
    candidates = [c for c in _available(fn, None) if c.K == K]
    if candidates:
        return candidates[0]
    ks = sorted({c.K for c in _available(fn, None)})
    have = f"shipped codes for {fn} have K in {ks}" if ks else f"no code for {fn} is shipped"
    raise UnsupportedError(
        f"{graph.where(op)}: no FS code for {fn} with K={K} ({have}). Use instead: "
        + (f"K={ks[-1]}" + (f" (available: {ks})" if len(ks) > 1 else "") + ", " if ks else "")
        + f"or fit a {fn} code with fs_hw.codes.fit.fit_code({fn!r}, {K}, x_range) and pass codes={{{fn!r}: code}}"
    )


def _code_range(code: FSCode) -> tuple[float, float] | None:
    return None if code.provenance is None else tuple(code.provenance.x_range)


def _input_range(given: Any, data_range: tuple[float, float] | None, mode: str | None) -> tuple[float, float]:
    if given is not None:
        try:
            lo, hi = (float(v) for v in given)
        except (TypeError, ValueError):
            raise ValidationError("from_torch", "input_range", f"must be (lo, hi), got {given!r}") from None
    elif data_range is not None:
        lo, hi = min(0.0, data_range[0]), data_range[1]
    else:
        return (0.0, 1.0)
    if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
        raise ValidationError("from_torch", "input_range", f"needs finite lo < hi, got ({lo}, {hi})")
    if mode == "truncate" and lo < 0:
        raise ValidationError("from_torch", "input_range",
                              f"starts at {lo:g} < 0: the truncating input code covers [0, alpha); "
                              "use input_code='round'")
    return lo, hi


def _input_code(mode: str | None, K: int, lo: float, hi: float, rule: str) -> tuple[dict, FSCode | None]:
    if mode is None:
        return {"code": None, "mode": "analog"}, None
    levels = 2**K - 1
    if mode == "truncate":
        alpha = float(np.float32(hi * 2**K / levels))
        code = relu_code(alpha, K, rule, name=f"input_k{K}")
        code = FSCode(code.name, code.T, code.h, code.d, code.rule,
                      Provenance("identity", (0.0, hi), source="fs_hw.convert: truncating binary input code"))
        return {"code": code.name, "mode": "truncate", "range": [0.0, hi], "alpha": alpha,
                "grid": alpha * 2.0**-K, "shift": 0.0}, code
    step = (hi - lo) / levels
    alpha = step * 2**K
    table = np.array([alpha * 2.0 ** -(t + 1) for t in range(K)])
    theta = lo - step / 2
    code = FSCode(
        f"input_k{K}", table + theta, table, table, ">=",
        Provenance("identity", (lo, hi), source=(
            f"fs_hw.convert: {K}-step binary code of x - {lo:g}, rounded to the nearest of {levels + 1} levels; "
            "the shift is folded into the next layers' biases")),
    )
    return {"code": code.name, "mode": "round", "range": [lo, hi], "alpha": alpha, "grid": step,
            "shift": lo}, code


def _bias_carrier(graph: TorchGraph, name: str, consumers: dict[str, list[str]]) -> str | None:
    """The Conv2d/Linear whose bias can carry a constant added to op ``name``'s output."""
    op = graph.ops[name]
    if len(consumers[name]) != 1:
        return None
    if op.kind in ("dense", "conv"):
        return name
    if op.kind in ("avgpool", "flatten"):
        return _bias_carrier(graph, op.inputs[0], consumers)
    if op.kind == "add":
        for src in op.inputs:
            found = _bias_carrier(graph, src, consumers)
            if found is not None:
                return found
    return None


def _fold_input_shift(graph: TorchGraph, shift: float, consumers: dict[str, list[str]],
                      bias_delta: dict[str, Any]) -> list[str]:
    """Add ``W @ (shift * 1)`` to the bias of every Conv2d/Linear the input reaches through linear reshaping."""
    into: list[str] = []
    start = next(op for op in graph.ops.values() if op.kind == "input")

    def visit(name: str) -> None:
        for cname in consumers[name]:
            if cname == "<output>":
                raise UnsupportedError("the input is the model output itself; a signed input code cannot be undone")
            op = graph.ops[cname]
            if op.kind in ("flatten", "avgpool"):
                visit(cname)
            elif op.kind == "dense":
                bias_delta[cname] = bias_delta.get(cname, 0.0) + shift * op.attrs["weight"].sum(axis=1)
                into.append(cname)
            elif op.kind == "conv":
                # zero padding pads the code's output y = x - shift with 0, i.e. x with `shift`;
                # conv_offset is exact there: the shift's contribution as a bias map.
                delta = conv_offset(op.attrs, graph.ops[op.inputs[0]].shape, np.array(shift))
                bias_delta[cname] = add_bias(bias_delta.get(cname, 0.0), delta)
                into.append(cname)
            else:
                raise graph.refuse(op, f"the input range starts at {shift:g} < 0 and this layer reads the input "
                                   "directly, with no Conv2d/Linear to absorb the input code's shift",
                                   "inputs in [0, max] (e.g. pixels in [0, 1] without mean subtraction), "
                                   "a Conv2d/Linear first, or input_code=None for an analog input")

    visit(start.name)
    return into


def _ir_node(op: Op, bias_delta: dict[str, Any], code_of: dict[str, FSCode], in_code: FSCode | None) -> Any:
    a = op.attrs
    if op.kind == "input":
        mean, std = a.get("normalization", (None, None))
        return Input(op.name, tuple(op.shape), None if in_code is None else in_code.name, mean=mean, std=std)
    if op.kind == "dense":
        return Dense(op.name, op.inputs[0], a["weight"], a["bias"] + bias_delta.get(op.name, 0.0))
    if op.kind == "conv":
        bias = add_bias(a["bias"], bias_delta.get(op.name, 0.0))
        if bias.ndim == 3 and np.all(bias == bias[:, :1, :1]):
            bias = bias[:, 0, 0].copy()  # a map that is constant per channel is a plain bias
        return Conv2d(op.name, op.inputs[0], a["weight"], bias, tuple(a["stride"]), tuple(a["padding"]))
    if op.kind == "act":
        return FSActivation(op.name, op.inputs[0], code_of[op.name].name)
    if op.kind == "add":
        return Add(op.name, tuple(op.inputs))
    if op.kind == "avgpool":
        return AvgPool2d(op.name, op.inputs[0], a["kernel"], a["stride"])
    if op.kind == "flatten":
        return Flatten(op.name, op.inputs[0])
    raise AssertionError(op.kind)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.floating, float)):
        v = float(value)
        return v if math.isfinite(v) else None
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    return value
