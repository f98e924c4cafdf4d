"""Per-step weights (``step_weight`` on Dense and Conv2d): validation, the helper that finds a
step-weighted node's source and chain, and the reference in both modes and both profiles.

Semantics under test (docs/ir-format.md): a node with ``step_weight`` outputs
``b + sum_t step_weight[t] · C(z_S(t))`` with ``z_S(t)`` the raw 0/1 spikes of its source S
and ``C`` the bias-free chain between S and the node.
"""

import numpy as np
import pytest

from fs_hw import conformance
from fs_hw.backend import NumericProfile
from fs_hw.codes import relu_code
from fs_hw.errors import ValidationError
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
)
from fs_hw.reference.simulator import run_reference

K = 6
W_SCALE = 16  # integer weights are round(W * 16); the hidden thresholds carry the same factor
INT = NumericProfile(name="int", dtype="int64", membrane_bits=32, input_scale=2.0**K)


# -- networks --------------------------------------------------------------------------------------
def _codes(rule: str, integer: bool) -> dict[str, FSCode]:
    """Input code (ReLU on [0, 1)) and hidden code (ReLU on [0, 2)).

    Integer version in units of 2^-K: the input is scaled by 2^K (INT.input_scale); a hidden
    membrane W_int · y_int is 16 · 2^K times the float one, so its T and h carry the factor 16
    and its d does not (y_int = 2^K · y, what the next layer's W_int expects).
    """
    if not integer:
        return {"in": relu_code(1.0, K, rule, name="in"), "act": relu_code(2.0, K, rule, name="act")}
    D = np.array([2.0 ** (K - 1 - t) for t in range(K)])
    return {"in": FSCode("in", D, D, D, rule), "act": FSCode("act", W_SCALE * 2 * D, W_SCALE * 2 * D, 2 * D, rule)}


def _w(rng, shape, sd, integer):
    w = rng.normal(0, sd, shape)
    return np.round(w * W_SCALE) if integer else w


def _b(rng, n, integer):
    b = rng.normal(0, 0.1, n)
    return np.round(b * W_SCALE * 2**K) if integer else b


def _mlp(rule: str, integer: bool, seed: int = 1) -> Network:
    rng = np.random.default_rng(seed)
    nodes = (
        Input("x", (12,), "in"),
        Dense("d0", "x", _w(rng, (10, 12), 0.5, integer), _b(rng, 10, integer)),
        FSActivation("fs0", "d0", "act"),
        Dense("d1", "fs0", _w(rng, (8, 10), 0.5, integer), _b(rng, 8, integer)),
        FSActivation("fs1", "d1", "act"),
        Dense("d2", "fs1", _w(rng, (4, 8), 0.5, integer), _b(rng, 4, integer)),
        Readout("out", "d2"),
    )
    return Network(nodes, _codes(rule, integer))


def _conv(rule: str, integer: bool, seed: int = 2, pool: bool = False) -> Network:
    """conv0 -> fs0 -> window sum (bias-free conv, or average pooling) -> conv1 -> fs1 -> flatten -> fc.

    conv1's chain to fs0 is the window sum; fc's chain to fs1 is the flatten.
    """
    rng = np.random.default_rng(seed)
    C = 3
    window_sum = np.zeros((C, C, 2, 2))
    for c in range(C):
        window_sum[c, c] = 1.0
    down = AvgPool2d("wsum", "fs0", kernel=2) if pool else Conv2d("wsum", "fs0", window_sum, np.zeros(C), stride=2)
    nodes = (
        Input("x", (1, 8, 8), "in"),
        Conv2d("conv0", "x", _w(rng, (C, 1, 3, 3), 0.8, integer), _b(rng, C, integer), padding=1),
        FSActivation("fs0", "conv0", "act"),
        down,
        Conv2d("conv1", "wsum", _w(rng, (4, C, 3, 3), 0.25, integer), _b(rng, 4, integer), padding=1),
        FSActivation("fs1", "conv1", "act"),
        Flatten("flat", "fs1"),
        Dense("fc", "flat", _w(rng, (3, 64), 0.3, integer), _b(rng, 3, integer)),
        Readout("out", "fc"),
    )
    return Network(nodes, _codes(rule, integer))


