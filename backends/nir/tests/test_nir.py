"""The NIR target: the exact graph equals the reference spike for spike (run by an
interpreter of NIR's node semantics on the file as nir.read gives it back), the compact
graph round-trips, imports refuse what has no FS form, and the CLI commands."""

import json
import os
import subprocess
import sys
from pathlib import Path

import nir
import numpy as np
import pytest
from fs_hw_nir.backend import EXACT_FILE, NIRBackend, graph_bytes, grid_inputs
from fs_hw_nir.compact import build_compact, graph_to_network, read_nir
from fs_hw_nir.exact import METADATA_KEY, SEP
from fs_hw_nir.interpret import Interpreter

from fs_hw import conformance
from fs_hw.backend import available_targets
from fs_hw.codes.relu import relu_code
from fs_hw.convert_cli import main as convert_main
from fs_hw.errors import FormatError, ResourceError, UnsupportedError, ValidationError
from fs_hw.ir import Dense, FSActivation, Input, Network, Readout, load_network
from fs_hw.reference.simulator import run_reference

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "fs_hw" / "examples" / "fashion_mlp.fsnet"
#: the primitives the exact graph may use (issue 13): NIR's own, stateless, and delays
EXACT_TYPES = {"Input", "Output", "Affine", "Scale", "Threshold", "Delay", "Conv2d", "SumPool2d", "AvgPool2d",
               "Flatten"}


def _write(graph, path: Path) -> Path:
    path.write_bytes(graph_bytes(graph))
    return path


def test_entry_point_registered():
    assert "nir" in available_targets()


@pytest.mark.parametrize("name", conformance.SCENARIOS)
def test_conformance_scenarios_spike_for_spike(name):
    # assert_conforms compares every spike (input code included, which runs in the graph
    # here) and every read-out value with the reference on the grid, in both modes
    for comparison in conformance.assert_conforms(NIRBackend(), name).values():
        assert comparison.spike_mismatches == 0 and comparison.input_mismatches == 0
        assert comparison.spikes_compared > 0 and comparison.readout_max_abs_diff == 0


def test_every_tick_schedule_equals_demand_schedule():
    # a stepping simulator (every node at every tick, delays as histories) gets the same spikes
    net, x = conformance.scenario("residual", samples=2)
    backend = NIRBackend()
    results = {}
    for schedule in ("demand", "every_tick"):
        artifact = backend.lower(net, {"schedule": schedule})
        results[schedule] = backend.run(artifact, x, record_spikes=True)
    for node, train in results["demand"].spike_trains.items():
        np.testing.assert_array_equal(train, results["every_tick"].spike_trains[node])
    np.testing.assert_array_equal(results["demand"].outputs, results["every_tick"].outputs)


def test_input_held_at_every_tick_gives_the_same_spikes():
    # a tool that presents the sample at every tick instead of tick 0 only: the input code
    # reads its Input at tick 0 only, so nothing changes
    net, x = conformance.scenario("residual", samples=3)
    artifact = NIRBackend().lower(net, {})
    graph = artifact.payload.exact.graph
    plan = json.loads(graph.metadata[METADATA_KEY])
    grid = grid_inputs(plan, x)
    requests = [(c, graph.nodes[c].metadata["decision_tick"]) for e in plan["spiking"] for c in e["cells"]]
    requests.append((plan["readout"]["node"], plan["readout"]["tick"]))
    interpreter = Interpreter(graph)
    once = interpreter.evaluate({"x": grid[:, None]}, requests)
    held = interpreter.evaluate({"x": np.repeat(grid[:, None], plan["ticks"], axis=1)}, requests, "every_tick")
    for request in requests:
        np.testing.assert_array_equal(once[request], held[request])


