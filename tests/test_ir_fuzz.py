"""Random corruptions of a valid .fsnet file only ever raise fs-hw's own error type."""

import json
import zipfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fs_hw import conformance
from fs_hw.errors import FSHWError
from fs_hw.ir import load_network, save_network


@pytest.fixture(scope="module")
def valid_net():
    return conformance.scenario("residual")[0]


@pytest.fixture(scope="module")
def valid_bytes(tmp_path_factory, valid_net):
    path = save_network(valid_net, tmp_path_factory.mktemp("fuzz") / "valid.fsnet")
    return path.read_bytes()


def _load_bytes(tmp_path, data: bytes):
    """Load fuzzed bytes: only fs-hw's own error may escape; returns the network or None."""
    path = tmp_path / "fuzzed.fsnet"
    path.write_bytes(data)
    try:
        return load_network(path)
    except FSHWError:
        return None  # the only acceptable failure


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_byte_corruption(tmp_path, valid_net, valid_bytes, data):
    raw = bytearray(valid_bytes)
    action = data.draw(st.sampled_from(["flip", "truncate", "insert", "zero_run"]))
    if action == "flip":
        for _ in range(data.draw(st.integers(1, 8))):
            i = data.draw(st.integers(0, len(raw) - 1))
            raw[i] ^= data.draw(st.integers(1, 255))
    elif action == "truncate":
        raw = raw[: data.draw(st.integers(0, len(raw) - 1))]
    elif action == "insert":
        i = data.draw(st.integers(0, len(raw)))
        raw[i:i] = data.draw(st.binary(min_size=1, max_size=64))
    else:
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i : i + data.draw(st.integers(1, 200))] = b"\0" * 200
    loaded = _load_bytes(tmp_path, bytes(raw))
    # A corruption is either detected or harmless (it hit bytes the reader never uses, such
    # as zip comments or padding): a file that loads must be the original network.
    if loaded is not None:
        assert loaded == valid_net


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 10**6) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=10,
)


def _paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, prefix + (i,))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_manifest_corruption(tmp_path, valid_bytes, data):
    src = tmp_path / "src.fsnet"
    src.write_bytes(valid_bytes)
    with zipfile.ZipFile(src) as zin:
        manifest = json.loads(zin.read("manifest.json"))
        members = {i.filename: zin.read(i.filename) for i in zin.infolist()}
    paths = [p for p in _paths(manifest) if p]
    path = data.draw(st.sampled_from(paths))
    parent = manifest
    for key in path[:-1]:
        parent = parent[key]
    if data.draw(st.booleans()):
        parent[path[-1]] = data.draw(_json_values)
    elif isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent.pop(path[-1])
    members["manifest.json"] = json.dumps(manifest).encode()
    out = tmp_path / "edited.fsnet"
    with zipfile.ZipFile(out, "w") as zout:
        for name, blob in members.items():
            zout.writestr(name, blob)
    _load_bytes(tmp_path, out.read_bytes())
