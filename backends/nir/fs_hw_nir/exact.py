r"""The exact NIR graph: an FS network on the NIR grid, unrolled into NIR's own primitives.

Time is counted in **ticks**, one tick per FS step (``dt = 1``; a Delay of ``n`` delays by
``n`` ticks). A spiking node at stage ``a`` decides its step ``t`` at tick ``aK + t``. The
graph has no state but its Delay nodes; every other node maps its input at a tick to its
output at the same tick, and a node with several incoming edges receives their sum. For an
FS node ``S`` (integer tables ``T, h``, rule ``>=``) and step ``t``:

* ``S::v0`` (Scale 1): the sum of everything S receives, valid at tick ``aK``;
* ``S::z{t}`` (Threshold ``T(t) - 1``): the spikes of step ``t``, read at tick ``aK + t``.
  NIR fires on ``v > threshold``; on the integer grid ``v >= T`` is ``v > T - 1``, so the
  threshold is shifted down by one grid unit and the rule is kept exactly;
* ``S::r{t}`` (Scale ``-h(t)``) and ``S::v{t+1}`` (Delay 1): ``v(t+1) = v(t) - h(t) z(t)``
  one tick later: test, then subtract, as the FS dynamics say.

A weighted node ``N`` (Affine or Conv2d) that reads the spiking node ``S`` (stage ``a``)
and feeds the receiver ``R`` (stage ``b``) becomes, per source step ``s``: copies of its
pooling/flatten chain (``N::s{s}::<chain node>``, SumPool2d for the window sums), the
weights of that step ``N::s{s}`` (its bias on the first step only) and ``N::s{s}::delay``
(Delay ``(b - a)K - s``), which lands the term at ``R::v0`` at tick ``bK``. The input
code runs in the graph too: the Input node delivers ``floor(x * 2^input_bits)`` at tick 0.
The read-out is ``R::v0`` of the read-out node, fed to the Output node, read at its tick.

Outside its decision tick a Threshold's output is not a spike of the network (its input
there is whatever the delays bring); the graph metadata ``fs_hw_exact`` (JSON) lists every
spiking node, its stage and its Threshold nodes, and each Threshold's metadata names its
node, step and ``decision_tick``.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field

import nir
import numpy as np

from fs_hw.errors import UnsupportedError
from fs_hw.ir import AvgPool2d, Conv2d, Dense, Flatten, Input, Network, Readout
from fs_hw.ir.nodes import Node
from fs_hw_nir.profile import GridInfo

FORMAT = "fs-hw-nir-exact"
VERSION = 1
#: separates an IR node's name from the part of it a NIR node implements
SEP = "::"
METADATA_KEY = "fs_hw_exact"


@dataclass
class ExactGraph:
    """The exact graph and the plan to read it (what the metadata says, in Python)."""

    graph: nir.NIRGraph
    plan: dict
    node_types: Counter = field(default_factory=Counter)

    @property
    def nodes(self) -> int:
        return len(self.graph.nodes)


def _full(shape: tuple[int, ...], value: float) -> np.ndarray:
    return np.full(shape, float(value), dtype=np.float64)


class _Builder:
    def __init__(self, network: Network):
        self.net = network
        self.nodes: dict[str, nir.NIRNode] = {}
        self.edges: list[tuple[str, str]] = []

    def add(self, name: str, node: nir.NIRNode) -> str:
        if name in self.nodes:  # an IR node named like a generated one ("a::z0") would clash
            raise UnsupportedError(f"NIR export: two NIR nodes would be named {name!r}; rename the IR node")
        self.nodes[name] = node
        return name

    def edge(self, src: str, dst: str) -> None:
        self.edges.append((src, dst))


def build_exact(network: Network, info: GridInfo) -> ExactGraph:
    """The exact graph of the integer ``network`` (from :func:`fs_hw_nir.profile.nir_grid`)."""
    b = _Builder(network)
    net, K, stages, shapes = network, network.K, network.stages, network.shapes
    source_net = info.steps.network  # same names; tells pooling (a sum conv here) apart
    spiking = []
    readout_tick = stages[net.readout.name] * K
    for node in net.order:
        if net.is_spiking(node):
            spiking.append(_cells(b, node, stages[node.name], shapes[node.name]))
        elif isinstance(node, Readout):
            b.add(f"{node.name}{SEP}v0", nir.Scale(scale=_full(shapes[node.name], 1.0)))
            # no metadata on Output: nir 1.0.4 (sinabs, rockpool) refuses it there; the plan has the tick
            b.add(node.name, nir.Output(output_type={"output": np.array(shapes[node.name])}))
            b.edge(f"{node.name}{SEP}v0", node.name)
    for name, (src, chain) in net.step_sources.items():
        _weighted(b, net.by_name[name], src, chain, info.steps.receiver[name], source_net)
    chain_nodes = {c for _, chain in net.step_sources.values() for c in chain}
    for node in net.order:  # everything else must have been unrolled above
        if isinstance(node, (Dense, Conv2d)) and node.name not in net.step_sources and node.name not in chain_nodes:
            raise UnsupportedError(f"{node.label}: has no per-step weights; the NIR grid gives every weighted node "
                                   "one weight per source step")
    plan = {
        "format": FORMAT, "version": VERSION, "K": K, "dt": "1 tick = 1 FS step",
        "edges": "identities; a node with several incoming edges receives their sum",
        "ticks": readout_tick + 1,
        "input": {"node": net.input.name, "shape": list(net.input.shape), "scale": info.input_scale,
                  "rounding": "floor", "tick": 0},
        "readout": {"node": net.readout.name, "tick": readout_tick,
                    "unit": info.units.get(net.readout.name, 1.0)},
        "spiking": spiking,
        "firing_rule": "NIR Threshold fires on v > threshold; the FS rule v >= T on the integer grid is "
                       "v > T - 1, so each threshold is T - 1 (one grid unit below)",
        "grid": {"weight_bits": info.weight_bits, "units": info.units, "max_abs_sum": info.max_abs_sum,
                 "float32_exact": info.float32_exact},
    }
    graph = nir.NIRGraph(nodes=b.nodes, edges=b.edges, metadata={METADATA_KEY: json.dumps(plan)},
                         type_check=False)
    return ExactGraph(graph, plan, Counter(type(n).__name__ for n in b.nodes.values()))


def _cells(b: _Builder, node: Node, stage: int, shape: tuple[int, ...]) -> dict:
    """The Threshold cells of a spiking node (module docstring) and its entry in the plan."""
    code = b.net.code_of(node)
    K = code.K
    v0 = b.add(f"{node.name}{SEP}v0", nir.Scale(scale=_full(shape, 1.0)))
    if isinstance(node, Input):
        b.add(node.name, nir.Input(input_type={"input": np.array(shape)}))
        b.edge(node.name, v0)
    cells = []
    v = v0
    for t in range(K):
        z = b.add(f"{node.name}{SEP}z{t}", nir.Threshold(
            threshold=_full(shape, code.T[t] - 1),
            metadata={"fs_hw_node": node.name, "step": t, "decision_tick": stage * K + t,
                      "fs_rule": ">=", "fs_threshold": float(code.T[t])}))
        b.edge(v, z)
        cells.append(z)
        if t == K - 1:
            break
        nxt = b.add(f"{node.name}{SEP}v{t + 1}", nir.Delay(delay=_full(shape, 1.0)))
        b.edge(v, nxt)
        if code.h[t] != 0:
            r = b.add(f"{node.name}{SEP}r{t}", nir.Scale(scale=_full(shape, -code.h[t])))
            b.edge(z, r)
            b.edge(r, nxt)
        v = nxt
    return {"node": node.name, "kind": "input" if isinstance(node, Input) else "fs", "stage": stage,
            "shape": list(shape), "cells": cells}


def _weighted(b: _Builder, node: Node, src: str, chain: tuple[str, ...], receiver: str, source_net: Network) -> None:
    net, K, stages = b.net, b.net.K, b.net.stages
    span = stages[receiver] - stages[src]
    sw = node.step_weight  # type: ignore[attr-defined]
    steps = [s for s in range(K) if np.any(sw[s])] or [0]  # a silent step adds nothing (the bias rides on one)
    for i, s in enumerate(steps):
        prev = f"{src}{SEP}z{s}"
        for c in chain:
            prev = _chain_copy(b, f"{node.name}{SEP}s{s}{SEP}{c}", net.by_name[c], source_net.by_name[c], prev)
        bias_map = isinstance(node, Conv2d) and node.has_bias_map
        channels = node.weight.shape[0]  # type: ignore[attr-defined]
        bias = node.bias if i == 0 and not bias_map else np.zeros(channels)  # type: ignore[attr-defined]
        w = f"{node.name}{SEP}s{s}"
        in_shape = net.shapes[node.input]  # type: ignore[attr-defined]
        if isinstance(node, Dense):
            b.add(w, nir.Affine(weight=np.asarray(sw[s], np.float64), bias=np.asarray(bias, np.float64)))
        else:
            b.add(w, _conv(node, sw[s], bias, in_shape))
        b.edge(prev, w)
        delay = b.add(f"{w}{SEP}delay", nir.Delay(delay=_full(net.shapes[node.name], span * K - s)))
        b.edge(w, delay)
        if i == 0 and bias_map:
            _bias_map(b, w, node.bias, delay)  # type: ignore[attr-defined]
        b.edge(delay, f"{receiver}{SEP}v0")


def _bias_map(b: _Builder, carrier: str, bias: np.ndarray, into: str) -> None:
    """A bias that differs per position (a map (C, H, W): NIR's Conv2d bias is per channel):
    ``Scale(map)`` of a constant 1 made from a node of the same shape, ``[0 * x > -1/2]``,
    which is 1 whatever the (finite) value x."""
    shape = bias.shape
    zero = b.add(f"{carrier}{SEP}zero", nir.Scale(scale=_full(shape, 0.0)))
    one = b.add(f"{carrier}{SEP}one", nir.Threshold(threshold=_full(shape, -0.5)))
    value = b.add(f"{carrier}{SEP}bias_map", nir.Scale(scale=np.asarray(bias, np.float64)))
    for src, dst in ((carrier, zero), (zero, one), (one, value), (value, into)):
        b.edge(src, dst)


def _conv(node: Conv2d, weight: np.ndarray, bias: np.ndarray, in_shape: tuple[int, ...]) -> nir.Conv2d:
    return nir.Conv2d(input_shape=np.array(in_shape[1:]), weight=np.asarray(weight, np.float64),
                      stride=np.array(node.stride), padding=np.array(node.padding), dilation=np.array([1, 1]),
                      groups=1, bias=np.asarray(bias, np.float64))


def _chain_copy(b: _Builder, name: str, node: Node, source: Node, prev: str) -> str:
    """One step's copy of a chain node: Flatten, or SumPool2d for a pooling (a window sum
    on the grid: the 1/window factor is in the per-step weights)."""
    in_shape = b.net.shapes[node.input]  # type: ignore[attr-defined]
    if isinstance(node, Flatten):
        b.add(name, nir.Flatten(input_type={"input": np.array(in_shape)}, start_dim=0, end_dim=-1))
    elif isinstance(source, AvgPool2d):
        (kh, kw), stride = source.window(in_shape)
        b.add(name, nir.SumPool2d(kernel_size=np.array([kh, kw]), stride=np.array(stride),
                                  padding=np.array([0, 0])))
    else:
        raise UnsupportedError(f"{node.label}: only pooling and flatten may lie between a spiking node and the "
                               "weights that read it in the exact NIR graph")
    b.edge(prev, name)
    return name
