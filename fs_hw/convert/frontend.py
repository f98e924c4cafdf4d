r"""Front end: a torch model as a small graph of canonical ops.

The model is traced, never pattern-matched: an ``nn.Module`` with
:func:`torch.fx.symbolic_trace`, a :class:`torch.export.ExportedProgram` through its
ATen-level graph (``ep.module()``). Both are read node by node, in graph order, and
every node that computes a tensor from the input becomes one canonical op:

==========  ==================================================================
``input``   the model's (single) input tensor
``dense``   :math:`W x + b`, ``x`` of shape ``(N, F)``
``conv``    2-D cross-correlation, zero padding (groups and dilation expanded)
``affine``  per-channel :math:`s \cdot x + c` (BatchNorm in eval, ``x * 2``,
            ``x - 1``, negation): folded into the preceding dense/conv later
``act``     an activation function (relu, relu with a clip, swish, sigmoid,
            tanh, gelu)
``add``     elementwise sum (residual connections)
``avgpool`` average pooling without padding; ``kernel=None`` is global
``flatten`` ``(N, C, H, W) -> (N, C*H*W)``
``identity`` Dropout in eval, Identity, ``contiguous``...: removed later
==========  ==================================================================

Nodes that compute only from parameters and constants are evaluated once (constant
folding); nodes that compute no tensor (``x.size(0)``) are shape helpers. Anything else
is refused with :class:`~fs_hw.errors.UnsupportedError` naming the layer, its place in
the graph and what to use instead.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fs_hw.errors import UnsupportedError, ValidationError

try:
    import torch
    import torch.fx
    import torch.nn.functional as F
    from torch import nn
except ImportError:  # pragma: no cover - the package imports without torch
    torch = None  # type: ignore[assignment]

OP_KINDS = ("input", "dense", "conv", "affine", "act", "add", "avgpool", "flatten", "identity")

#: Activation functions the converter knows, with the FS code family each one uses.
ACT_FUNCTIONS = ("relu", "swish", "sigmoid", "tanh", "gelu")

SUPPORTED_SUMMARY = (
    "Linear, Conv2d, BatchNorm after a Conv2d/Linear, ReLU (ReLU6), SiLU, Sigmoid, Tanh, GELU, "
    "residual add/sub, AvgPool2d, AdaptiveAvgPool2d, Flatten, Dropout/Identity (see docs/convert.md)"
)

# What to use instead, looked up by the lower-cased name of the refused layer or function.
_ALTERNATIVES: list[tuple[str, str]] = [
    (r"adaptive_?max_?pool|adaptivemaxpool",
     "AdaptiveAvgPool2d(1) (global average pooling is a linear layer)"),
    (r"max_?pool|maxpool|max_pool|fractional",
     "AvgPool2d (average pooling is a linear layer) or a strided Conv2d"),
    (r"lp_?pool",
     "AvgPool2d"),
    (r"softmax|softmin|log_softmax|logsoftmax",
     (
         "nothing: remove it from the model; the read-out reports the logits, and their argmax is "
         "unchanged"
     )),
    ((
         r"leaky|prelu|rrelu|^elu|celu|selu|softplus|mish|hardswish|hardsigmoid|logsigmoid|"
         r"softsign|tanhshrink|softshrink|hardshrink|threshold|glu|hardtanh|clamp|clip"
     ),
     (
         "ReLU, or SiLU / Sigmoid / Tanh / GELU (shipped FS codes); a code for another function "
         "can be fitted with fs_hw.codes.fit and passed as codes={function: code}"
     )),
    ((
         r"multiheadattention|attention|scaled_dot_product|bmm|baddbmm|einsum|matmul|^mul|mul_|"
         r"imul|^div|truediv|bilinear"
     ),
     (
         "a network without products of two activations: FS neurons only sum weighted spikes, so "
         "gating and attention have no FS form (for x * sigmoid(x) use nn.SiLU)"
     )),
    ((
         r"^cat|concat|stack|hstack|vstack|split|chunk|unbind|narrow|index|select|slice|getitem|"
         r"gather"
     ),
     (
         "a residual add of equal shapes, or one wider Conv2d/Linear, instead of slicing or "
         "concatenating"
     )),
    ((
         r"layernorm|layer_norm|groupnorm|group_norm|instancenorm|instance_norm|localresponse|"
         r"local_response|rmsnorm|rms_norm|normalize"
     ),
     (
         "BatchNorm directly after a Conv2d or Linear (folded into its weights); per-sample "
         "normalisation divides by data-dependent statistics"
     )),
    (r"batch_?norm|batchnorm",
     "BatchNorm directly after a Conv2d or Linear, in eval mode"),
    (r"conv_?transpose|convtranspose|conv1d|conv3d|conv_tbc|fold|unfold",
     "Conv2d"),
    (r"upsample|interpolate|pixel_?shuffle|pixel_?unshuffle|pad",
     "a strided Conv2d or AvgPool2d (resampling and explicit padding have no FS form here)"),
    (r"lstm|gru|rnn|embedding|transformer",
     "feed-forward Linear/Conv2d layers"),
    (r"abs|exp|log|sqrt|pow|sin|cos|square|reciprocal|rsqrt|sign|erf",
     "an activation with an FS code (ReLU, SiLU, Sigmoid, Tanh, GELU)"),
    (r"max|min|amax|amin|argmax|sort|topk",
     "AvgPool2d or a ReLU (a maximum over values has no FS form)"),
    (r"sum|mean",
     "AdaptiveAvgPool2d(1) (only a spatial mean over H and W is supported)"),
    ((
         r"view|reshape|permute|transpose|flatten|unflatten|squeeze|unsqueeze|expand|repeat|flip|"
         r"roll"
     ),
     "Flatten (only (N, C, H, W) -> (N, C*H*W) is supported)"),
]


def alternative(name: str) -> str:
    """What to use instead of the refused layer or function ``name``."""
    key = name.lower().split(".")[-1] if "." in name and not name.startswith("aten.") else name.lower()
    key = key.removeprefix("aten.").removeprefix("tensor.")
    for pattern, text in _ALTERNATIVES:
        if re.search(pattern, key):
            return text
    return "one of the supported layers: " + SUPPORTED_SUMMARY


@dataclass
class Op:
    """One canonical op.

    ``name`` is unique and usable as an IR node name; ``source`` is the torch-side name
    (module path, or fx node name for a function call); ``label`` describes the layer
    for messages; ``position`` is its 1-based index among the traced graph's compute
    nodes and ``after`` the layer before it; ``shape`` is the per-sample output shape.
    """

    kind: str
    name: str
    inputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)
    label: str = ""
    source: str = ""
    position: int = 0
    after: str = ""
    shape: tuple[int, ...] = ()
    node: str = ""

    @property
    def where(self) -> str:
        return f"{self.label} (node {self.position} of {{n}}, after {self.after})"


@dataclass
class TorchGraph:
    """The canonical ops of a traced model, in a topological order."""

    ops: dict[str, Op]
    output: str
    n_nodes: int
    input_shape: tuple[int, ...]
    frontend: str
    model_name: str = ""
    example: Any = None
    example_output: Any = None

    def where(self, op: Op) -> str:
        return op.where.format(n=self.n_nodes)

    def consumers(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {name: [] for name in self.ops}
        for op in self.ops.values():
            for src in op.inputs:
                out[src].append(op.name)
        out[self.output].append("<output>")
        return out

    def refuse(self, op: Op, problem: str, instead: str) -> UnsupportedError:
        return UnsupportedError(f"{self.where(op)}: {problem}. Use instead: {instead}")

    def run(self, x: Any, capture: set[str] | None = None, dtype: Any = None,
            act_fn: Callable | None = None) -> tuple[Any, dict[str, Any]]:
        """Compute the ANN on ``x`` (a torch tensor ``(N, *input_shape)``).

        Returns the output and, for every op named in ``capture``, its *input* (for an
        ``act`` op: its pre-activation). ``act_fn(op, v)``, when given, replaces the
        activation functions (the FS twin of the calibration interpreter).
        """
        dtype = dtype or torch.float64
        values: dict[str, Any] = {}
        captured: dict[str, Any] = {}
        capture = capture or set()
        for op in self.ops.values():
            ins = [values[s] for s in op.inputs]
            if op.name in capture:
                captured[op.name] = ins[0]
            values[op.name] = _run_op(op, ins, x, dtype, act_fn)
        return values[self.output], captured


def _t(array: np.ndarray, dtype: Any) -> Any:
    return torch.as_tensor(array, dtype=dtype)


def _run_op(op: Op, ins: list, x: Any, dtype: Any, act_fn: Callable | None) -> Any:
    a = op.attrs
    if op.kind == "input":
        return x.to(dtype)
    if op.kind == "identity":
        return ins[0]
    if op.kind == "dense":
        return F.linear(ins[0], _t(a["weight"], dtype), _t(a["bias"], dtype))
    if op.kind == "conv":
        if a["bias"].ndim == 3:  # a bias map (a constant input offset seen through zero padding)
            return F.conv2d(ins[0], _t(a["weight"], dtype), None, a["stride"], a["padding"]) + _t(a["bias"], dtype)
        return F.conv2d(ins[0], _t(a["weight"], dtype), _t(a["bias"], dtype), a["stride"], a["padding"])
    if op.kind == "affine":
        shape = (1, -1) + (1,) * (ins[0].dim() - 2)
        return ins[0] * _t(a["scale"], dtype).reshape(shape) + _t(a["shift"], dtype).reshape(shape)
    if op.kind == "act":
        if act_fn is not None:
            return act_fn(op, ins[0])
        return activation(a["function"], ins[0], a.get("clip"), a.get("approximate", "none"))
    if op.kind == "add":
        out = ins[0]
        for v in ins[1:]:
            out = out + v
        return out
    if op.kind == "avgpool":
        if a["kernel"] is None:
            return ins[0].mean(dim=(2, 3), keepdim=True)
        return F.avg_pool2d(ins[0], a["kernel"], a["stride"])
    if op.kind == "flatten":
        return ins[0].reshape(len(ins[0]), -1)
    raise AssertionError(op.kind)


def activation(function: str, v: Any, clip: float | None = None, approximate: str = "none") -> Any:
    """The ANN activation ``function`` on a torch tensor."""
    if function == "relu":
        return torch.relu(v) if clip is None else torch.clamp(v, 0.0, clip)
    if function == "swish":
        return F.silu(v)
    if function == "sigmoid":
        return torch.sigmoid(v)
    if function == "tanh":
        return torch.tanh(v)
    if function == "gelu":
        return F.gelu(v, approximate=approximate)
    raise AssertionError(function)


# ---------------------------------------------------------------------------------------
# tracing


def _need_torch() -> None:
    if torch is None:
        from fs_hw.errors import MissingDependencyError

        raise MissingDependencyError("conversion from PyTorch needs torch: pip install 'fs-hw[torch]' (torch==2.13.0)")


class _Recorder(torch.fx.Interpreter if torch is not None else object):  # type: ignore[misc]
    """Runs the traced graph once on the example input and keeps every node's value."""

    def __init__(self, gm: Any):
        super().__init__(gm)
        self.values: dict[Any, Any] = {}

    def run_node(self, n: Any) -> Any:
        out = super().run_node(n)
        self.values[n] = out
        return out


