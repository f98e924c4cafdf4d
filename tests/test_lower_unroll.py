"""The hardware-neutral delay unrolling (fs_hw.lower.unroll): cells with one threshold,
delayed synapses; equal to the reference spike for spike on integer networks."""

import numpy as np
import pytest

from fs_hw.backend import NumericProfile
from fs_hw.ir import Add, Conv2d, Dense, Flatten, FSActivation, Input, Network, Readout
from fs_hw.ir.code import FSCode
from fs_hw.lower.maps import ConvMap
from fs_hw.lower.unroll import BIAS_SOURCE, check_alignment, gates, simulate, unroll
from fs_hw.reference.simulator import run_reference

INT = NumericProfile(name="int-test", dtype="int64", input_scale=1.0)


def _code(name, K, rng, negative_threshold=False):
    T = rng.integers(1, 40, K).astype(float)
    if negative_threshold:
        T[-2:] = [0.0, -3.0]
    h = rng.integers(0, 30, K).astype(float)
    d = rng.integers(1, 9, K).astype(float)
    return FSCode(name, T, h, d, ">=")


def _mlp(rng, K=4, step_weights=False, negative_threshold=False):
    codes = {"in": _code("in", K, rng), "hid": _code("hid", K, rng, negative_threshold)}
    w1 = rng.integers(-5, 6, (7, 6)).astype(float)
    sw = rng.integers(-9, 10, (K, 7, 6)).astype(float) if step_weights else None
    nodes = (
        Input("x", (6,), "in"),
        Dense("d1", "x", w1, rng.integers(-20, 21, 7).astype(float), step_weight=sw),
        FSActivation("h", "d1", "hid"),
        Dense("d2", "h", rng.integers(-5, 6, (3, 7)).astype(float), rng.integers(-9, 10, 3).astype(float)),
        Readout("out", "d2"),
    )
    return Network(nodes, codes)


def _cnn_residual(rng, K=3):
    codes = {"in": _code("in", K, rng), "a": _code("a", K, rng), "b": _code("b", K, rng)}
    c1 = rng.integers(-3, 4, (2, 1, 3, 3)).astype(float)
    c2 = rng.integers(-3, 4, (2, 2, 3, 3)).astype(float)
    nodes = (
        Input("x", (1, 6, 6), "in"),
        Conv2d("c1", "x", c1, rng.integers(-5, 6, 2).astype(float), padding=1),
        FSActivation("f1", "c1", "a"),
        Conv2d("c2", "f1", c2, np.zeros(2), padding=1),
        Conv2d("skip", "f1", np.eye(2)[:, :, None, None] * 2.0, np.zeros(2)),
        Add("sum", ("c2", "skip")),
        FSActivation("f2", "sum", "b"),
        # pooling as an integer window sum (a conv of ones), as integer profiles write it
        Conv2d("pool", "f2", np.eye(2)[:, :, None, None] * np.ones((1, 1, 2, 2)), np.zeros(2), stride=2),
        Flatten("flat", "pool"),
        Dense("d", "flat", rng.integers(-4, 5, (4, 18)).astype(float), np.zeros(4)),
        Readout("out", "d"),
    )
    return Network(nodes, codes)


def _inputs(rng, net, n=6):
    return rng.integers(-10, 60, (n, *net.input.shape)).astype(float)


@pytest.mark.parametrize("kind", ["mlp", "mlp_step_weights", "mlp_nonpositive_threshold", "cnn_residual"])
def test_unrolled_cells_equal_the_reference(kind):
    rng = np.random.default_rng(3)
    if kind == "cnn_residual":
        net = _cnn_residual(rng)
    else:
        net = _mlp(rng, step_weights=kind == "mlp_step_weights", negative_threshold=kind.endswith("threshold"))
    x = _inputs(rng, net)
    ref = run_reference(net, x, "spike", INT, record_spikes=True)
    u = unroll(net)
    check_alignment(u)
    trains, readout = simulate(u, ref.spike_trains[net.input.name])
    for name, expected in ref.spike_trains.items():
        assert 0 < expected.sum() < expected.size, name  # the layer decides both ways
        assert np.array_equal(trains[name], expected), name
    assert np.array_equal(readout.reshape(len(x), -1), ref.outputs.reshape(len(x), -1))


def test_synapse_counts_and_delays():
    rng = np.random.default_rng(0)
    net = _mlp(rng, K=4)
    u = unroll(net)
    d1 = net.by_name["d1"].weight
    data_into_h = [g for g in u.groups if g.post == "h" and g.kind == "data"][0]
    # K x K synapses per non-zero weight into an FS layer, K per weight into the read-out
    assert len(data_into_h) == np.count_nonzero(d1) * 4 * 4
    assert u.weights["h"] == np.count_nonzero(d1)
    into_out = [g for g in u.groups if g.post == "out" and g.kind == "data"][0]
    assert len(into_out) == np.count_nonzero(net.by_name["d2"].weight) * 4
    # a source cell s reaches receiver cell t of the next stage after P + t - s ticks
    s = data_into_h.pre_idx % 4
    t = data_into_h.post_idx % 4
    assert np.array_equal(data_into_h.delay, u.period + t - s)
    resets = [g for g in u.groups if g.kind == "reset"][0]
    assert np.all(resets.delay == resets.post_idx % 4 - resets.pre_idx % 4)
    assert all(g.pre == BIAS_SOURCE for g in u.groups if g.kind in ("bias", "gate"))


def test_misaligned_delay_is_caught():
    net = _mlp(np.random.default_rng(1))
    u = unroll(net)
    g = [g for g in u.groups if g.kind == "data"][0]
    g.delay[5] += 1
    with pytest.raises(ValueError, match=r"data synapse x\[\d+\] -> h\[\d+\]: delay \d+ delivers at tick \d+, "
                                         r"the cell decides at \d+"):
        check_alignment(u)


def test_gates_lift_nonpositive_thresholds_above_zero():
    T = np.array([5, 0, -3, -8])
    g = gates(T, grid=4)
    assert list(g) == [0, 4, 4, 12]  # multiples of the grid, G > -T
    assert np.all(-g[1:] < T[1:])  # at rest (-G) the cell stays below its threshold


def test_rule_gt_is_refused():
    rng = np.random.default_rng(2)
    net = _mlp(rng)
    codes = dict(net.codes)
    c = codes["hid"]
    codes["hid"] = FSCode("hid", c.T, c.h, c.d, ">")
    with pytest.raises(Exception, match="fires on '>'"):
        unroll(Network(net.nodes, codes))


def test_conv_triplets_equal_the_dense_matrix():
    rng = np.random.default_rng(4)
    m = ConvMap(rng.integers(-3, 4, (3, 2, 3, 3)), (2, 2), (1, 1), (2, 7, 7), (3, 4, 4))
    rows, cols, vals = m.triplets()
    dense = np.zeros((m.n_out, m.n_in), np.int64)
    np.add.at(dense, (rows, cols), vals)
    x = rng.integers(-5, 6, (3, 2, 7, 7))
    assert np.array_equal(x.reshape(3, -1) @ dense.T, m.apply(x).reshape(3, -1))
