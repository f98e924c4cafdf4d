r"""Typed, immutable IR nodes.

Every node has a ``name`` and the names of its ``inputs``. Shapes are per sample
(channels first: ``(C, H, W)`` for images, ``(N,)`` for vectors). Numeric parameters
are read-only float64 numpy arrays. Node semantics (what the reference computes):

* :class:`Input` ``x``: the sample. With ``code`` set, it enters as spikes: the named
  FS code runs on ``x`` (stage 0) and downstream nodes see its output
  :math:`\sum_t d(t) z(t)`. With ``code=None`` the input stays analog, stated here.
* :class:`Dense`: :math:`W x + b`, ``weight`` of shape ``(out, in)``.
* :class:`Conv2d`: cross-correlation with ``weight (C_out, C_in, kh, kw)``, ``bias``,
  ``stride``, zero ``padding`` (as ``torch.nn.functional.conv2d``).
* Dense and Conv2d may carry *per-step weights* ``step_weight`` (shape
  ``(K, *weight.shape)``): one weight per step of the spiking node they read, as a
  fixed-point chip stores them. See :class:`Dense` for the exact rule.
* :class:`AvgPool2d`: mean over ``kernel`` windows with ``stride``, no padding;
  ``kernel=None`` pools globally to ``(C, 1, 1)``.
* :class:`Flatten`: ``(C, H, W) -> (C·H·W,)`` in C order.
* :class:`Add`: elementwise sum of its inputs (a residual connection).
* :class:`FSActivation`: every element runs the named FS code on its input.
* :class:`Readout`: the network's output, the value (membrane) of its input node.

Dense, Conv2d, AvgPool2d, Flatten and Add are *linear* nodes: on a chip they are
synapses. FSActivation and coded Input are *spiking* nodes: they are neurons.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import numpy as np

from fs_hw.errors import ValidationError

Shape = tuple[int, ...]


def _array(value: Any, obj: str, name: str, ndim: int) -> np.ndarray:
    try:
        arr = np.array(value, dtype=np.float64)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ValidationError(obj, name, f"not numeric ({exc})") from None
    if arr.ndim != ndim:
        raise ValidationError(obj, name, f"must have {ndim} dimensions, got shape {arr.shape}")
    bad = ~np.isfinite(arr)
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValidationError(
            obj, name, f"{int(bad.sum())} non-finite value(s), first {arr[idx]} at index {idx}"
        )
    arr.setflags(write=False)
    return arr


def _is_int(value: Any) -> bool:
    """An int (Python or numpy), not a bool: True is an int in Python but not a size."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _pair(value: Any, obj: str, name: str, minimum: int) -> tuple[int, int]:
    if _is_int(value):
        value = (value, value)
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 2 \
            or not all(_is_int(v) for v in value):
        raise ValidationError(obj, name, f"must be an int or a pair of ints, got {value!r}")
    a, b = int(value[0]), int(value[1])
    if a < minimum or b < minimum:
        raise ValidationError(obj, name, f"must be >= {minimum}, got {(a, b)}")
    return (a, b)


@dataclass(frozen=True, eq=False)
class Node:
    """Base of all IR nodes."""

    kind: ClassVar[str] = "node"
    linear: ClassVar[bool] = False
    # Arrays every node of the kind has, and arrays it may have (None when absent).
    array_fields: ClassVar[tuple[str, ...]] = ()
    optional_array_fields: ClassVar[tuple[str, ...]] = ()

    name: str

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or "/" in self.name:
            raise ValidationError(
                f"{self.kind} node", "name", f"must be a non-empty string without '/', got {self.name!r}"
            )

    @property
    def label(self) -> str:
        return f"{self.kind} {self.name!r}"

    @property
    def inputs(self) -> tuple[str, ...]:
        return ()

    def arrays(self) -> dict[str, np.ndarray]:
        """The node's arrays: every required one, and the optional ones that are set."""
        out = {k: getattr(self, k) for k in self.array_fields}
        for k in self.optional_array_fields:
            if getattr(self, k) is not None:
                out[k] = getattr(self, k)
        return out

    def attrs(self) -> dict[str, Any]:
        """JSON-able parameters (everything except name, inputs and arrays)."""
        out = {}
        for f in fields(self):
            if f.name in ("name", "input", "operands") or f.name in self.array_fields \
                    or f.name in self.optional_array_fields:
                continue
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    def infer_shape(self, in_shapes: list[Shape]) -> Shape:
        raise NotImplementedError

    def __eq__(self, other: object) -> bool:
        if type(self) is not type(other):
            return NotImplemented
        mine, theirs = self.arrays(), other.arrays()
        return (
            self.name == other.name
            and self.inputs == other.inputs
            and self.attrs() == other.attrs()
            and mine.keys() == theirs.keys()
            and all(np.array_equal(a, theirs[k]) for k, a in mine.items())
        )

    __hash__ = object.__hash__