def _with_step_weights(net: Network, names, how: str, seed: int = 3) -> Network:
    """Give nodes ``names`` step weights: ``nominal`` (weight · d_S(t)), ``perturbed`` (nominal
    times 1 + 10 % noise, float) or ``rounded`` (floor(nominal / 4) · 4, integer)."""
    rng = np.random.default_rng(seed)
    nodes = []
    for node in net.nodes:
        if node.name in names:
            sw = net.nominal_step_weight(node.name)
            if how == "perturbed":
                sw = sw * (1 + 0.1 * rng.standard_normal(sw.shape))
            elif how == "rounded":
                sw = np.floor(sw / 4) * 4
            kwargs = {"stride": node.stride, "padding": node.padding} if isinstance(node, Conv2d) else {}
            node = type(node)(node.name, node.input, node.weight, node.bias, step_weight=sw, **kwargs)
        nodes.append(node)
    return net.replace(nodes=nodes)


def _inputs(net: Network, n: int = 16, seed: int = 4) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1, (n, *net.input.shape))


def _assert_modes_agree(net, x, profile):
    fast = run_reference(net, x, "fast", profile, record_spikes=True)
    spike = run_reference(net, x, "spike", profile, record_spikes=True)
    comparison = conformance.compare_runs(fast, spike)
    assert comparison.exact, comparison.first_mismatch
    if profile.is_integer:
        assert fast.outputs.dtype == np.int64
        assert np.array_equal(fast.outputs, spike.outputs)
    else:
        # float64: the two modes add the same terms in different orders (last bits only)
        np.testing.assert_allclose(spike.outputs, fast.outputs, rtol=1e-12, atol=1e-12)
    for name, train in fast.spike_trains.items():  # not a trivial network: some fire, some do not
        if name != "x":
            assert 0 < train.mean() < 1, (name, train.mean())
    return fast, spike


# -- both modes agree ------------------------------------------------------------------------------
@pytest.mark.parametrize("rule", [">=", ">"])
@pytest.mark.parametrize("integer", [False, True], ids=["float64", "int64"])
@pytest.mark.parametrize("kind", ["mlp", "conv"])
def test_fast_and_spike_modes_agree_with_step_weights(kind, integer, rule):
    base = _mlp(rule, integer) if kind == "mlp" else _conv(rule, integer)
    names = ("d0", "d1", "d2") if kind == "mlp" else ("conv1", "fc")
    net = _with_step_weights(base, names, "rounded" if integer else "perturbed")
    assert set(net.step_sources) == set(names)
    x = _inputs(net)
    profile = INT if integer else NumericProfile()
    fast, _ = _assert_modes_agree(net, x, profile)
    # the step weights changed something: otherwise this test would not exercise them
    plain = run_reference(base, x, "fast", profile, record_spikes=True)
    assert not conformance.compare_runs(fast, plain).exact


def test_average_pooling_chain_in_float64():
    net = _with_step_weights(_conv(">=", False, pool=True), ("conv1", "fc"), "perturbed")
    assert net.step_source("conv1") == ("fs0", ("wsum",))
    _assert_modes_agree(net, _inputs(net), NumericProfile())


def test_fast_mode_without_recording_gives_the_same_outputs():
    # sources are simulated with their spike trains even when record_spikes is False
    net = _with_step_weights(_conv(">=", True), ("conv1", "fc"), "rounded")
    x = _inputs(net)
    a = run_reference(net, x, "fast", INT, record_spikes=False)
    b = run_reference(net, x, "fast", INT, record_spikes=True)
    assert a.spike_trains is None
    assert np.array_equal(a.outputs, b.outputs)
    assert all(np.array_equal(a.spike_counts[k], b.spike_counts[k]) for k in b.spike_counts)


