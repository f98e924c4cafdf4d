"""Opening a ``torch.export.save`` archive (``.pt2``) without running code from it.

``torch.export.load`` is not safe on untrusted files: torch unpickles parts of the archive
(``torch.load(..., weights_only=False)``, ``pickle.loads``, the TorchScript unpickler), loads
AOTInductor shared libraries, passes expression strings to ``sympy.sympify`` (which calls
``eval``) and ``exec``s the program's ``guards_code`` when it is unlifted. :func:`load_exported`
therefore defends in three layers, each of which refuses with a :class:`FormatError` that names
the member and the reason:

1. :func:`scan_archive` reads the zip itself, before torch touches it: a closed list of member
   names, the archive's JSON configs (no entry may be a pickle), the one pickle every archive
   has (the example inputs) checked opcode by opcode against a short list of tensor-rebuild
   globals, the program JSON (only ATen/prims/symbolic operator targets, no guard code, only
   plain arithmetic in shape expressions, plain containers in the input/output spec), and the
   sizes (nothing inflates past :data:`MAX_INFLATED_BYTES`).
2. :func:`refuse_unpickling` is in force while ``torch.export.load`` runs: the unpickling entry
   points torch uses refuse, and ``torch.load`` may only run as ``weights_only=True``.
3. :func:`check_program` inspects what torch built: every node targets an ATen/prims operator (or
   a symbolic-shape operator), no guard code, only tensor constants.

With ``trust=True`` none of this applies and ``torch.export.load`` runs as torch ships it: that
can run arbitrary code, so it is for archives the user made or otherwise trusts.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import pickletools
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fs_hw.errors import FormatError

MAX_INFLATED_BYTES = 4 * 1024**3  # total of all members once decompressed; the zoo's largest is a few MiB
MAX_COMPRESSION_RATIO = 200  # a deflated member may inflate at most this much (zeros reach ~1000)
MAX_JSON_BYTES = 256 * 1024**2  # one JSON member read into memory by the scan
_MAX_ELEMENT_BYTES = 16  # complex128, the widest dtype: an upper bound for allocations from metadata

_HINT = ("re-export it with torch.export.save of a plain nn.Module (tensors only), or pass --trust-archive "
         "if you trust the file (torch may then run code from it)")

# Members of a torch 2.13 archive (below its one root folder) and what torch does with them.
_FIXED_MEMBERS = {
    "archive_format", "archive_version", "byteorder", ".data/version", ".data/serialization_id",
    "models/model.json", "data/weights/model_weights_config.json",
    "data/constants/model_constants_config.json", "data/sample_inputs/model.pt",
}
_REQUIRED_MEMBERS = ("archive_format", "archive_version", "models/model.json",
                     "data/weights/model_weights_config.json", "data/constants/model_constants_config.json",
                     "data/sample_inputs/model.pt")
_RAW_WEIGHT = re.compile(r"data/weights/weight_[0-9]+")
_RAW_CONSTANT = re.compile(r"data/constants/tensor_[0-9]+")
_EXTRA = re.compile(r"extra/[^/]+")  # read as UTF-8 text by torch, never unpickled
# Known members that torch would unpickle or execute, with the reason given to the user.
_DANGEROUS = (
    (re.compile(r"data/weights/[^/]+\.pt"), "legacy pickled weights (torch.load, weights_only=False)"),
    (re.compile(r"data/constants/[^/]+\.pt"), "legacy pickled constants (torch.load, weights_only=False)"),
    (re.compile(r"data/constants/custom_obj_.*"), "a TorchScript object (torch._C._pickle_load_obj)"),
    (re.compile(r"data/constants/opaque_obj_.*"), "an opaque Python object (pickle.loads)"),
    (re.compile(r"data/aotinductor/.*"), "AOTInductor compiled code (loaded as a shared library)"),
    (re.compile(r"(data/executorch|data/mtia|xl_model_weights)(/.*)?"), "a payload fs-convert does not read"),
    (re.compile(r"models/.*"), "a program other than 'model' (torch deserializes every one)"),
)
# The torch < 2.8 layout: every .pt member goes through torch.load, falling back to weights_only=False.
_LEGACY_MEMBERS = {"version", "serialized_exported_program.json", "serialized_state_dict.pt",
                   "serialized_constants.pt", "serialized_example_inputs.pt", "serialized_state_dict.json",
                   "serialized_constants.json"}
_PAYLOAD_KEYS = {"path_name", "is_param", "use_pickle", "tensor_meta"}

# The example inputs are a torch.save pickle in every archive. These are the only globals a pickle of
# plain tensors (in tuples/dicts) refers to; anything else (a class, os.system...) is refused.
_STORAGES = ("Float", "Double", "Half", "BFloat16", "Long", "Int", "Short", "Char", "Byte", "Bool",
             "ComplexFloat", "ComplexDouble")
_PICKLE_GLOBALS = {("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_parameter"),
                   ("collections", "OrderedDict")} | {("torch", f"{s}Storage") for s in _STORAGES}
# Opcodes that look objects up or build them other than through REDUCE on an allowed global.
_PICKLE_REFUSED_OPS = {"STACK_GLOBAL", "INST", "OBJ", "NEWOBJ", "NEWOBJ_EX", "EXT1", "EXT2", "EXT4", "BUILD"}
_TORCH_SAVE_MEMBERS = re.compile(r"(data\.pkl|data/[0-9]+|byteorder|version|\.format_version|"
                                 r"\.storage_alignment|\.data/version|\.data/serialization_id)")

# call_function targets torch resolves by name. Only operators (OpOverloads) of these namespaces are
# allowed: "torch.<anything>" would resolve any torch attribute, e.g. torch.os.system, and the
# converter runs the graph. The symbolic-shape operators are the ones torch's deserializer knows.
_OP_TARGET = re.compile(r"torch\.ops\.(aten|prims)\.([A-Za-z][A-Za-z0-9_]*|_[A-Za-z0-9][A-Za-z0-9_]*)"
                        r"\.[A-Za-z][A-Za-z0-9_]*")
_SYM_TARGETS = {
    "_operator.eq", "_operator.ne", "_operator.le", "_operator.ge", "_operator.lt", "_operator.gt",
    "_operator.neg", "_operator.pos", "_operator.mul", "_operator.add", "_operator.sub",
    "_operator.floordiv", "_operator.mod", "_operator.pow", "_operator.truediv", "_operator.and_",
    "_operator.or_", "_operator.not_", "_operator.xor", "_operator.lshift", "_operator.rshift",
    "math.trunc", "torch.sym_not", "torch.sym_int", "torch.sym_float", "torch.sym_ite", "torch.sym_max",
    "torch.sym_min", "torch.sym_sqrt", "torch.sym_sum", "torch.sym_fresh_size",
}
# Shape expressions go to sympy.sympify, i.e. eval(): allow numbers, operators, shape symbols
# (s0, u3, zuf1...) and the sympy functions torch writes; no quotes, attributes, underscores or calls
# of anything else.
_EXPR_TOKEN = re.compile(r"\s*(?:([0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?)|([A-Za-z][A-Za-z0-9]*)|"
                         r"(\*\*|//|<=|>=|==|!=|[-+*/%(),<>&|~]))")
_EXPR_SYMBOL = re.compile(r"[a-z]+[0-9]+")
# torch writes a free symbol as Symbol('s31', positive=True, integer=True): the only quoted form allowed.
_EXPR_SYMBOL_CALL = re.compile(r"Symbol\('([a-z]+[0-9]+)'(?:, (?:positive|integer|nonnegative|real|finite)"
                               r"=(?:True|False))*\)")
_EXPR_NAMES = {
    "FloorDiv", "ModularIndexing", "Where", "PythonMod", "Mod", "CleanDiv", "CeilToInt", "IntTrueDiv",
    "FloatTrueDiv", "LShift", "RShift", "IsNonOverlappingAndDenseIndicator", "TruncToFloat", "TruncToInt",
    "RoundToInt", "RoundDecimal", "ToFloat", "FloatPow", "PowByNatural", "Identity", "Max", "Min", "Abs",
    "Eq", "Ne", "Lt", "Le", "Gt", "Ge", "And", "Or", "Not", "True", "False", "oo", "floor", "ceiling",
    "Integer", "Rational", "Float", "Piecewise", "sqrt",
}
_SPEC_TYPES = {None, "builtins.tuple", "builtins.list", "builtins.dict", "collections.OrderedDict"}
_EXPR_MAX_CHARS = 10_000


def _refuse(path: Path, member: str, why: str) -> FormatError:
    return FormatError(f"{path}: member {member!r} {why}; refused by the safe loader: {_HINT}")


# ---------------------------------------------------------------------------------------
# layer 1: the scan


def scan_archive(path: str | Path) -> None:
    """Refuse ``path`` unless torch can load it without unpickling anything but plain tensors.

    Raises :class:`FormatError` naming the member and the reason; returns ``None`` when the archive
    only holds what ``torch.export.save`` writes for an ``nn.Module`` with tensor parameters and buffers.
    """
    path = Path(path)
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise FormatError(f"{path}: not a torch.export file ({exc})") from None
    with zf:
        members = _check_layout(path, zf)
        for rel in ("archive_format", "archive_version"):
            value = _read(path, zf, members[rel], 64)
            expected = b"pt2" if rel == "archive_format" else b"0"
            if value != expected:
                raise _refuse(path, members[rel], f"is {value[:20]!r}, the safe loader knows only "
                                                  f"{expected!r} (an unknown archive format version)")
        sizes = {rel: zf.getinfo(name).file_size for rel, name in members.items()}
        _check_payload_config(path, zf, members, sizes, "data/weights/model_weights_config.json",
                              "data/weights/", _RAW_WEIGHT, "weight")
        _check_payload_config(path, zf, members, sizes, "data/constants/model_constants_config.json",
                              "data/constants/", _RAW_CONSTANT, "constant")
        _check_torch_save(path, members["data/sample_inputs/model.pt"],
                          _read(path, zf, members["data/sample_inputs/model.pt"], MAX_JSON_BYTES))
        _check_program_json(path, members["models/model.json"],
                            _json(path, zf, members["models/model.json"]))


def _check_layout(path: Path, zf: zipfile.ZipFile) -> dict[str, str]:
    """Member names below the root folder -> full names; refuses odd, unknown and oversized members."""
    infos = zf.infolist()
    if not infos:
        raise FormatError(f"{path}: not a torch.export file (an empty zip archive)")
    seen: set[str] = set()
    total = 0
    file_size = path.stat().st_size
    for info in infos:
        name = info.filename
        if name in seen:  # zipfile reads the last copy, torch's reader may read the first: refuse both
            raise _refuse(path, name, "appears twice in the zip directory")
        seen.add(name)
        if info.flag_bits & 0x1:
            raise _refuse(path, name, "is encrypted")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise _refuse(path, name, f"uses zip compression method {info.compress_type} "
                                      "(only stored/deflated)")
        if info.compress_type == zipfile.ZIP_STORED and info.file_size != info.compress_size:
            raise _refuse(path, name, f"is stored uncompressed but declares {info.file_size} bytes in "
                                      f"{info.compress_size}")
        if info.file_size > max(info.compress_size, 1) * MAX_COMPRESSION_RATIO:
            raise _refuse(path, name, f"inflates from {info.compress_size} to {info.file_size} bytes, "
                                      f"more than {MAX_COMPRESSION_RATIO}x (a zip bomb?)")
        total += info.file_size
        if total > MAX_INFLATED_BYTES:
            raise _refuse(path, name, f"brings the inflated size to {total} bytes (archive {file_size} "
                                      f"bytes), over the {MAX_INFLATED_BYTES} byte limit")
    names = [i.filename for i in infos]
    legacy = sorted(n for n in names if n in _LEGACY_MEMBERS)
    if legacy:
        raise _refuse(path, legacy[0], "belongs to the legacy torch.export format (torch < 2.8), whose .pt "
                                       "members torch unpickles with weights_only=False")
    root = names[0].split("/", 1)[0]
    members: dict[str, str] = {}
    for name in names:
        head, _, rel = name.partition("/")
        parts = rel.split("/")
        if (head != root or not rel or "\\" in name or any(p in ("", ".", "..") for p in parts)
                or not name.isprintable()):
            raise _refuse(path, name, f"is not a file below the archive's root folder {root!r}")
        members[rel] = name
    for rel, name in members.items():
        if rel in _FIXED_MEMBERS or any(p.fullmatch(rel) for p in (_RAW_WEIGHT, _RAW_CONSTANT, _EXTRA)):
            continue
        for pattern, why in _DANGEROUS:
            if pattern.fullmatch(rel):
                raise _refuse(path, name, f"is {why}")
        raise _refuse(path, name, "is not a member torch.export.save writes for a plain module")
    missing = [rel for rel in _REQUIRED_MEMBERS if rel not in members]
    if missing:
        raise FormatError(f"{path}: not a torch.export file (no member {root}/{missing[0]})")
    return members


def _read(path: Path, zf: zipfile.ZipFile, name: str, limit: int) -> bytes:
    info = zf.getinfo(name)
    if info.file_size > limit:
        raise _refuse(path, name, f"is {info.file_size} bytes, over the {limit} byte limit for this member")
    try:
        with zf.open(info) as fh:
            data = fh.read(limit + 1)  # zipfile stops at the declared size and checks the CRC
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise FormatError(f"{path}: member {name!r}: unreadable ({exc})") from None
    return data


def _json(path: Path, zf: zipfile.ZipFile, name: str) -> Any:
    try:
        return json.loads(_read(path, zf, name, MAX_JSON_BYTES))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _refuse(path, name, f"is not valid JSON ({type(exc).__name__})") from None


def _as_ints(value: Any) -> list[int] | None:
    if not isinstance(value, list):
        return None
    out = []
    for v in value:
        if not (isinstance(v, dict) and set(v) == {"as_int"} and type(v["as_int"]) is int
                and v["as_int"] >= 0):
            return None
        out.append(v["as_int"])
    return out


def _check_payload_config(path: Path, zf: zipfile.ZipFile, members: dict[str, str], sizes: dict[str, int],
                          rel: str, folder: str, raw: re.Pattern, what: str) -> None:
    """Every weight/constant must be raw tensor bytes; torch unpickles any other entry."""
    name = members[rel]
    config = _json(path, zf, name)
    if not (isinstance(config, dict) and set(config) == {"config"} and isinstance(config["config"], dict)):
        raise _refuse(path, name, "is not a payload config {'config': {...}} (an unknown format version)")
    allocated = 0
    for fqn, entry in config["config"].items():
        if not isinstance(entry, dict) or not set(entry) <= _PAYLOAD_KEYS:
            extra = sorted(set(entry) - _PAYLOAD_KEYS) if isinstance(entry, dict) else type(entry).__name__
            raise _refuse(path, name, f"{what} {fqn!r} has an unknown layout ({extra})")
        if entry.get("use_pickle") is not False:
            raise _refuse(path, name, f"{what} {fqn!r} is stored as a pickle (use_pickle: "
                                      f"{json.dumps(entry.get('use_pickle'))}), which torch unpickles with "
                                      "weights_only=False")
        file = entry.get("path_name")
        if not isinstance(file, str) or not raw.fullmatch(folder + file):
            raise _refuse(path, name, f"{what} {fqn!r} points at {file!r}, not a raw tensor member "
                                      f"({raw.pattern}); torch unpickles custom_obj_/opaque_obj_ members")
        if folder + file not in members:
            raise _refuse(path, name, f"{what} {fqn!r} points at {folder + file!r}, which the archive lacks")
        meta = entry.get("tensor_meta")
        shape = _as_ints(meta.get("sizes")) if isinstance(meta, dict) else None
        if shape is None or _as_ints(meta.get("strides")) is None:
            raise _refuse(path, name, f"{what} {fqn!r} has no static tensor_meta sizes/strides")
        if sizes[folder + file] == 0:  # torch allocates torch.zeros(sizes) for an empty record
            numel = 1
            for s in shape:
                numel *= s
            allocated += numel * _MAX_ELEMENT_BYTES
            if allocated > MAX_INFLATED_BYTES:
                raise _refuse(path, name, f"{what} {fqn!r} asks for a {shape} tensor from an empty record, "
                                          f"over the {MAX_INFLATED_BYTES} byte limit")


def _check_torch_save(path: Path, member: str, data: bytes) -> None:
    """The example inputs: a torch.save zip whose pickle only rebuilds tensors in plain containers."""
    if not data:
        return  # torch skips empty example inputs
    try:
        inner = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise _refuse(path, member, "is not a torch.save zip (a raw pickle stream)") from None
    with inner:
        pkl = None
        total = 0
        for info in inner.infolist():
            head, _, rel = info.filename.partition("/")
            total += info.file_size
            if not _TORCH_SAVE_MEMBERS.fullmatch(rel) or total > max(len(data), 1) * MAX_COMPRESSION_RATIO:
                raise _refuse(path, member, f"holds {info.filename!r} ({info.file_size} bytes), not a member "
                                            "of a torch.save file of plain tensors")
            if rel == "data.pkl":
                if pkl is not None:
                    raise _refuse(path, member, "holds two data.pkl records")
                pkl = inner.read(info)
        if pkl is None:
            raise _refuse(path, member, "holds no data.pkl record")
    _check_pickle(path, member, pkl)


def _check_pickle(path: Path, member: str, data: bytes) -> None:
    try:
        for op, arg, pos in pickletools.genops(data):
            if op.name in _PICKLE_REFUSED_OPS:
                raise _refuse(path, member, f"its pickle uses {op.name} at byte {pos}, which plain tensors "
                                            "do not need")
            if op.name == "GLOBAL":
                module, _, qualname = str(arg).partition(" ")
                if (module, qualname) not in _PICKLE_GLOBALS:
                    raise _refuse(path, member, f"its pickle calls {module}.{qualname} (byte {pos}); only "
                                                "tensor rebuilds are allowed")
    except (ValueError, EOFError) as exc:  # pickletools' "not a pickle"
        raise _refuse(path, member, f"is a malformed pickle ({exc})") from None


def safe_expression(expr: str) -> bool:
    """Whether ``expr`` is plain symbolic-shape arithmetic, harmless to hand to ``sympy.sympify``."""
    if not isinstance(expr, str) or len(expr) > _EXPR_MAX_CHARS:
        return False
    expr = _EXPR_SYMBOL_CALL.sub(r"\1", expr)
    pos = 0
    while pos < len(expr):
        m = _EXPR_TOKEN.match(expr, pos)
        if m is None:
            return expr[pos:].strip() == ""
        ident = m.group(2)
        if ident is not None and ident not in _EXPR_NAMES and not _EXPR_SYMBOL.fullmatch(ident):
            return False
        pos = m.end()
    return True


def _check_spec(path: Path, member: str, where: str, spec: Any) -> None:
    """An input/output tree spec: plain containers only (torch imports modules named by enums etc.)."""
    try:
        doc = json.loads(spec)
    except (TypeError, ValueError):
        raise _refuse(path, member, f"{where} is not a JSON tree spec") from None
    if not (isinstance(doc, list) and len(doc) == 2 and doc[0] == 1):
        raise _refuse(path, member, f"{where} has an unknown tree spec protocol")
    stack = [doc[1]]
    while stack:
        node = stack.pop()
        if not (isinstance(node, dict) and set(node) == {"type", "context", "children_spec"}
                and isinstance(node["children_spec"], list)):
            raise _refuse(path, member, f"{where} is not a tree spec")
        if node["type"] not in _SPEC_TYPES:
            raise _refuse(path, member, f"{where} uses the container type {node['type']!r}; the safe loader "
                                        "allows tuple, list, dict and OrderedDict")
        if isinstance(node["context"], str) and "__enum__" in node["context"]:
            raise _refuse(path, member, f"{where} holds an enum, which torch imports by module name")
        stack.extend(node["children_spec"])


def _check_program_json(path: Path, member: str, program: Any) -> None:
    from torch._export.serde.schema import SCHEMA_VERSION

    if not isinstance(program, dict) or not isinstance(program.get("graph_module"), dict):
        raise _refuse(path, member, "is not a serialized ExportedProgram")
    version = program.get("schema_version")
    if not isinstance(version, dict) or version.get("major") != SCHEMA_VERSION[0]:
        raise _refuse(path, member, f"has schema version {version!r}; this torch reads major version "
                                    f"{SCHEMA_VERSION[0]} (an unknown format version)")
    if program.get("guards_code"):
        raise _refuse(path, member, f"has guards_code ({len(program['guards_code'])} lines of Python "
                                    "source that torch exec()s when the program is unlifted)")
    for key in program.get("range_constraints") or {}:
        if not safe_expression(key):
            raise _refuse(path, member, f"range constraint {str(key)[:80]!r} is not a plain shape symbol")
    stack: list[tuple[Any, str]] = [(program, "")]
    while stack:
        obj, where = stack.pop()
        if isinstance(obj, dict):
            for key, value in obj.items():
                if key == "expr_str" and not safe_expression(value):
                    raise _refuse(path, member, f"shape expression {str(value)[:80]!r} at {where or '/'} is "
                                                "not plain arithmetic (sympy.sympify would eval it)")
                if key == "nodes" and isinstance(value, list):
                    for i, node in enumerate(value):
                        target = node.get("target") if isinstance(node, dict) else None
                        if not isinstance(target, str) or not (_OP_TARGET.fullmatch(target)
                                                               or target in _SYM_TARGETS) or "__" in target:
                            name = node.get("name") if isinstance(node, dict) else None
                            raise _refuse(path, member, f"node {i} ({name!r}) at {where}/nodes calls "
                                                        f"{str(target)[:80]!r}; the safe loader allows ATen "
                                                        "and prims operators only")
                if key in ("in_spec", "out_spec") and value is not None:
                    _check_spec(path, member, f"{where}/{key}", value)
                stack.append((value, f"{where}/{key}"))
        elif isinstance(obj, list):
            stack.extend((v, f"{where}/{i}") for i, v in enumerate(obj))


# ---------------------------------------------------------------------------------------
# layer 2: the unpicklers refuse while torch loads


class _Guard:
    """What the patched entry points refused (torch catches some exceptions; the record survives that)."""

    def __init__(self, path: Path):
        self.path = path
        self.refused: list[str] = []

    def refuse(self, what: str) -> FormatError:
        self.refused.append(what)
        return FormatError(f"{self.path}: torch tried to {what} while loading; refused; {_HINT}")


@contextlib.contextmanager
def refuse_unpickling(path: str | Path) -> Iterator[_Guard]:
    """Within the block, the entry points ``torch.export.load`` could run code through refuse.

    ``torch.load`` is allowed only as ``weights_only=True``: torch's restricted unpickler (the safe
    path torch offers, and the one torch itself tries first) rebuilds tensors and plain containers
    and refuses every other global, so the example inputs of a normal archive still load. Everything
    is restored on exit, also when the load fails.
    """
    import pickle

    import sympy
    import torch
    import torch.export.pt2_archive._package as package
    import torch.jit
    import torch.serialization

    guard = _Guard(Path(path))
    original_load = torch.serialization.load

    def load(f: Any, map_location: Any = None, *, weights_only: bool | None = None, **kwargs: Any) -> Any:
        # None counts as False: TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD would turn an implicit default into a
        # full unpickle, so the call below always says weights_only=True explicitly.
        if weights_only is False or "pickle_module" in kwargs:
            raise guard.refuse("torch.load a member with weights_only=False (a full unpickle)")
        return original_load(f, map_location, weights_only=True, **kwargs)

    def refusing(what: str) -> Any:
        def refuse(*_args: Any, **_kwargs: Any) -> Any:
            raise guard.refuse(what)
        return refuse

    class RefusingUnpickler:
        def __init__(self, *_args: Any, **_kwargs: Any):
            raise guard.refuse("create a pickle.Unpickler")

    original_sympify = sympy.sympify

    def sympify(a: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(a, str) and not safe_expression(a):
            raise guard.refuse(f"sympify (eval) the expression {a[:80]!r}")
        return original_sympify(a, *args, **kwargs)

    patches = [
        (pickle, "loads", refusing("pickle.loads a member")),
        (pickle, "load", refusing("pickle.load a member")),
        (pickle, "Unpickler", RefusingUnpickler),
        (torch, "load", load),
        (torch.serialization, "load", load),
        (torch._C, "_pickle_load_obj", refusing("unpickle a TorchScript object (torch._C._pickle_load_obj)")),
        (torch.jit, "load", refusing("torch.jit.load a TorchScript archive")),
        (package, "_load_aoti", refusing("load AOTInductor compiled code")),
        (sympy, "sympify", sympify),
    ]
    saved = [(obj, name, getattr(obj, name)) for obj, name, _ in patches]
    try:
        for obj, name, value in patches:
            setattr(obj, name, value)
        yield guard
    finally:
        for obj, name, value in saved:
            setattr(obj, name, value)


# ---------------------------------------------------------------------------------------
# layer 3: what torch built


def check_program(program: Any, path: str | Path) -> None:
    """Refuse a loaded program that calls anything but operators, or carries guard code or objects."""
    import torch

    path = Path(path)
    if not isinstance(program, torch.export.ExportedProgram):
        raise FormatError(f"{path}: holds a {type(program).__name__}, not an ExportedProgram")
    if getattr(program, "_guards_code", None):
        raise FormatError(f"{path}: the program carries guards_code (Python source torch exec()s); "
                          f"refused; {_HINT}")
    for name, value in program.constants.items():
        if not isinstance(value, torch.Tensor):
            raise FormatError(f"{path}: constant {name!r} is a {type(value).__name__}, not a tensor; "
                              f"refused; {_HINT}")
    graphs = [program.graph_module]
    graphs.extend(m for m in program.graph_module.modules() if isinstance(m, torch.fx.GraphModule))
    for gm in graphs:
        for node in gm.graph.nodes:
            if node.op not in ("placeholder", "output", "get_attr", "call_function"):
                raise FormatError(f"{path}: node {node.name!r} is a {node.op} node; refused; {_HINT}")
            if node.op == "call_function":
                t = node.target
                op_ok = isinstance(t, torch._ops.OpOverload) and t.namespace in ("aten", "prims")
                sym_ok = f"{getattr(t, '__module__', '')}.{getattr(t, '__name__', '')}" in _SYM_TARGETS
                if not (op_ok or sym_ok):
                    raise FormatError(f"{path}: node {node.name!r} calls {t!r}, not an ATen/prims operator; "
                                      f"refused; {_HINT}")


def load_exported(path: str | Path, *, trust: bool = False) -> Any:
    """``torch.export.load(path)`` through the three layers above (none of them when ``trust``)."""
    import torch

    path = Path(path)
    quiet = logging.getLogger("torch.export")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # torch logs a traceback before raising on a bad archive
    try:
        if trust:
            return _torch_load(torch, path)
        scan_archive(path)
        with refuse_unpickling(path) as guard:
            program = _torch_load(torch, path, guard)
        if guard.refused:  # torch swallowed a refusal somewhere and carried on
            raise guard.refuse(guard.refused[0])
        check_program(program, path)
        return program
    finally:
        quiet.setLevel(level)


def _torch_load(torch: Any, path: Path, guard: _Guard | None = None) -> Any:
    try:
        return torch.export.load(path)
    except FormatError:
        raise
    except Exception as exc:  # torch raises many types for a bad file
        if guard is not None and guard.refused:
            raise guard.refuse(guard.refused[0]) from None
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise FormatError(f"{path}: not a torch.export file ({type(exc).__name__}: {msg})") from None