@dataclass(frozen=True, eq=False)
class Input(Node):
    """The sample. ``mean``/``std`` (optional, both or neither, shape ``(C,)`` or ``(1,)``)
    record the normalisation ``(x - mean) / std`` the model was trained with. It is already
    folded into the weights: the node delivers the sample in its raw units and readers compute
    nothing with these; they say which units the samples must be fed in."""

    kind: ClassVar[str] = "input"
    optional_array_fields: ClassVar[tuple[str, ...]] = ("mean", "std")
    shape: Shape = ()
    code: str | None = None
    mean: np.ndarray | None = None
    std: np.ndarray | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        # Strict: "4" or 4.5 are not sizes (int() would accept the one and truncate the other).
        raw = None if isinstance(self.shape, (str, bytes)) or not hasattr(self.shape, "__iter__") else tuple(self.shape)
        if raw is None or not all(_is_int(s) for s in raw):
            raise ValidationError(self.label, "shape", f"must be a tuple of ints, got {self.shape!r}")
        shape = tuple(int(s) for s in raw)
        if not shape or any(s < 1 for s in shape):
            raise ValidationError(self.label, "shape", f"must be non-empty with positive sizes, got {shape}")
        object.__setattr__(self, "shape", shape)
        if self.code is not None and (not isinstance(self.code, str) or not self.code):
            raise ValidationError(self.label, "code", f"must name an FS code or be None, got {self.code!r}")
        if (self.mean is None) != (self.std is None):
            raise ValidationError(self.label, "mean/std", "must be given both or neither (the input normalisation)")
        if self.mean is not None:
            channels = shape[0]
            for key in ("mean", "std"):
                arr = _array(getattr(self, key), self.label, key, 1)
                if arr.shape[0] not in (1, channels):
                    raise ValidationError(self.label, key, f"has {arr.shape[0]} entries; the input has {channels} "
                                          "channels (give one per channel, or one for all)")
                object.__setattr__(self, key, arr)
            bad = np.flatnonzero(~(self.std > 0))
            if bad.size:
                raise ValidationError(self.label, "std", f"must be > 0, got std[{bad[0]}] = {self.std[bad[0]]!r}")

    @property
    def normalization(self) -> tuple[np.ndarray, np.ndarray] | None:
        """``(mean, std)`` the model's inputs were normalised with (folded), or None."""
        return None if self.mean is None else (self.mean, self.std)

    def infer_shape(self, in_shapes: list[Shape]) -> Shape:
        return self.shape


@dataclass(frozen=True, eq=False)
class _Unary(Node):
    input: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.input, str) or not self.input:
            raise ValidationError(self.label, "input", f"must name a node, got {self.input!r}")

    @property
    def inputs(self) -> tuple[str, ...]:
        return (self.input,)


def _step_weight(node: Node) -> None:
    """Check and freeze ``node.step_weight``: None, or finite float64 ``(K, *weight.shape)``."""
    value = node.step_weight  # type: ignore[attr-defined]
    if value is None:
        return
    weight = node.weight  # type: ignore[attr-defined]
    arr = _array(value, node.label, "step_weight", weight.ndim + 1)
    if arr.shape[0] < 1 or arr.shape[1:] != weight.shape:
        raise ValidationError(
            node.label, "step_weight",
            f"must have shape (K, *weight.shape) = (K, {', '.join(map(str, weight.shape))}) with K >= 1, "
            f"got {arr.shape}",
        )
    object.__setattr__(node, "step_weight", arr)


