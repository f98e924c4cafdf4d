"""Crafted hostile `.fsnet` and `--inputs` files, made here: each is refused with fs-hw's
own error, naming the object, before anything large is allocated."""

import hashlib
import io
import json
import struct
import zipfile

import numpy as np
import pytest

from fs_hw import conformance
from fs_hw.errors import FSHWError, ValidationError
from fs_hw.ir import Conv2d, Dense, FSActivation, Input, Readout, load_network, save_network
from fs_hw.ir.network import Network
from fs_hw.safe_archive import load_inputs_file


@pytest.fixture(scope="module")
def valid(tmp_path_factory):
    net, _ = conformance.scenario("residual")
    path = save_network(net, tmp_path_factory.mktemp("crafted") / "valid.fsnet")
    with zipfile.ZipFile(path) as zf:
        members = {i.filename: zf.read(i.filename) for i in zf.infolist()}
    return net, members


def _write(path, manifest, members, extra=()):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("manifest.json", json.dumps(manifest))
        for name, blob in members.items():
            if name != "manifest.json":
                zf.writestr(name, blob)
        for name, blob in extra:
            zf.writestr(name, blob)
    return path


def _refused(path, *needles):
    with pytest.raises(FSHWError) as info:
        load_network(path)
    for needle in needles:
        assert needle in str(info.value), str(info.value)


EDITS = {
    "version-true": (lambda m: m.update(version=True), "format version True"),
    "version-float": (lambda m: m.update(version=1.0), "format version 1.0"),
    "shape-string": (lambda m: m["nodes"][0]["attrs"].update(shape="4"), "shape"),
    "shape-float": (lambda m: m["nodes"][0]["attrs"].update(shape=[4.5]), "shape"),
    "nan-metadata": (lambda m: m["metadata"].update(x=float("nan")), "NaN"),
    "huge-K": (lambda m: m["codes"][0].update(T=[1.0] * 200000, h=[1.0] * 200000, d=[1.0] * 200000), "K <= "),
}


@pytest.mark.parametrize("case", sorted(EDITS))
def test_manifest_edits_are_refused(tmp_path, valid, case):
    _, members = valid
    manifest = json.loads(members["manifest.json"])
    edit, needle = EDITS[case]
    edit(manifest)
    # json.dumps writes NaN as a bare token, which is exactly the hostile case
    _refused(_write(tmp_path / "t.fsnet", manifest, members), needle)


def test_duplicate_manifest_is_refused(tmp_path, valid):
    _, members = valid
    with pytest.warns(UserWarning):  # zipfile itself warns when writing a duplicate name
        path = _write(tmp_path / "t.fsnet", json.loads(members["manifest.json"]), members,
                      extra=[("manifest.json", b"{}")])
    _refused(path, "manifest.json", "more than once")


def test_giant_npy_header_is_refused_before_allocation(tmp_path, valid):
    _, members = valid
    manifest = json.loads(members["manifest.json"])
    ref = next(r for n in manifest["nodes"] for r in n["arrays"].values())
    header = {"descr": "<f8", "fortran_order": False, "shape": (10**12,)}
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    members = dict(members)
    members[ref["file"]] = buf.getvalue() + b"\0" * 64
    ref["shape"] = [10**12]
    _refused(_write(tmp_path / "t.fsnet", manifest, members), ref["file"])


def test_dead_fs_branch_is_refused(valid):
    net, _ = valid
    x = net.input
    width = int(np.prod(net.shapes[x.name]))
    code = next(iter(net.codes))
    nodes = [Input("x", shape=(width,), code=x.code), Dense("d", input="x", weight=np.eye(width), bias=np.zeros(width)),
             FSActivation("dead", input="d", code=code), Readout("out", input="d")]
    with pytest.raises(ValidationError, match="'dead'.*reaches no read-out"):
        Network(tuple(nodes), dict(net.codes))


def _npz(path, **arrays):
    np.savez(path, **arrays)
    return path


