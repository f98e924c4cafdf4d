"""The float32 path (fs_hw.reference.fast32) gives the float64 modes' spikes, bit for bit:
the fast mode's, and the spike-level mode's (whose membranes add the same terms step by
step, in another order).

Every comparison here is exact: spike trains, spike counts, read-out values (same batch
split, so the float64 kernels sum in the same order) and predictions. The adversarial
networks put pre-activations exactly on, and one ulp beside, the codes' decision
boundaries, where float32 alone would decide wrongly.
"""

import numpy as np
import pytest

pytest.importorskip("torch")

from hypothesis import given, settings
from hypothesis import strategies as st

from fs_hw import conformance
from fs_hw.backend import FLOAT64
from fs_hw.codes import relu_code
from fs_hw.errors import ValidationError
from fs_hw.ir import Add, AvgPool2d, Conv2d, Dense, Flatten, FSActivation, Input, Network, Readout
from fs_hw.reference import fast32
from fs_hw.reference.simulator import _Tables, prepare_inputs, run_reference


def assert_identical(net, x, library="torch", batch_size=None, mode="fast"):
    """float32 path == float64 path (same mode, library and batches); returns the float32 run."""
    a = run_reference(net, x, mode, record_spikes=True, library=library, batch_size=batch_size, float32=False)
    b = run_reference(net, x, mode, record_spikes=True, library=library, batch_size=batch_size, float32=True)
    assert a.spike_trains.keys() == b.spike_trains.keys()
    for k in a.spike_trains:
        diff = int((a.spike_trains[k] != b.spike_trains[k]).sum())
        assert diff == 0, f"{k}: {diff} spikes differ"
        np.testing.assert_array_equal(a.spike_counts[k], b.spike_counts[k])
    np.testing.assert_array_equal(a.outputs, b.outputs)  # bit for bit, no tolerance
    np.testing.assert_array_equal(a.predictions, b.predictions)
    return b


@pytest.mark.parametrize("library", ["numpy", "torch"])
@pytest.mark.parametrize("name", conformance.SCENARIOS)
def test_every_scenario(name, library):
    net, x = conformance.scenario(name, samples=40)
    r = assert_identical(net, x, library)
    assert r.info["float32_checked"] > 0  # the float32 path ran, not a fallback


RELU_SCENARIOS = [n for n in conformance.SCENARIOS if not n.startswith("code:")]


@pytest.mark.parametrize("library", ["numpy", "torch"])
@pytest.mark.parametrize("name", RELU_SCENARIOS)
def test_every_relu_scenario_spike_mode(name, library):
    net, x = conformance.scenario(name, samples=40)
    r = assert_identical(net, x, library, mode="spike")
    assert r.info["float32_checked"] > 0


def test_default_is_float32_for_torch_and_relu_codes_only():
    net, x = conformance.scenario("conv", samples=4)
    for mode in ("fast", "spike"):
        assert "float32_checked" in run_reference(net, x, mode, library="torch").info
        assert "float32_checked" not in run_reference(net, x, mode, library="numpy").info
    fitted, x = conformance.scenario([n for n in conformance.SCENARIOS if n.startswith("code:")][0], samples=4)
    assert "float32_checked" not in run_reference(fitted, x, "spike", library="torch").info
    with pytest.raises(ValidationError, match="in the spike mode ReLU codes on every FS node"):
        run_reference(fitted, x, "spike", library="torch", float32=True)


def test_reduced_precision_float32_settings_take_the_float64_path():
    import torch

    net, x = conformance.scenario("conv", samples=4)
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("medium")  # may let oneDNN use bf16 inside float32 ops
    try:
        r = run_reference(net, x, "fast", library="torch")
        assert "float32_checked" not in r.info
        with pytest.raises(ValidationError, match="float32"):
            run_reference(net, x, "fast", library="torch", float32=True)
    finally:
        torch.set_float32_matmul_precision(before)


