"""The BrainScaleS-2 target: the export, its replayer (which reads only the files), the
6-bit profile, refusals, and the analog-variation model."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from fs_hw_brainscales2.backend import BrainScaleS2Backend
from fs_hw_brainscales2.export import (
    FORMAT,
    VERSION,
    Export,
    event_label,
    label_fields,
    read_export,
    split_weights,
)
from fs_hw_brainscales2.replay import Variation, replay

from fs_hw import conformance
from fs_hw.backend import available_targets
from fs_hw.cli import main
from fs_hw.errors import ResourceError, ValidationError

ROOT = Path(__file__).resolve().parents[3]


def _hand_export() -> Export:
    """One instance, one logical neuron (one circuit), two host sources:
    source 0 -> +5 on driver 0 (row 0, excitatory), source 1 -> 3 on driver 1 (row 3,
    inhibitory); rest 0, threshold 2. Samples: both sources, source 0 only, source 1 only."""
    manifest = {
        "format": FORMAT, "version": VERSION, "K": 1,
        "units": {"step_cycles": 1250, "cycles_per_us": 125, "speedup": 1000},
        "layers": [{"name": "x", "kind": "input", "shape": [2], "stage": 0, "cells": 2},
                   {"name": "n", "kind": "fs", "shape": [1], "stage": 1, "cells": 1}],
        "input_layer": 0, "readout_layer": 1, "bias_source": 0, "instances": [{"layer": "n", "step": 0}],
    }
    a = np.array
    tables = {
        "source_kind": a([0, 0, 2], np.uint8), "source_layer": a([0, 0, 1], np.int32),
        "source_cell": a([0, 1, 0], np.int64),
        "neuron_instance": a([0], np.int32), "neuron_layer": a([1], np.int32), "neuron_cell": a([0], np.int64),
        "neuron_threshold": a([2], np.int64), "neuron_rest": a([0], np.int64), "neuron_readout": a([False]),
        "neuron_hemisphere": a([0], np.uint8), "neuron_first_column": a([0], np.uint16),
        "neuron_circuits": a([1], np.uint16), "neuron_label": a([0], np.uint16),
        "synapse_instance": a([0, 0], np.int32), "synapse_hemisphere": a([0, 0], np.uint8),
        "synapse_row": a([0, 3], np.uint16), "synapse_column": a([0, 0], np.uint16),
        "synapse_weight": a([5, 3], np.uint8), "synapse_label": a([0, 0], np.uint8),
        "route_instance": a([0, 0], np.int32), "route_source": a([0, 1], np.int64),
        "route_hemisphere": a([0, 0], np.uint8), "route_label": event_label(a([0, 1]), a([0, 0])),
    }
    events = {"samples": a(3), "host_sample": a([0, 0, 1, 2]), "host_cycle": a([0, 0, 1250, 2500], np.uint64),
              "host_source": a([0, 1, 0, 1])}
    return Export(manifest, tables, events)


def test_entry_point_registered():
    assert "brainscales2" in available_targets()


def test_labels_pack_bus_row_select_and_synapse_label():
    lab = event_label(np.array([0, 31, 32, 127]), np.array([0, 63, 5, 1]))
    assert list(lab) == [0, (31 << 6) | 63, (1 << 14) | 5, (3 << 14) | (31 << 6) | 1]
    d, s = label_fields(lab)
    assert list(d) == [0, 31, 32, 127] and list(s) == [0, 63, 5, 1]


def test_weights_split_into_6_bit_synapses():
    owner, w = split_weights(np.array([5, -63, 130, -64]))
    assert list(owner) == [0, 1, 2, 2, 2, 3, 3]
    assert list(w) == [5, -63, 63, 63, 4, -63, -1]


def test_replayer_on_a_hand_built_export(tmp_path):
    _hand_export().write(tmp_path)
    r = replay(tmp_path)
    assert list(r.membrane[:, 0]) == [2.0, 5.0, -3.0]  # 5 - 3, 5, -3
    assert list(r.fired[:, 0]) == [True, True, False]  # threshold 2, fires on >=
    assert list(r.out_cycle) == [1249, 2499]  # at the end of each sample's step window


def test_format_round_trip(tmp_path):
    ex = _hand_export()
    ex.write(tmp_path)
    back = read_export(tmp_path)
    assert back.manifest == json.loads(json.dumps(ex.manifest))
    for k, v in ex.tables.items():
        assert np.array_equal(back.tables[k], v) and back.tables[k].dtype == v.dtype, k


@pytest.mark.parametrize("damage", ["format", "version", "truncated", "missing_table", "unordered", "bad_source"])
def test_corrupted_exports_are_refused(tmp_path, damage):
    ex = _hand_export()
    if damage == "format":
        ex.manifest["format"] = "something else"
    elif damage == "version":
        ex.manifest["version"] = 99
    elif damage == "missing_table":
        del ex.tables["synapse_row"]
    elif damage == "unordered":
        ex.tables["synapse_instance"] = np.array([1, 0], np.int32)
    elif damage == "bad_source":
        ex.events["host_source"] = np.array([0, 1, 0, 7])
    ex.write(tmp_path)
    if damage == "truncated":
        data = (tmp_path / "network.npz").read_bytes()
        (tmp_path / "network.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValidationError):
        replay(tmp_path)


@pytest.mark.parametrize("scenario", conformance.SCENARIOS)
def test_conformance(scenario):
    # the replayer (reading only the written files) equals the reference on the profile
    comparisons = conformance.assert_conforms(BrainScaleS2Backend(), scenario, {})
    for comparison in comparisons.values():
        assert comparison.readout_equal and comparison.compared_spikes > 0


def test_export_weights_and_placement_respect_the_chip():
    backend = BrainScaleS2Backend()
    net, _ = conformance.scenario("conv")
    art = backend.lower(backend.quantize(net, {}), {})
    t = art.payload.tables
    assert t["synapse_weight"].max() <= 63 and t["synapse_row"].max() < 256
    assert t["synapse_column"].max() < 256 and t["synapse_label"].max() < 64
    # at most 64 sources per (instance, hemisphere, driver)
    d, _ = label_fields(t["route_label"])
    key = (t["route_instance"].astype(np.int64) * 2 + t["route_hemisphere"]) * 128 + d
    assert np.bincount(key).max() <= 64
    # a circuit's column holds at most one synapse per row
    cells = (t["synapse_instance"].astype(np.int64) * 2 + t["synapse_hemisphere"]) * 65536 + \
        t["synapse_row"].astype(np.int64) * 256 + t["synapse_column"]
    assert len(np.unique(cells)) == len(cells)


def test_zero_variation_equals_the_exact_replay(tmp_path):
    backend = BrainScaleS2Backend()
    net, x = conformance.scenario("residual")
    art = backend.lower(backend.quantize(net, {}), {})
    ex, _ = backend._batch(art, x)
    ex.write(tmp_path)
    exact = replay(tmp_path)
    zero = replay(tmp_path, Variation(0.0, 0.0, 0.0, seed=7))
    assert np.array_equal(exact.fired, zero.fired) and np.array_equal(exact.membrane, zero.membrane)
    varied = replay(tmp_path, Variation(0.3, 5.0, 2.0, seed=7))
    assert not np.array_equal(exact.membrane, varied.membrane)


def test_too_many_instances_are_refused(tmp_path, capsys):
    backend = BrainScaleS2Backend()
    net, _ = conformance.scenario("mlp_relu_ge")
    with pytest.raises(ResourceError, match=r"needs \d+ execution instances .* above the limit 1"):
        backend.lower(backend.quantize(net, {}), {"max_instances": 1})
    cfg = tmp_path / "c.toml"
    cfg.write_text("[target]\nmax_instances = 1\n")
    assert main(["--target", "brainscales2", "--config", str(cfg), "--samples", "1"]) == 2
    err = capsys.readouterr().err
    assert "execution instances" in err and "Traceback" not in err


@pytest.mark.slow  # the bundled example end to end, with the Monte-Carlo chips
def test_fs_deploy_bundled_example(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[target]\nmonte_carlo_chips = 2\n")
    report = tmp_path / "r.json"
    out = tmp_path / "out"
    rc = main(["--target", "brainscales2", "--samples", "30", "--config", str(cfg), "--report", str(report),
               "--out", str(out)])
    assert rc == 0
    r = json.loads(report.read_text())
    assert r["agreement"] == 1.0 and r["spike_mismatches"] == 0 and r["spikes_compared"] > 0
    assert r["info"]["export_events_missing"] == 0 and r["info"]["export_events_extra"] == 0
    mc = r["monte_carlo"]
    assert mc["chips"] == 2 and [s["scale"] for s in mc["sweep"]] == [0.0, 0.5, 1.0, 2.0]
    assert mc["sweep"][0]["mean"] == r["accuracy"]  # no variation: the exact replay
    assert (out / "bss2_export" / "manifest.json").is_file() and (out / "accuracy_vs_mismatch.png").is_file()
    # the written export replays on its own, equal to what it expects
    shutil.copytree(out / "bss2_export", tmp_path / "copy")
    from fs_hw_brainscales2.replay import compare_with_expected

    got = replay(tmp_path / "copy")
    check = compare_with_expected(tmp_path / "copy", got)
    assert check["missing"] == 0 and check["extra"] == 0 and check["readout_equal"]


def test_two_synapses_per_weight_stay_exact_and_6_bit():
    # a finer unit: terms up to 126 units, split over two synapses of <= 63 each
    backend = BrainScaleS2Backend()
    net, x = conformance.scenario("conv")
    one = backend.lower(backend.quantize(net, {}), {})
    two = backend.lower(backend.quantize(net, {"synapses_per_weight": 2}), {"synapses_per_weight": 2})
    assert two.payload.tables["synapse_weight"].max() <= 63
    assert len(two.payload.tables["synapse_weight"]) > len(one.payload.tables["synapse_weight"])
    comparisons = conformance.assert_conforms(backend, "conv", {"synapses_per_weight": 2})
    assert all(c.readout_equal for c in comparisons.values())
