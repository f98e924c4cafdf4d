"""Emulator runs equal the reference on the Loihi profile, spike for spike."""

import numpy as np
import pytest

pytest.importorskip("nengo_loihi")

from fs_hw_loihi.backend import LoihiBackend
from fs_hw_loihi.profile import loihi_profile
from loihi_nets import skip_network

from fs_hw import conformance
from fs_hw.backend import Backend
from fs_hw.reference.simulator import run_reference


def _check(net, x, config=None):
    backend = LoihiBackend()
    assert isinstance(backend, Backend)
    art = backend.lower(net, dict(config or {}))
    res = backend.run(art, x, record_spikes=True)
    spike = run_reference(art.network, x, "spike", art.profile, record_spikes=True)
    fast = run_reference(art.network, x, "fast", art.profile, record_spikes=True)
    for ref in (spike, fast):
        comp = conformance.compare_runs(ref, res)
        assert comp.exact, comp
        np.testing.assert_array_equal(ref.outputs, res.outputs)
        np.testing.assert_array_equal(ref.predictions, res.predictions)
    assert set(res.spike_trains) == {n.name for n in art.network.spiking_nodes()}
    for name, train in res.spike_trains.items():
        assert train.dtype == np.uint8
        assert train.shape == (len(x), net.K, *net.shapes[name])
    assert res.info["runner"] == "emulator"
    assert res.info["steps_per_sample"] == 2 * net.K
    return art, res


def test_mlp_exact():
    net, x = conformance.scenario("mlp_relu_ge", samples=12, seed=7)
    _check(net, x, {"batch_size": 5})


def test_small_cnn_exact():
    net, x = conformance.scenario("conv", samples=10, seed=11)
    art, _ = _check(net, x)
    assert "conv" in art.resources.layers["fs1"].connection_kinds


def test_residual_block_exact():
    net, x = conformance.scenario("residual", samples=10, seed=13)
    art, _ = _check(net, x)
    # the skip from stage 1 to stage 3 goes through one relay layer
    assert art.resources.layers["fs_stem@relay2"].kind == "relay"


def test_skip_over_two_stages_and_from_input():
    net = skip_network()
    x = np.random.default_rng(0).uniform(0, 1, (9, 6))
    art, _ = _check(net, x, {"batch_size": 4})
    assert art.resources.layers["fs0@relay3"].kind == "relay"


def test_fitted_code_rounding_is_noted_and_exact():
    net, x = conformance.scenario("code:swish_published_k16", samples=6, seed=2)
    art, _ = _check(net, x)
    assert any("output weights d rounded" in n for n in art.notes)


def test_profile_is_integer_and_close_to_float():
    net, x = conformance.scenario("mlp_relu_ge", samples=200, seed=1)
    int_net, profile, notes = loihi_profile(net)
    assert profile.dtype == "int64" and profile.membrane_bits == 18
    for node in int_net.nodes:
        for arr in node.arrays().values():
            assert np.array_equal(arr, np.round(arr))
    for code in int_net.codes.values():
        for table in (code.T, code.h, code.d):
            assert np.array_equal(table, np.round(table))
    q = run_reference(int_net, x, "fast", profile)
    f = run_reference(net, x, "fast")
    assert np.mean(q.predictions == f.predictions) > 0.95
    # per-step weights (the default) or plain weights: the rounding is stated either way
    assert any("weights rounded" in n or "per-step weights" in n for n in notes)


@pytest.mark.parametrize("scenario", ["conv", "residual"])
def test_source_steps_as_atoms_exact(scenario):
    # synapse_rows = "atoms": a conv of a spiking image source holds the K source steps as
    # atoms of radix-128 weight planes; the integers added are the same, so every spike is
    # the reference's
    net, x = conformance.scenario(scenario, samples=6, seed=5)
    art, _ = _check(net, x, {"synapse_rows": "atoms"})
    atoms = [name for name, lr in art.resources.layers.items() if "source steps as atoms" in lr.split]
    assert atoms, {name: lr.split for name, lr in art.resources.layers.items()}


def test_long_emulator_runs_say_how_far_they_are(monkeypatch, caplog):
    """A progress line per PROGRESS_EVERY_S seconds, with the steps done and the axon
    objects the emulator loops over (what its time grows with); the run is unchanged."""
    import logging

    import fs_hw_loihi.runner as runner

    net, x = conformance.scenario("mlp_relu_ge", samples=3, seed=7)
    monkeypatch.setattr(runner, "PROGRESS_EVERY_S", 0.0)
    with caplog.at_level(logging.INFO, logger="fs_hw.progress.loihi"):
        art, res = _check(net, x)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("emulator: step")]
    steps = res.info["steps"]
    assert len(lines) == steps - 1  # every step but the last, which ends the run
    assert lines[0].startswith(f"emulator: step 1 of {steps}, ")
    assert f"({len(art.payload.model.blocks)} cores, " in lines[-1]