# -- adversarial: values on the decision boundaries ---------------------------------------
def _dyadic_net(rng, K: int, rule: str, conv: bool) -> tuple[Network, np.ndarray]:
    """Weights m/16, inputs on the input code's grid 2^-K, biases on half the hidden grid
    (some moved by one ulp): every sum is exact in float64 and float32, so many
    pre-activations land exactly on a grid point k s, or one ulp beside it."""
    alpha = 4.0
    s = alpha * 2.0**-K
    inp, act = relu_code(1.0, K, rule, name="in"), relu_code(alpha, K, rule, name="act")

    def bias(n):
        b = rng.integers(-6, 7, n) * (s / 2)
        nudge = rng.choice([-1.0, 0.0, 0.0, 1.0], n)
        return b + nudge * np.spacing(np.maximum(np.abs(b), s))

    if conv:
        c = 4
        nodes = [
            Input("x", (2, 6, 6), "in"),
            Conv2d("c0", "x", rng.integers(-8, 9, (c, 2, 3, 3)) / 16, bias(c), padding=1),
            FSActivation("f0", "c0", "act"),
            Conv2d("c1", "f0", rng.integers(-8, 9, (c, c, 3, 3)) / 16, bias(c), padding=1),
            Add("add", operands=("c1", "f0")),
            FSActivation("f1", "add", "act"),
            Conv2d("c2", "f1", rng.integers(-8, 9, (c, c, 3, 3)) / 16, bias(c), stride=2, padding=1),
            FSActivation("f2", "c2", "act"),
            Flatten("flat", "f2"),
            Dense("fc", "flat", rng.integers(-8, 9, (3, c * 9)) / 16, np.zeros(3)),
            Readout("out", "fc"),
        ]
        shape = (2, 6, 6)
    else:
        nodes = [
            Input("x", (24,), "in"),
            Dense("d0", "x", rng.integers(-8, 9, (32, 24)) / 16, bias(32)),
            FSActivation("f0", "d0", "act"),
            Dense("d1", "f0", rng.integers(-8, 9, (16, 32)) / 16, bias(16)),
            FSActivation("f1", "d1", "act"),
            Dense("d2", "f1", rng.integers(-8, 9, (4, 16)) / 16, np.zeros(4)),
            Readout("out", "d2"),
        ]
        shape = (24,)
    net = Network(tuple(nodes), {"in": inp, "act": act}, {"name": "dyadic"})
    x = rng.integers(0, 2**K, (30, *shape)) / 2**K
    return net, x


@pytest.mark.parametrize("mode", ["fast", "spike"])
@pytest.mark.parametrize("conv", [False, True])
@pytest.mark.parametrize("rule", [">=", ">"])
def test_values_on_grid_points_are_settled_by_the_float64_kernels(conv, rule, mode):
    net, x = _dyadic_net(np.random.default_rng(1), 6, rule, conv)
    r = assert_identical(net, x, mode=mode)
    # the ties cannot be decided from float32 nor from a re-ordered float64 sum
    assert r.info["float32_full64"] > 0


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), K=st.integers(2, 8), rule=st.sampled_from([">=", ">"]),
       conv=st.booleans(), library=st.sampled_from(["numpy", "torch"]), mode=st.sampled_from(["fast", "spike"]))
def test_property_adversarial_boundaries(seed, K, rule, conv, library, mode):
    net, x = _dyadic_net(np.random.default_rng(seed), K, rule, conv)
    assert_identical(net, x, library, batch_size=16, mode=mode)


def _pre_activations_at(code, values):
    """A network whose FS node (code ``code``) gets exactly ``values`` as pre-activations
    (weights 0, so each is the bias itself), whatever the input."""
    nodes = (
        Input("x", (4,), "in"),
        Dense("d0", "x", np.zeros((len(values), 4)), values),
        FSActivation("f0", "d0", code.name),
        Dense("d1", "f0", np.random.default_rng(0).normal(size=(3, len(values))), np.zeros(3)),
        Readout("out", "d1"),
    )
    return Network(nodes, {"in": relu_code(1.0, code.K, name="in"), code.name: code}, {"name": "thresholds"})


