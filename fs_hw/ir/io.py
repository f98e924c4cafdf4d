"""The `.fsnet` file format (specified in docs/ir-format.md).

A `.fsnet` file is a zip archive holding ``manifest.json`` (format name, version,
nodes, codes, metadata) and one ``.npy`` file per numeric array. Arrays are read with
``allow_pickle=False``, so a file can never execute code; every array's SHA-256 is in
the manifest, so a corrupted file is detected. Reading is strict (exact field sets and
JSON types, no NaN, no duplicate or unreferenced members) and bounded (see
:mod:`fs_hw.safe_archive`). Any problem reading a file raises
:class:`~fs_hw.errors.FormatError` (or :class:`~fs_hw.errors.ValidationError` for a
well-formed file describing an invalid network), never another exception type.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from fs_hw.errors import FormatError, FSHWError, ValidationError
from fs_hw.ir.code import MAX_K, FSCode
from fs_hw.ir.network import MAX_NODES, Network
from fs_hw.ir.nodes import NODE_TYPES, Add, Input, Node
from fs_hw.safe_archive import READ_ERRORS, SafeArchive, check_path

FORMAT_NAME = "fs-hw-ir"
# The newest version this package reads and writes. The writer writes the lowest version
# that can state the network: 1 unless a node has ``step_weight`` (version 2), so files
# without per-step weights stay readable by version-1 readers.
FORMAT_VERSION = 3
SUPPORTED_VERSIONS = (1, 2, 3)
STEP_WEIGHT_VERSION = 2
# Version 3: conv2d bias maps (C_out, H_out, W_out) and the input normalisation (input
# arrays mean/std). A version-2 reader would refuse either with a shape or key error that
# does not say why; the version makes it say "unknown version 3" first.
INPUT_UNITS_VERSION = 3
MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 64 * 1024 * 1024
# Inflated bytes one `.fsnet` may hold in all (manifest and arrays): 128 Mi float64
# parameters, 500x the largest shipped network (2.2 MB), several times any network a
# neuromorphic chip holds. A 2 MB zip declaring 2 GB is refused before inflating.
MAX_NETWORK_BYTES = 1 << 30


def network_to_manifest(network: Network) -> tuple[dict, dict[str, np.ndarray]]:
    arrays: dict[str, np.ndarray] = {}
    nodes = []
    for index, node in enumerate(network.nodes):
        entry: dict[str, Any] = {"kind": node.kind, "name": node.name, "inputs": list(node.inputs)}
        entry["attrs"] = node.attrs()
        refs = {}
        for key, arr in node.arrays().items():
            member = f"arrays/{index}.{key}.npy"
            arrays[member] = np.ascontiguousarray(arr, dtype="<f8")
            refs[key] = {
                "file": member,
                "shape": list(arr.shape),
                "dtype": "<f8",
                "sha256": hashlib.sha256(arrays[member].tobytes()).hexdigest(),
            }
        entry["arrays"] = refs
        nodes.append(entry)
    manifest = {
        "format": FORMAT_NAME,
        "version": file_version(network),
        "K": network.K,
        "nodes": nodes,
        "codes": [code.to_dict() for code in network.codes.values()],
        "metadata": dict(network.metadata),
    }
    return manifest, arrays


def file_version(network: Network) -> int:
    """The format version a file of ``network`` is written with: the lowest that states it.

    Version 2 only when a node has ``step_weight``: a version-1 reader must refuse such a
    file (ignoring the field would compute ``W y`` instead of the per-step sum), and the
    version is the one thing every reader checks before anything else.
    """
    if any(getattr(node, "has_bias_map", False) or getattr(node, "mean", None) is not None
           for node in network.nodes):
        return INPUT_UNITS_VERSION
    if any(getattr(node, "step_weight", None) is not None for node in network.nodes):
        return STEP_WEIGHT_VERSION
    return 1


def save_network(network: Network, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write ``network`` to ``path`` (atomically; refuses to overwrite unless asked)."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FormatError(f"{path}: exists; refusing to overwrite (pass overwrite=True / --force)")
    manifest, arrays = network_to_manifest(network)
    try:
        text = json.dumps(manifest, indent=1, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValidationError("network", "metadata", f"not JSON-serialisable ({exc})") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh, zipfile.ZipFile(fh, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr(MANIFEST, text)
            for member, arr in arrays.items():
                buf = io.BytesIO()
                np.lib.format.write_array(buf, arr, allow_pickle=False)
                zf.writestr(member, buf.getvalue())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


# Exceptions a malformed archive can raise inside zipfile/json/numpy; all become FormatError.
_READ_ERRORS = READ_ERRORS


def load_network(path: str | os.PathLike) -> Network:
    """Read a `.fsnet` file. Raises only :class:`~fs_hw.errors.FSHWError` subclasses.

    What is read is bounded: the manifest by ``MAX_MANIFEST_BYTES``, all members together
    by ``MAX_NETWORK_BYTES`` of inflated data (see :mod:`fs_hw.safe_archive`).
    """
    what = "fs-hw network file"
    path = check_path(path, what)
    try:
        with SafeArchive(path, MAX_NETWORK_BYTES, what) as archive:
            return _read(archive, str(path))
    except FSHWError:
        raise
    except _READ_ERRORS as exc:
        raise FormatError(f"{path}: not a readable fs-hw network file ({type(exc).__name__}: {exc})") from None


TOP_KEYS = ("format", "version", "K", "nodes", "codes", "metadata")
NODE_KEYS = ("kind", "name", "inputs", "attrs", "arrays")
ARRAY_REF_KEYS = ("file", "shape", "dtype", "sha256")
# The attrs every node kind writes, and the JSON type each must have in the file (the
# canonical form the writer produces: pairs as 2-lists, never a bare int).
_ATTR_TYPES: dict[str, dict[str, str]] = {
    "input": {"shape": "sizes", "code": "name|null"},
    "dense": {},
    "conv2d": {"stride": "pair", "padding": "pair"},
    "avgpool2d": {"kernel": "pair|null", "stride": "pair|null"},
    "flatten": {},
    "add": {},
    "fs": {"code": "name"},
    "readout": {},
}
_SHA256 = re.compile(r"[0-9a-f]{64}")


class _NonFinite:
    """Stands in for a NaN / Infinity while parsing, so the error can say where it is."""

    def __init__(self, text: str):
        self.text = text


def _parse_manifest(raw: bytes, where: str) -> Any:
    def constant(text: str) -> _NonFinite:
        return _NonFinite(text)

    def number(text: str) -> Any:
        value = float(text)
        return value if math.isfinite(value) else _NonFinite(text)

    def pairs(items: list[tuple[str, Any]]) -> dict:
        out: dict = {}
        for key, value in items:
            if key in out:
                raise FormatError(f"{where}: {MANIFEST}: key {key!r} appears twice in one object")
            out[key] = value
        return out

    try:
        text = raw.decode("utf-8")
        manifest = json.loads(text, parse_constant=constant, parse_float=number, object_pairs_hook=pairs)
    except FormatError:
        raise
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, int digits
        raise FormatError(f"{where}: {MANIFEST} is not valid UTF-8 JSON ({type(exc).__name__}: {exc})") from None
    # The writer refuses NaN/Infinity (json.dumps(allow_nan=False)); so does the reader.
    stack: list[tuple[Any, str]] = [(manifest, "")]
    while stack:
        value, at = stack.pop()
        if isinstance(value, _NonFinite):
            raise FormatError(f"{where}: {MANIFEST}: {at.lstrip('.') or 'top level'}: {value.text} is not "
                              "allowed (JSON numbers must be finite)")
        if isinstance(value, dict):
            stack.extend(reversed([(v, f"{at}.{k}") for k, v in value.items()]))  # report in file order
        elif isinstance(value, list):
            stack.extend(reversed([(v, f"{at}[{i}]") for i, v in enumerate(value)]))
    return manifest


def _check_keys(mapping: dict, keys: tuple[str, ...], where: str) -> None:
    missing = [k for k in keys if k not in mapping]
    unknown = sorted(set(mapping) - set(keys))
    if missing:
        raise FormatError(f"{where}: missing field(s) {missing}")
    if unknown:
        raise FormatError(f"{where}: unknown field(s) {unknown}; known: {list(keys)}")


def _read(archive: SafeArchive, where: str) -> Network:
    if MANIFEST not in archive:
        raise FormatError(f"{where}: no {MANIFEST} in archive (not an fs-hw network file)")
    manifest = _parse_manifest(archive.read_bytes(MANIFEST, limit=MAX_MANIFEST_BYTES), where)
    if not isinstance(manifest, dict):
        raise FormatError(f"{where}: {MANIFEST} must hold a JSON object")
    if manifest.get("format") != FORMAT_NAME or type(manifest.get("format")) is not str:
        raise FormatError(f"{where}: format is {manifest.get('format')!r}, expected {FORMAT_NAME!r}")
    version = manifest.get("version")
    # type() and not `in`: True == 1 == 1.0 in Python, and neither is version 1.
    if type(version) is not int or version not in SUPPORTED_VERSIONS:
        note = "" if type(version) is int else f" (a {type(version).__name__}, not an integer)"
        raise FormatError(
            f"{where}: unknown format version {version!r}{note}; "
            f"this fs-hw reads versions {list(SUPPORTED_VERSIONS)}"
        )
    _check_keys(manifest, TOP_KEYS, where)
    K = manifest["K"]
    if type(K) is not int or not 1 <= K <= MAX_K:
        raise FormatError(f"{where}: K must be an integer in [1, {MAX_K}], got {K!r}")
    codes_list = _expect(manifest, "codes", list, where)
    codes: dict[str, FSCode] = {}
    for i, entry in enumerate(codes_list):
        code = FSCode.from_dict(entry, f"{where}: codes[{i}]", strict=True)
        if code.name in codes:
            raise FormatError(f"{where}: codes[{i}]: a second code named {code.name!r}")
        codes[code.name] = code
    node_list = _expect(manifest, "nodes", list, where)
    if len(node_list) > MAX_NODES:
        raise FormatError(f"{where}: {len(node_list)} nodes (limit {MAX_NODES})")
    metadata = _expect(manifest, "metadata", dict, where)
    # Every member is referenced once: a member shared by many nodes would be read (and
    # allocated) once per node, and a member no node names is not part of the network.
    users: dict[str, str] = {}
    nodes: list[Node] = []
    for i, entry in enumerate(node_list):
        nodes.append(_read_node(archive, entry, f"{where}: nodes[{i}]", users, version))
    extra = [n for n in archive.names if n != MANIFEST and n not in users and not n.endswith("/")]
    if extra:
        raise FormatError(
            f"{where}: {len(extra)} member(s) no node refers to, first {extra[0]!r} "
            f"({archive.size(extra[0])} bytes)"
        )
    network = Network(tuple(nodes), codes, metadata)
    if K != network.K:
        raise ValidationError(where, "K", f"manifest says K={K}, codes in use have K={network.K}")
    return network


def _expect(mapping: Any, key: str, kind: type, where: str) -> Any:
    if not isinstance(mapping, dict) or key not in mapping:
        raise FormatError(f"{where}: missing field {key!r}")
    value = mapping[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise FormatError(f"{where}: field {key!r} must be {kind.__name__}, got {type(value).__name__}")
    return value


def _is_int(value: Any) -> bool:
    return type(value) is int  # JSON ints only; bools are refused


def _attr(value: Any, spec: str, where: str, key: str) -> Any:
    """Check one attr's JSON type against ``spec`` and convert lists to tuples."""
    if "|null" in spec:
        if value is None:
            return None
        spec = spec.replace("|null", "")
    if spec == "name" and type(value) is str:
        return value
    if spec == "pair" and isinstance(value, list) and len(value) == 2 and all(map(_is_int, value)):
        return tuple(value)
    if spec == "sizes" and isinstance(value, list) and value and all(map(_is_int, value)):
        return tuple(value)
    wanted = {"name": "a string", "pair": "a list of 2 integers", "sizes": "a non-empty list of integers"}[spec]
    raise FormatError(f"{where}: attrs.{key}: must be {wanted}{' or null' if value is None or '|' in spec else ''}, "
                      f"got {value!r}")