def trace(model: Any, example_input: Any) -> TorchGraph:
    """Trace ``model`` (``nn.Module`` in eval mode, or ``ExportedProgram``) into a :class:`TorchGraph`."""
    _need_torch()
    if isinstance(model, torch.export.ExportedProgram):
        frontend = "torch.export"
        name = "ExportedProgram"
        try:
            gm = model.module()
        except Exception as exc:
            raise UnsupportedError(f"cannot unlift the exported program: {type(exc).__name__}: {exc}") from None
        if example_input is None:
            example_input = _example_from_export(model)
    elif isinstance(model, nn.Module):
        frontend = "torch.fx"
        name = type(model).__name__
        training = [n or "<model>" for n, m in model.named_modules() if m.training]
        if training:
            raise ValidationError(
                f"model {name}", "training",
                f"{len(training)} module(s) are in training mode (first: {training[0]!r}); call model.eval() "
                "first: BatchNorm must use its running statistics and Dropout must be off",
            )
        try:
            gm = torch.fx.symbolic_trace(model)
        except Exception as exc:
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UnsupportedError(
                f"model {name}: torch.fx cannot trace it ({type(exc).__name__}: {msg}). The converter needs a "
                "static graph: remove data-dependent Python control flow from forward(), or export the model "
                "with torch.export.export and convert the ExportedProgram"
            ) from None
    else:
        raise ValidationError("from_torch", "model",
                              f"must be a torch.nn.Module or ExportedProgram, got {type(model).__name__}")

    example = _as_tensor(example_input, "example_input")
    dtype = _model_dtype(gm)
    example = example.to(dtype)
    recorder = _Recorder(gm)
    try:
        with torch.no_grad():
            recorder.run(example)
    except Exception as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ValidationError(
            f"model {name}", "example_input",
            f"running the model on an input of shape {tuple(example.shape)} failed ({type(exc).__name__}: {msg})",
        ) from None
    builder = _Builder(gm, recorder.values, frontend, name)
    graph = builder.build()
    graph.example = example
    graph.example_output = builder.output_value
    return graph


