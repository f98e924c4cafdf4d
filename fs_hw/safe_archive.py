"""Bounded, strict reading of untrusted zip archives of ``.npy`` members.

Both the `.fsnet` reader (:mod:`fs_hw.ir.io`) and ``fs-deploy --inputs FILE.npz``
(:func:`load_inputs_file`) read archives that may come from anywhere. Everything here
raises :class:`~fs_hw.errors.FormatError` naming the file, the member and the numbers,
and nothing a file holds can make the reader allocate more than a fixed budget:

* the zip's central directory is sized from its end record *before* ``zipfile`` parses
  it (``MAX_MEMBERS`` entries, ``MAX_DIRECTORY_BYTES``);
* duplicate member names, encrypted or patched members and compression methods other
  than stored / deflate are refused (``zipfile`` would silently let the last duplicate win,
  or ask for a password);
* every member's inflated size, as the zip declares it, is charged to a budget for the
  whole file before the member is read; ``zipfile`` never returns more than the declared
  size and checks the CRC at the end, so a member cannot inflate past what was charged;
* a member can be read only once, so many references to one member cannot multiply it;
* a ``.npy`` header is parsed on the member stream and its shape and dtype checked (and
  its data size compared with the member's declared size, exactly) before any data is
  read; arrays are never unpickled.
"""

from __future__ import annotations

import io
import math
import os
import struct
import tokenize
import warnings
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from fs_hw.errors import FormatError

__all__ = [
    "MAX_ARRAY_ELEMENTS", "MAX_DIRECTORY_BYTES", "MAX_INPUTS_BYTES", "MAX_MEMBERS", "MAX_NPY_HEADER_BYTES",
    "READ_ERRORS", "SafeArchive", "check_path", "load_inputs_file",
]

# Budget of inflated bytes for one `--inputs` file. 1 GiB is about 4x CIFAR-10's test
# split in float64, and the whole batch is converted to float64 in memory anyway.
MAX_INPUTS_BYTES = 1 << 30
# Most elements one `.npy` header may declare. 2**28 elements are 2 GiB as float64 (what
# a uint8 image array becomes after conversion); a header above this is refused before
# anything is compared or allocated.
MAX_ARRAY_ELEMENTS = 1 << 28
# A `.fsnet` holds 1 + 2 x nodes members (at most 4096 nodes, see fs_hw.ir.network), an npz
# a handful; 16384 entries bound what zipfile allocates for the directory (~1 KiB each).
MAX_MEMBERS = 16384
MAX_DIRECTORY_BYTES = 16 << 20
# numpy's own default limit on the header text (np.lib.format's max_header_size).
MAX_NPY_HEADER_BYTES = 10000

# Exceptions that zipfile, zlib, json and numpy's header parser raise on malformed
# input (a tokenize.TokenError comes out of numpy's Python-2 header fallback, a
# RuntimeError from zipfile on an encrypted member, a MemoryError from anything that
# believes a size field). Readers turn every one of them into a FormatError.
READ_ERRORS: tuple[type[BaseException], ...] = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    zlib.error,
    struct.error,
    EOFError,
    OSError,
    LookupError,  # KeyError, IndexError
    ValueError,  # UnicodeDecodeError, json.JSONDecodeError
    TypeError,
    AttributeError,
    ArithmeticError,  # OverflowError
    RuntimeError,  # RecursionError, NotImplementedError (zipfile: unsupported features)
    SyntaxError,
    tokenize.TokenError,
    MemoryError,
)

_FLAG_ENCRYPTED = 0x1
_FLAG_PATCHED = 0x20
_FLAG_STRONG_ENCRYPTION = 0x40
_COMPRESSIONS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflate"}
_EOCD = struct.Struct("<4s4H2LH")  # end of central directory record
_EOCD64_LOCATOR = struct.Struct("<4sLQL")
_EOCD64 = struct.Struct("<4sQ2H2L4Q")
_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")
_CHUNK = 1 << 20


