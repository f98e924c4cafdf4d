r"""A float network in *per-step* form: what a time-unrolled chip quantizes, hardware-neutral.

A chip that unrolls FS neurons in time (:mod:`fs_hw.lower.unroll`) weighs each source
step separately: the synapse from source cell ``s`` carries ``w d_S(s)``. This module
brings a float network into that form, before any chip rounds anything:

* every weighted node (dense, conv) gets its float per-step weights
  ``w d_S(s) / window`` (``window``: the product of the pooling windows between it and its
  one spiking source ``S``, which become window *sums* in the integer network);
* a residual add that sums a spiking node directly gets an explicit identity node (1x1
  conv or diagonal dense) whose per-step weights are ``d_S(s)``;
* each weighted node is assigned its *receiver*: the FS node or read-out its output ends
  in (through adds), whose scale its weights share;
* :func:`row_sums` bounds, per output neuron (or channel), the positive and negative
  totals a receiver cell can get in one decision (every source spiking at every step),
  upper bounds at image borders.

A target supplies only its rounding (:class:`Rounding`); :func:`integer_network` builds
the integer IR network the reference runs in the target's profile: per-step weights,
pooling as sums, codes with integer thresholds (exact for an integer membrane) and the
resets the target rounds. SpiNNaker (16-bit weights on shifted grids) and BrainScaleS-2
(6-bit weights) use it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from fs_hw.errors import UnsupportedError, ValidationError
from fs_hw.ir import Add, AvgPool2d, Conv2d, Dense, Flatten, FSActivation, Input, Network, Readout
from fs_hw.ir.code import FSCode
from fs_hw.ir.nodes import Node

SUPPORTED = (Input, Dense, Conv2d, AvgPool2d, Flatten, Add, FSActivation, Readout)


@dataclass
class StepNetwork:
    """A float network in per-step form (see the module docstring)."""

    network: Network  # with identity nodes for spiking add operands
    float_steps: dict[str, np.ndarray] = field(default_factory=dict)  # weighted node -> (K, *weight.shape)
    sources: dict[str, tuple[str, tuple[str, ...]]] = field(default_factory=dict)  # -> (source, chain)
    receiver: dict[str, str] = field(default_factory=dict)  # weighted node -> FS node or read-out
    windows: dict[str, float] = field(default_factory=dict)  # weighted node -> pooling window product

    def feeding(self, receiver: str) -> list[str]:
        """The weighted nodes whose outputs end in ``receiver``."""
        return [n for n, r in self.receiver.items() if r == receiver]


def _receiver_of(network: Network, name: str, target: str) -> str:
    node = network.by_name[name]
    for consumer in network.consumers[name]:
        c = network.by_name[consumer]
        if isinstance(c, (FSActivation, Readout)):
            return consumer
        if isinstance(c, Add):
            return _receiver_of(network, consumer, target)
    raise UnsupportedError(
        f"{node.label}: on {target} a weighted node must feed an FS activation or the read-out "
        f"(directly or through a residual add); it feeds {list(network.consumers[name])}"
    )


def _window_product(network: Network, chain: tuple[str, ...], target: str) -> float:
    m = 1.0
    for name in chain:
        node = network.by_name[name]
        if isinstance(node, AvgPool2d):
            (kh, kw), _ = node.window(network.shapes[node.input])
            m *= kh * kw
        elif not isinstance(node, Flatten):
            raise UnsupportedError(f"{node.label}: only pooling and flatten may lie between a spiking node "
                                   f"and the weights that read it on {target}")
    return m


def _identity_for(network: Network, add: Add, op: str) -> Node:
    shape = network.shapes[op]
    name = f"{add.name}__skip_{op}"
    if len(shape) == 3:
        w = np.zeros((shape[0], shape[0], 1, 1))
        for i in range(shape[0]):
            w[i, i] = 1.0
        return Conv2d(name, op, w, np.zeros(shape[0]))
    return Dense(name, op, np.eye(shape[0]), np.zeros(shape[0]))


def step_network(network: Network, target: str) -> StepNetwork:
    """``network`` in per-step form, or :class:`UnsupportedError` naming the node that a
    time-unrolled chip cannot take (and why)."""
    net = network
    for node in net.nodes:
        if not isinstance(node, SUPPORTED):
            raise UnsupportedError(f"{node.label}: node kind {node.kind!r} is not supported by the {target} target")
    if net.input.code is None:
        raise UnsupportedError(
            f"{net.input.label}: analog input; {target} receives spikes only: give the input an FS code"
        )
    for node in net.nodes:
        if isinstance(node, (FSActivation, Readout)) and net.is_spiking(net.by_name[node.input]):
            raise UnsupportedError(f"{node.label}: reads the spiking node {node.input!r} directly; "
                                   "put a weighted node between")
        if isinstance(node, Add):
            for op in node.operands:
                o = net.by_name[op]
                if not (net.is_spiking(o) or isinstance(o, (Dense, Conv2d))):
                    raise UnsupportedError(f"{node.label}: operand {op!r} is a {o.kind}; on {target} an add sums "
                                           "weighted nodes and spiking nodes")
    nodes: list[Node] = []
    for node in net.order:
        if isinstance(node, Add):
            ops = []
            for op in node.operands:
                if net.is_spiking(net.by_name[op]):
                    ident = _identity_for(net, node, op)
                    nodes.append(ident)
                    ops.append(ident.name)
                else:
                    ops.append(op)
            nodes.append(Add(node.name, operands=tuple(ops)))
        else:
            nodes.append(node)
    net = Network(tuple(nodes), dict(net.codes), dict(net.metadata))
    out = StepNetwork(net)
    for node in net.order:
        if not isinstance(node, (Dense, Conv2d)):
            continue
        if node.step_weight is not None:
            raise UnsupportedError(f"{node.label}: already carries per-step weights; convert from a float network")
        try:
            src, chain = net.step_source(node.name)
        except ValidationError as exc:
            raise UnsupportedError(
                f"{node.label}: {target} stores one weight per source step, so a weighted node must read one "
                f"spiking node through pooling/flatten only ({exc})"
            ) from None
        window = _window_product(net, chain, target)
        d = net.code_of(net.by_name[src]).d
        out.sources[node.name] = (src, chain)
        out.windows[node.name] = window
        out.float_steps[node.name] = np.stack([node.weight * (float(dt) / window) for dt in d])
        out.receiver[node.name] = _receiver_of(net, node.name, target)
    return out


def row_sums(node: Dense | Conv2d, steps: np.ndarray, window: float) -> tuple[np.ndarray, np.ndarray]:
    """Per output neuron (dense) or channel (conv): the sums over steps and inputs of the
    positive and of the negative (as magnitudes) entries of the composed map (an upper
    bound at image borders, where padding drops taps; each pooled input stands for
    ``window`` source pixels)."""
    pos = np.where(steps > 0, steps, 0.0) * window
    neg = np.where(steps < 0, -steps, 0.0) * window
    axes = (0, 2) if isinstance(node, Dense) else (0, 2, 3, 4)
    return pos.sum(axis=axes), neg.sum(axis=axes)


def receiver_sums(step_net: StepNetwork, steps_of: Callable[[str], np.ndarray],
                  bias_of: Callable[[str], np.ndarray]) -> dict[str, tuple[float, float]]:
    """Per receiver, the largest positive and negative totals (magnitudes) one cell can
    get from its weighted inputs and biases (``steps_of``/``bias_of`` give a weighted
    node's per-step weights and bias in the units wanted)."""
    acc: dict[str, list[np.ndarray]] = {}
    for name, rec in step_net.receiver.items():
        node = step_net.network.by_name[name]
        pos, neg = row_sums(node, steps_of(name), step_net.windows[name])
        b = np.asarray(bias_of(name))
        b_pos, b_neg = np.where(b > 0, b, 0.0), np.where(b < 0, -b, 0.0)
        if b.ndim > 1:  # a conv's bias map: per channel, the largest over positions (a bound)
            b_pos, b_neg = b_pos.reshape(len(b), -1).max(axis=1), b_neg.reshape(len(b), -1).max(axis=1)
        pos = pos + b_pos
        neg = neg + b_neg
        a = acc.setdefault(rec, [np.zeros_like(pos), np.zeros_like(neg)])
        a[0] = a[0] + pos
        a[1] = a[1] + neg
    return {rec: (float(p.max(initial=0.0)), float(n.max(initial=0.0))) for rec, (p, n) in acc.items()}


def integer_threshold(T: np.ndarray, units_per_value: float, rule: str) -> np.ndarray:
    """Thresholds for an integer membrane, exact: ``v >= T`` iff ``v >= ceil(T)``, ``v > T``
    iff ``v >= floor(T) + 1`` (``T`` scaled to units first)."""
    scaled = np.asarray(T, np.float64) * units_per_value
    return np.ceil(scaled) if rule == ">=" else np.floor(scaled) + 1


@dataclass
class Rounding:
    """What a target rounds, as functions of the node (or receiver) and the float values."""

    #: weighted node -> its integer per-step weights (same shape as the float ones)
    step_weights: Callable[[str], np.ndarray]
    #: weighted node -> its integer bias
    bias: Callable[[str], np.ndarray]
    #: FS node (or the input) -> its code in integer units, rule ">="
    code: Callable[[Node, FSCode], FSCode]


def integer_network(step_net: StepNetwork, rounding: Rounding, metadata_key: str, metadata: dict) -> Network:
    """The integer IR network of ``step_net`` under a target's ``rounding``."""
    net = step_net.network
    new_nodes: list[Node] = []
    codes: dict[str, FSCode] = {}
    for node in net.order:
        if isinstance(node, Input):
            c = rounding.code(node, net.code_of(node))
            codes[c.name] = c
            new_nodes.append(Input(node.name, node.shape, c.name))
        elif isinstance(node, FSActivation):
            c = rounding.code(node, net.code_of(node))
            codes[c.name] = c
            new_nodes.append(FSActivation(node.name, node.input, c.name))
        elif isinstance(node, (Dense, Conv2d)):
            sw = rounding.step_weights(node.name)
            b = rounding.bias(node.name)
            # the nominal weight (for reading only): the first step's, without d
            nominal = np.round(node.weight * (float(np.abs(sw).max(initial=0.0)) /
                                              max(float(np.abs(node.weight).max(initial=0.0)), 1e-300)))
            if isinstance(node, Dense):
                new_nodes.append(Dense(node.name, node.input, nominal, b, step_weight=sw))
            else:
                new_nodes.append(Conv2d(node.name, node.input, nominal, b, stride=node.stride,
                                        padding=node.padding, step_weight=sw))
        elif isinstance(node, AvgPool2d):
            shape = net.shapes[node.input]
            (kh, kw), stride = node.window(shape)
            C = shape[0]
            w = np.zeros((C, C, kh, kw))
            for c in range(C):
                w[c, c] = 1.0
            new_nodes.append(Conv2d(node.name, node.input, w, np.zeros(C), stride=stride, padding=0))
        else:
            new_nodes.append(node)
    meta = dict(net.metadata)
    meta[metadata_key] = metadata
    return Network(tuple(new_nodes), codes, meta)