@pytest.mark.parametrize("name", [n for n in conformance.SCENARIOS if n.startswith("code:")][:4])
def test_fitted_codes_at_their_thresholds(name):
    """Pre-activations exactly at, and a few ulps around, each threshold a fitted code's
    first two steps compare against (weights 0, so the value is the bias itself)."""
    code = conformance._all_codes()[name[5:]]
    t0, t1, h0 = float(code.T[0]), float(code.T[1]), float(code.h[0])
    centres = [t0, t1, t1 + h0, 0.0]
    values = np.array([np.nextafter(c, np.inf * k) if k else c for c in centres for k in (-1, 0, 1)])
    for _ in range(2):  # two ulps out as well
        values = np.concatenate([values, np.nextafter(values, np.inf), np.nextafter(values, -np.inf)])
    values = np.unique(values)
    r = assert_identical(_pre_activations_at(code, values), np.random.default_rng(0).uniform(0, 1, (5, 4)))
    assert r.info["float32_full64"] > 0


# -- the bound itself -------------------------------------------------------------------
def _check_bounds(net, x, mode="fast"):
    """|float32 value - float64 value| <= E for every neuron of every checked FS node
    (the float64 value of the fast mode, or the spike mode's membrane at its first step)."""
    xp = prepare_inputs(net, x, FLOAT64)
    tables = {name: _Tables(code, FLOAT64) for name, code in net.codes.items()}
    plan = fast32.Plan(net, tables, float(np.abs(xp).max()), "torch", mode)
    ch = fast32._Chunk(plan, xp)
    counts, checked = {}, 0
    for node in net.spiking_nodes():
        c = plan.codes[node.name]
        if isinstance(node, Input):
            fast32._spike_exact(ch, node, c, xp, counts, None)
            continue
        if node.input not in plan.f32:
            fast32._spike_exact(ch, node, c, ch.full64(node.input), counts, None)
            continue
        vals, extra = fast32._forward32(ch, fast32._cone(plan, node.input), slice(0, len(xp)))
        E = plan.bound_map(node.name, extra)
        unit = c.grid or 1.0
        t = vals[node.input].astype(np.float64) * (plan.sigma[node.input] / unit)
        err = np.abs(t - ch.exact64(node.input) / unit)
        assert np.all(err <= E), f"{node.name}: error {err.max()} above its bound"
        checked += 1
        fast32._spike_checked(ch, node, c, counts, None)
    assert checked


@pytest.mark.parametrize("name", ["conv", "conv_bias_map", "residual", "mlp_relu_gt",
                                  *[n for n in conformance.SCENARIOS if n.startswith("code:")][:2]])
def test_error_bounds_hold(name):
    _check_bounds(*conformance.scenario(name, samples=64))
    if not name.startswith("code:"):
        _check_bounds(*conformance.scenario(name, samples=64), mode="spike")


@pytest.mark.parametrize("alpha", [0.37, 0.375])
def test_error_bounds_hold_with_large_fan_in_and_cancellation(alpha):
    rng = np.random.default_rng(3)
    act = relu_code(alpha, 8, name="act")  # 0.37: a grid with a full mantissa (a generic code)
    inp = relu_code(1.0, 8, name="in")
    w = rng.normal(0, 1, (64, 3000))
    w[:, 1::2] = -w[:, ::2]  # pairs that cancel: the result is far smaller than sum |w| y
    nodes = (
        Input("x", (3000,), "in"),
        Dense("d0", "x", w * 0.05, rng.normal(0, 0.1, 64)),
        FSActivation("f0", "d0", "act"),
        Dense("d1", "f0", rng.normal(0, 1, (3, 64)), np.zeros(3)),
        Readout("out", "d1"),
    )
    net = Network(nodes, {"in": inp, "act": act}, {"name": "fan-in"})
    x = rng.uniform(0, 1, (32, 3000))
    _check_bounds(net, x)
    assert_identical(net, x)
    if alpha == 0.375:  # the spike mode's float32 path takes ReLU grids only
        _check_bounds(net, x, mode="spike")
        assert_identical(net, x, mode="spike")


