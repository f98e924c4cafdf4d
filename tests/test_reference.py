"""The reference backend: fast and spike-level modes agree; integer profiles are exact."""

import numpy as np
import pytest

from fs_hw import conformance
from fs_hw.backend import NumericProfile, get_backend
from fs_hw.codes import relu_code
from fs_hw.dynamics import simulate_fs
from fs_hw.errors import ValidationError
from fs_hw.ir import Dense, FSActivation, FSCode, Input, Network, Readout
from fs_hw.reference.simulator import run_reference


@pytest.mark.parametrize("name", conformance.SCENARIOS)
def test_fast_and_spike_modes_give_identical_spikes(name):
    net, x = conformance.scenario(name, samples=12)
    fast = run_reference(net, x, "fast", record_spikes=True)
    spike = run_reference(net, x, "spike", record_spikes=True)
    comparison = conformance.compare_runs(fast, spike)
    assert comparison.exact, comparison.first_mismatch
    assert comparison.spikes_compared == sum(v.size for v in fast.spike_trains.values())
    assert sum(int(v.sum()) for v in fast.spike_trains.values()) > 0  # something spiked
    np.testing.assert_allclose(spike.outputs, fast.outputs, rtol=1e-12, atol=1e-12)
    for node, train in spike.spike_trains.items():
        assert np.array_equal(train.reshape(len(x), -1).sum(1), spike.spike_counts[node])


def test_hand_computed_two_neuron_network():
    # input code: alpha=1, K=3, >= ; x=0.8 -> 0.5 + 0.25 (spikes at t=0,1), x=0.3 -> 0.25 (t=1)
    inp = relu_code(1.0, 3, ">=", name="in")
    hid = relu_code(4.0, 3, ">=", name="h")  # grid 0.5: T = 2, 1, 0.5
    net = Network(
        (Input("x", (2,), "in"), Dense("d", "x", np.array([[2.0, 2.0]]), np.array([0.1])),
         FSActivation("a", "d", "h"), Dense("o", "a", np.array([[1.0], [-1.0]]), np.zeros(2)),
         Readout("out", "o")),
        {"in": inp, "h": hid},
    )
    x = np.array([[0.8, 0.3]])
    for mode in ("fast", "spike"):
        r = run_reference(net, x, mode, record_spikes=True)
        assert r.spike_trains["x"][0].tolist() == [[1, 0], [1, 1], [0, 0]]
        # v = 2*(0.75) + 2*(0.25) + 0.1 = 2.1 -> fires at T=2 (v=0.1), then nothing
        assert r.spike_trains["a"][0].tolist() == [[1], [0], [0]]
        assert r.outputs.tolist() == [[2.0, -2.0]]
        assert r.time_steps == 6


def _integer_version(net: Network, scale: int = 64) -> Network:
    """Integer-valued copy: weights and tables rounded on a grid (what a target does)."""
    codes = {}
    for name, code in net.codes.items():
        codes[name] = FSCode(name, np.round(code.T * scale), np.round(code.h * scale), np.round(code.d * scale),
                             code.rule)
    nodes = []
    for node in net.nodes:
        if isinstance(node, Dense):
            node = Dense(node.name, node.input, np.round(node.weight * 8), np.round(node.bias * scale * 8))
        nodes.append(node)
    return Network(tuple(nodes), codes)


@pytest.mark.parametrize("name", ["mlp_relu_ge", "mlp_relu_gt"])
def test_integer_profile_modes_are_bit_identical(name):
    net, x = conformance.scenario(name, samples=20)
    inet = _integer_version(net)
    profile = NumericProfile(name="int-test", dtype="int64", membrane_bits=32, input_scale=64)
    fast = run_reference(inet, x, "fast", profile, record_spikes=True)
    spike = run_reference(inet, x, "spike", profile, record_spikes=True)
    assert fast.outputs.dtype == np.int64
    assert np.array_equal(fast.outputs, spike.outputs)
    assert conformance.compare_runs(fast, spike).exact
    # and it is the FS dynamics in integers: check the first hidden layer by hand
    xin = np.floor(x * 64).astype(np.int64)
    code = inet.codes["input_k6"]
    y_in = simulate_fs(xin, code.T.astype(np.int64), code.h.astype(np.int64), code.d.astype(np.int64), code.rule).output
    d0 = inet.by_name["dense0"]
    v = y_in @ d0.weight.astype(np.int64).T + d0.bias.astype(np.int64)
    c = inet.codes["relu_k6"]
    T, h, d = (table.astype(np.int64) for table in (c.T, c.h, c.d))
    expect = simulate_fs(v, T, h, d, c.rule, record_spikes=True)
    assert np.array_equal(np.moveaxis(expect.spikes, 0, 1), fast.spike_trains["fs0"])


def test_integer_profile_overflow_names_node_and_bits():
    net, x = conformance.scenario("mlp_relu_ge", samples=4)
    inet = _integer_version(net)
    profile = NumericProfile(name="tiny", dtype="int64", membrane_bits=8, input_scale=64)
    overflow = r"membrane: overflow in profile 'tiny': value -?\d+ outside the 8-bit range \[-128, 127\]"
    with pytest.raises(ValidationError, match=overflow):
        run_reference(inet, x, "fast", profile)


def test_integer_profile_refuses_fractional_tables():
    net, x = conformance.scenario("mlp_relu_ge", samples=2)
    with pytest.raises(ValidationError, match="needs integer tables"):
        run_reference(net, x, "fast", NumericProfile(name="i", dtype="int64"))


@pytest.mark.parametrize("name", ["conv", "residual"])
def test_torch_kernels_give_identical_spikes(name):
    pytest.importorskip("torch")
    net, x = conformance.scenario(name, samples=10)
    a = run_reference(net, x, "fast", record_spikes=True, library="numpy")
    b = run_reference(net, x, "fast", record_spikes=True, library="torch")
    assert conformance.compare_runs(a, b).exact


def test_batching_does_not_change_results():
    net, x = conformance.scenario("conv", samples=10)
    whole = run_reference(net, x, "spike", record_spikes=True)
    parts = run_reference(net, x, "spike", record_spikes=True, batch_size=3)
    assert conformance.compare_runs(whole, parts).exact
    # float64 BLAS may sum in another order for another batch size: last bits only
    np.testing.assert_allclose(whole.outputs, parts.outputs, rtol=1e-12, atol=1e-12)


def test_input_shape_and_values_are_checked():
    net, x = conformance.scenario("conv", samples=2)
    wrong_shape = r"input 'x': shape: expects samples of shape \(1, 6, 6\), got \(1, 5, 5\)"
    with pytest.raises(ValidationError, match=wrong_shape):
        run_reference(net, np.zeros((2, 1, 5, 5)))
    x[0, 0, 0, 0] = np.nan
    with pytest.raises(ValidationError, match="1 non-finite values"):
        run_reference(net, x)


def test_reference_backend_via_entry_point_passes_conformance():
    backend = get_backend("reference")
    for name in conformance.SCENARIOS:
        comparison, reason = conformance.check_backend(backend, name)
        assert comparison is not None and comparison.exact, (name, reason)
