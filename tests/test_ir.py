"""IR nodes, network validation, and the .fsnet file format."""

import json
import zipfile

import numpy as np
import pytest

from fs_hw import conformance
from fs_hw.codes import relu_code
from fs_hw.errors import FormatError, ValidationError
from fs_hw.ir import (
    Add,
    AvgPool2d,
    Conv2d,
    Dense,
    Flatten,
    FSActivation,
    FSCode,
    Input,
    Network,
    Readout,
    load_network,
    save_network,
)


def _mlp(weight=None, codes=None):
    code = relu_code(2.0, 4, name="r")
    w = np.ones((3, 4)) if weight is None else weight
    return Network(
        (Input("x", (4,), "r"), Dense("d", "x", w, np.zeros(3)), FSActivation("a", "d", "r"),
         Dense("o", "a", np.ones((2, 3)), np.zeros(2)), Readout("out", "o")),
        codes if codes is not None else {"r": code},
    )


@pytest.mark.parametrize("name", conformance.SCENARIOS)
def test_round_trip_is_exact(tmp_path, name):
    net, _ = conformance.scenario(name)
    path = save_network(net, tmp_path / "n.fsnet")
    back = load_network(path)
    assert back == net
    for a, b in zip(net.nodes, back.nodes):
        for key, arr in a.arrays().items():
            assert arr.tobytes() == b.arrays()[key].tobytes()
    assert back.codes == net.codes and back.stages == net.stages


def test_save_refuses_to_overwrite(tmp_path):
    path = tmp_path / "n.fsnet"
    path.write_text("precious")
    with pytest.raises(FormatError, match="refusing to overwrite"):
        save_network(_mlp(), path)
    assert path.read_text() == "precious"


def test_shape_mismatch_names_node_and_numbers():
    with pytest.raises(ValidationError, match=r"dense 'd': weight: expects input of shape \(5,\), got \(4,\)"):
        _mlp(weight=np.ones((3, 5)))


def test_nan_weight_is_refused_with_index():
    w = np.ones((3, 4))
    w[1, 2] = np.nan
    non_finite = r"dense 'd': weight: 1 non-finite value\(s\), first nan at index \(1, 2\)"
    with pytest.raises(ValidationError, match=non_finite):
        _mlp(weight=w)


def test_unknown_code_and_K_mismatch():
    with pytest.raises(ValidationError, match="unknown FS code 'r'"):
        _mlp(codes={"q": relu_code(1.0, 4, name="q")})
    code4, code6 = relu_code(1.0, 4, name="in"), relu_code(2.0, 6, name="r")
    with pytest.raises(ValidationError, match="K mismatch: its code has K=6, node 'x'.s has K=4"):
        Network(
            (Input("x", (4,), "in"), Dense("d", "x", np.ones((3, 4)), np.zeros(3)),
             FSActivation("a", "d", "r"), Readout("out", "a")),
            {"in": code4, "r": code6},
        )


def test_residual_shape_mismatch_and_cycle():
    code = relu_code(1.0, 4, name="r")
    with pytest.raises(ValidationError, match=r"add 's': inputs: shape mismatch: 'a' is \(3,\), 'x' is \(4,\)"):
        Network((Input("x", (4,), "r"), Dense("d", "x", np.ones((3, 4)), np.zeros(3)),
                 FSActivation("a", "d", "r"), Add("s", operands=("a", "x")), Readout("out", "s")), {"r": code})
    with pytest.raises(ValidationError, match="cycle"):
        Network((Input("x", (3,), "r"), Add("s", operands=("x", "a")), FSActivation("a", "s", "r"),
                 Readout("out", "a")), {"r": code})


def test_conv_pool_shapes_and_stages():
    net, _ = conformance.scenario("residual")
    assert net.shapes["fs_out"] == (2, 5, 5)
    assert net.shapes["pool"] == (2, 1, 1)
    # the residual add joins stage 1 (fs_stem) and stage 2 (conv_b): fs_out is stage 3
    assert net.stages["fs_stem"] == 1 and net.stages["fs_a"] == 2 and net.stages["fs_out"] == 3
    assert net.time_steps == 4 * net.K
    conv = Conv2d("c", "x", np.ones((2, 1, 3, 3)), np.zeros(2), stride=2, padding=1)
    assert conv.infer_shape([(1, 7, 7)]) == (2, 4, 4)
    assert AvgPool2d("p", "x", kernel=2).infer_shape([(3, 5, 5)]) == (3, 2, 2)
    assert Flatten("f", "x").infer_shape([(3, 2, 2)]) == (12,)