def test_bundled_example_exact_graph_equals_reference(tmp_path):
    net = load_network(EXAMPLE)
    x = np.load(ROOT / "fs_hw" / "examples" / "fashion_test.npz")["images"][:20] / 255.0
    backend = NIRBackend()
    artifact = backend.lower(net, {})
    result = backend.run(artifact, x, record_spikes=True)
    expected = run_reference(artifact.network, x, "spike", artifact.profile, record_spikes=True)
    comparison = conformance.compare_runs(expected, result, input_name=net.input.name)
    assert comparison.spike_mismatches == 0 and comparison.input_mismatches == 0
    assert comparison.spikes_compared == 20 * 8 * 100
    np.testing.assert_array_equal(result.outputs, expected.outputs)
    graph = nir.read(_write(artifact.payload.exact.graph, tmp_path / EXACT_FILE))
    assert {type(n).__name__ for n in graph.nodes.values()} <= EXACT_TYPES
    assert len(graph.nodes) == 89  # 16 Threshold cells (input code and relu1, K=8), their resets and delays, ...


def test_exact_graph_states_its_timing_and_shifted_threshold():
    net, _ = conformance.scenario("mlp_relu_ge")
    artifact = NIRBackend().lower(net, {})
    graph = artifact.payload.exact.graph
    plan = json.loads(graph.metadata[METADATA_KEY])
    K, stages = net.K, artifact.network.stages
    for entry in plan["spiking"]:
        code = artifact.network.code_of(artifact.network.by_name[entry["node"]])
        for t, cell in enumerate(entry["cells"]):
            node = graph.nodes[cell]
            assert node.metadata["decision_tick"] == stages[entry["node"]] * K + t
            np.testing.assert_array_equal(node.threshold, code.T[t] - 1)  # >= T is > T - 1 on the grid
    delays = [n.delay for n in graph.nodes.values() if isinstance(n, nir.Delay)]
    assert all(np.all(d >= 1) and np.all(d == np.round(d)) for d in delays)
    assert plan["readout"]["tick"] == stages[net.readout.name] * K


def test_ties_fire_only_because_of_the_one_unit_shift():
    # v == T exactly: the FS rule ">=" fires; NIR's ">" with the unshifted T would not
    code = relu_code(1.0, 3, rule=">=", name="in")
    act = relu_code(4.0, 3, rule=">=", name="act")
    net = Network((Input("x", (2,), "in"), Dense("d", "x", np.eye(2), np.zeros(2)), FSActivation("f", "d", "act"),
                   Dense("o", "f", np.eye(2), np.zeros(2)), Readout("out", "o")),
                  {"in": code, "act": act})
    x = np.array([[0.5, 0.49]])  # 0.5 is exactly T(0) of the input code
    backend = NIRBackend()
    artifact = backend.lower(net, {})
    result = backend.run(artifact, x, record_spikes=True)
    expected = run_reference(artifact.network, x, "spike", artifact.profile, record_spikes=True)
    assert result.spike_trains["x"][0, 0].tolist() == [1, 0]
    np.testing.assert_array_equal(result.spike_trains["x"], expected.spike_trains["x"])
    graph = artifact.payload.exact.graph
    unshifted = Interpreter(graph)
    unshifted.nodes[f"x{SEP}z0"] = nir.Threshold(threshold=graph.nodes[f"x{SEP}z0"].threshold + 1)
    grid = np.floor(x * artifact.profile.input_scale)
    values = unshifted.evaluate({"x": grid[:, None]}, [(f"x{SEP}z0", 0)])
    assert values[(f"x{SEP}z0", 0)][0].tolist() == [0.0, 0.0]


# -- the interpreter, from NIR's documented semantics --------------------------------------


def _graph(nodes, edges):
    return nir.NIRGraph(nodes=nodes, edges=edges, type_check=False)


