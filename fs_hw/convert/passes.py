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

import numpy as np

from fs_hw.convert.frontend import Op, TorchGraph


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
            attrs["bias"] = src.attrs["bias"] * scale + shift
            attrs["folded"] = list(src.attrs.get("folded", [])) + [op.source]
            ops[src.name] = replace(src, attrs=attrs)
            log.append(f"{op.label} folded into {src.label}")
        else:
            # not foldable into the layer before it: try the layers after it
            into = None if src.kind == "input" else _fold_forward(ops, op, consumers[op.name])
            if into is None:
                raise _refusal(graph, ops, op, src, others, what)
            log.append(f"{op.label} folded into {', '.join(ops[c].label for c in into)} (input side)")
        # consumers of the affine op now read its input
        del ops[name]
        for other in ops.values():
            other.inputs = [src.name if s == name else s for s in other.inputs]
        if output == name:
            output = src.name
        tmp = _copy(graph, ops, output)
    return tmp, log


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

    Possible when every consumer is a Linear, or a Conv2d without padding (zero padding
    of :math:`s x + c` would pad with :math:`c`, not 0) or with :math:`c = 0`. Returns the
    consumers' names, or ``None`` (and changes nothing) when it is not possible.
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
        elif c.kind == "conv" and len(op.shape) == 3 and (tuple(c.attrs["padding"]) == (0, 0) or not shift.any()):
            attrs = dict(c.attrs, weight=w * scale[None, :, None, None],
                         bias=c.attrs["bias"] + (w * shift[None, :, None, None]).sum(axis=(1, 2, 3)))
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