def test_batching_and_torch_kernels_give_identical_spikes():
    net = _with_step_weights(_conv(">", False), ("conv1", "fc"), "perturbed")
    x = _inputs(net, 10)
    whole = run_reference(net, x, "spike", record_spikes=True)
    parts = run_reference(net, x, "spike", record_spikes=True, batch_size=3)
    assert conformance.compare_runs(whole, parts).exact
    pytest.importorskip("torch")
    a = run_reference(net, x, "fast", record_spikes=True, library="numpy")
    b = run_reference(net, x, "fast", record_spikes=True, library="torch")
    assert conformance.compare_runs(a, b).exact


def test_chain_node_also_read_by_a_plain_node_matches_the_formula():
    # fs0 -> mix (bias-free) feeds both a step-weighted node and a plain one: the chain carries
    # raw spikes for the one and decoded values for the other
    rng = np.random.default_rng(5)
    codes = _codes(">=", False)
    M, W1, W2 = rng.normal(0, 0.7, (5, 6)), rng.normal(0, 0.7, (3, 5)), rng.normal(0, 0.7, (3, 5))
    b1, b2 = rng.normal(0, 0.1, 3), rng.normal(0, 0.1, 3)
    sw = rng.normal(0, 0.5, (K, 3, 5))
    net = Network(
        (Input("x", (6,), "in"), Dense("d0", "x", rng.normal(0, 1.0, (6, 6)), rng.normal(0, 0.2, 6)),
         FSActivation("fs0", "d0", "act"), Dense("mix", "fs0", M, np.zeros(5)),
         Dense("o1", "mix", W1, b1, step_weight=sw), Dense("o2", "mix", W2, b2),
         Add("s", operands=("o1", "o2")), Readout("out", "s")),
        codes,
    )
    x = _inputs(net, 32)
    fast = run_reference(net, x, "fast", record_spikes=True)
    spike = run_reference(net, x, "spike", record_spikes=True)
    assert conformance.compare_runs(fast, spike).exact
    z = fast.spike_trains["fs0"].astype(np.float64)  # (N, K, 6)
    assert 0 < z.mean() < 1
    y = np.einsum("t,ntj->nj", codes["act"].d, z)
    expect = b1 + np.einsum("toi,ij,ntj->no", sw, M, z) + (y @ M.T) @ W2.T + b2
    # float64 sums of ~40 terms of size ~1 in other orders: rounding at the 1e-15 level
    for result in (fast, spike):
        np.testing.assert_allclose(result.outputs, expect, rtol=1e-12, atol=1e-12)


# -- nominal step weights are the plain network ----------------------------------------------------
@pytest.mark.parametrize("integer", [False, True], ids=["float64", "int64"])
@pytest.mark.parametrize("kind", ["mlp", "conv"])
def test_nominal_step_weights_equal_the_plain_network(kind, integer):
    base = _mlp(">=", integer) if kind == "mlp" else _conv(">=", integer)
    names = ("d0", "d1", "d2") if kind == "mlp" else ("conv1", "fc")
    net = _with_step_weights(base, names, "nominal")
    x = _inputs(net)
    profile = INT if integer else NumericProfile()
    for mode in ("fast", "spike"):
        plain = run_reference(base, x, mode, profile, record_spikes=True)
        stepped = run_reference(net, x, mode, profile, record_spikes=True)
        assert conformance.compare_runs(plain, stepped).exact
        if integer:
            assert np.array_equal(plain.outputs, stepped.outputs)
        else:
            # W·(sum_t d z) and sum_t (W d) z round differently in the last bits
            np.testing.assert_allclose(stepped.outputs, plain.outputs, rtol=1e-12, atol=1e-12)


