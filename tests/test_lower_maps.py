"""fs_hw.lower: hardware-neutral, and its integer maps equal the IR's linear chain."""

import subprocess
import sys

import numpy as np

from fs_hw.codes import relu_code
from fs_hw.ir import Conv2d, Dense, Flatten, FSActivation, Input, Network, Readout
from fs_hw.lower.maps import ConvMap, DenseMap, receiver_inputs
from fs_hw.reference.ops import apply_linear


def test_lower_imports_no_hardware_sdk():
    code = ("import sys, fs_hw.lower.maps, fs_hw.lower.limits, fs_hw.lower.config; "
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