def test_interpreter_node_semantics_by_hand():
    nodes = {
        "in": nir.Input(input_type={"input": np.array([1, 3, 3])}),
        "conv": nir.Conv2d(input_shape=np.array([3, 3]), weight=np.ones((1, 1, 2, 2)), stride=np.array([1, 1]),
                           padding=np.array([1, 1]), dilation=np.array([1, 1]), groups=1, bias=np.array([0.5])),
        "pool": nir.SumPool2d(kernel_size=np.array([2, 2]), stride=np.array([2, 2]), padding=np.array([0, 0])),
        "flat": nir.Flatten(input_type={"input": np.array([1, 2, 2])}, start_dim=0, end_dim=-1),
        "aff": nir.Affine(weight=np.array([[1.0, 0, 0, 0], [0, 0, 0, 1.0]]), bias=np.array([0.0, -1.0])),
        "thr": nir.Threshold(threshold=np.array([4.5, 9.0])),
        "late": nir.Delay(delay=np.array([2.0, 2.0])),
        "sum": nir.Scale(scale=np.array([10.0, 10.0])),
        "out": nir.Output(output_type={"output": np.array([2])}),
    }
    edges = [("in", "conv"), ("conv", "pool"), ("pool", "flat"), ("flat", "aff"), ("aff", "thr"), ("thr", "late"),
             ("thr", "sum"), ("late", "sum"), ("sum", "out")]
    x = np.arange(9.0).reshape(1, 1, 1, 3, 3)  # (N, ticks given, C, H, W): tick 0 only
    values = Interpreter(_graph(nodes, edges)).evaluate({"in": x}, [("aff", 0), ("thr", 0), ("out", 0), ("out", 2)])
    # conv with padding 1: 4x4 map of 2x2 window sums + 0.5; pooled 2x2 sums; flattened
    padded = np.pad(np.arange(9.0).reshape(3, 3), 1)
    conv = np.array([[padded[i:i + 2, j:j + 2].sum() for j in range(4)] for i in range(4)]) + 0.5
    pooled = conv.reshape(2, 2, 2, 2).sum(axis=(1, 3)).ravel()
    np.testing.assert_array_equal(values[("aff", 0)][0], [pooled[0], pooled[3] - 1])
    assert values[("thr", 0)][0].tolist() == [1.0, 1.0]
    assert values[("out", 0)][0].tolist() == [10.0, 10.0]  # the delayed copy is still 0 at tick 0
    # tick 2: the input is 0 after tick 0, so aff = bias (0.5 * 4 per pooled cell, -1 + 2): thr [0, 0];
    # the delay brings tick 0's spikes: 10 each
    assert values[("out", 2)][0].tolist() == [10.0, 10.0]


def test_threshold_is_strict():
    nodes = {"in": nir.Input(input_type={"input": np.array([3])}),
             "thr": nir.Threshold(threshold=np.array([1.0, 1.0, 1.0])),
             "out": nir.Output(output_type={"output": np.array([3])})}
    values = Interpreter(_graph(nodes, [("in", "thr"), ("thr", "out")])).evaluate(
        {"in": np.array([[[0.5, 1.0, 1.5]]])}, [("out", 0)])
    assert values[("out", 0)][0].tolist() == [0.0, 0.0, 1.0]


def test_interpreter_refuses_neurons_with_state():
    nodes = {"in": nir.Input(input_type={"input": np.array([2])}),
             "lif": nir.LIF(tau=np.ones(2), r=np.ones(2), v_leak=np.zeros(2), v_threshold=np.ones(2)),
             "out": nir.Output(output_type={"output": np.array([2])})}
    with pytest.raises(UnsupportedError, match="'lif' is a NIR LIF.*integration scheme"):
        Interpreter(_graph(nodes, [("in", "lif"), ("lif", "out")]))


# -- compact graph and import -------------------------------------------------------------


@pytest.mark.parametrize("name", [*conformance.SCENARIOS, "example", "grid"])
def test_compact_round_trip_is_equal(name, tmp_path):
    if name == "example":
        net = load_network(EXAMPLE)
    elif name == "grid":  # per-step weights, integer tables
        net = NIRBackend().quantize(load_network(EXAMPLE), {}).network
    else:
        net = conformance.scenario(name, samples=1)[0]
    path = _write(build_compact(net), tmp_path / "compact.nir")
    assert read_nir(path) == net
    graph = nir.read(path)
    for node in net.nodes:
        if isinstance(node, FSActivation):
            meta = graph.nodes[node.name].metadata
            code = net.code_of(node)
            assert isinstance(graph.nodes[node.name], nir.IF) and meta["rule"] == code.rule
            assert int(meta["K"]) == code.K
            for key in "Thd":
                np.testing.assert_array_equal(meta[key], getattr(code, key))