def _read_node(archive: SafeArchive, entry: Any, where: str, users: dict[str, str], version: int) -> Node:
    if not isinstance(entry, dict):
        raise FormatError(f"{where}: must be an object, got {type(entry).__name__}")
    kind = _expect(entry, "kind", str, where)
    if kind not in NODE_TYPES:
        raise FormatError(f"{where}: unknown node kind {kind!r}; known: {sorted(NODE_TYPES)}")
    cls = NODE_TYPES[kind]
    name = _expect(entry, "name", str, where)
    where = f"{where} ({kind} {name!r})"
    _check_keys(entry, NODE_KEYS, where)
    inputs = _expect(entry, "inputs", list, where)
    if not all(type(s) is str for s in inputs):
        raise FormatError(f"{where}: inputs must be node names (strings), got {inputs!r}")
    attrs = _expect(entry, "attrs", dict, where)
    refs = _expect(entry, "arrays", dict, where)
    spec = _ATTR_TYPES[kind]
    _check_keys(attrs, tuple(spec), f"{where}: attrs")
    kwargs: dict[str, Any] = {key: _attr(attrs[key], spec[key], where, key) for key in spec}
    if kind == "avgpool2d" and (kwargs["kernel"] is None) != (kwargs["stride"] is None):
        raise FormatError(
            f"{where}: attrs: kernel {attrs['kernel']!r} and stride {attrs['stride']!r} must both be "
            "pairs or both null (global pooling)"
        )
    required, optional = set(cls.array_fields), set(cls.optional_array_fields)
    if not required <= set(refs) <= required | optional:
        allowed = f" (optional: {sorted(optional)})" if optional else ""
        raise FormatError(f"{where}: arrays {sorted(refs)} but a {kind} node has {sorted(required)}{allowed}")
    if "step_weight" in refs and version < STEP_WEIGHT_VERSION:
        raise FormatError(
            f"{where}: array 'step_weight' needs format version {STEP_WEIGHT_VERSION}, the file says "
            f"version {version} (a version-{version} reader would ignore it and compute something else)"
        )
    if version < INPUT_UNITS_VERSION and cls is Input and refs:
        raise FormatError(f"{where}: arrays {sorted(refs)} need format version {INPUT_UNITS_VERSION}, the file says "
                          f"version {version}")
    for key in (*cls.array_fields, *cls.optional_array_fields):
        if key in refs:
            kwargs[key] = _read_array(archive, refs[key], f"{where}.{key}", users)
    bias = kwargs.get("bias")
    if bias is not None and bias.ndim == 3 and version < INPUT_UNITS_VERSION:
        raise FormatError(f"{where}: a bias map of shape {bias.shape} needs format version {INPUT_UNITS_VERSION}, "
                          f"the file says version {version}")
    if cls is Add:
        if len(inputs) < 2:
            raise FormatError(f"{where}: an add node has at least two inputs, file lists {len(inputs)}")
        kwargs["operands"] = tuple(inputs)
    elif cls is Input:
        if inputs:
            raise FormatError(f"{where}: an input node has no inputs, file lists {len(inputs)}")
    else:
        if len(inputs) != 1:
            raise FormatError(f"{where}: a {kind} node has one input, file lists {len(inputs)}")
        kwargs["input"] = inputs[0]
    try:
        return cls(name=name, **kwargs)
    except TypeError as exc:
        raise FormatError(f"{where}: unexpected attributes ({exc})") from None