def test_error_bounds_hold_for_a_wide_conv_of_sparse_levels():
    """The per-sample bound of a 128-channel 3x3 convolution (n = 1152) of mostly-zero
    levels, with weights that cancel, checked neuron by neuron."""
    rng = np.random.default_rng(7)
    act = relu_code(0.375, 8, name="act")
    inp = relu_code(1.0, 8, name="in")
    w0 = rng.normal(0, 0.3, (128, 2, 1, 1))
    w1 = rng.normal(0, 1, (8, 128, 3, 3))
    w1[:, 1::2] = -w1[:, ::2]  # channel pairs that cancel
    nodes = (
        Input("x", (2, 6, 6), "in"),
        Conv2d("c0", "x", w0, rng.normal(-0.3, 0.3, 128)),  # most levels 0
        FSActivation("f0", "c0", "act"),
        Conv2d("c1", "f0", w1 * 0.02, rng.normal(0, 0.1, 8), padding=1),
        FSActivation("f1", "c1", "act"),
        Flatten("fl", "f1"),
        Dense("d", "fl", rng.normal(0, 0.2, (3, 8 * 36)), np.zeros(3)),
        Readout("out", "d"),
    )
    net = Network(nodes, {"in": inp, "act": act}, {"name": "sparse-wide"})
    x = rng.uniform(0, 1, (32, 2, 6, 6))
    _check_bounds(net, x)
    assert_identical(net, x)


# -- the zoo --------------------------------------------------------------------------------
def _zoo(name):
    from fs_hw.errors import MissingDependencyError
    from fs_hw.ir.io import load_network
    from fs_hw.zoo.models import WEIGHTS_DIR

    try:
        from fs_hw.data import load_dataset

        x, _ = load_dataset("fashion-mnist", "test")
    except MissingDependencyError as e:
        pytest.skip(str(e))
    return load_network(WEIGHTS_DIR.parent / "networks" / f"{name}.fsnet"), x


@pytest.mark.parametrize("name", ["lenet", "resnet8"])
def test_zoo_quick(name):
    net, x = _zoo(name)
    assert_identical(net, x[:32])
    assert_identical(net, x[:8], mode="spike")


@pytest.mark.slow  # 500 test images through every zoo network, twice
@pytest.mark.parametrize("name", ["mlp", "sigmoid_mlp", "lenet", "swish_cnn", "resnet8", "resnet14", "resnet20"])
def test_zoo_500_images(name):
    net, x = _zoo(name)
    assert_identical(net, x[:500], batch_size=250)


@pytest.mark.slow  # the float64 spike-level mode is the slow side: 200 images
@pytest.mark.parametrize("name", ["mlp", "lenet", "resnet8", "resnet14", "resnet20"])
def test_zoo_spike_mode_200_images(name):
    net, x = _zoo(name)
    assert_identical(net, x[:200], batch_size=100, mode="spike")


# -- integer profiles: exact products through float32 digits ----------------------------
@pytest.mark.parametrize("bits", [3, 10, 20, 40])
def test_exact_integer_products_match_int64(bits):
    from fs_hw.reference.ops import exact_conv, exact_matmul

    rng = np.random.default_rng(bits)
    x = rng.integers(-(2**bits), 2**bits, (3, 4, 9, 9))
    w = rng.integers(-127, 128, (5, 4, 3, 3)) * 4
    windows = np.lib.stride_tricks.sliding_window_view(x, (3, 3), axis=(2, 3))[:, :, ::2, ::2]
    expected = np.tensordot(windows, w, axes=([1, 4, 5], [1, 2, 3])).transpose(0, 3, 1, 2)
    np.testing.assert_array_equal(exact_conv(x, w, (2, 2)), expected)
    xd, wd = x.reshape(3, -1), rng.integers(-127, 128, (324, 6)) * 2
    np.testing.assert_array_equal(exact_matmul(xd, wd), xd @ wd)


