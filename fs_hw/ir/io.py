"""The `.fsnet` file format (specified in docs/ir-format.md).

A `.fsnet` file is a zip archive holding ``manifest.json`` (format name, version,
nodes, codes, metadata) and one ``.npy`` file per numeric array. Arrays are read with
``allow_pickle=False``, so a file can never execute code; every array's SHA-256 is in
the manifest, so a corrupted file is detected. Any problem reading a file raises
:class:`~fs_hw.errors.FormatError` (or :class:`~fs_hw.errors.ValidationError` for a
well-formed file describing an invalid network), never another exception type.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import tempfile
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from fs_hw.errors import FormatError, FSHWError, ValidationError
from fs_hw.ir.code import FSCode
from fs_hw.ir.network import Network
from fs_hw.ir.nodes import NODE_TYPES, Add, Node

FORMAT_NAME = "fs-hw-ir"
FORMAT_VERSION = 1
SUPPORTED_VERSIONS = (1,)
MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 64 * 1024 * 1024


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
        "version": FORMAT_VERSION,
        "K": network.K,
        "nodes": nodes,
        "codes": [code.to_dict() for code in network.codes.values()],
        "metadata": dict(network.metadata),
    }
    return manifest, arrays


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
_READ_ERRORS = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    zlib.error,
    json.JSONDecodeError,
    UnicodeDecodeError,
    struct.error,
    EOFError,
    KeyError,
    IndexError,
    TypeError,
    ValueError,
    AttributeError,
    OverflowError,
    NotImplementedError,
    RecursionError,
    OSError,
)


def load_network(path: str | os.PathLike) -> Network:
    """Read a `.fsnet` file. Raises only :class:`~fs_hw.errors.FSHWError` subclasses."""
    path = Path(path)
    if not path.is_file():
        raise FormatError(f"{path}: no such file")
    try:
        with zipfile.ZipFile(path) as zf:
            return _read(zf, str(path))
    except FSHWError:
        raise
    except _READ_ERRORS as exc:
        raise FormatError(f"{path}: not a readable fs-hw network file ({type(exc).__name__}: {exc})") from None


def _read(zf: zipfile.ZipFile, where: str) -> Network:
    try:
        info = zf.getinfo(MANIFEST)
    except KeyError:
        raise FormatError(f"{where}: no {MANIFEST} in archive (not an fs-hw network file)") from None
    if info.file_size > MAX_MANIFEST_BYTES:
        raise FormatError(f"{where}: {MANIFEST} is {info.file_size} bytes (limit {MAX_MANIFEST_BYTES})")
    manifest = json.loads(zf.read(MANIFEST).decode("utf-8"))
    if not isinstance(manifest, dict):
        raise FormatError(f"{where}: {MANIFEST} must hold a JSON object")
    if manifest.get("format") != FORMAT_NAME:
        raise FormatError(f"{where}: format is {manifest.get('format')!r}, expected {FORMAT_NAME!r}")
    version = manifest.get("version")
    if version not in SUPPORTED_VERSIONS:
        raise FormatError(
            f"{where}: unknown format version {version!r}; this fs-hw reads versions {list(SUPPORTED_VERSIONS)}"
        )
    codes_list = _expect(manifest, "codes", list, where)
    codes = {}
    for i, entry in enumerate(codes_list):
        code = FSCode.from_dict(entry, f"{where}: codes[{i}]")
        codes[code.name] = code
    nodes: list[Node] = []
    for i, entry in enumerate(_expect(manifest, "nodes", list, where)):
        nodes.append(_read_node(zf, entry, f"{where}: nodes[{i}]"))
    metadata = manifest.get("metadata", {})
    if not isinstance(metadata, dict):
        raise FormatError(f"{where}: metadata must be an object")
    network = Network(tuple(nodes), codes, metadata)
    if "K" in manifest and manifest["K"] != network.K:
        raise ValidationError(where, "K", f"manifest says K={manifest['K']}, codes in use have K={network.K}")
    return network


def _expect(mapping: Any, key: str, kind: type, where: str) -> Any:
    if not isinstance(mapping, dict) or key not in mapping:
        raise FormatError(f"{where}: missing field {key!r}")
    value = mapping[key]
    if not isinstance(value, kind):
        raise FormatError(f"{where}: field {key!r} must be {kind.__name__}, got {type(value).__name__}")
    return value


def _read_node(zf: zipfile.ZipFile, entry: Any, where: str) -> Node:
    kind = _expect(entry, "kind", str, where)
    if kind not in NODE_TYPES:
        raise FormatError(f"{where}: unknown node kind {kind!r}; known: {sorted(NODE_TYPES)}")
    cls = NODE_TYPES[kind]
    name = _expect(entry, "name", str, where)
    where = f"{where} ({kind} {name!r})"
    inputs = _expect(entry, "inputs", list, where)
    attrs = _expect(entry, "attrs", dict, where)
    refs = _expect(entry, "arrays", dict, where)
    kwargs: dict[str, Any] = dict(attrs)
    for key in ("name", "input", "operands"):
        kwargs.pop(key, None)
    if set(refs) != set(cls.array_fields):
        raise FormatError(f"{where}: arrays {sorted(refs)} but a {kind} node has {sorted(cls.array_fields)}")
    for key, ref in refs.items():
        kwargs[key] = _read_array(zf, ref, f"{where}.{key}")
    if cls is Add:
        kwargs["operands"] = tuple(inputs)
    elif inputs:
        if len(inputs) != 1:
            raise FormatError(f"{where}: a {kind} node has one input, file lists {len(inputs)}")
        kwargs["input"] = inputs[0]
    for key in ("stride", "padding", "kernel", "shape"):
        if isinstance(kwargs.get(key), list):
            kwargs[key] = tuple(kwargs[key])
    try:
        return cls(name=name, **kwargs)
    except TypeError as exc:
        raise FormatError(f"{where}: unexpected attributes ({exc})") from None


def _read_array(zf: zipfile.ZipFile, ref: Any, where: str) -> np.ndarray:
    member = _expect(ref, "file", str, where)
    shape = _expect(ref, "shape", list, where)
    digest = _expect(ref, "sha256", str, where)
    try:
        info = zf.getinfo(member)
    except KeyError:
        raise FormatError(f"{where}: array file {member!r} missing from archive") from None
    expected_bytes = 8 * int(np.prod(shape)) if shape else 8
    if info.file_size > expected_bytes + 4096:
        raise FormatError(f"{where}: {member!r} is {info.file_size} bytes, expected about {expected_bytes}")
    with zf.open(member) as fh:
        arr = np.lib.format.read_array(io.BytesIO(fh.read()), allow_pickle=False)
    if arr.dtype != np.dtype("<f8"):
        raise FormatError(f"{where}: dtype {arr.dtype}, expected float64")
    if list(arr.shape) != shape:
        raise FormatError(f"{where}: shape {list(arr.shape)}, manifest says {shape}")
    actual = hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()
    if actual != digest:
        raise FormatError(f"{where}: checksum mismatch (file {actual[:12]}…, manifest {digest[:12]}…): corrupted")
    return arr
