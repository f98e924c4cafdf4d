"""`Network`: a validated graph of IR nodes plus the FS codes they use."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from fs_hw.errors import ValidationError
from fs_hw.ir.code import FSCode
from fs_hw.ir.nodes import Add, AvgPool2d, Conv2d, Dense, Flatten, FSActivation, Input, Node, Readout, Shape

# Most nodes in one network. The largest shipped network has 54 and a ResNet-152 about
# 400; the spike-mode reference costs (stages x K) global steps times the node count, so
# a network of many thousands of nodes would not finish anyway.
MAX_NODES = 4096
# Most elements (neurons or values) one node may output per sample: 2**31 - 1 keeps every
# neuron index within int32 (what chips and backends index with) and far from int64
# overflow in products of shapes.
MAX_NODE_ELEMENTS = 2**31 - 1


@dataclass(frozen=True, eq=False)
class Network:
    """An FS network: nodes, the codes they name, and metadata.

    Construction validates everything: unique names, known inputs, no cycles, exactly
    one :class:`~fs_hw.ir.nodes.Readout`, every edge's shape, every named code known,
    all codes with the same number of steps ``K`` (one stage of the pipeline lasts
    K steps), every spiking node feeding the read-out (no dead branch), at most
    ``MAX_NODES`` nodes and ``MAX_NODE_ELEMENTS`` elements per node and sample, and for
    every Dense/Conv2d with ``step_weight``: a valid chain to one spiking source and
    ``K`` equal to that source's code's K (see :meth:`step_source`).

    Timing: spiking nodes (coded inputs and FS activations) are *stages*. A coded input
    is stage 0; an FS activation is one stage after the latest stage that feeds it; the
    read-out is read once that stage's K steps are done. Stage ``s`` runs at global
    steps ``[s·K, (s+1)·K)``, and ``time_steps = (readout stage)·K``.
    """

    nodes: tuple[Node, ...]
    codes: Mapping[str, FSCode]
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        nodes = tuple(self.nodes)
        object.__setattr__(self, "nodes", nodes)
        codes = dict(self.codes)
        for key, code in codes.items():
            if not isinstance(code, FSCode):
                raise ValidationError(f"network code {key!r}", "code", f"must be an FSCode, got {type(code).__name__}")
            if code.name != key:
                raise ValidationError(f"network code {key!r}", "name", f"code is named {code.name!r}")
        object.__setattr__(self, "codes", codes)
        object.__setattr__(self, "metadata", dict(self.metadata))
        self._validate()

    # -- structure ---------------------------------------------------------------------
    def _validate(self) -> None:
        if len(self.nodes) > MAX_NODES:
            raise ValidationError("network", "nodes", f"has {len(self.nodes)} nodes (limit {MAX_NODES})")
        by_name: dict[str, Node] = {}
        for node in self.nodes:
            if not isinstance(node, Node):
                raise ValidationError("network", "nodes", f"{node!r} is not an IR node")
            if node.name in by_name:
                raise ValidationError(node.label, "name", "used by more than one node")
            by_name[node.name] = node
        for node in self.nodes:
            for src in node.inputs:
                if src not in by_name:
                    raise ValidationError(node.label, "input", f"refers to unknown node {src!r}")
                if isinstance(by_name[src], Readout):
                    raise ValidationError(node.label, "input", f"reads from read-out {src!r}")
        readouts = [n for n in self.nodes if isinstance(n, Readout)]
        if len(readouts) != 1:
            raise ValidationError("network", "readout", f"needs exactly one read-out node, found {len(readouts)}")
        if not any(isinstance(n, Input) for n in self.nodes):
            raise ValidationError("network", "input", "has no input node")
        _ = self.order  # raises on cycles
        used_K = {}
        for node in self.nodes:
            code_name = node.code if isinstance(node, (Input, FSActivation)) else None
            if code_name is None:
                continue
            if code_name not in self.codes:
                raise ValidationError(node.label, "code", f"unknown FS code {code_name!r}; known: {sorted(self.codes)}")
            used_K[node.name] = self.codes[code_name].K
        if len(set(used_K.values())) > 1:
            first = next(iter(used_K))
            for name, k in used_K.items():
                if k != used_K[first]:
                    raise ValidationError(
                        f"node {name!r}", "code",
                        f"K mismatch: its code has K={k}, node {first!r}'s has K={used_K[first]}",
                    )
        _ = self.shapes  # raises on shape mismatch
        self._check_live()
        _ = self.step_sources  # raises on a step_weight without a valid chain or with the wrong K

    def _check_live(self) -> None:
        """Refuse spiking nodes whose output reaches no read-out (a dead branch).

        Their spikes are never read, and their stage may lie beyond the read-out's, so
        the spike-mode reference never runs them while the fast mode does: the two modes
        (and a chip) would disagree on their spikes.
        """
        live: set[str] = set()
        stack = [self.readout.name]
        while stack:
            name = stack.pop()
            if name not in live:
                live.add(name)
                stack.extend(self.by_name[name].inputs)
        for node in self.nodes:
            if self.is_spiking(node) and node.name not in live:
                raise ValidationError(
                    node.label, "output",
                    f"reaches no read-out (a dead branch: nothing reads its spikes, and read-out "
                    f"{self.readout.name!r} does not depend on it); remove it",
                )

    # -- per-step weights ------------------------------------------------------------------
    def step_source(self, name: str) -> tuple[str, tuple[str, ...]]:
        """The spiking node a ``step_weight`` on node ``name`` indexes, and the chain to it.

        Starting at ``name``'s input, follows single-input linear nodes (Flatten,
        AvgPool2d, and Dense/Conv2d whose bias is all zero and which have no
        ``step_weight``) until a spiking node S (FSActivation or coded Input) is reached.
        Returns ``(S's name, chain)``, where ``chain`` names the linear nodes between S
        and ``name`` in the order they apply to S's spikes (nearest S first; empty when
        ``name`` reads S directly). The chain's bias-free maps composed are the ``C`` of
        the step-weight formula (see :class:`~fs_hw.ir.nodes.Dense`).

        Works for any node with one input, with or without ``step_weight`` (a tool that
        is about to add step weights calls it first). Raises
        :class:`~fs_hw.errors.ValidationError` naming node ``name``, the field
        ``step_weight`` and the node that ends the chain: an Add, a biased or
        step-weighted Dense/Conv2d, or an analog Input.
        """
        if name not in self.by_name:
            raise ValidationError("network", "step_source", f"no node named {name!r}")
        node = self.by_name[name]
        if len(node.inputs) != 1:
            raise ValidationError(node.label, "step_weight", f"needs exactly one input, has {len(node.inputs)}")
        chain: list[str] = []
        current = self.by_name[node.inputs[0]]
        while not self.is_spiking(current):
            reason = None
            if isinstance(current, Input):
                reason = "is an analog input (code None): it has no spikes to weight per step"
            elif isinstance(current, Add):
                reason = "is an add: a chain has one spiking source, an add joins several paths"
            elif isinstance(current, (Dense, Conv2d)):
                if current.step_weight is not None:
                    reason = "has its own step_weight (step weights do not compose)"
                elif np.any(current.bias != 0):
                    first = int(np.flatnonzero(current.bias)[0])
                    reason = f"has a non-zero bias (bias[{first}] = {current.bias[first]!r})"
            elif not isinstance(current, (Flatten, AvgPool2d)):
                reason = "is not a linear node"
            if reason is not None:
                raise ValidationError(
                    node.label, "step_weight",
                    f"the chain from its input reaches {current.label}, which {reason}; a step-weighted "
                    "node must reach exactly one spiking node through Flatten, AvgPool2d and bias-free "
                    "Dense/Conv2d without step_weight",
                )
            chain.append(current.name)
            current = self.by_name[current.inputs[0]]
        return current.name, tuple(reversed(chain))

    @cached_property
    def step_sources(self) -> dict[str, tuple[str, tuple[str, ...]]]:
        """``{name: (source, chain)}`` for every node with ``step_weight`` (see :meth:`step_source`).

        Checked at construction: a valid chain, and ``step_weight.shape[0]`` equal to the
        K of the source's code.
        """
        out: dict[str, tuple[str, tuple[str, ...]]] = {}
        for node in self.order:
            sw = getattr(node, "step_weight", None)
            if sw is None:
                continue
            source, chain = self.step_source(node.name)
            src = self.by_name[source]
            K = self.codes[src.code].K  # type: ignore[attr-defined]
            if sw.shape[0] != K:
                raise ValidationError(
                    node.label, "step_weight",
                    f"has K={sw.shape[0]} steps (shape {sw.shape}), its source {src.label} runs code "
                    f"{src.code!r} with K={K}",  # type: ignore[attr-defined]
                )
            out[node.name] = (source, chain)
        return out

    def nominal_step_weight(self, name: str) -> np.ndarray:
        """``step_weight[t] = weight * d_S(t)`` for node ``name``: the per-step weights with
        which it computes exactly what it computes without (a float64 array ``(K, *weight.shape)``;
        a quantizer rounds these to its units)."""
        source, _ = self.step_source(name)
        node = self.by_name[name]
        if not isinstance(node, (Dense, Conv2d)):
            raise ValidationError(node.label, "step_weight", "only dense and conv2d nodes have per-step weights")
        d = self.code_of(self.by_name[source]).d
        return d.reshape(-1, *([1] * node.weight.ndim)) * node.weight[None]

    @cached_property
    def by_name(self) -> dict[str, Node]:
        return {n.name: n for n in self.nodes}

    @cached_property
    def order(self) -> tuple[Node, ...]:
        """Nodes in a topological order (stable: ties keep file order)."""
        by_name = {n.name: n for n in self.nodes}
        state: dict[str, int] = {}
        out: list[Node] = []
        for root in self.nodes:
            if root.name in state:
                continue
            stack = [(root, iter(root.inputs))]
            state[root.name] = 1
            while stack:
                node, it = stack[-1]
                nxt = next(it, None)
                if nxt is None:
                    stack.pop()
                    state[node.name] = 2
                    out.append(node)
                elif state.get(nxt) == 1:
                    raise ValidationError(node.label, "input", f"cycle through {nxt!r}")
                elif nxt not in state:
                    state[nxt] = 1
                    stack.append((by_name[nxt], iter(by_name[nxt].inputs)))
        return tuple(out)

    @cached_property
    def shapes(self) -> dict[str, Shape]:
        """Per-sample output shape of every node, checked edge by edge."""
        shapes: dict[str, Shape] = {}
        for node in self.order:
            shape = node.infer_shape([shapes[s] for s in node.inputs])
            if math.prod(shape) > MAX_NODE_ELEMENTS:
                raise ValidationError(
                    node.label, "shape",
                    f"outputs {shape} = {math.prod(shape)} elements per sample (limit {MAX_NODE_ELEMENTS})",
                )
            shapes[node.name] = shape
        return shapes

    @cached_property
    def consumers(self) -> dict[str, tuple[str, ...]]:
        out: dict[str, list[str]] = {n.name: [] for n in self.nodes}
        for node in self.order:
            for src in node.inputs:
                out[src].append(node.name)
        return {k: tuple(v) for k, v in out.items()}

    @property
    def readout(self) -> Readout:
        return next(n for n in self.nodes if isinstance(n, Readout))  # type: ignore[return-value]

    @property
    def input(self) -> Input:
        inputs = [n for n in self.nodes if isinstance(n, Input)]
        if len(inputs) != 1:
            raise ValidationError("network", "input", f"has {len(inputs)} inputs; this call needs one")
        return inputs[0]  # type: ignore[return-value]

    def is_spiking(self, node: Node) -> bool:
        return isinstance(node, FSActivation) or (isinstance(node, Input) and node.code is not None)

    @cached_property
    def K(self) -> int:
        """Steps per stage (the common K of all codes in use; 1 if none is used)."""
        for node in self.nodes:
            if self.is_spiking(node):
                return self.codes[node.code].K  # type: ignore[attr-defined]
        return 1

    @cached_property
    def stages(self) -> dict[str, int]:
        """Stage of every node; linear nodes get the latest stage feeding them."""
        stage: dict[str, int] = {}
        for node in self.order:
            upstream = max((stage[s] for s in node.inputs), default=-1)
            if isinstance(node, Input):
                stage[node.name] = 0 if node.code is not None else -1
            elif isinstance(node, (FSActivation, Readout)):
                stage[node.name] = upstream + 1
            else:
                stage[node.name] = upstream
        return stage

    @property
    def time_steps(self) -> int:
        """Steps from the first input spike until the read-out is complete."""
        return max(self.stages[self.readout.name], 0) * self.K

    def code_of(self, node: Node) -> FSCode:
        return self.codes[node.code]  # type: ignore[attr-defined]

    def spiking_nodes(self) -> list[Node]:
        return [n for n in self.order if self.is_spiking(n)]

    def neuron_counts(self) -> dict[str, int]:
        return {n.name: int(np.prod(self.shapes[n.name])) for n in self.spiking_nodes()}

    # -- editing (returns new networks) ------------------------------------------------
    def replace(self, nodes: Iterable[Node] | None = None, codes: Mapping[str, FSCode] | None = None,
                metadata: Mapping[str, Any] | None = None) -> Network:
        return Network(
            tuple(self.nodes if nodes is None else nodes),
            dict(self.codes if codes is None else codes),
            dict(self.metadata if metadata is None else metadata),
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Network):
            return NotImplemented
        return (
            self.nodes == other.nodes
            and dict(self.codes) == dict(other.codes)
            and dict(self.metadata) == dict(other.metadata)
        )

    __hash__ = object.__hash__

    def summary(self) -> str:
        lines = []
        for node in self.order:
            extra = f" code={node.code}" if hasattr(node, "code") and node.code else ""
            if getattr(node, "step_weight", None) is not None:
                extra += f" step_weight<-{self.step_sources[node.name][0]}"
            lines.append(
                f"{node.name:<16} {node.kind:<10} stage {self.stages[node.name]:>2}  "
                f"{str(self.shapes[node.name]):<16}{extra}"
            )
        return "\n".join(lines)