def _as_tensor(value: Any, what: str) -> Any:
    if value is None:
        raise ValidationError("from_torch", what, "is required")
    if isinstance(value, torch.Tensor):
        t = value.detach()
    else:
        try:
            t = torch.as_tensor(np.asarray(value))
        except (TypeError, ValueError) as exc:
            raise ValidationError("from_torch", what, f"not an array ({exc})") from None
    if not t.is_floating_point():
        t = t.to(torch.float32)
    if t.dim() < 2:
        raise ValidationError("from_torch", what, f"needs a batch dimension: shape (N, ...), got {tuple(t.shape)}")
    return t


def _model_dtype(gm: Any) -> Any:
    for p in list(gm.parameters()) + list(gm.buffers()):
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def _example_from_export(ep: Any) -> Any:
    for node in ep.graph.nodes:
        if node.op == "placeholder" and node.name in ep.graph_signature.user_inputs:
            val = node.meta.get("val")
            if val is not None and hasattr(val, "shape"):
                return torch.zeros(tuple(int(s) for s in val.shape), dtype=val.dtype)
    raise ValidationError("from_torch", "example_input", "cannot infer it from the exported program; pass one")


# ---------------------------------------------------------------------------------------
# graph walking


_IDENTITY_METHODS = {"contiguous", "clone", "detach", "float", "requires_grad_"}
_AUX_SAFE = {"size", "dim", "numel"}


