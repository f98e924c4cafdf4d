"""Emulator regressions for the shapes the hardware-neutral lowering exists for: a conv
after pooling (one composed strided kernel, not a dense matrix), a conv layer that only
fits with its output channels split over cores, per-step weights, and a zoo network
(sigmoid_mlp) end to end."""

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("nengo_loihi")

from fs_hw_loihi.backend import LoihiBackend
from loihi_nets import wide_conv

from fs_hw import conformance
from fs_hw.codes import relu_code
from fs_hw.ir import AvgPool2d, Conv2d, Dense, Flatten, FSActivation, Input, Network, Readout
from fs_hw.lower.maps import ConvMap, StepMap, receiver_inputs
from fs_hw.reference.simulator import run_reference


def _exact(art, x):
    res = LoihiBackend().run(art, x, record_spikes=True)
    for mode in ("spike", "fast"):
        ref = run_reference(art.network, x, mode, art.profile, record_spikes=True)
        comp = conformance.compare_runs(ref, res, input_name=art.network.input.name)
        assert comp.exact, comp.summary()
        np.testing.assert_array_equal(ref.outputs, res.outputs)
    return res


def _pool_cnn(seed=0, K=6):
    rng = np.random.default_rng(seed)
    inp, act = relu_code(1.0, K, ">=", name="in"), relu_code(2.0, K, ">", name="act")
    nodes = (
        Input("x", (1, 12, 12), "in"),
        Conv2d("c0", "x", rng.normal(0, 0.6, (4, 1, 3, 3)), rng.normal(0, 0.1, 4), padding=1),
        FSActivation("f0", "c0", "act"),
        AvgPool2d("p0", "f0", (2, 2)),
        Conv2d("c1", "p0", rng.normal(0, 0.4, (6, 4, 3, 3)), rng.normal(0, 0.1, 6), padding=1),
        FSActivation("f1", "c1", "act"),
        Flatten("fl", "f1"),
        Dense("d", "fl", rng.normal(0, 0.2, (5, 6 * 36)), np.zeros(5)),
        Readout("out", "d"),
    )
    return Network(nodes, {"in": inp, "act": act}, {"name": "pool_cnn"})


def test_conv_after_pool_is_one_strided_kernel_and_exact():
    net = _pool_cnn()
    x = np.random.default_rng(1).uniform(0, 1, (4, 1, 12, 12))
    backend = LoihiBackend()
    q = backend.quantize(net, {"range_samples": 0})
    m = receiver_inputs(q.network)["f1"].maps["f0"]
    # per-step weights: one map per source step, each the pool folded into the conv
    steps = m.steps if isinstance(m, StepMap) else (m,)
    assert all(isinstance(s, ConvMap) for s in steps)
    # 3x3 taps over 2x2 windows: 2*(3-1)+2 = 6 taps, stride 2
    assert steps[0].kernel.shape[2:] == (6, 6) and steps[0].stride == (2, 2)
    art = backend.lower(q, {})
    assert "conv" in art.resources.layers["f1"].connection_kinds
    _exact(art, x)


def test_layer_that_needs_channel_splits_is_exact():
    # 32 -> 32 channels, 3x3 taps, K = 8: all channels of one output pixel need more than a
    # core's synapse memory, so the partitioner must split output channels
    net = wide_conv()
    x = np.random.default_rng(2).uniform(0, 1, (2, 32, 3, 3))
    art = LoihiBackend().lower(net, {"chips": 2})
    layer = art.resources.layers["f1"]
    assert "of 32 channels" in layer.split and "of 32 of 32 channels" not in layer.split
    assert layer.parts > 1
    # the channel blocks of one pixel range read a source part through equal axon maps:
    # one shared, read-only array (the lowering's memory), not a copy per axon
    maps = [ax.compartment_map for block in art.payload.model.blocks for ax in block.axons]
    assert all(not m.flags.writeable for m in maps)
    assert len({id(m) for m in maps}) < len(maps) / 2
    _exact(art, x)


ZOO = Path(__file__).resolve().parents[3] / "fs_hw" / "zoo" / "networks"


@pytest.mark.slow
def test_sigmoid_mlp_on_the_emulator():
    from fs_hw.data import load_dataset
    from fs_hw.ir.io import load_network

    net = load_network(ZOO / "sigmoid_mlp.fsnet")
    x, _ = load_dataset("fashion-mnist", "test")
    backend = LoihiBackend()
    q = backend.quantize(net, {"chips": 4})
    art = backend.lower(q, {"chips": 4})
    assert art.resources.chips <= 4
    _exact(art, x[:2])