@dataclass(frozen=True, eq=False)
class Dense(_Unary):
    r"""Fully connected: :math:`W x + b`, ``weight (out, in)``, ``bias (out,)``.

    **Per-step weights.** ``step_weight`` is ``None`` (the default: the node computes
    :math:`W x + b` on its input's decoded value) or a float64 array of shape
    ``(K, *weight.shape)`` (finite, read-only). When set, the node's *chain* is followed
    from its input through single-input linear nodes (Flatten, AvgPool2d, and
    Dense/Conv2d whose bias is all zero and which have no ``step_weight``) until a
    spiking node ``S`` (FSActivation or coded Input) is reached; ``C`` is the
    composition of those nodes' bias-free maps (the identity for an empty chain). The
    node then outputs

    .. math:: b + \sum_{t<K} W_t \cdot C(z_S(t))

    where :math:`z_S(t) \in \{0, 1\}` are S's raw spikes at its local step ``t`` and
    :math:`W_t \cdot u` is this node's own operation (matmul here; convolution with its
    stride and padding for :class:`Conv2d`) with weight ``step_weight[t]``, bias-free.
    ``weight`` stays the nominal weight (what :math:`W y` would use; documentation and
    tools) and is not used by the semantics when ``step_weight`` is set. With
    ``step_weight[t] = weight * d_S(t)`` the node computes exactly what it computes
    without it. :class:`~fs_hw.ir.network.Network` refuses a chain through an Add, a
    biased or step-weighted Dense/Conv2d or an analog Input, and a ``K`` other than S's
    code's; :meth:`~fs_hw.ir.network.Network.step_source` returns S and the chain.
    """

    kind: ClassVar[str] = "dense"
    linear: ClassVar[bool] = True
    array_fields: ClassVar[tuple[str, ...]] = ("weight", "bias")
    optional_array_fields: ClassVar[tuple[str, ...]] = ("step_weight",)
    weight: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    bias: np.ndarray = field(default_factory=lambda: np.zeros(0))
    step_weight: np.ndarray | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "weight", _array(self.weight, self.label, "weight", 2))
        object.__setattr__(self, "bias", _array(self.bias, self.label, "bias", 1))
        if self.bias.shape[0] != self.weight.shape[0]:
            raise ValidationError(
                self.label, "bias", f"has {self.bias.shape[0]} entries, weight has {self.weight.shape[0]} rows"
            )
        _step_weight(self)

    def infer_shape(self, in_shapes: list[Shape]) -> Shape:
        (shape,) = in_shapes
        if len(shape) != 1 or shape[0] != self.weight.shape[1]:
            raise ValidationError(
                self.label, "weight", f"expects input of shape ({self.weight.shape[1]},), got {shape}"
            )
        return (self.weight.shape[0],)


@dataclass(frozen=True, eq=False)
class Conv2d(_Unary):
    r"""Cross-correlation: ``weight (C_out, C_in, kh, kw)``, ``bias (C_out,)``, ``stride``, zero ``padding``.

    ``step_weight``: ``None`` or ``(K, C_out, C_in, kh, kw)``, with the semantics
    described at :class:`Dense` (``W_t \cdot u`` is this convolution with weight
    ``step_weight[t]``).
    """

    kind: ClassVar[str] = "conv2d"
    linear: ClassVar[bool] = True
    array_fields: ClassVar[tuple[str, ...]] = ("weight", "bias")
    optional_array_fields: ClassVar[tuple[str, ...]] = ("step_weight",)
    weight: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 1, 1)))
    bias: np.ndarray = field(default_factory=lambda: np.zeros(0))
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    step_weight: np.ndarray | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "weight", _array(self.weight, self.label, "weight", 4))
        # A bias map (C_out, H_out, W_out) states exactly what a per-channel bias cannot: a
        # constant input offset (input normalisation, a signed input code's shift) seen
        # through zero padding differs at the border. Its H/W are checked in infer_shape.
        try:
            ndim = 3 if np.ndim(self.bias) == 3 else 1
        except ValueError:  # ragged nesting: _array names it
            ndim = 1
        object.__setattr__(self, "bias", _array(self.bias, self.label, "bias", ndim))
        object.__setattr__(self, "stride", _pair(self.stride, self.label, "stride", 1))
        object.__setattr__(self, "padding", _pair(self.padding, self.label, "padding", 0))
        if self.bias.shape[0] != self.weight.shape[0]:
            raise ValidationError(
                self.label, "bias",
                f"has {self.bias.shape[0]} entries, weight has {self.weight.shape[0]} output channels",
            )
        _step_weight(self)

    def infer_shape(self, in_shapes: list[Shape]) -> Shape:
        (shape,) = in_shapes
        co, ci, kh, kw = self.weight.shape
        if len(shape) != 3 or shape[0] != ci:
            raise ValidationError(self.label, "weight", f"expects input (C={ci}, H, W), got {shape}")
        h = (shape[1] + 2 * self.padding[0] - kh) // self.stride[0] + 1
        w = (shape[2] + 2 * self.padding[1] - kw) // self.stride[1] + 1
        if h < 1 or w < 1:
            raise ValidationError(self.label, "weight", f"kernel {kh}x{kw} larger than padded input {shape}")
        if self.bias.ndim == 3 and self.bias.shape[1:] != (h, w):
            raise ValidationError(self.label, "bias", f"is a map of shape {self.bias.shape}; the output is "
                                  f"{(co, h, w)}, so a map must be {(co, h, w)} (or a vector ({co},))")
        return (co, h, w)

    @property
    def has_bias_map(self) -> bool:
        return self.bias.ndim == 3

    def bias_for_output(self) -> np.ndarray:
        """The bias shaped to broadcast over one sample's output ``(C_out, H_out, W_out)``."""
        return self.bias if self.bias.ndim == 3 else self.bias.reshape(-1, 1, 1)


