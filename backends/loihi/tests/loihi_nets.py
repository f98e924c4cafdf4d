"""Networks shared by the Loihi tests."""

import numpy as np

from fs_hw.codes import relu_code
from fs_hw.ir import Add, Conv2d, Dense, Flatten, FSActivation, Input, Network, Readout

EMULATOR: dict = {}  # the emulator is the runner chosen when NxSDK is absent


def skip_network(seed: int = 5, K: int = 5) -> Network:
    """Dense network whose read-out adds outputs of stages 3, 1 and 0 (input):
    exercises two relay layers and a host-delayed input copy."""
    rng = np.random.default_rng(seed)
    inp = relu_code(1.0, K, ">=", name="in")
    act = relu_code(2.0, K, ">", name="act")
    nodes = [Input("x", (6,), "in")]
    prev = "x"
    for i in range(3):
        nodes += [Dense(f"d{i}", prev, rng.normal(0, 0.8, (5, 5 if i else 6)), rng.normal(0, 0.2, 5)),
                  FSActivation(f"fs{i}", f"d{i}", "act")]
        prev = f"fs{i}"
    nodes += [
        Dense("h3", "fs2", rng.normal(0, 1, (4, 5)), np.zeros(4)),
        Dense("h4", "fs0", rng.normal(0, 1, (4, 5)), np.zeros(4)),
        Dense("h5", "x", rng.normal(0, 1, (4, 6)), np.zeros(4)),
        Add("sum", operands=("h3", "h4", "h5")),
        Readout("out", "sum"),
    ]
    return Network(tuple(nodes), {"in": inp, "act": act}, {"scenario": "skip"})


def _pixel_then_conv(name: str, C_in: int, C_out: int, K: int, seed: int, w0: float, w1: float,
                     bias0: bool) -> Network:
    """1x1 conv C_in -> C_in, then a 3x3 conv C_in -> C_out on 3x3 images, flattened into a
    4-output read-out (weights normal with scales ``w0``, ``w1``; ``bias0``: a bias on the first)."""
    rng = np.random.default_rng(seed)
    inp, act = relu_code(1.0, K, ">=", name="in"), relu_code(2.0, K, ">=", name="act")
    w_first = rng.normal(0, w0, (C_in, C_in, 1, 1))
    b_first = rng.normal(0.1, 0.1, C_in) if bias0 else np.zeros(C_in)
    nodes = (
        Input("x", (C_in, 3, 3), "in"),
        Conv2d("c0", "x", w_first, b_first),
        FSActivation("f0", "c0", "act"),
        Conv2d("c1", "f0", rng.normal(0, w1, (C_out, C_in, 3, 3)), np.zeros(C_out), padding=1),
        FSActivation("f1", "c1", "act"),
        Flatten("fl", "f1"),
        Dense("d", "fl", rng.normal(0, 0.05, (4, C_out * 9)), np.zeros(4)),
        Readout("out", "d"),
    )
    return Network(nodes, {"in": inp, "act": act}, {"name": name})


def wide_conv(C: int = 32, K: int = 8, seed: int = 0) -> Network:
    """32 -> 32 channels, 3x3 taps, K = 8: all channels of one output pixel need more than
    a core's synapse memory, so the partitioner splits output channels over cores."""
    return _pixel_then_conv("wide_conv", C, C, K, seed, w0=0.3, w1=0.05, bias0=False)


def fan_out_conv(C_in: int = 4, C_out: int = 128, K: int = 8, seed: int = 0) -> Network:
    """A 4-channel layer read by a 3x3 conv to 128 channels: each reader core holds one
    pixel (128 channels x K compartments fill it), so a source pixel is read by up to 9
    cores; on a core short of output axons that fan-out needs copies of the source."""
    return _pixel_then_conv("fan_out_conv", C_in, C_out, K, seed, w0=0.5, w1=0.3, bias0=True)