def test_nodes_are_immutable():
    net = _mlp()
    with pytest.raises(AttributeError):
        net.nodes[1].name = "z"
    with pytest.raises(ValueError):
        net.nodes[1].weight[0, 0] = 5.0


def test_fscode_validation():
    with pytest.raises(ValidationError, match="tables differ in length"):
        FSCode("c", [1, 2], [1], [1, 2])
    with pytest.raises(ValidationError, match="rule: must be one of"):
        FSCode("c", [1], [1], [1], rule="<")
    with pytest.raises(ValidationError, match=r"FSCode 'c': T: non-finite value inf at step 1"):
        FSCode("c", [1, np.inf], [1, 1], [1, 1])


def _rewrite_manifest(src, dst, edit):
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename == "manifest.json":
                manifest = json.loads(data)
                edit(manifest)
                data = json.dumps(manifest).encode()
            zout.writestr(item, data)


def test_unknown_version_truncated_and_corrupted(tmp_path):
    path = save_network(_mlp(), tmp_path / "n.fsnet")
    future = tmp_path / "future.fsnet"
    _rewrite_manifest(path, future, lambda m: m.update(version=99))
    with pytest.raises(FormatError, match=r"unknown format version 99; this fs-hw reads versions \[1, 2, 3\]"):
        load_network(future)
    truncated = tmp_path / "t.fsnet"
    truncated.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    with pytest.raises(FormatError, match="not a readable fs-hw network file"):
        load_network(truncated)
    # same archive, one array replaced by another of the same shape: the checksum says so
    tampered = tmp_path / "x.fsnet"
    with zipfile.ZipFile(path) as zin, zipfile.ZipFile(tampered, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename.endswith(".weight.npy") and item.filename.startswith("arrays/1."):
                import io
                buf = io.BytesIO()
                np.lib.format.write_array(buf, np.full((3, 4), 7.0))
                data = buf.getvalue()
            zout.writestr(item, data)
    with pytest.raises(FormatError, match="checksum mismatch"):
        load_network(tampered)


def test_pickled_array_is_refused(tmp_path):
    path = save_network(_mlp(), tmp_path / "n.fsnet")
    evil = tmp_path / "evil.fsnet"
    with zipfile.ZipFile(path) as zin, zipfile.ZipFile(evil, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename == "arrays/1.bias.npy":
                import io
                buf = io.BytesIO()
                np.lib.format.write_array(buf, np.array([object()] * 3, dtype=object), allow_pickle=True)
                data = buf.getvalue()
            zout.writestr(item, data)
    with pytest.raises(FormatError, match="pickle|dtype"):
        load_network(evil)


def test_nan_in_file_is_refused_with_its_place(tmp_path):
    path = save_network(_mlp(), tmp_path / "n.fsnet")
    bad = tmp_path / "nan.fsnet"

    def edit(m):
        m["codes"][0]["T"][2] = float("nan")

    # json.dumps writes NaN (the writer refuses it); the loader must name the place
    _rewrite_manifest(path, bad, edit)
    with pytest.raises(FormatError, match=r"manifest.json: codes\[0\]\.T\[2\]: NaN is not allowed"):
        load_network(bad)
    # built in Python, the code itself names code and step
    with pytest.raises(ValidationError, match=r"FSCode 'r': T: non-finite value nan at step 2"):
        FSCode("r", [1.0, 1.0, np.nan], [1.0] * 3, [1.0] * 3)


def _step_weighted_net():
    """An MLP whose output layer has per-step weights (non-nominal values, to see them survive)."""
    net = _mlp()
    o = net.by_name["o"]
    sw = net.nominal_step_weight("o") + np.arange(4 * 2 * 3).reshape(4, 2, 3) / 7.0
    nodes = [Dense("o", "a", o.weight, o.bias, step_weight=sw) if n.name == "o" else n for n in net.nodes]
    return net.replace(nodes=nodes)


def test_step_weight_round_trip_is_exact_and_written_as_version_2(tmp_path):
    net = _step_weighted_net()
    path = save_network(net, tmp_path / "s.fsnet")
    with zipfile.ZipFile(path) as zf:
        manifest = json.loads(zf.read("manifest.json"))
    assert manifest["version"] == 2
    ref = manifest["nodes"][3]["arrays"]["step_weight"]
    assert ref["shape"] == [4, 2, 3] and ref["file"] == "arrays/3.step_weight.npy"
    back = load_network(path)
    assert back == net
    assert back.by_name["o"].step_weight.tobytes() == net.by_name["o"].step_weight.tobytes()
    assert back.by_name["a"] == net.by_name["a"] and back.step_sources == {"o": ("a", ())}
    # and equality sees a missing or different step_weight
    assert back != _mlp()


def test_files_without_step_weight_stay_version_1(tmp_path):
    path = save_network(_mlp(), tmp_path / "n.fsnet")
    with zipfile.ZipFile(path) as zf:
        manifest = json.loads(zf.read("manifest.json"))
    assert manifest["version"] == 1
    assert all("step_weight" not in n["arrays"] for n in manifest["nodes"])
    assert load_network(path).by_name["o"].step_weight is None
    # a version-2 file without step weights reads the same
    v2 = tmp_path / "v2.fsnet"
    _rewrite_manifest(path, v2, lambda m: m.update(version=2))
    assert load_network(v2) == _mlp()


def test_step_weight_in_a_version_1_file_is_refused(tmp_path):
    path = save_network(_step_weighted_net(), tmp_path / "s.fsnet")
    old = tmp_path / "old.fsnet"
    _rewrite_manifest(path, old, lambda m: m.update(version=1))
    with pytest.raises(FormatError, match=r"nodes\[3\] \(dense 'o'\): array 'step_weight' needs format version 2, "
                                          r"the file says version 1"):
        load_network(old)


def test_unknown_array_is_still_refused(tmp_path):
    path = save_network(_step_weighted_net(), tmp_path / "s.fsnet")
    bad = tmp_path / "bad.fsnet"

    def edit(m):
        m["nodes"][3]["arrays"]["step_weights"] = m["nodes"][3]["arrays"].pop("step_weight")

    _rewrite_manifest(path, bad, edit)
    with pytest.raises(FormatError, match=r"arrays \['bias', 'step_weights', 'weight'\] but a dense node has "
                                          r"\['bias', 'weight'\] \(optional: \['step_weight'\]\)"):
        load_network(bad)


def _conv_net(bias, mean=None, std=None):
    code = relu_code(1.0, 4)
    nodes = (Input("x", (1, 4, 4), code.name, mean=mean, std=std),
             Conv2d("c", "x", np.ones((2, 1, 3, 3)), bias, (1, 1), (1, 1)),
             FSActivation("a", "c", code.name), Flatten("f", "a"), Dense("d", "f", np.ones((3, 32)), np.zeros(3)),
             Readout("r", "d"))
    return Network(nodes, {code.name: code})


def test_bias_map_and_input_normalisation_round_trip_as_version_3(tmp_path):
    bias = np.arange(32, dtype=np.float64).reshape(2, 4, 4) / 64
    net = _conv_net(bias, mean=[0.5], std=[0.25])
    path = save_network(net, tmp_path / "v3.fsnet")
    assert json.loads(zipfile.ZipFile(path).read("manifest.json"))["version"] == 3
    back = load_network(path)
    assert back == net and back.by_name["c"].has_bias_map and back.input.normalization is not None
    plain = save_network(_conv_net(np.zeros(2)), tmp_path / "v1.fsnet")  # nothing new: still version 1
    assert json.loads(zipfile.ZipFile(plain).read("manifest.json"))["version"] == 1
    old = tmp_path / "claims_v2.fsnet"
    _rewrite_manifest(path, old, lambda m: m.update(version=2))
    with pytest.raises(FormatError, match=r"input 'x'\): arrays \['mean', 'std'\] need format version 3"):
        load_network(old)


def test_bias_map_must_match_the_conv_output():
    with pytest.raises(ValidationError, match=r"conv2d 'c': bias: is a map of shape \(2, 3, 3\); the output is "
                                              r"\(2, 4, 4\)"):
        _conv_net(np.zeros((2, 3, 3)))
    with pytest.raises(ValidationError, match=r"input 'x': std: must be > 0, got std\[0\] = -1.0"):
        _conv_net(np.zeros(2), mean=[0.0], std=[-1.0])
    with pytest.raises(ValidationError, match="input 'x': mean/std: must be given both or neither"):
        _conv_net(np.zeros(2), mean=[0.0])