# -- hand-computed ---------------------------------------------------------------------------------
# Input code K=3, T = h = d = (4, 2, 1), rule >=: x = 5 -> v 5 fires (v 1), 1 < 2, 1 >= 1 fires: z = 1, 0, 1
#                                                 x = 3 -> 3 < 4, 3 >= 2 fires (v 1), 1 >= 1 fires: z = 0, 1, 1
HAND_CODE = FSCode("b3", [4.0, 2.0, 1.0], [4.0, 2.0, 1.0], [4.0, 2.0, 1.0], ">=")
HAND_X = np.array([[5.0, 3.0]])
HAND_Z = np.array([[1, 0], [0, 1], [1, 1]])  # z(t) per input, t = 0, 1, 2 (worked out above)
HAND_W = np.array([[3.0, 5.0]])
HAND_B = 1.0
# Output code K=3, T = h = d = (16, 8, 4) >=: 31 -> fires at 16 (15), 8 (7), 4 (3): 1,1,1 -> y = 28
#                                             25 -> fires at 16 (9), 8 (1), 1 < 4: 1,1,0 -> y = 24
OUT_CODE = FSCode("o3", [16.0, 8.0, 4.0], [16.0, 8.0, 4.0], [16.0, 8.0, 4.0], ">=")


def _hand_net(step_weight, with_fs: bool) -> Network:
    nodes = [Input("x", (2,), "b3"), Dense("o", "x", HAND_W, np.array([HAND_B]), step_weight=step_weight)]
    if with_fs:
        nodes += [FSActivation("a", "o", "o3"), Dense("r", "a", np.ones((1, 1)), np.zeros(1)), Readout("out", "r")]
    else:
        nodes += [Readout("out", "o")]
    return Network(tuple(nodes), {"b3": HAND_CODE, "o3": OUT_CODE})


# Every value in the hand-computed networks is a small integer or a binary fraction, so every
# float64 sum is exact; EXACT is the tolerance for float64 outputs: far below the differences
# of 1 or more that these tests tell apart, and far above any rounding that cannot occur here.
EXACT = {"rtol": 0, "atol": 1e-9}


def _check_output(result, expect):
    if result.outputs.dtype.kind == "i":
        assert result.outputs.tolist() == [[int(expect)]]
    else:
        np.testing.assert_allclose(result.outputs, [[expect]], **EXACT)


@pytest.mark.parametrize("profile", [NumericProfile(), NumericProfile(name="int", dtype="int64")],
                         ids=["float64", "int64"])
@pytest.mark.parametrize("mode", ["fast", "spike"])
def test_rounded_step_weights_on_a_hand_computed_network(mode, profile):
    # the expected values in integers, from the formula b + sum_t W_t z(t) and the hand-derived spikes
    w, d = HAND_W.astype(np.int64), HAND_CODE.d.astype(np.int64)
    nominal = np.stack([w * d[t] for t in range(3)])  # (12, 20), (6, 10), (3, 5)
    rounded = nominal // 4 * 4  # (12, 20), (4, 8), (0, 4): the low-order steps lose bits
    expect_nominal = int(HAND_B) + sum(int(nominal[t, 0] @ HAND_Z[t]) for t in range(3))
    expect_rounded = int(HAND_B) + sum(int(rounded[t, 0] @ HAND_Z[t]) for t in range(3))
    assert (expect_nominal, expect_rounded) == (31, 25)  # 1 + 12 + 10 + 8 and 1 + 12 + 8 + 4
    for sw, expect in ((None, expect_nominal), (nominal, expect_nominal), (rounded, expect_rounded)):
        r = run_reference(_hand_net(sw, False), HAND_X, mode, profile, record_spikes=True)
        assert r.spike_trains["x"][0].tolist() == HAND_Z.tolist()
        _check_output(r, expect)
    # downstream: the rounded weights change the next layer's spikes (see OUT_CODE above)
    r = run_reference(_hand_net(rounded, True), HAND_X, mode, profile, record_spikes=True)
    assert r.spike_trains["a"][0].tolist() == [[1], [1], [0]]
    _check_output(r, 24)
    r = run_reference(_hand_net(nominal, True), HAND_X, mode, profile, record_spikes=True)
    assert r.spike_trains["a"][0].tolist() == [[1], [1], [1]]
    _check_output(r, 28)