def test_compact_round_trip_of_bias_map_and_normalisation(tmp_path):
    net = conformance._conv_bias_map(np.random.default_rng(3), 4)
    assert net.by_name["conv0"].has_bias_map and net.input.normalization is not None
    assert read_nir(_write(build_compact(net), tmp_path / "c.nir")) == net


def test_read_nir_refuses_other_neurons_naming_node_kind_and_why(tmp_path):
    lif = {"in": nir.Input(input_type={"input": np.array([2])}),
           "aff": nir.Affine(weight=np.eye(2), bias=np.zeros(2)),
           "lif1": nir.LIF(tau=np.ones(2), r=np.ones(2), v_leak=np.zeros(2), v_threshold=np.ones(2)),
           "out": nir.Output(output_type={"output": np.array([2])})}
    path = _write(_graph(lif, [("in", "aff"), ("aff", "lif1"), ("lif1", "out")]), tmp_path / "lif.nir")
    with pytest.raises(UnsupportedError, match=r"'lif1' is a NIR LIF.*leak"):
        read_nir(path)
    plain_if = dict(lif, lif1=nir.IF(r=np.ones(2), v_threshold=np.ones(2)))
    with pytest.raises(UnsupportedError, match=r"'lif1' is a NIR IF.*without the FS tables"):
        graph_to_network(_graph(plain_if, [("in", "aff"), ("aff", "lif1"), ("lif1", "out")]))
    artifact = NIRBackend().lower(conformance.scenario("mlp_relu_ge")[0], {})
    exact = _write(artifact.payload.exact.graph, tmp_path / "exact.nir")
    with pytest.raises(UnsupportedError, match="compact.nir"):
        read_nir(exact)
    (tmp_path / "junk.nir").write_bytes(b"not hdf5")
    with pytest.raises(FormatError, match="junk.nir: not a readable NIR file"):
        read_nir(tmp_path / "junk.nir")


