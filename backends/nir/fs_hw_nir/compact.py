r"""The compact NIR graph: one NIR node per IR node, the FS tables in IF nodes' metadata.

Every NIR tool reads it (it holds only NIR's own node types); only fs-hw computes it
exactly, because NIR has no FS neuron. The mapping (docs/nir.md):

==============  ===========================================================================
IR node         NIR node
==============  ===========================================================================
input           Input (the sample); with a code also an IF ``<input>::code`` after it
dense           Affine (``weight``, ``bias``)
conv2d          Conv2d (stride, padding, dilation 1, groups 1); a bias map (C, H, W) gives its
                per-channel mean as the Conv2d bias (the map itself: below)
avgpool2d       AvgPool2d (kernel and stride; global pooling marked in the header)
flatten         Flatten (``start_dim 0, end_dim -1`` of a sample)
add             Scale of ones (named in the header's ``adds``): its incoming edges are summed
fs              IF whose metadata holds the FS code: ``fs_code``, ``K``, ``T``, ``h``, ``d``,
                ``rule``, ``fs_hw_kind`` (the IF's own ``v_threshold`` is ``T(0)`` and ``r`` 1,
                for tools that ignore the metadata: an approximation, not the FS neuron)
readout         Output
==============  ===========================================================================

The graph metadata holds the header ``fs_hw_compact`` (JSON: node order, adds, global
poolings, input normalisation, the codes' provenance, the network's metadata) and the
arrays no NIR node has a field for: ``fs_hw_step_weight::<node>`` (per-step weights) and
``fs_hw_bias_map::<node>``. Only IF nodes carry node metadata, and IF nodes are written
without ``v_reset`` (0 when absent): nir 1.0.4, which sinabs 3.1 and rockpool 3.1 need,
takes metadata on neither Input, Output, Conv2d, Scale nor AvgPool2d and knows no
``v_reset``. So :func:`read_nir` gives back the network equal to the one written, and
both nir 1.0.4 and 1.0.8 read the file. :func:`read_nir` refuses any other neuron kind, naming
the node, its type and why it has no exact FS form.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import numpy as np

from fs_hw.errors import FormatError, MissingDependencyError, UnsupportedError
from fs_hw.ir import Add, AvgPool2d, Conv2d, Dense, Flatten, FSActivation, FSCode, Input, Network, Readout
from fs_hw.ir.io import MAX_NETWORK_BYTES
from fs_hw.ir.nodes import Node

FORMAT = "fs-hw-nir-compact"
VERSION = 1
METADATA_KEY = "fs_hw_compact"
#: the IF node that runs a coded input's FS code is named after the input with this suffix
CODE_SUFFIX = "::code"
#: graph metadata keys (followed by the node's name) of the arrays no NIR node has a field for
STEP_WEIGHT, BIAS_MAP = "fs_hw_step_weight::", "fs_hw_bias_map::"
FS_MEANING = ("FS neuron (Stoeckl & Maass 2021), not an IF: v(0) = input; at step t = 0..K-1 it fires if "
              "v >= T[t] (rule '>=') or v > T[t] (rule '>'), adds d[t] to its output and subtracts h[t] from v; "
              "its output y = sum_t d[t] z[t] is what the next node reads (see fs-hw docs/nir.md)")

_WHY_NOT = {
    "LIF": "its leak (tau, v_leak) and reset to v_reset have no exact FS form",
    "CubaLIF": "its synaptic and membrane time constants and reset to v_reset have no exact FS form",
    "LI": "a leaky integrator has no exact FS form",
    "CubaLI": "a leaky integrator with a synaptic current has no exact FS form",
    "I": "an integrator without threshold has no exact FS form",
    "IF": "an IF without the FS tables (metadata fs_code, T, h, d, K, rule) integrates over time and resets to "
          "v_reset, which is not an FS neuron",
    "Threshold": "a bare Threshold is a stateless spike; this looks like an unrolled graph (fs-hw's exact.nir): "
                 "import the compact graph (compact.nir)",
    "Delay": "delays belong to an unrolled graph (fs-hw's exact.nir): import the compact graph (compact.nir)",
    "Linear": "fs-hw writes dense layers as Affine",
    "Conv1d": "fs-hw networks hold 2-d convolutions only",
    "SumPool2d": "fs-hw writes pooling as AvgPool2d in the compact graph",
    "NIRGraph": "nested graphs are not read",
}


def _nir():
    try:
        import nir
    except ImportError:
        raise MissingDependencyError("NIR files need the nir package: pip install -e backends/nir "
                                     "(pins nir==1.0.8, h5py==3.16.0)") from None
    return nir


def _fs_metadata(code: FSCode, kind: str) -> dict[str, Any]:
    return {"fs_hw_kind": kind, "fs_code": code.name, "K": code.K, "T": np.asarray(code.T, np.float64),
            "h": np.asarray(code.h, np.float64), "d": np.asarray(code.d, np.float64), "rule": code.rule,
            "fs_meaning": FS_MEANING}


@functools.cache
def _if_without_reset(nir):
    class IFWithoutReset(nir.IF):
        """An IF written without ``v_reset`` when it is 0 (nir 1.0.4 knows no v_reset; later
        versions read its absence as 0); the file says type IF like any other."""

        def to_dict(self):
            out = super().to_dict()
            out["type"] = "IF"
            if not np.any(self.v_reset):
                out.pop("v_reset", None)
            return out

    return IFWithoutReset


def _if_node(nir, code: FSCode, shape: tuple[int, ...], kind: str):
    return _if_without_reset(nir)(r=np.ones(shape), v_threshold=np.full(shape, float(code.T[0])),
                                  v_reset=np.zeros(shape), metadata=_fs_metadata(code, kind))


def build_compact(network: Network):
    """The compact ``nir.NIRGraph`` of ``network`` (module docstring)."""
    nir = _nir()
    shapes = network.shapes
    nodes: dict[str, Any] = {}
    edges: list[tuple[str, str]] = []
    out_of: dict[str, str] = {}  # IR node -> the NIR node its consumers read
    global_pools, adds = [], []
    arrays: dict[str, np.ndarray] = {}  # graph metadata: the arrays no NIR node has a field for
    normalisation = {}
    for node in network.order:
        name, shape = node.name, shapes[node.name]
        for src in node.inputs:
            edges.append((out_of[src], name))
        out_of[name] = name
        if isinstance(node, Input):
            if node.normalization is not None:
                normalisation = {"mean": [float(v) for v in node.mean], "std": [float(v) for v in node.std]}
            nodes[name] = nir.Input(input_type={"input": np.array(shape)})
            if node.code is not None:
                coded = name + CODE_SUFFIX
                if coded in network.by_name:
                    raise UnsupportedError(f"{node.label}: NIR export names its code's IF node {coded!r}, "
                                           "which is another node's name")
                nodes[coded] = _if_node(nir, network.code_of(node), shape, "input_code")
                edges.append((name, coded))
                out_of[name] = coded
        elif isinstance(node, Dense):
            _step_weight(node, arrays)
            nodes[name] = nir.Affine(weight=node.weight, bias=node.bias)
        elif isinstance(node, Conv2d):
            _step_weight(node, arrays)
            bias = node.bias
            if node.has_bias_map:  # NIR's bias is per channel: the map rides in the graph metadata
                arrays[f"{BIAS_MAP}{name}"] = node.bias
                bias = node.bias.reshape(len(node.bias), -1).mean(axis=1)
            nodes[name] = nir.Conv2d(input_shape=np.array(shapes[node.input][1:]), weight=node.weight,
                                     stride=np.array(node.stride), padding=np.array(node.padding),
                                     dilation=np.array([1, 1]), groups=1, bias=bias)
        elif isinstance(node, AvgPool2d):
            (kh, kw), stride = node.window(shapes[node.input])
            if node.kernel is None:
                global_pools.append(name)
            nodes[name] = nir.AvgPool2d(kernel_size=np.array([kh, kw]), stride=np.array(stride),
                                        padding=np.array([0, 0]))
        elif isinstance(node, Flatten):
            nodes[name] = nir.Flatten(input_type={"input": np.array(shapes[node.input])}, start_dim=0, end_dim=-1)
        elif isinstance(node, Add):
            adds.append(name)
            nodes[name] = nir.Scale(scale=np.ones(shape))
        elif isinstance(node, FSActivation):
            nodes[name] = _if_node(nir, network.code_of(node), shape, "fs")
        elif isinstance(node, Readout):
            nodes[name] = nir.Output(output_type={"output": np.array(shape)})
        else:
            raise UnsupportedError(f"{node.label}: no compact NIR form for node kind {node.kind!r}")
    header = {
        "format": FORMAT, "version": VERSION, "K": network.K,
        "edges": "identities; a node with several incoming edges receives their sum (the adds)",
        "node_order": [n.name for n in network.nodes], "global_pools": global_pools, "adds": adds,
        "input_normalisation": normalisation,
        "provenance": {c.name: c.to_dict()["provenance"] for c in network.codes.values()},
        "network_metadata": network.metadata,
    }
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata={METADATA_KEY: json.dumps(header), **arrays},
                        type_check=False)


def _step_weight(node: Dense | Conv2d, arrays: dict[str, np.ndarray]) -> None:
    if node.step_weight is not None:
        arrays[f"{STEP_WEIGHT}{node.name}"] = node.step_weight


# -- import -------------------------------------------------------------------------------


def read_nir(path: str | Path) -> Network:
    """The FS network of a compact NIR file written by fs-hw (equal to the one written).

    Refused, naming the node, its type and why: any neuron other than an IF carrying the FS
    tables, stateless spikes and delays (an unrolled graph), nested graphs, and a node
    other than an add (a Scale the header names in ``adds``) with several inputs.
    """
    nir = _nir()
    path = Path(path)
    if not path.is_file():
        raise FormatError(f"{path}: no such file")
    check_file(path)
    try:
        graph = nir.read(path)
    except Exception as exc:  # h5py and nir raise many types on a malformed file
        raise FormatError(f"{path}: not a readable NIR file ({type(exc).__name__}: {exc})") from None
    return graph_to_network(graph, str(path))


#: what a NIR file may hold before it is read: HDF5 objects, and bytes of array data once
#: inflated (gzip can hide much data in a small file); the .fsnet reader's budget
MAX_OBJECTS, MAX_DATA_BYTES = 200_000, MAX_NETWORK_BYTES


def check_file(path: Path) -> None:
    """Refuse, before nir.read loads anything, an HDF5 file that links to or stores data in
    other files (external links and external storage would read files the user did not
    name) or whose objects or inflated array data exceed the budget."""
    import h5py

    objects, data = 0, 0
    try:
        with h5py.File(path, "r") as f:
            pending = [f]
            while pending:
                group = pending.pop()
                for name in group:
                    link = group.get(name, getlink=True)
                    if not isinstance(link, h5py.HardLink):
                        raise FormatError(f"{path}: {group.name}/{name} is a {type(link).__name__}; a NIR file "
                                          "holds its own groups and arrays only")
                    obj = group[name]
                    objects += 1
                    if isinstance(obj, h5py.Group):
                        pending.append(obj)
                        continue
                    if obj.external:
                        raise FormatError(f"{path}: {obj.name} stores its data in other files; refused")
                    data += int(obj.size) * max(int(obj.dtype.itemsize), 1)
                    if objects > MAX_OBJECTS or data > MAX_DATA_BYTES:
                        raise FormatError(f"{path}: more than {MAX_OBJECTS} objects or {MAX_DATA_BYTES} bytes of "
                                          "array data; refused")
    except FormatError:
        raise
    except Exception as exc:  # h5py raises OSError, KeyError, ... on a malformed file
        raise FormatError(f"{path}: not a readable NIR file ({type(exc).__name__}: {exc})") from None


def _text(value: Any) -> Any:
    return value.decode("utf-8") if isinstance(value, bytes) else value


def _meta(node) -> dict[str, Any]:
    return {k: _text(v) for k, v in dict(getattr(node, "metadata", {}) or {}).items()}


def _header(graph, where: str) -> dict[str, Any]:
    raw = _text(dict(graph.metadata or {}).get(METADATA_KEY))
    if raw is None:
        return {}
    try:
        header = json.loads(raw)
    except (TypeError, json.JSONDecodeError) as exc:
        raise FormatError(f"{where}: graph metadata {METADATA_KEY!r} is not JSON ({exc})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise FormatError(f"{where}: graph metadata {METADATA_KEY!r} is not an fs-hw compact header")
    if header.get("version") != VERSION:
        raise FormatError(f"{where}: compact NIR version {header.get('version')!r}; this fs-hw reads {VERSION}")
    return header


def _code(name: str, meta: dict[str, Any], provenance: Any, where: str) -> FSCode:
    missing = [k for k in ("fs_code", "T", "h", "d", "rule") if k not in meta]
    if missing:
        raise UnsupportedError(f"{where}: NIR node {name!r} is an IF without the FS tables ({', '.join(missing)} "
                               f"missing): {_WHY_NOT['IF']}")
    data = {"name": str(meta["fs_code"]), "rule": str(meta["rule"]),
            "T": [float(v) for v in np.atleast_1d(meta["T"])], "h": [float(v) for v in np.atleast_1d(meta["h"])],
            "d": [float(v) for v in np.atleast_1d(meta["d"])], "provenance": provenance}
    if "K" in meta:
        data["K"] = int(meta["K"])
    return FSCode.from_dict(data, f"NIR node {name!r}")


def graph_to_network(graph, where: str = "NIR graph") -> Network:
    """The FS network of an in-memory compact graph (see :func:`read_nir`)."""
    header = _header(graph, where)
    kinds = {name: type(node).__name__ for name, node in graph.nodes.items()}
    preds: dict[str, list[str]] = {name: [] for name in graph.nodes}
    succs: dict[str, list[str]] = {name: [] for name in graph.nodes}
    for src, dst in graph.edges:
        if src not in preds or dst not in preds:
            raise FormatError(f"{where}: edge {src!r} -> {dst!r} names a node the graph does not have")
        preds[dst].append(src)
        succs[src].append(dst)
    adds = set(header.get("adds", []))
    graph_meta = dict(graph.metadata or {})
    for name, kind in kinds.items():
        meta = _meta(graph.nodes[name])
        fs_if = kind == "IF" and "fs_code" in meta
        if kind not in ("Input", "Output", "Affine", "Conv2d", "AvgPool2d", "Flatten", "Scale") and not fs_if:
            raise UnsupportedError(f"{where}: NIR node {name!r} is a NIR {kind}; fs-hw imports FS networks only "
                                   f"(Affine, Conv2d, AvgPool2d, Flatten, IF with FS metadata, as fs-hw writes them): "
                                   f"{_WHY_NOT.get(kind, 'it has no exact FS form')}")
        if kind == "Scale" and name not in adds:
            raise UnsupportedError(f"{where}: NIR node {name!r} is a Scale that the fs-hw header does not name as an "
                                   "add: fs-hw has no elementwise scaling node (fold it into the weights)")
        if len(preds[name]) > 1 and kind != "Scale":
            raise UnsupportedError(f"{where}: NIR node {name!r} ({kind}) sums {len(preds[name])} incoming edges; fs-hw "
                                   "reads sums only as add nodes (a Scale of ones named in the header's adds)")
        if kind != "Input" and not preds[name]:
            raise FormatError(f"{where}: NIR node {name!r} ({kind}) has no incoming edge")
    provenance = header.get("provenance", {})
    alias: dict[str, str] = {}  # a coded input's IF node -> the input's name
    codes: dict[str, FSCode] = {}
    nodes: dict[str, Node] = {}

    def add_code(code: FSCode, name: str) -> str:
        if code.name in codes and codes[code.name] != code:
            raise FormatError(f"{where}: NIR node {name!r}: code {code.name!r} differs from another node's tables")
        codes[code.name] = code
        return code.name

    for name, node in graph.nodes.items():
        meta = _meta(node)
        if kinds[name] == "IF" and meta.get("fs_hw_kind") == "input_code":
            (src,) = preds[name]
            if kinds[src] != "Input":
                raise FormatError(f"{where}: NIR node {name!r}: an input code must follow the Input node, not {src!r}")
            alias[name] = src

    def source(name: str) -> str:
        (src,) = preds[name]
        return alias.get(src, src)

    for name, node in graph.nodes.items():
        kind, meta = kinds[name], _meta(node)
        if name in alias:
            continue
        if kind == "Input":
            coded = [s for s in succs[name] if s in alias]
            code = None
            if coded:
                c = _code(coded[0], _meta(graph.nodes[coded[0]]), provenance.get(_meta(graph.nodes[coded[0]])
                                                                                 .get("fs_code")), where)
                code = add_code(c, coded[0])
            shape = tuple(int(s) for s in np.atleast_1d(node.input_type["input"]))
            norm = header.get("input_normalisation") or {}
            nodes[name] = Input(name, shape, code, norm.get("mean"), norm.get("std"))
        elif kind == "Affine":
            nodes[name] = Dense(name, source(name), np.asarray(node.weight, np.float64),
                                np.asarray(node.bias, np.float64), step_weight=graph_meta.get(STEP_WEIGHT + name))
        elif kind == "Conv2d":
            if int(np.max(node.groups)) != 1 or np.any(np.asarray(node.dilation) != 1):
                raise UnsupportedError(f"{where}: NIR node {name!r}: Conv2d with groups {node.groups!r} or dilation "
                                       f"{node.dilation!r}; fs-hw convolutions have groups 1 and dilation 1")
            if isinstance(node.padding, str):
                raise UnsupportedError(f"{where}: NIR node {name!r}: padding {node.padding!r}; fs-hw reads "
                                       "integer padding")
            bias = graph_meta.get(BIAS_MAP + name, node.bias)
            nodes[name] = Conv2d(name, source(name), np.asarray(node.weight, np.float64),
                                 np.asarray(bias, np.float64), stride=_ints(node.stride),
                                 padding=_ints(node.padding), step_weight=graph_meta.get(STEP_WEIGHT + name))
        elif kind == "AvgPool2d":
            if np.any(np.asarray(node.padding) != 0):
                raise UnsupportedError(f"{where}: NIR node {name!r}: AvgPool2d with padding {node.padding!r}; "
                                       "fs-hw pooling has no padding")
            if name in header.get("global_pools", []):
                nodes[name] = AvgPool2d(name, source(name))
            else:
                nodes[name] = AvgPool2d(name, source(name), kernel=_ints(node.kernel_size), stride=_ints(node.stride))
        elif kind == "Flatten":
            nodes[name] = Flatten(name, source(name))
        elif kind == "Scale":
            nodes[name] = Add(name, operands=tuple(alias.get(p, p) for p in preds[name]))
        elif kind == "IF":
            code = add_code(_code(name, meta, provenance.get(meta.get("fs_code")), where), name)
            nodes[name] = FSActivation(name, source(name), code)
        elif kind == "Output":
            nodes[name] = Readout(name, source(name))
    order = header.get("node_order")
    if not (isinstance(order, list) and sorted(order) == sorted(nodes)):
        order = list(nodes)
    return Network(tuple(nodes[n] for n in order), codes, header.get("network_metadata", {}))


def _ints(value: Any) -> tuple[int, int]:
    arr = np.atleast_1d(np.asarray(value))
    if arr.size == 1:
        arr = np.repeat(arr, 2)
    return int(arr[0]), int(arr[1])