@pytest.mark.parametrize("mode", ["fast", "spike"])
def test_hand_computed_chain_through_a_bias_free_dense(mode):
    # K=2 code T = h = d = (2, 1) >=: x = 3 -> 3 >= 2 (v 1), 1 >= 1: z = 1, 1;  x = 1 -> 1 < 2, 1 >= 1: z = 0, 1
    code = FSCode("b2", [2.0, 1.0], [2.0, 1.0], [2.0, 1.0], ">=")
    mix = np.array([[1, 1], [1, -1]])  # the chain C: (z0 + z1, z0 - z1)
    z = np.array([[1, 0], [1, 1]])  # z[t] = (z_x0(t), z_x1(t)), worked out above
    sw = np.array([[[4, 4]], [[0, 4]]])  # nominal would be W·d(t) = (4, 6), (2, 3)
    # C(z(0)) = (1, 1), C(z(1)) = (2, 0): b + (4 + 4) + (0 + 0) with b = 1/2
    expect = 0.5 + sum(int(sw[t, 0] @ (mix @ z[t])) for t in range(2))
    net = Network(
        (Input("x", (2,), "b2"), Dense("mix", "x", mix, np.zeros(2)),
         Dense("o", "mix", np.array([[2.0, 3.0]]), np.array([0.5]), step_weight=sw), Readout("out", "o")),
        {"b2": code},
    )
    assert net.step_source("o") == ("x", ("mix",))
    r = run_reference(net, np.array([[3.0, 1.0]]), mode, record_spikes=True)
    assert r.spike_trains["x"][0].tolist() == z.tolist()
    np.testing.assert_allclose(r.outputs, [[8.5]], **EXACT)
    np.testing.assert_allclose(expect, 8.5, **EXACT)


# -- the source/chain helper ----------------------------------------------------------------------
def test_step_source_and_nominal_step_weight():
    net = _with_step_weights(_conv(">=", False), ("conv1", "fc"), "perturbed")
    assert net.step_source("conv1") == ("fs0", ("wsum",))
    assert net.step_source("fc") == ("fs1", ("flat",))
    assert net.step_source("conv0") == ("x", ())  # works without step_weight too
    assert net.step_sources == {"conv1": ("fs0", ("wsum",)), "fc": ("fs1", ("flat",))}
    sw = net.nominal_step_weight("conv1")
    conv1, d = net.by_name["conv1"], net.codes["act"].d
    assert sw.shape == (K, *conv1.weight.shape)
    for t in range(K):
        # one float64 product per entry: within half an ulp of weight * d(t)
        np.testing.assert_allclose(sw[t], conv1.weight * d[t], rtol=2**-52, atol=0)
    assert "step_weight<-fs0" in net.summary()
    with pytest.raises(ValidationError, match="no node named 'nope'"):
        net.step_source("nope")


# -- validation ------------------------------------------------------------------------------------
def _r(K=4):
    return {"r": relu_code(2.0, K, name="r")}


def test_wrong_step_weight_shape_names_node_and_shape():
    with pytest.raises(ValidationError, match=r"dense 'o': step_weight: must have shape \(K, \*weight.shape\) "
                                              r"= \(K, 3, 4\) with K >= 1, got \(4, 3, 5\)"):
        Dense("o", "x", np.ones((3, 4)), np.zeros(3), step_weight=np.ones((4, 3, 5)))
    with pytest.raises(ValidationError, match=r"conv2d 'c': step_weight: must have 5 dimensions"):
        Conv2d("c", "x", np.ones((2, 1, 3, 3)), np.zeros(2), step_weight=np.ones((2, 1, 3, 3)))
    sw = np.ones((4, 3, 4))
    sw[1, 2, 3] = np.inf
    with pytest.raises(ValidationError, match=r"dense 'o': step_weight: 1 non-finite value\(s\), first inf"):
        Dense("o", "x", np.ones((3, 4)), np.zeros(3), step_weight=sw)