def check_path(path: str | os.PathLike, what: str) -> Path:
    """``path`` as a Path if it is a regular file; else a FormatError that says why."""
    path = Path(path)
    if path.is_dir():
        raise FormatError(f"{path}: is a folder, not {what}")
    if not path.exists():
        raise FormatError(f"{path}: no such file")
    if not path.is_file():
        raise FormatError(f"{path}: not a regular file, cannot be read as {what}")
    return path


def _directory_size(fh, where: str) -> None:
    """Refuse a central directory too large to parse, reading only the end record.

    If no end record is found, nothing is said here: zipfile will refuse the file.
    """
    fh.seek(0, os.SEEK_END)
    size = fh.tell()
    tail_len = min(size, _EOCD.size + 65535)
    fh.seek(size - tail_len)
    tail = fh.read(tail_len)
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) - at < _EOCD.size:
        return
    fields = _EOCD.unpack(tail[at : at + _EOCD.size])
    entries, dir_bytes = fields[4], fields[5]
    if (entries == 0xFFFF or dir_bytes == 0xFFFFFFFF) and at >= _EOCD64_LOCATOR.size:
        loc = _EOCD64_LOCATOR.unpack(tail[at - _EOCD64_LOCATOR.size : at])
        if loc[0] == b"PK\x06\x07" and loc[2] < size:
            fh.seek(loc[2])
            rec = fh.read(_EOCD64.size)
            if len(rec) == _EOCD64.size and rec[:4] == b"PK\x06\x06":
                f64 = _EOCD64.unpack(rec)
                entries, dir_bytes = f64[7], f64[8]
    if entries > MAX_MEMBERS:
        raise FormatError(f"{where}: the zip directory lists {entries} members (limit {MAX_MEMBERS})")
    if dir_bytes > MAX_DIRECTORY_BYTES:
        raise FormatError(f"{where}: the zip directory is {dir_bytes} bytes (limit {MAX_DIRECTORY_BYTES})")