@dataclass(frozen=True, eq=False)
class AvgPool2d(_Unary):
    kind: ClassVar[str] = "avgpool2d"
    linear: ClassVar[bool] = True
    kernel: tuple[int, int] | None = None
    stride: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.kernel is not None:
            object.__setattr__(self, "kernel", _pair(self.kernel, self.label, "kernel", 1))
            stride = self.kernel if self.stride is None else self.stride
            object.__setattr__(self, "stride", _pair(stride, self.label, "stride", 1))
        elif self.stride is not None:
            raise ValidationError(self.label, "stride", "global pooling (kernel=None) takes no stride")

    def window(self, shape: Shape) -> tuple[tuple[int, int], tuple[int, int]]:
        if self.kernel is None:
            return (shape[1], shape[2]), (shape[1], shape[2])
        return self.kernel, self.stride  # type: ignore[return-value]

    def infer_shape(self, in_shapes: list[Shape]) -> Shape:
        (shape,) = in_shapes
        if len(shape) != 3:
            raise ValidationError(self.label, "input", f"expects (C, H, W), got {shape}")
        (kh, kw), (sh, sw) = self.window(shape)
        if kh > shape[1] or kw > shape[2]:
            raise ValidationError(self.label, "kernel", f"{kh}x{kw} larger than input {shape}")
        return (shape[0], (shape[1] - kh) // sh + 1, (shape[2] - kw) // sw + 1)


@dataclass(frozen=True, eq=False)
class Flatten(_Unary):
    kind: ClassVar[str] = "flatten"
    linear: ClassVar[bool] = True

    def infer_shape(self, in_shapes: list[Shape]) -> Shape:
        (shape,) = in_shapes
        return (math.prod(shape),)  # Python ints: np.prod would wrap around on a huge shape


@dataclass(frozen=True, eq=False)
class Add(Node):
    kind: ClassVar[str] = "add"
    linear: ClassVar[bool] = True
    operands: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        names = tuple(self.operands)
        if len(names) < 2 or not all(isinstance(n, str) and n for n in names):
            raise ValidationError(self.label, "inputs", f"must name at least two nodes, got {names!r}")
        object.__setattr__(self, "operands", names)

    @property
    def inputs(self) -> tuple[str, ...]:
        return self.operands

    def infer_shape(self, in_shapes: list[Shape]) -> Shape:
        first = in_shapes[0]
        for name, shape in zip(self.operands, in_shapes):
            if shape != first:
                raise ValidationError(
                    self.label, "inputs", f"shape mismatch: {self.operands[0]!r} is {first}, {name!r} is {shape}"
                )
        return first


@dataclass(frozen=True, eq=False)
class FSActivation(_Unary):
    kind: ClassVar[str] = "fs"
    code: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.code, str) or not self.code:
            raise ValidationError(self.label, "code", f"must name an FS code, got {self.code!r}")

    def infer_shape(self, in_shapes: list[Shape]) -> Shape:
        return in_shapes[0]


@dataclass(frozen=True, eq=False)
class Readout(_Unary):
    kind: ClassVar[str] = "readout"

    def infer_shape(self, in_shapes: list[Shape]) -> Shape:
        return in_shapes[0]


NODE_TYPES: dict[str, type[Node]] = {
    cls.kind: cls for cls in (Input, Dense, Conv2d, AvgPool2d, Flatten, Add, FSActivation, Readout)
}
