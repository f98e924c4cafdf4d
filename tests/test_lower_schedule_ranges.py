"""Hardware-neutral relay schedule (fs_hw/lower/schedule.py) and range analysis
(fs_hw/lower/ranges.py) on integer networks."""

from __future__ import annotations

import numpy as np
import pytest

from fs_hw import conformance
from fs_hw.backend import NumericProfile
from fs_hw.codes import relu_code
from fs_hw.ir import Dense, FSActivation, Input, Network, Readout
from fs_hw.lower.maps import receiver_inputs
from fs_hw.lower.ranges import bounded, observe, receiver_ranges, widen, worst_case
from fs_hw.lower.schedule import Relay, relay_plan, skip_delays, spiking_sources

INT = NumericProfile(name="int", dtype="int64")


def test_relay_plan_of_a_residual_block():
    net, _ = conformance.scenario("residual", 2)
    # fs_stem (stage 1) feeds fs_a (stage 2) directly and fs_out (stage 3) over a skip
    assert skip_delays(net)[("fs_stem", "fs_out")] == 1
    assert skip_delays(net)[("fs_a", "fs_out")] == 0
    assert relay_plan(net) == [Relay("fs_stem", 2, "fs_stem")]
    assert spiking_sources(net, "fs_out") == ("fs_a", "fs_stem")


def test_no_relays_without_skips():
    net, _ = conformance.scenario("mlp_relu_ge", 2)
    assert relay_plan(net) == []
    assert set(skip_delays(net).values()) == {0}


def _int_mlp(step: bool, seed: int = 0):
    """A small integer MLP; with ``step`` its hidden dense weighs each input step itself,
    rounded to multiples of 4 (what a chip's accumulator unit does)."""
    rng = np.random.default_rng(seed)
    K = 4
    inp = relu_code(8.0, K, ">=", name="in")  # d = 4, 2, 1, 0.5 -> scaled below
    inp = type(inp)("in", inp.T * 2, inp.h * 2, inp.d * 2, inp.rule)  # integer tables
    act = relu_code(64.0, K, ">=", name="act")
    W = rng.integers(-20, 21, (5, 6)).astype(float)
    sw = None
    if step:
        sw = np.stack([np.round(W * inp.d[t] / 4) * 4 for t in range(K)])
    nodes = (
        Input("x", (6,), "in"),
        Dense("d0", "x", W, rng.integers(-5, 6, 5).astype(float), step_weight=sw),
        FSActivation("h", "d0", "act"),
        Dense("d1", "h", rng.integers(-3, 4, (3, 5)).astype(float), np.zeros(3)),
        Readout("out", "d1"),
    )
    return Network(nodes, {"in": inp, "act": act}, {})


@pytest.mark.parametrize("step", [False, True])
def test_worst_case_contains_every_measured_partial_sum(step):
    net = _int_mlp(step)
    x = np.random.default_rng(1).uniform(0, 8, (300, 6))
    measured = observe(net, INT, x)
    for name, rin in receiver_inputs(net).items():
        worst = worst_case(net, name, rin)
        got = measured[name]
        assert np.all(worst.low <= got.low) and np.all(got.high <= worst.high)
        assert np.all(got.step <= worst.step)
        assert np.all(worst.low_all <= got.low_all) and np.all(got.high_all <= worst.high_all)


def test_measured_sums_match_a_direct_computation_with_step_weights():
    net = _int_mlp(True)
    x = np.random.default_rng(2).uniform(0, 8, (50, 6))
    from fs_hw.reference.simulator import run_reference

    res = run_reference(net, x, "fast", INT, record_spikes=True)
    z = res.spike_trains["x"].astype(np.int64)  # (N, K, 6)
    d0 = net.by_name["d0"]
    partial = d0.bias[None, None, :] + np.cumsum(np.einsum("tji,nti->ntj", d0.step_weight, z), axis=1)
    got = observe(net, INT, x)["h"]
    np.testing.assert_array_equal(got.high, np.maximum(partial.max(axis=(0, 1)), np.maximum(d0.bias, 0)))
    np.testing.assert_array_equal(got.low, np.minimum(partial.min(axis=(0, 1)), 0))


def test_bounded_is_measured_widened_and_never_wider_than_worst():
    net = _int_mlp(False)
    x = np.random.default_rng(3).uniform(0, 8, (20, 6))
    measured = observe(net, INT, x)
    ranges = receiver_ranges(net, measured)
    for name, rin in receiver_inputs(net).items():
        worst = worst_case(net, name, rin)
        r = ranges[name]
        assert np.all(r.high <= worst.high) and np.all(r.high <= widen(measured[name].high))
        assert np.all(r.low >= worst.low)
        assert r.samples == 20
    assert bounded(worst, None) is worst