class SafeArchive:
    """A zip archive opened for bounded reading (use as a context manager).

    ``budget`` is the most inflated bytes all members read from this archive may add up
    to; ``what`` names the kind of file in messages ("fs-hw network file"...).
    """

    def __init__(self, path: str | os.PathLike, budget: int, what: str = "zip archive"):
        self.path = check_path(path, what)
        self.where = str(self.path)
        self.budget = int(budget)
        self.what = what
        self.used = 0
        self._read: set[str] = set()
        self._raw = None
        self._zip: zipfile.ZipFile | None = None
        try:
            self._raw = open(self.path, "rb")
            _directory_size(self._raw, self.where)
            self._raw.seek(0)
            self._zip = zipfile.ZipFile(self._raw)
            self._infos = self._check_directory(self._zip.infolist())
        except FormatError:
            self.close()
            raise
        except READ_ERRORS as exc:
            self.close()
            raise FormatError(f"{self.where}: not a readable {what} ({type(exc).__name__}: {exc})") from None

    def _check_directory(self, infos: list[zipfile.ZipInfo]) -> dict[str, zipfile.ZipInfo]:
        if len(infos) > MAX_MEMBERS:
            raise FormatError(f"{self.where}: the zip holds {len(infos)} members (limit {MAX_MEMBERS})")
        out: dict[str, zipfile.ZipInfo] = {}
        for info in infos:
            name = info.filename
            if name in out:
                raise FormatError(
                    f"{self.where}: member {name!r} appears more than once in the zip; "
                    "refusing to guess which copy is meant"
                )
            if info.flag_bits & (_FLAG_ENCRYPTED | _FLAG_STRONG_ENCRYPTION):
                raise FormatError(f"{self.where}: member {name!r} is encrypted; {self.what}s are never encrypted")
            if info.flag_bits & _FLAG_PATCHED:
                raise FormatError(f"{self.where}: member {name!r} is patch data (zip flag bit 5), not supported")
            if info.compress_type not in _COMPRESSIONS:
                raise FormatError(
                    f"{self.where}: member {name!r} uses zip compression method {info.compress_type}; "
                    "only stored (0) and deflate (8) are read"
                )
            out[name] = info
        return out

    # -- context manager ---------------------------------------------------------------
    def __enter__(self) -> SafeArchive:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()
            self._zip = None
        if self._raw is not None:
            self._raw.close()
            self._raw = None

    # -- queries -----------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        """Member names in directory order (directory entries included)."""
        return list(self._infos)

    def __contains__(self, name: object) -> bool:
        return name in self._infos

    def size(self, name: str) -> int:
        """Inflated size of ``name`` as the zip declares it."""
        return self._info(name).file_size

    def _info(self, name: str) -> zipfile.ZipInfo:
        try:
            return self._infos[name]
        except KeyError:
            raise FormatError(f"{self.where}: no member {name!r} in the zip") from None

    # -- reading -----------------------------------------------------------------------
    def _open(self, name: str, limit: int | None = None):
        """Charge ``name`` to the budget, check its local header, open it."""
        info = self._info(name)
        if name in self._read:
            raise FormatError(f"{self.where}: member {name!r} is read a second time; each member is read once")
        if limit is not None and info.file_size > limit:
            raise FormatError(f"{self.where}: member {name!r} is {info.file_size} bytes (limit {limit})")
        if self.used + info.file_size > self.budget:
            raise FormatError(
                f"{self.where}: member {name!r} inflates to {info.file_size} bytes (compressed "
                f"{info.compress_size}); with {self.used} bytes already read this exceeds the "
                f"{self.budget}-byte limit for one {self.what}"
            )
        self._read.add(name)
        self.used += info.file_size
        # zipfile decides encryption from the central directory only; a local header
        # that says otherwise is refused so every reader sees the same member.
        assert self._raw is not None and self._zip is not None
        self._raw.seek(info.header_offset)
        header = self._raw.read(_LOCAL_HEADER.size)
        if len(header) == _LOCAL_HEADER.size and header[:4] == b"PK\x03\x04":
            flags = _LOCAL_HEADER.unpack(header)[3]
            if flags & (_FLAG_ENCRYPTED | _FLAG_STRONG_ENCRYPTION):
                raise FormatError(f"{self.where}: member {name!r} is encrypted (local header flag)")
        return self._zip.open(info)

    def _read_exactly(self, fh, n: int, name: str, into: memoryview | None = None) -> bytes | None:
        """Read ``n`` bytes in chunks (into ``into`` if given), then demand the end."""
        parts = []
        done = 0
        while done < n:
            chunk = fh.read(min(_CHUNK, n - done))
            if not chunk:
                raise FormatError(f"{self.where}: member {name!r} ends after {done} of {n} bytes")
            if into is not None:
                into[done : done + len(chunk)] = chunk
            else:
                parts.append(chunk)
            done += len(chunk)
        if fh.read(1):  # also makes zipfile check the CRC if it has not yet
            raise FormatError(f"{self.where}: member {name!r} holds more than its declared {n} bytes")
        return None if into is not None else b"".join(parts)

    def read_bytes(self, name: str, limit: int | None = None) -> bytes:
        """The whole member ``name`` (at most ``limit`` bytes), CRC-checked."""
        try:
            with self._open(name, limit) as fh:
                return self._read_exactly(fh, self._info(name).file_size, name)  # type: ignore[return-value]
        except FormatError:
            raise
        except READ_ERRORS as exc:
            raise FormatError(f"{self.where}: member {name!r} unreadable ({type(exc).__name__}: {exc})") from None

    def read_npy(
        self,
        name: str,
        kinds: str = "biuf",
        expect_shape: tuple[int, ...] | None = None,
        expect_dtype: np.dtype | str | None = None,
        max_elements: int | None = None,
        allow_fortran: bool = True,
        where: str | None = None,
    ) -> np.ndarray:
        """Read the ``.npy`` member ``name`` after checking its header.

        The header (format 1.0 or 2.0, at most ``MAX_NPY_HEADER_BYTES``) must declare a
        plain dtype of one of ``kinds`` (numpy kind letters; never objects or records),
        ``expect_dtype`` and ``expect_shape`` exactly when given, at most ``max_elements``
        elements (``MAX_ARRAY_ELEMENTS`` by default), and data that fills the rest of the
        member exactly. Only then is the array allocated and read.
        """
        label = where or f"{self.where}: member {name!r}"
        max_elements = MAX_ARRAY_ELEMENTS if max_elements is None else max_elements
        try:
            with self._open(name) as fh:
                shape, fortran, dtype, header_len = _npy_header(fh, label)
                count = math.prod(shape)
                if count > max_elements:
                    raise FormatError(
                        f"{label}: .npy header declares shape {shape} = {count} elements (limit {max_elements})"
                    )
                if dtype.hasobject or dtype.kind not in kinds or dtype.fields is not None or dtype.subdtype:
                    raise FormatError(f"{label}: dtype {dtype.str} is not allowed here (allowed kinds {kinds!r})")
                if expect_dtype is not None and dtype != np.dtype(expect_dtype):
                    raise FormatError(f"{label}: .npy dtype {dtype.str}, expected {np.dtype(expect_dtype).str}")
                if expect_shape is not None and tuple(shape) != tuple(expect_shape):
                    raise FormatError(f"{label}: .npy shape {list(shape)}, manifest says {list(expect_shape)}")
                if fortran and not allow_fortran and len(shape) > 1:
                    raise FormatError(f"{label}: .npy data is in Fortran order; C order is required")
                data_bytes = count * dtype.itemsize
                member_bytes = self._info(name).file_size
                if header_len + data_bytes != member_bytes:
                    raise FormatError(
                        f"{label}: .npy header declares shape {shape} of {dtype.str} = {data_bytes} bytes of "
                        f"data, but the member holds {member_bytes - header_len} bytes after its header"
                    )
                flat = np.empty(count, dtype=dtype)
                self._read_exactly(fh, data_bytes, name, into=memoryview(flat.view(np.uint8)))
                return flat.reshape(shape, order="F" if fortran else "C")
        except FormatError:
            raise
        except READ_ERRORS as exc:
            raise FormatError(f"{label}: not a readable .npy member ({type(exc).__name__}: {exc})") from None


