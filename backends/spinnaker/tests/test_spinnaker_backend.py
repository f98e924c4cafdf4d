"""The SpiNNaker target: its fixed-point profile, its resources and refusals, fs-deploy on
NEST and on sPyNNaker's virtual board."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
from fs_hw_spinnaker.backend import SpiNNakerBackend, column_sums
from fs_hw_spinnaker.profile import WEIGHT_MAGNITUDE_MAX, ring_buffer_shift, spinnaker_profile

from fs_hw.backend import FLOAT64, available_targets
from fs_hw.cli import main
from fs_hw.conformance import scenario
from fs_hw.data import load_dataset
from fs_hw.errors import ResourceError, ValidationError
from fs_hw.ir import Conv2d, Dense
from fs_hw.ir.io import load_network
from fs_hw.reference.simulator import run_reference

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "fs_hw" / "examples" / "fashion_mlp.fsnet"


def test_entry_point_registered():
    assert "spinnaker" in available_targets()


@pytest.mark.parametrize(("summed", "shift"), [(0.0, 0), (0.5, 0), (3.0, 2), (4.0, 3), (100.0, 7), (8191.9, 13)])
def test_ring_buffer_shift_is_spynnakers_rule(summed, shift):
    # ceil(log2 w), one more when 2^p <= w (sPyNNaker's PopulationVertex.get_ring_buffer_shifts)
    assert ring_buffer_shift(summed) == shift


@pytest.mark.parametrize("name", ["mlp_relu_gt", "conv", "residual", "code:swish_k8", "code:sigmoid_k8"])
def test_profile_weights_are_what_spynnaker_stores(name):
    net, _ = scenario(name)
    q, profile, notes, info = spinnaker_profile(net)
    assert profile.is_integer and profile.membrane_bits == 32
    for node in q.nodes:
        if not isinstance(node, (Dense, Conv2d)) or node.step_weight is None:
            continue
        rec = next(k for k in info.layers if k in _receivers_of(q, node.name))
        scale = info.layers[rec]
        sw = node.step_weight
        for receptor, mask in (("excitatory", sw > 0), ("inhibitory", sw < 0)):
            grid = scale.grid(receptor)
            stored = np.abs(sw[mask]) / grid  # the 16-bit magnitude sPyNNaker writes
            assert np.all(stored == np.round(stored)) and np.all(stored <= WEIGHT_MAGNITUDE_MAX)
    for name_, scale in info.layers.items():
        for receptor in ("excitatory", "inhibitory"):
            # the number passed as max_expected_summed_weight gives the shift the weights were rounded for
            assert ring_buffer_shift(scale.max_summed[receptor]) == scale.shift[receptor], name_
    # every rounding is stated
    assert any("per-step weights" in n for n in notes)


def _receivers_of(net, name):
    out, todo = set(), [name]
    while todo:
        for c in net.consumers[todo.pop()]:
            kind = net.by_name[c].kind
            if kind in ("fs", "readout"):
                out.add(c)
            elif kind == "add":
                todo.append(c)
    return out


def test_no_ring_buffer_can_saturate():
    # the worst case a cell can receive in one tick stays within what its shift allows
    backend = SpiNNakerBackend()
    net, _ = scenario("residual")
    art = backend.lower(backend.quantize(net, {}), {})
    bound = art.network.metadata["spinnaker_profile"]["layers"]
    for layer, sums in column_sums(art.payload).items():
        for receptor, units in sums.items():
            assert units / 2**15 <= bound[layer]["max_summed_weight_mv"][receptor] + 1e-9


def test_predicted_accuracy_of_the_bundled_example():
    # measured 86.6 % vs float FS 86.7 % on the first 1000 images; 300 images here, and a
    # point of slack for the 1-2 % of spike decisions the 16-bit weights move
    backend = SpiNNakerBackend()
    net = load_network(EXAMPLE)
    x, y = load_dataset("fashion-mnist", "test")
    x, y = x[:300], y[:300]
    q = backend.quantize(net, {})
    chip = run_reference(q.network, x, "fast", q.profile)
    fs = run_reference(net, x, "fast", FLOAT64)
    assert abs(np.mean(chip.predictions == y) - np.mean(fs.predictions == y)) <= 0.01
    assert np.mean(chip.predictions == fs.predictions) >= 0.98


def test_resources_count_cells_cores_and_synapses():
    backend = SpiNNakerBackend()
    net, _ = scenario("mlp_relu_ge")
    art = backend.lower(backend.quantize(net, {}), {"neurons_per_core": 16})
    res = art.resources
    K = net.K
    hidden = [n for n, ly in art.payload.layers.items() if ly.kind == "fs"][0]
    layer = res.layers[hidden]
    assert layer.units == layer.units // K * K and layer.parts == -(-layer.units // 16)
    assert res.extra["synapses"] == sum(len(g) for g in art.payload.groups)
    assert res.extra["synapses_per_weight"] <= K * K  # K x K per weight, fewer where a term rounds to 0


def test_network_too_big_for_the_board_is_refused(capsys):
    # one cell per core: the bundled MLP needs more than the 759 application cores of a board
    with pytest.raises(ResourceError, match=r"network.*needs \d+ application cores .*above the limit 759"):
        SpiNNakerBackend().lower(SpiNNakerBackend().quantize(load_network(EXAMPLE), {}), {"neurons_per_core": 1})


def test_impossible_machine_size_is_refused():
    with pytest.raises(ValidationError, match="width/height"):
        SpiNNakerBackend().lower(SpiNNakerBackend().quantize(scenario("mlp_relu_ge")[0], {}),
                                 {"width": 20, "height": 20})


def test_fs_deploy_on_nest(tmp_path):
    report = tmp_path / "r.json"
    rc = main(["--target", "spinnaker", "--runner", "nest", "--samples", "3",
               "--config", str(ROOT / "deploy_configs" / "spinnaker.toml"), "--report", str(report)])
    assert rc == 0
    r = json.loads(report.read_text())
    assert r["agreement"] == 1.0 and r["spike_mismatches"] == 0 and r["spikes_compared"] > 0
    assert r["readout_max_abs_diff"] == 0
    assert r["predicted_accuracy"] is not None and r["profile"] == "spinnaker"


def test_fs_deploy_refuses_a_too_small_board(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[target]\nneurons_per_core = 1\n")
    assert main(["--target", "spinnaker", "--runner", "nest", "--config", str(cfg), "--samples", "1"]) == 2
    err = capsys.readouterr().err
    assert "application cores" in err and "759" in err and "Traceback" not in err


@pytest.mark.slow  # sPyNNaker's virtual board: a child Python, import and mapping
def test_virtual_board_maps_and_reports(tmp_path, monkeypatch):
    pytest.importorskip("spynnaker")
    monkeypatch.chdir(tmp_path)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))  # the user's own sPyNNaker config is never read or written
    backend = SpiNNakerBackend()
    net, x = scenario("residual")
    art = backend.lower(backend.quantize(net, {}), {})
    estimate = art.resources.cores
    result = backend.run(art, x[:2], runner="spinnaker")
    assert result.info["spikes_returned"] is False
    extra = art.resources.extra
    assert art.resources.cores == estimate  # the estimate is what sPyNNaker placed
    assert art.resources.chips >= 1 and extra["routing_entries_total"] > 0
    assert extra["sdram_per_core_max_bytes"] > 0 and "sPyNNaker chose the profile's shifts" in \
        extra["ring_buffer_shifts_checked"]
    out = backend.export(art, tmp_path / "out")
    assert (tmp_path / "out" / "spinnaker_reports").is_dir()
    assert any(p.name == "placement_by_core_using_graph.rpt" for p in (tmp_path / "out").rglob("*.rpt"))
    assert sorted(os.listdir(tmp_path)) == ["home", "out"] and os.listdir(home) == []
    assert len(out) == 3


def test_silent_input_runs_on_nest():
    # a batch whose input code never fires (sPyNNaker needs a special form for it, NEST too must
    # accept it): biases alone drive the network, spike for spike as the reference
    from fs_hw.conformance import compare_runs

    backend = SpiNNakerBackend()
    net, x = scenario("mlp_relu_ge")
    art = backend.lower(backend.quantize(net, {}), {})
    zeros = np.zeros_like(x[:3]) - 1.0  # below every input threshold
    got = backend.run(art, zeros, record_spikes=True, runner="nest")
    want = run_reference(art.network, zeros, "fast", art.profile, record_spikes=True)
    assert want.spike_trains[net.input.name].sum() == 0
    comparison = compare_runs(want, got, input_name=net.input.name)
    assert comparison.exact and comparison.readout_equal