def test_inputs_scale_array_and_2d_labels_are_refused(tmp_path):
    with pytest.raises(FSHWError, match="scale"):
        load_inputs_file(_npz(tmp_path / "a.npz", images=np.zeros((3, 4)), scale=np.ones(3)))
    with pytest.raises(FSHWError, match="labels"):
        load_inputs_file(_npz(tmp_path / "b.npz", images=np.zeros((3, 4)), labels=np.zeros((3, 2), int)))


def test_inputs_encrypted_member_is_refused(tmp_path):
    path = _npz(tmp_path / "e.npz", images=np.zeros((2, 4)))
    raw = bytearray(path.read_bytes())
    # set the "encrypted" bit (bit 0 of the general-purpose flags) in the local and central headers
    for sig, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        i = raw.find(sig)
        flags = struct.unpack_from("<H", raw, i + offset)[0]
        struct.pack_into("<H", raw, i + offset, flags | 1)
    path.write_bytes(bytes(raw))
    with pytest.raises(FSHWError, match="encrypt"):
        load_inputs_file(path)


def test_inputs_good_file_round_trips(tmp_path):
    images, labels = load_inputs_file(_npz(tmp_path / "g.npz", images=np.arange(6.0).reshape(3, 2),
                                           labels=np.array([0, 1, 2]), scale=np.array(0.5)))
    assert np.array_equal(images, np.arange(6.0).reshape(3, 2) * 0.5) and labels.tolist() == [0, 1, 2]


def _step_weighted_members(tmp_path):
    """The residual scenario with per-step weights on conv_a (source fs_stem), as zip members."""
    net, _ = conformance.scenario("residual")
    conv = net.by_name["conv_a"]
    sw = net.nominal_step_weight("conv_a")
    nodes = [Conv2d(n.name, n.input, n.weight, n.bias, n.stride, n.padding, step_weight=sw) if n is conv else n
             for n in net.nodes]
    path = save_network(net.replace(nodes=nodes), tmp_path / "sw.fsnet")
    with zipfile.ZipFile(path) as zf:
        members = {i.filename: zf.read(i.filename) for i in zf.infolist()}
    manifest = json.loads(members["manifest.json"])
    ref = next(n for n in manifest["nodes"] if n["name"] == "conv_a")["arrays"]["step_weight"]
    assert ref["shape"] == list(sw.shape)
    return manifest, members, ref, sw


def _swap_array(members, ref, arr, update_manifest):
    """Put ``arr`` in ``ref``'s member; with ``update_manifest`` also its shape and checksum."""
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.ascontiguousarray(arr))
    members = dict(members)
    members[ref["file"]] = buf.getvalue()
    if update_manifest:
        ref.update(shape=list(arr.shape), sha256=hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest())
    return members


def test_step_weight_shape_disagreeing_with_manifest_is_refused(tmp_path):
    manifest, members, ref, sw = _step_weighted_members(tmp_path)
    members = _swap_array(members, ref, sw[:-1], update_manifest=False)  # one step fewer than declared
    _refused(_write(tmp_path / "t.fsnet", manifest, members), ref["file"], "conv_a",
             f".npy shape {list(sw[:-1].shape)}, manifest says {list(sw.shape)}")


def test_step_weight_shape_disagreeing_with_weight_is_refused(tmp_path):
    # manifest and .npy agree with each other (checksum too), but not with the node's weight
    manifest, members, ref, sw = _step_weighted_members(tmp_path)
    members = _swap_array(members, ref, sw[:, :, :, :2, :], update_manifest=True)
    wrong_shape = r"conv2d 'conv_a': step_weight: must have shape .* got \(6, 2, 2, 2, 3\)"
    with pytest.raises(ValidationError, match=wrong_shape):
        load_network(_write(tmp_path / "t.fsnet", manifest, members))


def test_step_weight_with_wrong_K_in_file_is_refused(tmp_path):
    manifest, members, ref, sw = _step_weighted_members(tmp_path)
    members = _swap_array(members, ref, sw[:3], update_manifest=True)
    with pytest.raises(ValidationError, match=r"conv2d 'conv_a': step_weight: has K=3 steps .* source fs 'fs_stem'"):
        load_network(_write(tmp_path / "t.fsnet", manifest, members))