def _npy_header(fh, label: str) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """Parse a .npy header from a stream: (shape, fortran_order, dtype, header bytes).

    The magic and the header length are read here first, so a header that claims to be
    gigabytes long is refused before it is read; numpy's own parser then reads the text
    from memory (it never sees the data).
    """
    magic = fh.read(8)
    if len(magic) < 8 or magic[:6] != b"\x93NUMPY":
        raise FormatError(f"{label}: not a .npy member (magic {magic[:6]!r})")
    major, minor = magic[6], magic[7]
    if (major, minor) not in ((1, 0), (2, 0)):
        raise FormatError(f"{label}: .npy format version {major}.{minor}; this reader reads 1.0 and 2.0")
    length_field = fh.read(2 if major == 1 else 4)
    if len(length_field) != (2 if major == 1 else 4):
        raise FormatError(f"{label}: .npy header truncated")
    text_len = int.from_bytes(length_field, "little")
    if text_len > MAX_NPY_HEADER_BYTES:
        raise FormatError(f"{label}: .npy header is {text_len} bytes (limit {MAX_NPY_HEADER_BYTES})")
    text = fh.read(text_len)
    if len(text) != text_len:
        raise FormatError(f"{label}: .npy header truncated ({len(text)} of {text_len} bytes)")
    header = io.BytesIO(magic + length_field + text)
    np.lib.format.read_magic(header)
    reader = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
    with warnings.catch_warnings():
        # numpy warns when it falls back to parsing a Python-2 era header; the outcome
        # (a header or an error) is what counts here.
        warnings.simplefilter("ignore")
        try:
            shape, fortran, dtype = reader(header, max_header_size=MAX_NPY_HEADER_BYTES)
        except READ_ERRORS as exc:
            raise FormatError(f"{label}: malformed .npy header ({type(exc).__name__}: {exc})") from None
    if not all(type(s) is int and s >= 0 for s in shape):
        raise FormatError(f"{label}: .npy header shape {shape!r} is not a tuple of non-negative ints")
    return tuple(shape), bool(fortran), dtype, len(magic) + len(length_field) + text_len