@pytest.mark.parametrize("alpha", [1.7, 1.75])
def test_analog_input_and_pooling_before_a_spiking_layer(alpha):
    """An uncoded (analog) input rounded to float32, and an average pooling between two
    spiking layers, both inside the float32 path's bounds."""
    rng = np.random.default_rng(5)
    act = relu_code(alpha, 6, name="act")  # 1.7: a generic code; 1.75: a ReLU grid
    nodes = (
        Input("x", (2, 8, 8), None),
        Conv2d("c0", "x", rng.normal(0, 0.5, (4, 2, 3, 3)), rng.normal(0, 0.1, 4), padding=1),
        FSActivation("f0", "c0", "act"),
        AvgPool2d("pool", "f0", kernel=(2, 2)),
        Conv2d("c1", "pool", rng.normal(0, 0.5, (4, 4, 3, 3)), rng.normal(0, 0.1, 4), padding=1),
        FSActivation("f1", "c1", "act"),
        Flatten("flat", "f1"),
        Dense("d", "flat", rng.normal(0, 0.3, (3, 64)), np.zeros(3)),
        Readout("out", "d"),
    )
    net = Network(nodes, {"act": act}, {"name": "analog"})
    x = rng.normal(0, 1, (40, 2, 8, 8))
    _check_bounds(net, x)
    assert_identical(net, x, batch_size=20)
    if alpha == 1.75:  # the spike mode's float32 path takes ReLU grids only
        _check_bounds(net, x, mode="spike")
        assert_identical(net, x, batch_size=20, mode="spike")


# -- parts of a batch in parallel, and the compiled kernels against numpy's --------------
@pytest.fixture
def two_threads():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("name", ["conv", "residual", "mlp_relu_gt"])
def test_parts_of_a_batch_in_parallel(name, two_threads):
    """More samples than one chunk, two threads: each part runs every layer on its own."""
    net, x = conformance.scenario(name, samples=2 * fast32.CHUNK + 37)  # two parts of two chunks
    r = assert_identical(net, x)
    assert r.info["float32_parallel_parts"] == 2


def test_a_part_needing_the_whole_batch_falls_back_to_layer_by_layer(two_threads):
    """Pre-activations on a fitted code's thresholds need float64 values of the whole
    batch (batch-size dependent sums): the parts stop and the batch runs layer by layer."""
    code = conformance._all_codes()[[n for n in conformance.SCENARIOS if n.startswith("code:")][0][5:]]
    net = _pre_activations_at(code, np.array([float(code.T[0]), float(code.T[1]), 0.0]))
    r = assert_identical(net, np.random.default_rng(0).uniform(0, 1, (4 * fast32.PART_MIN + 3, 4)))
    assert r.info["float32_full64"] > 0 and r.info["float32_parallel_parts"] == 1


@pytest.fixture
def numpy_kernels():
    from fs_hw.reference import kernels

    kernels.FORCE_NUMPY = True
    yield
    kernels.FORCE_NUMPY = False


@pytest.mark.parametrize("name", ["conv", "conv_bias_map", "residual", "mlp_relu_gt"])
def test_numpy_kernels_give_the_same_spikes(name, numpy_kernels):
    """Without numba (in the ``torch`` extra) the same loops run as numpy passes."""
    from fs_hw.reference import kernels

    assert not kernels.compiled()
    assert_identical(*conformance.scenario(name, samples=40))


