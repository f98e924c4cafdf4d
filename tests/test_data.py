"""fs_hw.data: real Fashion-MNIST loading, checksums, truncation, missing files."""

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest

import fs_hw.data as data
from fs_hw.data import load_dataset, parse_idx
from fs_hw.errors import FormatError, MissingDependencyError, ValidationError

FM_FILES = [data.FASHION_MNIST_DIR / f for f in data._SHA256["fashion-mnist"]]
needs_fm = pytest.mark.skipif(not all(p.is_file() for p in FM_FILES),
                              reason="Fashion-MNIST not installed (apt-get install -y dataset-fashion-mnist)")


@pytest.fixture
def fm_copy(tmp_path, monkeypatch):
    """A temp copy of the Fashion-MNIST test split, used through FS_HW_FASHION_MNIST_DIR."""
    for f in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        shutil.copy(data.FASHION_MNIST_DIR / f, tmp_path / f)
    monkeypatch.setenv("FS_HW_FASHION_MNIST_DIR", str(tmp_path))
    return tmp_path


@needs_fm
def test_fashion_mnist_test_split():
    x, y = load_dataset("fashion-mnist", "test")
    assert x.shape == (10000, 1, 28, 28) and x.dtype == np.float32
    assert y.shape == (10000,) and y.dtype == np.int64
    assert x.min() == 0.0 and x.max() == 1.0
    assert set(np.unique(y)) == set(range(10))
    assert np.all(np.bincount(y) == 1000)
    # pixel/255 exactly
    raw = gzip.decompress((data.FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz").read_bytes())
    first = np.frombuffer(raw, np.uint8, count=784, offset=16).reshape(28, 28)
    np.testing.assert_array_equal(x[0, 0], first.astype(np.float32) / np.float32(255))


@needs_fm
def test_checksum_mismatch(fm_copy):
    f = fm_copy / "t10k-labels-idx1-ubyte.gz"
    b = bytearray(f.read_bytes())
    b[-1] ^= 0xFF
    f.write_bytes(bytes(b))
    with pytest.raises(FormatError) as e:
        load_dataset("fashion-mnist", "test")
    msg = str(e.value)
    assert str(f) in msg and data._SHA256["fashion-mnist"][f.name] in msg and data.sha256_file(f) in msg


@needs_fm
def test_truncated_file(fm_copy, monkeypatch):
    f = fm_copy / "t10k-labels-idx1-ubyte.gz"
    raw = gzip.decompress(f.read_bytes())
    # a truncated download fails its checksum
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(FormatError, match="sha256 mismatch"):
        load_dataset("fashion-mnist", "test")
    # a truncated idx payload with a matching checksum is caught by the parser
    f.write_bytes(gzip.compress(raw[:-10]))
    sums = dict(data._SHA256["fashion-mnist"], **{f.name: data.sha256_file(f)})
    monkeypatch.setitem(data._SHA256, "fashion-mnist", sums)
    with pytest.raises(FormatError, match="truncated idx file"):
        load_dataset("fashion-mnist", "test")
    # a truncated gzip stream
    f.write_bytes(gzip.compress(raw)[:-20])
    sums[f.name] = data.sha256_file(f)
    with pytest.raises(FormatError, match=str(f.name)):
        load_dataset("fashion-mnist", "test")


def test_parse_idx_checks():
    good = bytes([0, 0, 8, 1]) + (3).to_bytes(4, "big") + bytes([1, 2, 3])
    np.testing.assert_array_equal(parse_idx(good, 1), [1, 2, 3])
    with pytest.raises(FormatError, match="truncated"):
        parse_idx(good[:-1], 1)
    with pytest.raises(FormatError, match="truncated"):
        parse_idx(good[:6], 1)
    with pytest.raises(FormatError, match="magic"):
        parse_idx(b"\x01" + good[1:], 1)
    with pytest.raises(FormatError, match="dimensions"):
        parse_idx(good, 3)


def test_missing_file_message(tmp_path, monkeypatch):
    monkeypatch.setenv("FS_HW_FASHION_MNIST_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(MissingDependencyError) as e:
        load_dataset("fashion-mnist", "train")
    msg = str(e.value)
    assert "\n" not in msg
    assert str(tmp_path / "nowhere" / "train-images-idx3-ubyte.gz") in msg
    assert "apt-get install -y dataset-fashion-mnist" in msg
    assert isinstance(e.value, ImportError)


def test_missing_mnist_message(tmp_path, monkeypatch):
    monkeypatch.setenv("FS_HW_MNIST_DIR", str(tmp_path))
    with pytest.raises(MissingDependencyError, match="fetch_mnist.sh"):
        load_dataset("mnist", "test")


def test_bad_name_and_split():
    with pytest.raises(ValidationError):
        load_dataset("cifar10", "test")
    with pytest.raises(ValidationError):
        load_dataset("fashion-mnist", "val")


def _mnist_dir():
    import os
    return Path(os.environ.get("FS_HW_MNIST_DIR") or data.MNIST_DEFAULT_DIR).expanduser()


@pytest.mark.skipif(not (_mnist_dir() / "t10k-labels-idx1-ubyte").is_file(),
                    reason="MNIST not fetched (scripts/fetch_mnist.sh)")
def test_mnist_test_split():
    x, y = load_dataset("mnist", "test")
    assert x.shape == (10000, 1, 28, 28) and x.dtype == np.float32 and y.dtype == np.int64
    assert 0.0 <= x.min() and x.max() <= 1.0 and set(np.unique(y)) == set(range(10))