def test_fs_convert_reads_compact_nir_and_refuses_others(tmp_path, capsys):
    net = load_network(EXAMPLE)
    path = _write(build_compact(net), tmp_path / "model.nir")
    assert convert_main([str(path), "--out", str(tmp_path / "back.fsnet")]) == 0
    assert load_network(tmp_path / "back.fsnet") == net
    assert convert_main([str(path), "--out", str(tmp_path / "back.fsnet")]) == 2  # no overwrite without --force
    lif = {"in": nir.Input(input_type={"input": np.array([2])}),
           "n": nir.LIF(tau=np.ones(2), r=np.ones(2), v_leak=np.zeros(2), v_threshold=np.ones(2)),
           "out": nir.Output(output_type={"output": np.array([2])})}
    capsys.readouterr()
    bad = _write(_graph(lif, [("in", "n"), ("n", "out")]), tmp_path / "lif.nir")
    assert convert_main([str(bad), "--out", str(tmp_path / "lif.fsnet")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'n' is a NIR LIF" in err and "Traceback" not in err
    assert not (tmp_path / "lif.fsnet").exists()


def test_core_does_not_import_nir():
    code = "import sys, fs_hw.cli, fs_hw.convert_cli, fs_hw.backend; print('nir' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_grid_refuses_sums_beyond_float64():
    # per input the K=8 steps add (2 - 2^-7) * 2^39 units at 40 bits; 16384 inputs reach 2^54
    code = relu_code(1.0, 8, name="in")
    net = Network((Input("x", (16384,), "in"), Dense("d", "x", np.ones((2, 16384)), np.zeros(2)),
                   Readout("out", "d")), {"in": code})
    with pytest.raises(ResourceError, match=r"weight_bits=40 .* above 2\^53"):
        NIRBackend().quantize(net, {"weight_bits": 40})


def test_config_is_checked():
    with pytest.raises(ValidationError, match="schedule"):
        NIRBackend().quantize(load_network(EXAMPLE), {"schedule": "sometimes"})


# -- the command -----------------------------------------------------------------------------


def _deploy(tmp_path, *args):
    from fs_hw.cli import main

    out, report = tmp_path / "out", tmp_path / "report.json"
    code = main([*args, "--target", "nir", "--out", str(out), "--report", str(report)])
    return code, out, json.loads(report.read_text())


def test_fs_deploy_writes_both_graphs_and_compares(tmp_path):
    code, out, report = _deploy(tmp_path, "--samples", "5")
    assert code == 0 and report["spike_mismatches"] == 0 and report["spikes_compared"] == 5 * 8 * 100
    assert report["resources"]["nir_nodes"] == 89
    exact, compact = nir.read(out / "exact.nir"), nir.read(out / "compact.nir")
    assert {type(n).__name__ for n in exact.nodes.values()} <= EXACT_TYPES
    assert read_nir(out / "compact.nir") == load_network(EXAMPLE)
    assert sum(isinstance(n, nir.IF) for n in compact.nodes.values()) == 2  # the input code and relu1


@pytest.mark.slow
def test_fs_deploy_resnet8(tmp_path):
    code, out, report = _deploy(tmp_path, "resnet8", "--samples", "50")
    assert code == 0 and report["spike_mismatches"] == 0 and report["agreement"] == 1.0
    assert report["spikes_compared"] > 0 and report["readout_max_abs_diff"] == 0
    assert read_nir(out / "compact.nir") == load_network(ROOT / "fs_hw" / "zoo" / "networks" / "resnet8.fsnet")
    assert len(nir.read(out / "exact.nir").nodes) == report["resources"]["nir_nodes"]


NIR104 = Path(os.environ.get("FS_HW_NIR104_PYTHON", "/tmp/nir104-venv/bin/python"))
_SUMMARY = """
import hashlib, json, sys, numpy as np, nir
g = nir.read(sys.argv[1])
def digest(v):
    v = np.asarray(v)
    return hashlib.sha256(v.astype(np.float64).tobytes()).hexdigest() if v.dtype.kind in "iufb" else str(v)
out = {}
for name, node in g.nodes.items():
    fields = {k: digest(v) for k, v in vars(node).items()
              if k not in ("input_type", "output_type", "metadata") and v is not None}
    meta = {k: digest(v) for k, v in (getattr(node, "metadata", None) or {}).items()}
    out[name] = [type(node).__name__, fields, meta]
print(json.dumps({"version": nir.version, "nodes": out, "edges": sorted(map(list, g.edges))}))
"""


@pytest.mark.slow
@pytest.mark.skipif(not NIR104.exists(), reason=f"no nir 1.0.4 venv at {NIR104} (python -m venv; pip install "
                    "nir==1.0.4 numpy==1.26.4 h5py==3.16.0; or set FS_HW_NIR104_PYTHON)")
def test_files_read_in_nir_104_with_the_same_content(tmp_path):
    # sinabs 3.1 and rockpool 3.1 pin nir <= 1.0.4: the files must read there, and give the
    # same nodes, parameters, metadata and edges as nir 1.0.8 reads
    code, out, _ = _deploy(tmp_path, "--samples", "5")
    assert code == 0
    for name in ("exact.nir", "compact.nir"):
        old = json.loads(subprocess.run([str(NIR104), "-c", _SUMMARY, str(out / name)], capture_output=True,
                                        text=True, check=True).stdout)
        new = json.loads(subprocess.run([sys.executable, "-c", _SUMMARY, str(out / name)], capture_output=True,
                                        text=True, check=True).stdout)
        assert old["version"] == "1.0.4" and new["version"] == "1.0.8"
        assert old["edges"] == new["edges"] and old["nodes"].keys() == new["nodes"].keys()
        for node, (kind, fields, meta) in new["nodes"].items():
            kind_old, fields_old, meta_old = old["nodes"][node]
            assert kind_old == kind, node
            assert {k: v for k, v in fields.items() if k in fields_old} == fields_old, node
            assert meta_old == meta, node


def test_read_nir_refuses_links_to_other_files(tmp_path):
    import h5py

    path = _write(build_compact(load_network(EXAMPLE)), tmp_path / "linked.nir")
    with h5py.File(path, "a") as f:
        f["node"]["outside"] = h5py.ExternalLink(str(tmp_path / "other.h5"), "/secret")
    with pytest.raises(FormatError, match="ExternalLink"):
        read_nir(path)
