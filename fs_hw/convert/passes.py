r"""Graph passes on a :class:`~fs_hw.convert.frontend.TorchGraph`.

Each pass returns a new graph and leaves its argument untouched:

1. :func:`remove_identities`: Dropout (eval), Identity, ``contiguous``... vanish.
2. :func:`fold_affines`: every per-channel affine op :math:`s \cdot x + c` (BatchNorm in
   eval mode, a constant factor, a constant shift, the negation of a subtracted
   operand) is folded into the Conv2d or Linear right before it:

   .. math:: W' = \operatorname{diag}(s) W, \qquad b' = s \odot b + c

   Where the layer before it is no Conv2d/Linear (or its output is read elsewhere), the
   op is folded into the layers after it instead, if they are all Linear or unpadded
   Conv2d layers (:math:`W (s x + c) = (W s) x + W c`); otherwise it is refused, naming it.
3. :func:`check_ops`: only the op kinds the IR expresses are left.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from fs_hw.convert.frontend import Op, TorchGraph
from fs_hw.errors import ValidationError


def _copy(graph: TorchGraph, ops: dict[str, Op], output: str) -> TorchGraph:
    return replace(graph, ops=ops, output=output)


def remove_identities(graph: TorchGraph) -> TorchGraph:
    """Drop ``identity`` ops, rewiring their consumers to their input."""
    alias: dict[str, str] = {}

    def resolve(name: str) -> str:
        while name in alias:
            name = alias[name]
        return name

    ops: dict[str, Op] = {}
    for op in graph.ops.values():
        if op.kind == "identity":
            alias[op.name] = op.inputs[0]
            continue
        ops[op.name] = replace(op, inputs=[resolve(s) for s in op.inputs], attrs=dict(op.attrs))
    return _copy(graph, ops, resolve(graph.output))


def fold_affines(graph: TorchGraph) -> tuple[TorchGraph, list[str]]:
    """Fold every ``affine`` op into a neighbouring Conv2d/Linear; return the new graph and a log."""
    ops = {name: replace(op, inputs=list(op.inputs), attrs=dict(op.attrs)) for name, op in graph.ops.items()}
    output = graph.output
    log: list[str] = []
    _merge_affine_chains(graph, ops, output, log)
    tmp = _copy(graph, ops, output)
    for name in list(ops):
        op = ops.get(name)
        if op is None or op.kind != "affine":
            continue
        consumers = tmp.consumers()
        src = ops[op.inputs[0]]
        what = op.attrs.get("what", "affine op")
        others = [c for c in consumers[src.name] if c != op.name]
        if src.kind in ("dense", "conv") and not others:
            channels = src.attrs["weight"].shape[0]
            scale = np.broadcast_to(np.asarray(op.attrs["scale"], np.float64), (channels,))
            shift = np.broadcast_to(np.asarray(op.attrs["shift"], np.float64), (channels,))
            w = src.attrs["weight"]
            attrs = dict(src.attrs)
            attrs["weight"] = w * scale.reshape((-1,) + (1,) * (w.ndim - 1))
            b = src.attrs["bias"]
            per_channel = (-1,) + (1,) * (b.ndim - 1)  # a conv's bias may be a map (C, H, W)
            attrs["bias"] = b * scale.reshape(per_channel) + shift.reshape(per_channel)
            attrs["folded"] = list(src.attrs.get("folded", [])) + [op.source]
            ops[src.name] = replace(src, attrs=attrs)
            log.append(f"{op.label} folded into {src.label}")
        else:
            # not foldable into the layer before it: try the layers after it
            # On the input itself this folds a normalisation (x - mean) / std into the first
            # layers: the network then takes raw samples, as calibrated.
            into = _fold_forward(ops, op, consumers[op.name])
            if into is None:
                raise _refusal(graph, ops, op, src, others, what)
            log.append(f"{op.label} folded into {', '.join(ops[c].label for c in into)} (input side)")
            if src.kind == "input":
                _record_normalization(ops, src, op)
        # consumers of the affine op now read its input
        del ops[name]
        for other in ops.values():
            other.inputs = [src.name if s == name else s for s in other.inputs]
        if output == name:
            output = src.name
        tmp = _copy(graph, ops, output)
    return tmp, log


def _record_normalization(ops: dict[str, Op], inp: Op, op: Op) -> None:
    """Record on the input op the normalisation ``(x - mean) / std`` an affine op on it was."""
    scale = np.asarray(op.attrs["scale"], np.float64).reshape(-1)
    shift = np.asarray(op.attrs["shift"], np.float64).reshape(-1)
    if np.all(scale > 0):
        std = 1.0 / scale
        ops[inp.name] = replace(inp, attrs=dict(inp.attrs, normalization=(-shift * std, std)))


def prepend_normalization(graph: TorchGraph, mean: Any, std: Any) -> TorchGraph:
    """The graph with ``(x - mean) / std`` (per channel) before everything that reads the
    input: it then takes raw samples. ``graph.example`` is mapped back to raw units."""
    inp = next(op for op in graph.ops.values() if op.kind == "input")
    channels = inp.shape[0]
    try:
        m = np.asarray(mean, np.float64).reshape(-1)
        sd = np.asarray(std, np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise ValidationError("from_torch", "input_normalization", f"must be (mean, std) numbers, got {mean!r}, "
                              f"{std!r}") from None
    for key, arr in (("mean", m), ("std", sd)):
        if arr.size not in (1, channels) or not np.all(np.isfinite(arr)):
            raise ValidationError("from_torch", f"input_normalization {key}",
                                  f"needs 1 or {channels} (one per input channel) finite values, got {arr.tolist()}")
    if not np.all(sd > 0):
        raise ValidationError("from_torch", "input_normalization std", f"must be > 0, got {sd.tolist()}")
    name = "input_normalization"
    while name in graph.ops:
        name += "_"
    norm = Op("affine", name, [inp.name], {"scale": 1.0 / sd, "shift": -m / sd,
                                          "what": "the input normalisation (x - mean) / std"},
              label="the input normalisation (x - mean) / std", source=name, position=0, after=inp.label,
              shape=inp.shape, node=name)
    ops: dict[str, Op] = {}
    for op_name, op in graph.ops.items():
        ops[op_name] = replace(op, inputs=[name if s == inp.name else s for s in op.inputs])
        if op_name == inp.name:
            ops[name] = norm
    example = graph.example
    if example is not None:
        shape = (1, -1) + (1,) * (example.dim() - 2)
        example = example * _torch_tensor(sd, example).reshape(shape) + _torch_tensor(m, example).reshape(shape)
    output = name if graph.output == inp.name else graph.output
    return replace(graph, ops=ops, output=output, example=example)


def _torch_tensor(arr: np.ndarray, like: Any) -> Any:
    import torch

    return torch.as_tensor(arr, dtype=like.dtype)


def _merge_affine_chains(graph: TorchGraph, ops: dict[str, Op], output: str, log: list[str]) -> None:
    r"""Merge an affine op into the affine op that alone reads it: :math:`s_2 (s_1 x + c_1) + c_2
    = (s_2 s_1) x + (s_2 c_1 + c_2)` (a normalisation ``(x - mean) / std`` is two such ops)."""
    changed = True
    while changed:
        changed = False
        consumers = _copy(graph, ops, output).consumers()
        for name, op in list(ops.items()):
            if op.kind != "affine" or name == output or len(consumers[name]) != 1:
                continue
            nxt = ops.get(consumers[name][0])
            if nxt is None or nxt.kind != "affine":
                continue
            s1, c1 = np.asarray(op.attrs["scale"], np.float64), np.asarray(op.attrs["shift"], np.float64)
            s2, c2 = np.asarray(nxt.attrs["scale"], np.float64), np.asarray(nxt.attrs["shift"], np.float64)
            attrs = dict(nxt.attrs, scale=s2 * s1, shift=s2 * c1 + c2,
                         what=f"{op.attrs.get('what', 'affine op')} and {nxt.attrs.get('what', 'affine op')}")
            ops[nxt.name] = replace(nxt, inputs=list(op.inputs), attrs=attrs)
            del ops[name]
            log.append(f"{op.label} merged into {nxt.label}")
            changed = True
            break


def _refusal(graph: TorchGraph, ops: dict[str, Op], op: Op, src: Op, others: list[str], what: str) -> Exception:
    if src.kind == "input":
        return graph.refuse(
            op, f"{what} acts on the network input itself, with no Conv2d/Linear before it to absorb it",
            "normalisation outside the model: pass normalised data (calibration and inference alike); the "
            "input code covers negative values",
        )
    if src.kind not in ("dense", "conv"):
        return graph.refuse(
            op, f"{what} follows {src.label}, not a Conv2d or Linear, and does not feed only Linear or unpadded "
            "Conv2d layers, so it cannot be folded into weights",
            "BatchNorm (or the constant factor/shift) directly after a Conv2d or Linear layer",
        )
    used = ", ".join("the model output" if c == "<output>" else repr(ops[c].source) for c in others)
    return graph.refuse(
        op, f"{what} cannot be folded into {src.label}: that layer's output is also used by {used}",
        "a Conv2d/Linear whose output feeds only this BatchNorm (or fold it by hand)",
    )


def _fold_forward(ops: dict[str, Op], op: Op, consumers: list[str]) -> list[str] | None:
    r"""Fold ``op`` into every layer reading it: :math:`W (s x + c) + b = (W s) x + (W c + b)`.

    Possible when every consumer is a Linear or a Conv2d. A zero-padded Conv2d pads
    :math:`s x + c` with 0, not with :math:`c`: there :math:`W c` becomes a bias *map*
    (:func:`conv_offset`), exact at the border. Returns the consumers' names, or ``None``
    (and changes nothing) when it is not possible.
    """
    if not consumers or "<output>" in consumers:
        return None
    channels = op.shape[0]
    scale = np.broadcast_to(np.asarray(op.attrs["scale"], np.float64), (channels,))
    shift = np.broadcast_to(np.asarray(op.attrs["shift"], np.float64), (channels,))
    new: dict[str, Op] = {}
    for cname in consumers:
        c = ops[cname]
        w = c.attrs.get("weight")
        if c.kind == "dense" and len(op.shape) == 1:
            attrs = dict(c.attrs, weight=w * scale[None, :], bias=c.attrs["bias"] + w @ shift)
        elif c.kind == "conv" and len(op.shape) == 3:
            attrs = dict(c.attrs, weight=w * scale[None, :, None, None],
                         bias=add_bias(c.attrs["bias"], conv_offset(c.attrs, op.shape, shift)))
        else:
            return None
        attrs["folded"] = list(c.attrs.get("folded", [])) + [op.source]
        new[cname] = replace(c, attrs=attrs)
    ops.update(new)
    return list(new)


def check_ops(graph: TorchGraph) -> None:
    """Only IR-expressible op kinds may remain after the passes."""
    for op in graph.ops.values():
        if op.kind not in ("input", "dense", "conv", "act", "add", "avgpool", "flatten"):
            raise AssertionError(f"{op.label}: op kind {op.kind!r} left after the passes")


def conv_offset(conv_attrs: dict, in_shape: tuple[int, ...], offset: np.ndarray) -> np.ndarray:
    r"""What a constant per-channel input ``offset`` adds to a Conv2d's output: ``(C_out,)``
    without padding, else the map ``(C_out, H_out, W_out)`` of :math:`W * \mathrm{pad}_0(c)`
    (border outputs see fewer taps of the constant: the zeros of the padding are not
    :math:`c`). Computed in float64."""
    import torch

    w = np.asarray(conv_attrs["weight"], np.float64)
    offset = np.broadcast_to(np.asarray(offset, np.float64), (in_shape[0],))
    if tuple(conv_attrs["padding"]) == (0, 0) or not offset.any():
        return (w * offset[None, :, None, None]).sum(axis=(1, 2, 3))
    constant = torch.from_numpy(np.broadcast_to(offset[:, None, None], in_shape).copy())[None]
    with torch.no_grad():
        out = torch.nn.functional.conv2d(constant, torch.from_numpy(w), None, tuple(conv_attrs["stride"]),
                                         tuple(conv_attrs["padding"]))
    return out[0].numpy()


def add_bias(bias: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """``bias + delta`` where either may be a conv's per-channel vector or its map (C, H, W);
    the result is a vector unless a map is involved."""
    bias, delta = np.asarray(bias, np.float64), np.asarray(delta, np.float64)
    if bias.ndim == 3 or delta.ndim == 3:
        return (bias.reshape(-1, 1, 1) if bias.ndim == 1 else bias) + \
            (delta.reshape(-1, 1, 1) if delta.ndim == 1 else delta)
    return bias + delta