def test_compiled_and_numpy_kernels_agree():
    """Each kernel against its numpy version on random data with values on and around
    the grid points: the same levels, counts and undecided neurons; the same window sums
    and dot products up to the rounding their callers' bounds cover."""
    from fs_hw.reference import kernels

    if not kernels.compiled():
        pytest.skip("numba not installed")
    rng = np.random.default_rng(5)
    n, C, H, W, levels = 7, 5, 6, 4, 63
    t = rng.integers(-3, levels + 3, (n, C, H, W)).astype(np.float32)  # on grid points
    t += rng.choice([0, 1e-5, -1e-5, 0.25, 0.5], t.shape).astype(np.float32)  # and beside them
    t = np.moveaxis(np.ascontiguousarray(np.moveaxis(t, 1, -1)), -1, 1)  # held channels last
    E0 = rng.uniform(0, 2e-5, (C, H, W)).astype(np.float32)
    r = rng.uniform(0, 1e-6, (2, C)).astype(np.float32)
    B = rng.uniform(0, 10, (2, n, H * W)).astype(np.float32)
    x = rng.integers(0, 9, (n, C, H, W)).astype(np.float32)
    w = rng.normal(size=(3, C, 3, 3))
    bias = rng.normal(size=(3, 1, 1))
    sel = [a.ravel() for a in np.indices((n, 3, 3, 2))]
    out = {}
    for force in (False, True):
        kernels.FORCE_NUMPY = force
        try:
            q = np.full_like(t, -1.0)
            counts = np.zeros(n, np.int64)
            E0_last = kernels.channels_last(E0[None])[0]
            flagged = kernels.decide_relu([(t, np.float32(1))], 1.0, E0_last, r, B, levels, q, counts)
            q_add = np.full_like(t, -1.0)  # an add of two operands, summed in the kernel
            counts_add = np.zeros(n, np.int64)
            flagged_add = kernels.decide_relu([(t, np.float32(0.5)), (t[::-1], np.float32(2))], 0.75, E0_last, r, B,
                                              levels, q_add, counts_add)
            dots = kernels.conv_dots(x, np.moveaxis(w, 1, -1), bias, (2, 2), (1, 1), *sel)
            sums = kernels.window_sums(x, np.abs(w).max(axis=(0, 2, 3)).astype(np.float32), (3, 3), (2, 2), (1, 1),
                                       (3, 2))
        finally:
            kernels.FORCE_NUMPY = False
        out[force] = (q, counts, flagged, dots, sums, q_add, counts_add, flagged_add)
    (q1, c1, f1, d1, s1, *add1), (q2, c2, f2, d2, s2, *add2) = out[False], out[True]
    assert 0 < len(f1) < t.size and 0 < len(add1[2]) < t.size  # some neurons decided, some not
    for a, b in [(f1, f2), (q1, q2), (c1, c2), *zip(add1, add2)]:
        np.testing.assert_array_equal(a, b)
    # float64 dot products of 45 terms in two orders: within 2 gamma_47 of their magnitudes
    np.testing.assert_array_less(np.abs(d1[0] - d2[0]), 2 * fast32.gamma(47, fast32.U64) * d1[1] + 1e-300)
    np.testing.assert_allclose(d1[1], d2[1], rtol=1e-13)  # magnitudes: the same, summed apart
    np.testing.assert_allclose(s1, s2, rtol=1e-5)  # float32 sums of 45 positive terms, two orders


def test_kernels_compile_without_a_writable_cache(monkeypatch):
    """Where numba cannot cache on disk (read-only install, no home), the loops are
    compiled per process instead of failing."""
    numba = pytest.importorskip("numba")
    from fs_hw.reference import kernels

    real = numba.njit

    def njit(*args, cache=False, **options):
        if cache:
            raise RuntimeError("cannot cache function: no locator available")
        return real(*args, **options)

    monkeypatch.setattr(numba, "njit", njit)

    def double_all(a):  # pragma: no cover - compiled
        for i in range(a.shape[0]):
            a[i] *= 2.0

    loop = kernels._Lazy(double_all)
    a = np.arange(4.0)
    loop(a)
    np.testing.assert_array_equal(a, [0.0, 2.0, 4.0, 6.0])