def test_step_weight_is_read_only():
    node = Dense("o", "x", np.ones((3, 4)), np.zeros(3), step_weight=np.ones((4, 3, 4)))
    with pytest.raises(ValueError):
        node.step_weight[0, 0, 0] = 2.0


def test_wrong_K_names_node_and_source():
    with pytest.raises(ValidationError, match=r"dense 'o': step_weight: has K=3 steps \(shape \(3, 3, 4\)\), "
                                              r"its source input 'x' runs code 'r' with K=4"):
        Network((Input("x", (4,), "r"), Dense("o", "x", np.ones((3, 4)), np.zeros(3), step_weight=np.ones((3, 3, 4))),
                 Readout("out", "o")), _r())


def test_chain_through_add_is_refused():
    with pytest.raises(ValidationError, match=r"dense 'o': step_weight: the chain from its input reaches add 's'"):
        Network((Input("x", (4,), "r"), Dense("d", "x", np.eye(4), np.zeros(4)), FSActivation("a", "d", "r"),
                 Add("s", operands=("a", "x")),
                 Dense("o", "s", np.ones((3, 4)), np.zeros(3), step_weight=np.ones((4, 3, 4))),
                 Readout("out", "o")), _r())


def test_chain_through_biased_dense_is_refused():
    bias = np.array([0.0, 0.5, 0.0, 0.0])
    with pytest.raises(ValidationError, match=r"dense 'o': step_weight: the chain from its input reaches dense "
                                              r"'pre', which has a non-zero bias \(bias\[1\] = 0.5\)"):
        Network((Input("x", (4,), "r"), Dense("pre", "x", np.eye(4), bias),
                 Dense("o", "pre", np.ones((3, 4)), np.zeros(3), step_weight=np.ones((4, 3, 4))),
                 Readout("out", "o")), _r())


def test_chain_through_step_weighted_dense_is_refused():
    with pytest.raises(ValidationError, match=r"dense 'o': step_weight: the chain from its input reaches dense "
                                              r"'pre', which has its own step_weight"):
        Network((Input("x", (4,), "r"), Dense("pre", "x", np.eye(4), np.zeros(4), step_weight=np.ones((4, 4, 4))),
                 Dense("o", "pre", np.ones((3, 4)), np.zeros(3), step_weight=np.ones((4, 3, 4))),
                 Readout("out", "o")), _r())


def test_analog_input_is_refused():
    with pytest.raises(ValidationError, match=r"dense 'o': step_weight: the chain from its input reaches input "
                                              r"'x', which is an analog input"):
        Network((Input("x", (4,), None), Flatten("f", "x"),
                 Dense("o", "f", np.ones((3, 4)), np.zeros(3), step_weight=np.ones((4, 3, 4))),
                 Readout("out", "o")), _r())


def test_integer_profile_refuses_fractional_step_weights():
    sw = np.full((3, 1, 2), 2.0)
    sw[2, 0, 1] = 2.5
    net = _hand_net(sw, False)
    with pytest.raises(ValidationError, match=r"dense 'o': step_weight: profile 'int' needs integer step "
                                              r"weights, got 2.5 at index \(2, 0, 1\)"):
        run_reference(net, HAND_X, "fast", NumericProfile(name="int", dtype="int64"))
    # float64 takes them as they are: b + (2 z0(0) + 2 z1(0)) + ... = 1 + 2 + 2 + 2 + 2.5 with HAND_Z
    np.testing.assert_allclose(run_reference(net, HAND_X, "fast").outputs, [[9.5]], **EXACT)