class _Builder:
    def __init__(self, gm: Any, values: dict, frontend: str, model_name: str):
        self.gm = gm
        self.values = values
        self.frontend = frontend
        self.model_name = model_name
        self.nodes = list(gm.graph.nodes)
        self.modules = dict(gm.named_modules())
        self.const: dict[Any, bool] = {}
        self.op_of: dict[Any, str] = {}
        self.ops: dict[str, Op] = {}
        self.position: dict[Any, int] = {}
        self.used_names: set[str] = {"readout"}  # the converter's read-out node
        self.input_node = None

    # -- classification ------------------------------------------------------------
    def _is_tensor(self, node: Any) -> bool:
        return isinstance(self.values.get(node), torch.Tensor)

    def _is_guard(self, node: Any) -> bool:
        return node.op == "call_module" and str(node.target).startswith("_guards")

    def _classify(self) -> None:
        for node in self.nodes:
            if node.op == "get_attr":
                self.const[node] = True
            elif node.op == "placeholder" or node.op == "output":
                self.const[node] = False
            else:
                deps = node.all_input_nodes
                self.const[node] = all(self.const.get(d, False) for d in deps)
        compute = [
            n for n in self.nodes
            if n.op in ("call_module", "call_function", "call_method") and not self.const[n]
            and not self._is_guard(n) and self._produces_tensor(n)
        ]
        self.position = {n: i + 1 for i, n in enumerate(compute)}
        self.n_nodes = len(compute)

    def _produces_tensor(self, node: Any) -> bool:
        v = self.values.get(node)
        if isinstance(v, torch.Tensor):
            return True
        return isinstance(v, (tuple, list)) and any(isinstance(e, torch.Tensor) for e in v)

    # -- naming --------------------------------------------------------------------
    def _stack(self, node: Any) -> tuple[str, str] | None:
        stack = node.meta.get("nn_module_stack")
        if not stack:
            return None
        path, typ = list(stack.values())[-1]
        typ = typ if isinstance(typ, str) else f"{typ.__module__}.{typ.__qualname__}"
        return str(path), typ

    def _describe(self, node: Any) -> tuple[str, str, str]:
        """(source, label, ir-name stem) of a node."""
        if node.op == "placeholder":
            return node.name, f"input {node.name!r}", "input"
        if node.op == "call_module":
            mod = self.modules[node.target]
            return str(node.target), f"{type(mod).__name__} {str(node.target)!r}", str(node.target)
        fname = self._fname(node)
        st = self._stack(node)
        if st and self.frontend == "torch.export" and st[1].startswith("torch.nn.modules.") and st[0]:
            tname = st[1].rsplit(".", 1)[-1]
            return st[0], f"{tname} {st[0]!r}", st[0]
        where = ""
        stem = node.name
        if st and st[0]:
            where = f" in {st[0]!r} ({st[1].rsplit('.', 1)[-1]})"
            stem = f"{st[0]}.{node.name}"
        return node.name, f"{fname} {node.name!r}{where}", stem

    def _fname(self, node: Any) -> str:
        t = node.target
        if node.op == "call_method":
            return f"Tensor.{t}"
        if isinstance(t, torch._ops.OpOverload):
            return f"aten.{t.overloadpacket.__name__}"
        mod = getattr(t, "__module__", "") or ""
        name = getattr(t, "__name__", str(t))
        if mod.startswith("torch.nn.functional"):
            return f"F.{name}"
        if mod in ("_operator", "operator"):
            return f"operator.{name}"
        return f"torch.{name}" if mod.startswith("torch") or mod == "" else name

    def _unique(self, stem: str) -> str:
        stem = stem.replace("/", ".") or "op"
        name, k = stem, 2
        while name in self.used_names:
            name = f"{stem}#{k}"
            k += 1
        self.used_names.add(name)
        return name

    def _after(self, node: Any) -> str:
        names = []
        for d in node.all_input_nodes:
            if d is self.input_node:
                names.append(f"the input {d.name!r}")
            elif not self.const.get(d, True) and d in self.op_of:
                names.append(repr(self._describe(d)[0]))
        return " and ".join(dict.fromkeys(names)) or "the input"

    def _where(self, node: Any) -> str:
        where = f"node {self.position.get(node, 0)} of {self.n_nodes}, after {self._after(node)}"
        return f"{self._describe(node)[1]} ({where})"

    def refuse(self, node: Any, problem: str, instead: str | None = None) -> UnsupportedError:
        if instead is None:
            instead = alternative(self._alt_key(node))
        return UnsupportedError(f"{self._where(node)}: {problem}. Use instead: {instead}")

    def _alt_key(self, node: Any) -> str:
        if node.op == "call_module":
            return type(self.modules[node.target]).__name__
        if node.op == "call_method":
            return str(node.target)
        t = node.target
        if isinstance(t, torch._ops.OpOverload):
            return t.overloadpacket.__name__
        return getattr(t, "__name__", str(t))

    # -- op creation ---------------------------------------------------------------
    def shape(self, node: Any) -> tuple[int, ...]:
        v = self.values[node]
        if isinstance(v, (tuple, list)):
            v = v[0]
        return tuple(int(s) for s in v.shape[1:])

    def add_op(self, node: Any, kind: str, inputs: list[Any], attrs: dict | None = None,
               name_suffix: str = "", shape: tuple[int, ...] | None = None) -> Op:
        source, label, stem = self._describe(node)
        op = Op(
            kind=kind,
            name=self._unique(stem + name_suffix),
            inputs=[self.input_of(i) if not isinstance(i, str) else i for i in inputs],
            attrs=attrs or {},
            label=label,
            source=source,
            position=self.position.get(node, 0),
            after=self._after(node),
            shape=self.shape(node) if shape is None else shape,
            node=node.name,
        )
        self.ops[op.name] = op
        self.op_of[node] = op.name
        return op

    def input_of(self, node: Any) -> str:
        if node not in self.op_of:
            raise AssertionError(f"node {node} has no op")
        return self.op_of[node]

    def constant(self, value: Any) -> Any:
        """The value of a constant argument (a const node or a Python value)."""
        if isinstance(value, torch.fx.Node):
            return self.values[value]
        return value

    def is_dynamic(self, value: Any) -> bool:
        return isinstance(value, torch.fx.Node) and not self.const.get(value, True) and self._produces_tensor(value)

    # -- main loop -----------------------------------------------------------------
    def build(self) -> TorchGraph:
        self._classify()
        output_node = None
        for node in self.nodes:
            if node.op == "placeholder":
                if not self._is_tensor(node):
                    continue
                if self.input_node is not None:
                    raise UnsupportedError(
                        f"model {self.model_name}: has more than one tensor input ({self.input_node.name!r}, "
                        f"{node.name!r}). Use instead: a model with a single image input"
                    )
                self.input_node = node
                self.add_op(node, "input", [], shape=self.shape(node))
                continue
            if node.op == "output":
                output_node = node
                continue
            if node.op == "get_attr" or self.const[node] or self._is_guard(node):
                continue
            if not self._produces_tensor(node):
                self._check_aux(node)
                continue
            self._convert(node)
        if self.input_node is None:
            raise UnsupportedError(f"model {self.model_name}: has no tensor input")
        out = output_node.args[0] if output_node is not None else None
        while isinstance(out, (tuple, list)) and len(out) == 1:
            out = out[0]
        if isinstance(out, dict) and len(out) == 1:
            out = next(iter(out.values()))
        if not isinstance(out, torch.fx.Node) or out not in self.op_of:
            raise UnsupportedError(
                f"model {self.model_name}: its output must be one tensor computed from the input, got "
                f"{type(out).__name__}. Use instead: a model returning the logits tensor only"
            )
        self.output_value = self.values[out]
        return TorchGraph(
            ops=self.ops, output=self.op_of[out], n_nodes=self.n_nodes,
            input_shape=self.shape(self.input_node), frontend=self.frontend, model_name=self.model_name,
        )

    def _check_aux(self, node: Any) -> None:
        """A node that computes no tensor (shape arithmetic): only a few are harmless."""
        if node.op == "call_method" and node.target in _AUX_SAFE:
            return
        if node.op == "call_function" and node.target in (getattr, operator.getitem, len, operator.mul,
                                                          operator.add, operator.floordiv, operator.sub):
            return
        if self.values.get(node) is None and not node.users:
            return  # a call whose result is discarded (a check, a print)
        raise self.refuse(node, "computes a non-tensor value from the input, which the converter cannot follow")

    def _convert(self, node: Any) -> None:
        if node.op == "call_module":
            mod = self.modules[node.target]
            handler = _MODULE_HANDLERS.get(type(mod))
            if handler is None:
                for cls, h in _MODULE_HANDLERS.items():
                    if isinstance(mod, cls) and cls.__module__.startswith("torch.nn"):
                        handler = h
                        break
            if handler is None:
                raise self.refuse(node, f"{type(mod).__name__} layers are not supported")
            if len(node.args) < 1 or not self.is_dynamic(node.args[0]) or len(node.args) + len(node.kwargs) != 1:
                raise self.refuse(node, "is called with other than one tensor argument")
            handler(self, node, mod, node.args[0])
            return
        if node.op == "call_method":
            handler = _METHOD_HANDLERS.get(node.target)
            if handler is None:
                raise self.refuse(node, f"the tensor method {node.target}() is not supported")
            handler(self, node, *node.args, **node.kwargs)
            return
        target = node.target
        if isinstance(target, torch._ops.OpOverload):
            handler = _ATEN_HANDLERS.get(target.overloadpacket.__name__)
            if handler is None:
                raise self.refuse(node, f"the operator aten.{target.overloadpacket.__name__} is not supported")
            handler(self, node, *node.args, **node.kwargs)
            return
        handler = _FUNCTION_HANDLERS.get(target)
        if handler is None:
            raise self.refuse(node, f"the function {self._fname(node)} is not supported")
        handler(self, node, *node.args, **node.kwargs)

    # -- builders shared by modules, functions and aten ops ------------------------
    def need_dynamic(self, node: Any, x: Any) -> None:
        if not self.is_dynamic(x):
            raise self.refuse(node, "its first argument is not a tensor computed from the input")

    def need_rank(self, node: Any, x: Any, rank: int, what: str) -> None:
        shape = self.shape(x)
        if len(shape) != rank:
            dims = "(N, C, H, W)" if rank == 3 else "(N, features)"
            raise self.refuse(
                node, f"{what} needs an input of shape {dims}, got per-sample shape {shape}",
                "Flatten before a Linear layer; 4-D (N, C, H, W) activations for Conv2d and pooling",
            )

    def dense(self, node: Any, x: Any, weight: Any, bias: Any, alpha: float = 1.0, beta: float = 1.0) -> None:
        self.need_dynamic(node, x)
        self.need_rank(node, x, 1, "a Linear layer")
        if self.is_dynamic(weight) or self.is_dynamic(bias):
            raise self.refuse(node, "multiplies two tensors computed from the input")
        w = _np(self.constant(weight)) * alpha
        b = np.zeros(w.shape[0]) if bias is None else _np(self.constant(bias)) * beta
        self.add_op(node, "dense", [x], {"weight": w, "bias": np.broadcast_to(b, (w.shape[0],)).copy()})

    def conv(self, node: Any, x: Any, weight: Any, bias: Any, stride: Any = 1, padding: Any = 0,
             dilation: Any = 1, groups: int = 1, padding_mode: str = "zeros") -> None:
        self.need_dynamic(node, x)
        self.need_rank(node, x, 3, "a Conv2d layer")
        if self.is_dynamic(weight) or self.is_dynamic(bias):
            raise self.refuse(node, "convolves with a kernel computed from the input")
        if padding_mode != "zeros":
            raise self.refuse(node, f"padding_mode={padding_mode!r} is not supported",
                              "Conv2d with padding_mode='zeros'")
        w = _np(self.constant(weight))
        if w.ndim != 4:
            raise self.refuse(node, f"has a {w.ndim - 2}-D kernel", "Conv2d")
        b = np.zeros(w.shape[0]) if bias is None else _np(self.constant(bias))
        stride, dilation = _pair(stride), _pair(dilation)
        k = (dilation[0] * (w.shape[2] - 1) + 1, dilation[1] * (w.shape[3] - 1) + 1)
        if isinstance(padding, str):
            if padding == "valid":
                padding = (0, 0)
            elif padding == "same":
                total = (k[0] - 1, k[1] - 1)
                if total[0] % 2 or total[1] % 2:
                    raise self.refuse(node, "padding='same' with an even kernel pads asymmetrically",
                                      "an odd kernel size, or explicit symmetric padding")
                padding = (total[0] // 2, total[1] // 2)
            else:
                raise self.refuse(node, f"padding={padding!r} is not supported", "numeric padding")
        padding = _pair(padding)
        if dilation != (1, 1):  # exact: a larger kernel with zeros between the taps
            big = np.zeros(w.shape[:2] + k)
            big[:, :, :: dilation[0], :: dilation[1]] = w
            w = big
        cin = self.shape(x)[0]
        if groups != 1:  # exact: a dense kernel, zero outside each group's block
            cout, cpg = w.shape[0], w.shape[1]
            full = np.zeros((cout, cin) + w.shape[2:])
            opg = cout // groups
            for g in range(groups):
                full[g * opg:(g + 1) * opg, g * cpg:(g + 1) * cpg] = w[g * opg:(g + 1) * opg]
            w = full
        attrs = {"weight": w, "bias": b.astype(np.float64), "stride": stride, "padding": padding}
        if groups != 1 or dilation != (1, 1):
            attrs["expanded"] = f"groups={groups}, dilation={dilation} expanded into a dense kernel"
        self.add_op(node, "conv", [x], attrs)

    def batchnorm(self, node: Any, x: Any, mean: Any, var: Any, weight: Any, bias: Any, eps: float,
                  training: bool) -> None:
        self.need_dynamic(node, x)
        if training:
            raise self.refuse(node, "BatchNorm runs in training mode (batch statistics)",
                              "model.eval() before converting or exporting")
        if mean is None or var is None:
            raise self.refuse(node, "BatchNorm has no running statistics (track_running_stats=False), so it "
                              "normalises every batch by its own statistics", "BatchNorm with running statistics")
        m, v = _np(self.constant(mean)), _np(self.constant(var))
        g = np.ones_like(m) if weight is None else _np(self.constant(weight))
        beta = np.zeros_like(m) if bias is None else _np(self.constant(bias))
        scale = g / np.sqrt(v + float(eps))
        self.add_op(node, "affine", [x], {"scale": scale, "shift": beta - m * scale, "what": "BatchNorm"})

    def act(self, node: Any, x: Any, function: str, clip: float | None = None, approximate: str = "none") -> None:
        self.need_dynamic(node, x)
        attrs: dict[str, Any] = {"function": function}
        if clip is not None:
            attrs["clip"] = float(clip)
        if function == "gelu":
            attrs["approximate"] = approximate
        self.add_op(node, "act", [x], attrs)

    def clamp(self, node: Any, x: Any, lo: Any, hi: Any) -> None:
        lo, hi = self.constant(lo), self.constant(hi)
        if isinstance(lo, torch.Tensor) or isinstance(hi, torch.Tensor):
            raise self.refuse(node, "clamps to tensor bounds")
        if lo is None or float(lo) != 0.0 or (hi is not None and not float(hi) > 0):
            raise self.refuse(node, f"clamps to [{lo}, {hi}]; only a clip to [0, max] (a clipped ReLU) has an FS code")
        self.act(node, x, "relu", clip=None if hi is None else float(hi))

    def binary(self, node: Any, kind: str, a: Any, b: Any, alpha: Any = 1) -> None:
        da, db = self.is_dynamic(a), self.is_dynamic(b)
        alpha = float(self.constant(alpha))
        if kind in ("add", "sub"):
            sign = 1.0 if kind == "add" else -1.0
            if da and db:
                k = sign * alpha
                if k == 1.0:
                    self.add_op(node, "add", [a, b])
                    return
                what = f"the {'subtracted' if kind == 'sub' else 'scaled'} operand"
                scaled = self.add_op(node, "affine", [b], {"scale": np.array(k), "shift": np.array(0.0),
                                                           "what": what},
                                     name_suffix=".neg", shape=self.shape(b))
                self.add_op(node, "add", [a, scaled.name])
                return
            if da:
                c = self.per_channel(node, a, self.constant(b)) * sign * alpha
                self.add_op(node, "affine", [a], {"scale": np.array(1.0), "shift": c, "what": f"a constant {kind}"})
                return
            if db:
                c = self.per_channel(node, b, self.constant(a))
                self.add_op(node, "affine", [b], {"scale": np.array(sign * alpha), "shift": c,
                                                  "what": f"a constant {kind}"})
                return
        elif kind == "mul":
            if da and db:
                raise self.refuse(node, "multiplies two tensors computed from the input")
            x, c = (a, b) if da else (b, a)
            s = self.per_channel(node, x, self.constant(c))
            self.add_op(node, "affine", [x], {"scale": s, "shift": np.array(0.0), "what": "a constant factor"})
            return
        elif kind == "div":
            if db:
                raise self.refuse(node, "divides by a tensor computed from the input")
            s = self.per_channel(node, a, self.constant(b))
            if np.any(s == 0):
                raise self.refuse(node, "divides by zero", "a non-zero constant")
            self.add_op(node, "affine", [a], {"scale": 1.0 / s, "shift": np.array(0.0), "what": "a constant divisor"})
            return
        raise self.refuse(node, "has no tensor operand computed from the input")

    def per_channel(self, node: Any, x: Any, c: Any) -> np.ndarray:
        """A constant operand as a scalar or a per-channel vector (else refused)."""
        if isinstance(c, (int, float, bool)):
            return np.array(float(c))
        if not isinstance(c, torch.Tensor):
            raise self.refuse(node, f"has an operand of type {type(c).__name__}")
        arr = _np(c)
        if arr.ndim == 0 or arr.size == 1:
            return np.array(float(arr.reshape(())))
        shape = self.shape(x)
        try:
            full = np.broadcast_to(arr, (1,) + shape)[0] if arr.ndim == len(shape) + 1 else np.broadcast_to(arr, shape)
        except ValueError:
            raise self.refuse(node, f"has a constant of shape {arr.shape} that does not broadcast to {shape}") from None
        per = full.reshape(shape[0], -1)
        if not np.all(per == per[:, :1]):
            raise self.refuse(node, "uses a constant that varies across positions, not only across channels",
                              "a per-channel constant (shape (C, 1, 1)), or fold it into the layer's bias by hand")
        return per[:, 0].copy()

    def avgpool(self, node: Any, x: Any, kernel: Any, stride: Any = None, padding: Any = 0,
                ceil_mode: bool = False, divisor_override: Any = None) -> None:
        self.need_dynamic(node, x)
        self.need_rank(node, x, 3, "average pooling")
        kernel = _pair(kernel)
        stride = kernel if stride is None or stride == [] or stride == () else _pair(stride)
        if _pair(padding) != (0, 0):
            raise self.refuse(node, f"average pooling with padding={padding} is not supported",
                              "AvgPool2d with padding=0")
        _, h, w = self.shape(x)
        if ceil_mode and ((h - kernel[0]) % stride[0] or (w - kernel[1]) % stride[1]):
            raise self.refuse(node, "ceil_mode=True adds partial windows", "AvgPool2d with ceil_mode=False")
        if divisor_override not in (None, kernel[0] * kernel[1]):
            raise self.refuse(node, f"divisor_override={divisor_override} is not an average",
                              "AvgPool2d without divisor_override")
        self.add_op(node, "avgpool", [x], {"kernel": kernel, "stride": stride})

    def adaptive(self, node: Any, x: Any, output_size: Any) -> None:
        self.need_dynamic(node, x)
        self.need_rank(node, x, 3, "adaptive average pooling")
        _, h, w = self.shape(x)
        oh, ow = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
        oh, ow = h if oh is None else int(oh), w if ow is None else int(ow)
        if (oh, ow) == (1, 1):
            self.add_op(node, "avgpool", [x], {"kernel": None, "stride": None})
        elif h % oh == 0 and w % ow == 0:
            k = (h // oh, w // ow)
            self.add_op(node, "avgpool", [x], {"kernel": k, "stride": k})
        else:
            raise self.refuse(node, f"adaptive pooling from {h}x{w} to {oh}x{ow} has unequal windows",
                              "AdaptiveAvgPool2d(1), or an output size that divides the input size")

    def mean(self, node: Any, x: Any, dims: Any, keepdim: bool = False) -> None:
        self.need_dynamic(node, x)
        nd = len(self.shape(x)) + 1
        if dims is None:
            raise self.refuse(node, "averages over every dimension, the batch included")
        dims = [dims] if isinstance(dims, int) else list(dims)
        if nd != 4 or sorted(d % nd for d in dims) != [2, 3]:
            raise self.refuse(node, f"averages over dims {dims}; only the spatial mean over (H, W) is supported")
        pool = self.add_op(node, "avgpool", [x], {"kernel": None, "stride": None},
                           shape=(self.shape(x)[0], 1, 1))
        if not keepdim:
            self.add_op(node, "flatten", [pool.name], name_suffix=".flatten")

    def flatten(self, node: Any, x: Any, start_dim: int = 0, end_dim: int = -1) -> None:
        self.need_dynamic(node, x)
        nd = len(self.shape(x)) + 1
        if start_dim % nd == 0:
            raise self.refuse(node, "flattens the batch dimension", "torch.flatten(x, 1) or nn.Flatten()")
        if start_dim % nd != 1 or end_dim % nd != nd - 1:
            raise self.refuse(node, f"flattens dims {start_dim}..{end_dim}; only (N, ...) -> (N, -1) is supported")
        self.add_op(node, "flatten", [x])

    def reshape(self, node: Any, x: Any, *_: Any, **__: Any) -> None:
        self.need_dynamic(node, x)
        vin, vout = self.values[x], self.values[node]
        sin, sout = self.shape(x), self.shape(node)
        if vout.shape[0] != vin.shape[0]:
            raise self.refuse(node, f"reshapes {tuple(vin.shape)} to {tuple(vout.shape)}, mixing samples of a batch")
        if sout == sin:
            self.add_op(node, "identity", [x])
        elif sout == (int(np.prod(sin)),):
            self.add_op(node, "flatten", [x])
        else:
            raise self.refuse(node, f"reshapes per-sample shape {sin} to {sout}")

    def identity(self, node: Any, x: Any, *_: Any, **__: Any) -> None:
        self.need_dynamic(node, x)
        self.add_op(node, "identity", [x])

    def dropout(self, node: Any, x: Any, training: bool) -> None:
        if training:
            raise self.refuse(node, "dropout is active (training=True)", "model.eval() before converting or exporting")
        self.identity(node, x)


def _np(t: Any) -> np.ndarray:
    if isinstance(t, torch.Tensor):
        return t.detach().cpu().to(torch.float64).numpy().copy()
    return np.asarray(t, dtype=np.float64)


def _pair(v: Any) -> tuple[int, int]:
    if isinstance(v, (int, np.integer)):
        return (int(v), int(v))
    v = tuple(int(e) for e in v)
    return (v[0], v[0]) if len(v) == 1 else (v[0], v[1])


# ---------------------------------------------------------------------------------------
# handler tables: one entry per module type, function, tensor method and ATen operator


def _build_tables() -> tuple[dict, dict, dict, dict]:
    if torch is None:
        return {}, {}, {}, {}
    B = _Builder
    mods: dict[type, Callable] = {
        nn.Linear: lambda b, n, m, x: b.dense(n, x, m.weight, m.bias),
        nn.Conv2d: lambda b, n, m, x: b.conv(n, x, m.weight, m.bias, m.stride, m.padding, m.dilation, m.groups,
                                              m.padding_mode),
        nn.BatchNorm1d: lambda b, n, m, x: b.batchnorm(n, x, m.running_mean, m.running_var, m.weight, m.bias,
                                                       m.eps, m.training),
        nn.BatchNorm2d: lambda b, n, m, x: b.batchnorm(n, x, m.running_mean, m.running_var, m.weight, m.bias,
                                                       m.eps, m.training),
        nn.ReLU: lambda b, n, m, x: b.act(n, x, "relu"),
        nn.ReLU6: lambda b, n, m, x: b.act(n, x, "relu", clip=6.0),
        nn.Hardtanh: lambda b, n, m, x: b.clamp(n, x, m.min_val, m.max_val),
        nn.SiLU: lambda b, n, m, x: b.act(n, x, "swish"),
        nn.Sigmoid: lambda b, n, m, x: b.act(n, x, "sigmoid"),
        nn.Tanh: lambda b, n, m, x: b.act(n, x, "tanh"),
        nn.GELU: lambda b, n, m, x: b.act(n, x, "gelu", approximate=m.approximate),
        nn.Identity: lambda b, n, m, x: b.identity(n, x),
        nn.Flatten: lambda b, n, m, x: b.flatten(n, x, m.start_dim, m.end_dim),
        nn.AvgPool2d: lambda b, n, m, x: b.avgpool(n, x, m.kernel_size, m.stride, m.padding, m.ceil_mode,
                                                   m.divisor_override),
        nn.AdaptiveAvgPool2d: lambda b, n, m, x: b.adaptive(n, x, m.output_size),
    }
    for cls in (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout):
        mods[cls] = lambda b, n, m, x: b.dropout(n, x, m.training)

    def f_linear(b, n, x, weight, bias=None):
        b.dense(n, x, weight, bias)

    def f_conv(b, n, x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
        b.conv(n, x, weight, bias, b.constant(stride), b.constant(padding), b.constant(dilation), b.constant(groups))

    def f_bn(b, n, x, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5):
        b.batchnorm(n, x, running_mean, running_var, weight, bias, eps, training)

    def f_act(function, **fixed):
        return lambda b, n, x, *a, **k: b.act(n, x, function, **fixed)

    def f_gelu(b, n, x, approximate="none"):
        b.act(n, x, "gelu", approximate=approximate)

    def f_hardtanh(b, n, x, min_val=-1.0, max_val=1.0, inplace=False):
        b.clamp(n, x, min_val, max_val)

    def f_clamp(b, n, x, min=None, max=None):
        b.clamp(n, x, min, max)

    def f_binary(kind):
        def h(b, n, a, c, *rest, alpha=1, **k):
            if rest:
                alpha = rest[0]
            b.binary(n, kind, a, c, alpha)
        return h

    def f_neg(b, n, x):
        b.binary(n, "mul", x, -1.0)

    def f_flatten(b, n, x, start_dim=0, end_dim=-1):
        b.flatten(n, x, start_dim, end_dim)

    def f_avgpool(b, n, x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
                  divisor_override=None):
        b.avgpool(n, x, kernel_size, stride, padding, ceil_mode, divisor_override)

    def f_adaptive(b, n, x, output_size):
        b.adaptive(n, x, output_size)

    def f_mean(b, n, x, dim=None, keepdim=False, *a, **k):
        b.mean(n, x, dim, keepdim)

    def f_dropout(b, n, x, p=0.5, training=True, inplace=False):
        b.dropout(n, x, training)

    def f_matmul(b, n, x, w):
        if b.is_dynamic(w):
            raise b.refuse(n, "multiplies two tensors computed from the input")
        wt = _np(b.constant(w))
        if wt.ndim != 2:
            raise b.refuse(n, f"multiplies by a {wt.ndim}-D constant", "nn.Linear")
        b.dense(n, x, torch.from_numpy(wt.T.copy()), None)

    funcs: dict[Any, Callable] = {
        F.linear: f_linear, F.conv2d: f_conv, F.batch_norm: f_bn,
        F.relu: f_act("relu"), torch.relu: f_act("relu"), torch.relu_: f_act("relu"), F.relu_: f_act("relu"),
        F.relu6: f_act("relu", clip=6.0), F.hardtanh: f_hardtanh, torch.clamp: f_clamp, torch.clip: f_clamp,
        F.silu: f_act("swish"), torch.sigmoid: f_act("sigmoid"), F.sigmoid: f_act("sigmoid"),
        torch.tanh: f_act("tanh"), F.tanh: f_act("tanh"), F.gelu: f_gelu,
        operator.add: f_binary("add"), operator.iadd: f_binary("add"), torch.add: f_binary("add"),
        operator.sub: f_binary("sub"), operator.isub: f_binary("sub"), torch.sub: f_binary("sub"),
        operator.mul: f_binary("mul"), operator.imul: f_binary("mul"), torch.mul: f_binary("mul"),
        operator.truediv: f_binary("div"), operator.itruediv: f_binary("div"), torch.div: f_binary("div"),
        operator.neg: f_neg, torch.neg: f_neg,
        torch.flatten: f_flatten, F.avg_pool2d: f_avgpool, F.adaptive_avg_pool2d: f_adaptive,
        torch.mean: f_mean, F.dropout: f_dropout, F.dropout1d: f_dropout, F.dropout2d: f_dropout,
        F.alpha_dropout: f_dropout, torch.matmul: f_matmul, operator.matmul: f_matmul,
        torch.reshape: lambda b, n, x, *a, **k: b.reshape(n, x),
    }

    def m_flatten(b, n, x, start_dim=0, end_dim=-1):
        b.flatten(n, x, start_dim, end_dim)

    methods: dict[str, Callable] = {
        "relu": f_act("relu"), "relu_": f_act("relu"), "sigmoid": f_act("sigmoid"), "tanh": f_act("tanh"),
        "clamp": f_clamp, "clip": f_clamp, "clamp_min": lambda b, n, x, m: b.clamp(n, x, m, None),
        "flatten": m_flatten, "view": B.reshape, "reshape": B.reshape,
        "mean": f_mean, "add": f_binary("add"), "add_": f_binary("add"), "sub": f_binary("sub"),
        "sub_": f_binary("sub"), "mul": f_binary("mul"), "mul_": f_binary("mul"), "div": f_binary("div"),
        "div_": f_binary("div"), "neg": f_neg, "matmul": f_matmul,
    }
    for name in _IDENTITY_METHODS:
        methods[name] = B.identity

    def a_conv(b, n, x, weight, bias=None, stride=(1,), padding=(0,), dilation=(1,), groups=1):
        b.conv(n, x, weight, bias, stride, padding, dilation, groups)

    def a_convolution(b, n, x, weight, bias, stride, padding, dilation, transposed, output_padding, groups):
        if transposed:
            raise b.refuse(n, "a transposed convolution is not supported", "Conv2d")
        b.conv(n, x, weight, bias, stride, padding, dilation, groups)

    def a_bn(b, n, x, weight, bias, mean, var, training, momentum, eps, *rest):
        b.batchnorm(n, x, mean, var, weight, bias, eps, training)

    def a_bn_legit(b, n, x, weight, bias, mean, var, momentum, eps):
        b.batchnorm(n, x, mean, var, weight, bias, eps, False)

    def a_addmm(b, n, bias, x, wt, beta=1, alpha=1):
        if b.is_dynamic(wt) or b.is_dynamic(bias):
            raise b.refuse(n, "multiplies two tensors computed from the input")
        b.dense(n, x, torch.from_numpy(_np(b.constant(wt)).T.copy()), bias, alpha=float(alpha), beta=float(beta))

    def a_getitem(b, n, x, i):
        if isinstance(b.values.get(x), torch.Tensor):
            raise b.refuse(n, "indexes or slices a tensor")
        if not (isinstance(x, torch.fx.Node) and x in b.op_of and i == 0):
            raise b.refuse(n, f"selects element {i} of a tuple")
        b.op_of[n] = b.op_of[x]

    def a_mean(b, n, x, dim=None, keepdim=False, *a, **k):
        b.mean(n, x, dim, keepdim)

    def a_avgpool(b, n, x, kernel_size, stride=(), padding=0, ceil_mode=False, count_include_pad=True,
                  divisor_override=None):
        b.avgpool(n, x, kernel_size, stride, padding, ceil_mode, divisor_override)

    aten: dict[str, Callable] = {
        "conv2d": a_conv, "convolution": a_convolution, "linear": f_linear, "addmm": a_addmm,
        "mm": f_matmul, "matmul": f_matmul,
        "batch_norm": a_bn, "_native_batch_norm_legit_no_training": a_bn_legit,
        "relu": f_act("relu"), "relu_": f_act("relu"), "relu6": f_act("relu", clip=6.0),
        "hardtanh": f_hardtanh, "hardtanh_": f_hardtanh, "clamp": f_clamp,
        "clamp_min": lambda b, n, x, m: b.clamp(n, x, m, None),
        "silu": f_act("swish"), "silu_": f_act("swish"), "sigmoid": f_act("sigmoid"), "tanh": f_act("tanh"),
        "gelu": f_gelu,
        "add": f_binary("add"), "add_": f_binary("add"), "sub": f_binary("sub"), "sub_": f_binary("sub"),
        "mul": f_binary("mul"), "mul_": f_binary("mul"), "div": f_binary("div"), "div_": f_binary("div"),
        "neg": f_neg,
        "avg_pool2d": a_avgpool, "adaptive_avg_pool2d": f_adaptive, "_adaptive_avg_pool2d": f_adaptive,
        "mean": a_mean, "flatten": f_flatten,
        "view": B.reshape, "reshape": B.reshape, "_unsafe_view": B.reshape,
        "dropout": f_dropout, "clone": B.identity, "alias": B.identity, "contiguous": B.identity,
        "detach": B.identity, "_to_copy": B.identity, "lift_fresh_copy": B.identity,
        "getitem": a_getitem,
    }
    funcs[operator.getitem] = a_getitem
    return mods, funcs, methods, aten


_MODULE_HANDLERS, _FUNCTION_HANDLERS, _METHOD_HANDLERS, _ATEN_HANDLERS = _build_tables()

__all__ = ["ACT_FUNCTIONS", "OP_KINDS", "Op", "TorchGraph", "activation", "alternative", "trace"]