# -- `fs-deploy --inputs FILE.npz` -----------------------------------------------------------


def load_inputs_file(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray | None]:
    """Read an inputs npz: ``images`` (N, ...), optional ``labels`` (N,) and ``scale``.

    Returns ``(images as float64 times scale, labels as int64 or None)``. Other arrays in
    the file are ignored (never read). Every failure raises
    :class:`~fs_hw.errors.FormatError` naming the file, the array and the numbers.
    """
    what = "npz inputs file"
    with SafeArchive(path, MAX_INPUTS_BYTES, what) as archive:
        where = archive.where
        arrays = sorted(n[:-4] for n in archive.names if n.endswith(".npy"))
        if "images.npy" not in archive:
            raise FormatError(f"{where}: needs an array 'images' (and optionally 'labels', 'scale'); has {arrays}")
        images = archive.read_npy("images.npy", kinds="biuf", where=f"{where}: array 'images'")
        scale = None
        if "scale.npy" in archive:
            scale = archive.read_npy("scale.npy", kinds="iuf", max_elements=1, where=f"{where}: array 'scale'")
        labels = None
        if "labels.npy" in archive:
            labels = archive.read_npy("labels.npy", kinds="iuf", where=f"{where}: array 'labels'")
    if images.ndim < 1:
        raise FormatError(f"{where}: array 'images' must have a sample axis, got shape {images.shape}")
    images = images.astype(np.float64)
    _check_finite(images, f"{where}: array 'images'")
    if scale is not None:
        if scale.shape not in ((), (1,)):
            raise FormatError(f"{where}: array 'scale' must be a scalar, got shape {scale.shape}")
        factor = float(scale.reshape(()))
        if not math.isfinite(factor):
            raise FormatError(f"{where}: array 'scale' must be finite, got {factor}")
        with np.errstate(over="ignore"):
            images = images * factor
        _check_finite(images, f"{where}: array 'images' times scale {factor}")
    if labels is not None:
        labels = _as_labels(labels, len(images), where)
    return images, labels


def _check_finite(values: np.ndarray, label: str) -> None:
    bad = ~np.isfinite(values)
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        raise FormatError(f"{label}: {int(bad.sum())} non-finite value(s), first {values[idx]} at index {idx}")


def _as_labels(labels: np.ndarray, n: int, where: str) -> np.ndarray:
    label = f"{where}: array 'labels'"
    if labels.ndim != 1 or len(labels) != n:
        raise FormatError(f"{label} must be 1-D with one entry per image ({n}), got shape {labels.shape}")
    if labels.dtype.kind == "f":
        _check_finite(labels, label)
        whole = labels == np.round(labels)
        if not whole.all():
            i = int(np.flatnonzero(~whole)[0])
            raise FormatError(f"{label} must be integer-valued, got {labels[i]} at index {i}")
        too_big = np.abs(labels) >= 2.0**63
        if too_big.any():
            i = int(np.flatnonzero(too_big)[0])
            raise FormatError(f"{label}: value {labels[i]} at index {i} does not fit int64")
    elif labels.dtype.kind == "u" and labels.dtype.itemsize == 8 and len(labels) and labels.max() >= 2**63:
        i = int(np.argmax(labels))
        raise FormatError(f"{label}: value {labels[i]} at index {i} does not fit int64")
    return labels.astype(np.int64)
