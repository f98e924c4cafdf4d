"""fs_hw.lower: hardware-neutral, and its integer maps equal the IR's linear chain."""

import subprocess
import sys

import numpy as np

from fs_hw.codes import relu_code
from fs_hw.ir import Conv2d, Dense, Flatten, FSActivation, Input, Network, Readout
from fs_hw.lower.maps import ConvMap, DenseMap, receiver_inputs
from fs_hw.reference.ops import apply_linear


def test_lower_imports_no_hardware_sdk():
    code = ("import sys, fs_hw.lower.maps, fs_hw.lower.limits, fs_hw.lower.config, fs_hw.lower.ranges, "
            "fs_hw.lower.partition, fs_hw.lower.schedule; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('nengo', 'nengo_loihi', 'pyNN', 'spynnaker', 'nest', 'nxsdk')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _int_net(seed=0):
    rng = np.random.default_rng(seed)
    code = relu_code(1.0, 4, ">=", name="c")
    nodes = (
        Input("x", (2, 6, 6), "c"),
        Conv2d("conv0", "x", rng.integers(-3, 4, (3, 2, 3, 3)).astype(float), np.zeros(3), padding=1),
        FSActivation("fs0", "conv0", "c"),
        # pooling as an integer window sum, as chip profiles write it
        Conv2d("pool", "fs0", np.eye(3)[:, :, None, None] * np.ones((1, 1, 6, 6)), np.zeros(3), stride=6),
        Flatten("flat", "pool"),
        Dense("fc", "flat", rng.integers(-5, 6, (4, 3)).astype(float), rng.integers(-2, 3, 4).astype(float)),
        Readout("out", "fc"),
    )
    return Network(nodes, {"c": code}, {})


def test_receiver_maps_equal_the_linear_chain():
    net = _int_net()
    rins = receiver_inputs(net)
    assert isinstance(rins["fs0"].maps["x"], ConvMap)  # a conv on a spiking node keeps its kernel
    assert isinstance(rins["out"].maps["fs0"], DenseMap)  # pool + dense multiplied out
    rng = np.random.default_rng(1)
    y = rng.integers(0, 16, (5, 3, 6, 6)).astype(np.int64)
    want = y
    for name in ("pool", "flat", "fc"):
        node = net.by_name[name]
        want = apply_linear(node, [want], True, "numpy", np.dtype(np.int64))
    got = y.reshape(5, -1) @ rins["out"].maps["fs0"].matrix.T + rins["out"].bias
    np.testing.assert_array_equal(got, want.reshape(5, -1))


# -- composition of convolutions and pooling ---------------------------------------------
import pytest  # noqa: E402

from fs_hw.errors import ResourceError  # noqa: E402
from fs_hw.ir import Add  # noqa: E402
from fs_hw.lower import maps as lower_maps  # noqa: E402
from fs_hw.lower.maps import IdentityMap  # noqa: E402

I64 = np.dtype(np.int64)


def _pool(name, inp, C, k):
    """Average pooling as the Loihi profile writes it: a diagonal window-sum conv."""
    w = np.zeros((C, C, k, k))
    for c in range(C):
        w[c, c] = 1.0
    return Conv2d(name, inp, w, np.zeros(C), stride=k, padding=0)


def _conv(rng, name, inp, co, ci, k, stride=1, padding=0):
    return Conv2d(name, inp, rng.integers(-3, 4, (co, ci, k, k)).astype(float),
                  rng.integers(-4, 5, co).astype(float), stride=stride, padding=padding)


def _network(nodes, K=3):
    code = relu_code(1.0, K, ">=", name="c")
    return Network(tuple(nodes), {"c": code}, {})


def _check_exact(net, seed=0, N=4):
    """Every receiver's maps applied to random integer source outputs equal the IR's linear
    chain evaluated node by node (``apply_linear``), exactly."""
    rng = np.random.default_rng(seed)
    values = {}
    for node in net.order:
        if net.is_spiking(node):
            values[node.name] = rng.integers(-20, 21, (N, *net.shapes[node.name])).astype(np.int64)
        elif node.linear:
            values[node.name] = apply_linear(node, [values[s] for s in node.inputs], True, "numpy", I64)
    rins = receiver_inputs(net)
    for node in net.order:
        if not isinstance(node, (FSActivation, Readout)):
            continue
        rin = rins[node.name]
        got = np.broadcast_to(rin.bias, (N, rin.bias.size)).copy()
        for src, m in rin.maps.items():
            y = values[src]
            out = m.apply(y).reshape(N, -1)
            got += out
            if m.n_out * int(np.prod(net.shapes[src])) <= 4_000_000:
                np.testing.assert_array_equal(out, y.reshape(N, -1) @ m.to_dense().T)  # to_dense exact
                pos, neg = m.row_sums()
                M = m.to_dense()
                np.testing.assert_array_equal(pos, np.where(M > 0, M, 0).sum(axis=1))
                np.testing.assert_array_equal(neg, np.where(M < 0, M, 0).sum(axis=1))
        assert got.dtype == np.int64
        np.testing.assert_array_equal(got, values[node.input].reshape(N, -1), err_msg=node.name)
    return rins


@pytest.mark.parametrize("size", [7, 15, 8, 14])
def test_pool_then_conv_5x5_pad2_is_one_conv(size):
    rng = np.random.default_rng(size)
    net = _network([
        Input("x", (3, size, size), "c"),
        _pool("pool", "x", 3, 2),
        _conv(rng, "conv", "pool", 4, 3, 5, padding=2),
        FSActivation("fs", "conv", "c"),
        Readout("out", "fs"),
    ])
    rins = _check_exact(net)
    m = rins["fs"].maps["x"]
    assert isinstance(m, ConvMap)
    assert m.kernel.shape == (4, 3, 10, 10) and m.stride == (2, 2) and m.padding == (4, 4)
    assert m.in_used == (None if size % 2 == 0 else (size - 1, size - 1))


@pytest.mark.parametrize("size,k,stride,padding", [(9, 3, 2, 1), (15, 3, 2, 0), (11, 2, 3, 1), (7, 1, 2, 0)])
def test_pool_then_strided_conv(size, k, stride, padding):
    rng = np.random.default_rng(size + k)
    net = _network([
        Input("x", (2, size, size + 2), "c"),
        _pool("pool", "x", 2, 2),
        _conv(rng, "conv", "pool", 3, 2, k, stride=stride, padding=padding),
        Readout("out", "conv"),
    ])
    rins = _check_exact(net)
    assert isinstance(rins["out"].maps["x"], ConvMap)


@pytest.mark.parametrize("size,k,pool", [(7, 3, 2), (15, 5, 2), (12, 3, 3), (10, 3, 4)])
def test_conv_then_pool(size, k, pool):
    rng = np.random.default_rng(size)
    net = _network([
        Input("x", (2, size, size), "c"),
        _conv(rng, "conv", "x", 3, 2, k, padding=k // 2),
        _pool("pool", "conv", 3, pool),
        FSActivation("fs", "pool", "c"),
        Readout("out", "fs"),
    ])
    rins = _check_exact(net)
    m = rins["fs"].maps["x"]
    assert isinstance(m, ConvMap) and m.stride == (pool, pool)


def test_strided_conv_then_pool_then_conv():
    rng = np.random.default_rng(3)
    net = _network([
        Input("x", (2, 17, 13), "c"),
        _conv(rng, "c0", "x", 3, 2, 3, stride=2, padding=1),
        _pool("p0", "c0", 3, 2),
        _conv(rng, "c1", "p0", 2, 3, 3, padding=1),
        Readout("out", "c1"),
    ])
    _check_exact(net)  # c0 ∘ pool is one conv; then c1 (padded) after an overlapping conv: dense


def test_lenet_like_pool_then_conv_is_a_conv_map():
    rng = np.random.default_rng(0)
    net = _network([
        Input("x", (1, 28, 28), "c"),
        _conv(rng, "c0", "x", 6, 1, 5, padding=2),
        FSActivation("fs0", "c0", "c"),
        _pool("p0", "fs0", 6, 2),
        _conv(rng, "c1", "p0", 16, 6, 5),
        FSActivation("fs1", "c1", "c"),
        _pool("p1", "fs1", 16, 2),
        Flatten("flat", "p1"),
        Dense("fc0", "flat", rng.integers(-2, 3, (20, 400)).astype(float), np.zeros(20)),
        FSActivation("fs2", "fc0", "c"),
        Dense("fc1", "fs2", rng.integers(-2, 3, (10, 20)).astype(float), np.zeros(10)),
        Readout("out", "fc1"),
    ])
    rins = _check_exact(net, N=2)
    m = rins["fs1"].maps["fs0"]
    assert isinstance(m, ConvMap)
    assert m.kernel.shape == (16, 6, 10, 10) and m.stride == (2, 2) and m.padding == (0, 0)
    assert m.n_weights() < 10_000
    assert isinstance(rins["fs0"].maps["x"], ConvMap)
    assert isinstance(rins["fs2"].maps["fs1"], DenseMap)


def test_residual_add_of_aligned_convs_stays_a_conv():
    rng = np.random.default_rng(4)
    net = _network([
        Input("x", (2, 7, 7), "c"),
        _conv(rng, "a", "x", 2, 2, 3, padding=1),
        FSActivation("fs", "a", "c"),
        _conv(rng, "b", "fs", 2, 2, 3, padding=1),
        _conv(rng, "b5", "fs", 2, 2, 5, padding=2),
        Add("sum", operands=("b", "b5", "fs")),
        FSActivation("fs2", "sum", "c"),
        _pool("p", "fs2", 2, 2),
        _conv(rng, "c", "p", 2, 2, 3, padding=1),
        Add("sum2", operands=("c", "p")),
        Flatten("flat", "sum2"),
        Dense("fc", "flat", rng.integers(-2, 3, (5, 18)).astype(float), np.zeros(5)),
        Readout("out", "fc"),
    ])
    rins = _check_exact(net)
    m = rins["fs2"].maps["fs"]
    assert isinstance(m, ConvMap) and m.kernel.shape[2:] == (5, 5) and m.padding == (2, 2)


def test_non_composable_chains_go_dense_and_stay_exact():
    rng = np.random.default_rng(5)
    net = _network([
        Input("x", (2, 9, 9), "c"),
        Conv2d("ov", "x", np.ones((2, 2, 3, 3)), np.zeros(2), stride=2),  # overlapping windows
        _conv(rng, "c", "ov", 3, 2, 3, padding=1),  # padded after overlap: not one conv
        FSActivation("fs", "c", "c"),
        _conv(rng, "d", "fs", 2, 3, 3, padding=1),
        _conv(rng, "e", "d", 2, 2, 1, stride=2),  # unpadded outer: composes with anything
        Readout("out", "e"),
    ])
    rins = _check_exact(net)
    assert isinstance(rins["fs"].maps["x"], DenseMap)
    assert isinstance(rins["out"].maps["fs"], ConvMap)


@pytest.mark.parametrize("seed", range(12))
def test_random_integer_networks(seed):
    rng = np.random.default_rng(100 + seed)
    C, H, W = int(rng.integers(1, 4)), int(rng.integers(5, 16)), int(rng.integers(5, 16))
    nodes = [Input("x", (C, H, W), "c")]
    prev, shape, i = "x", (C, H, W), 0
    for _ in range(int(rng.integers(2, 6))):
        i += 1
        kind = rng.choice(["conv", "pool", "fs", "add"])
        name = f"n{i}"
        if kind == "pool" and min(shape[1:]) >= 2:
            k = int(rng.integers(2, min(3, min(shape[1:])) + 1))
            nodes.append(_pool(name, prev, shape[0], k))
            shape = (shape[0], shape[1] // k, shape[2] // k)
        elif kind == "fs":
            nodes.append(FSActivation(name, prev, "c"))
        elif kind == "add":
            nodes.append(_conv(rng, name + "a", prev, shape[0], shape[0], 3, padding=1))
            nodes.append(Add(name, operands=(name + "a", prev)))
        else:
            k = int(rng.integers(1, min(5, min(shape[1:])) + 1))
            s = int(rng.integers(1, 3))
            p = int(rng.integers(0, k // 2 + 1))
            co = int(rng.integers(1, 4))
            nodes.append(_conv(rng, name, prev, co, shape[0], k, stride=s, padding=p))
            shape = (co, (shape[1] + 2 * p - k) // s + 1, (shape[2] + 2 * p - k) // s + 1)
        prev = name
    nodes += [Flatten("flat", prev),
              Dense("fc", "flat", rng.integers(-3, 4, (4, int(np.prod(shape)))).astype(float), np.zeros(4)),
              Readout("out", "fc")]
    net = _network(nodes)
    _check_exact(net, seed)
    # the last receiver-free chain before the dense also checked as an FS receiver
    net2 = _network(nodes[:-3] + [FSActivation("fs_end", prev, "c"), Readout("out", "fs_end")])
    _check_exact(net2, seed)


def test_in_used_crops_before_padding():
    rng = np.random.default_rng(6)
    k = rng.integers(-3, 4, (2, 1, 3, 3))
    m = ConvMap(k, (1, 1), (1, 1), (1, 5, 6), (2, 4, 4), in_used=(4, 4))
    x = rng.integers(-9, 10, (3, 1, 5, 6))
    x_crop = x[:, :, :4, :4]
    node = Conv2d("c", "x", k.astype(float), np.zeros(2), padding=1)
    want = apply_linear(node, [x_crop], False, "numpy", I64)
    np.testing.assert_array_equal(m.apply(x), want)
    np.testing.assert_array_equal(x.reshape(3, -1) @ m.to_dense().T, want.reshape(3, -1))
    assert not m.to_dense().reshape(8 * 4, 5, 6)[:, 4:, :].any()
    assert not m.to_dense().reshape(8 * 4, 5, 6)[:, :, 4:].any()
    assert ConvMap(k, (1, 1), (1, 1), (1, 5, 6), (2, 5, 6), in_used=(5, 6)).in_used is None


def test_dense_refusal_names_the_sizes(monkeypatch):
    monkeypatch.setattr(lower_maps, "MAX_DENSE_ENTRIES", 1000)
    rng = np.random.default_rng(7)
    net = _network([
        Input("x", (2, 9, 9), "c"),
        Conv2d("ov", "x", np.ones((2, 2, 3, 3)), np.zeros(2), stride=2),
        _conv(rng, "c", "ov", 3, 2, 3, padding=1),
        Readout("out", "c"),
    ])
    with pytest.raises(ResourceError, match=r"48x162"):
        receiver_inputs(net)
    # a composable chain needs no matrix at all
    ok = _network([Input("x", (2, 9, 9), "c"), _pool("p", "x", 2, 2),
                   _conv(rng, "c", "p", 3, 2, 3, padding=1), Readout("out", "c")])
    assert isinstance(receiver_inputs(ok)["out"].maps["x"], ConvMap)


def test_identity_map_of_a_vector_source():
    net = _network([Input("x", (5,), "c"), FSActivation("fs", "x", "c"), Readout("out", "fs")])
    rins = _check_exact(net)
    assert isinstance(rins["fs"].maps["x"], IdentityMap)