def _read_array(archive: SafeArchive, ref: Any, where: str, users: dict[str, str]) -> np.ndarray:
    if not isinstance(ref, dict):
        raise FormatError(f"{where}: array reference must be an object, got {type(ref).__name__}")
    _check_keys(ref, ARRAY_REF_KEYS, where)
    member = _expect(ref, "file", str, where)
    shape = _expect(ref, "shape", list, where)
    if not all(_is_int(s) and s >= 0 for s in shape):
        raise FormatError(f"{where}: shape must be a list of non-negative integers, got {shape!r}")
    if ref["dtype"] != "<f8":
        raise FormatError(f"{where}: dtype {ref['dtype']!r}, expected '<f8' (little-endian float64)")
    digest = _expect(ref, "sha256", str, where)
    if not _SHA256.fullmatch(digest):
        raise FormatError(f"{where}: sha256 must be 64 lowercase hex digits, got {digest[:80]!r}")
    if member not in archive:
        raise FormatError(f"{where}: array file {member!r} missing from archive")
    if member in users:
        raise FormatError(
            f"{where}: array file {member!r} ({archive.size(member)} bytes) is already used by "
            f"{users[member]}; each array member may be referenced once"
        )
    users[member] = where.split(": ", 1)[-1]
    arr = archive.read_npy(
        member, kinds="f", expect_shape=tuple(shape), expect_dtype="<f8", allow_fortran=False,
        max_elements=MAX_NETWORK_BYTES // 8, where=f"{where} ({member!r})",
    )
    actual = hashlib.sha256(arr.tobytes()).hexdigest()
    if actual != digest:
        raise FormatError(f"{where}: checksum mismatch (file {actual[:12]}…, manifest {digest[:12]}…): corrupted")
    return arr
