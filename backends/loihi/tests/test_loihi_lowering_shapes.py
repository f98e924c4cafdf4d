"""Emulator regressions for the shapes the hardware-neutral lowering exists for: a conv
after pooling (one composed strided kernel, not a dense matrix), a conv layer that only
fits with its output channels split over cores, per-step weights, and a zoo network
(sigmoid_mlp) end to end."""

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("nengo_loihi")

from fs_hw_loihi.backend import LoihiBackend
from loihi_nets import fan_out_conv, wide_conv

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


def _tight_cores(monkeypatch, in_axons: int, compartments: int) -> None:
    """Shrink a core (input axons, compartments) for the lowering only, so that a small
    network needs what a large one needs on a real core: many source cores per read-out."""
    import fs_hw_loihi.program as program
    from fs_hw_loihi.config import LOIHI_LIMITS

    from fs_hw.lower.limits import Limit, LimitTable

    sizes = {"in_axons": in_axons, "compartments": compartments}
    monkeypatch.setattr(program, "LOIHI_LIMITS", LimitTable(
        Limit(lim.name, sizes.get(lim.name, lim.value), lim.unit, lim.scope) for lim in LOIHI_LIMITS))
    monkeypatch.setattr(program, "MAX_COMPARTMENTS", compartments)


def _biased_mlp(seed=0, K=8):
    rng = np.random.default_rng(seed)
    inp, act = relu_code(1.0, K, ">=", name="in"), relu_code(2.0, K, ">=", name="act")
    nodes = (
        Input("x", (16,), "in"),
        Dense("d0", "x", rng.normal(0, 0.5, (64, 16)), rng.normal(0.2, 0.3, 64)),
        FSActivation("hidden", "d0", "act"),
        # biases of both signs: only the part holding the first sources adds them
        Dense("d1", "hidden", rng.normal(0, 0.3, (10, 64)), rng.normal(0, 1.0, 10)),
        Readout("out", "d1"),
    )
    return Network(nodes, {"in": inp, "act": act}, {"name": "biased_mlp"})


def test_readout_fan_in_split_over_cores_is_exact(monkeypatch):
    # 8 hidden cores of 8 neurons; a read-out core may hold 60 input axons: one read-out
    # neuron reading all 8 source cores needs more, so its sources are split into runs and
    # the host adds the partial accumulators
    _tight_cores(monkeypatch, in_axons=60, compartments=64)
    net = _biased_mlp()
    backend = LoihiBackend()
    art = backend.lower(net, {"synapse_rows": "replicated", "range_samples": 0})
    out = art.resources.layers["out"]
    assert out.parts == 2 and "fan-in split: 2 runs of at most 4 of 8 source cores" in out.split
    parts = art.payload.layers["out"].parts
    assert [p.feeds for p in parts] == [(0, 4), (4, 8)]
    # the bias goes to the first part only; each part keeps its own membrane offset
    assert np.any(parts[0].partial.baseline != parts[0].partial.offset)
    np.testing.assert_array_equal(parts[1].partial.baseline, parts[1].partial.offset)
    x = np.random.default_rng(3).uniform(0, 1, (4, 16))
    _exact(art, x)



def test_source_read_by_too_many_cores_gets_copies():
    # K = 16 and shared rows: a reader core costs each source pixel it reads 2 x 16 x 16
    # output axon slots, and up to 9 reader cores read one pixel: more than a core's 4096,
    # even with one pixel a core, so the source layer is built twice and each copy serves
    # half of the readers (same inputs, same spikes: the runner checks that too)
    net = fan_out_conv(C_out=64, K=16)
    art = LoihiBackend().lower(net, {"chips": 4, "range_samples": 0, "synapse_rows": "shared"})
    layers = art.resources.layers
    assert "f0#copy1" in layers and "f0#copy2" not in layers
    assert "copy 1 of 'f0'" in layers["f0#copy1"].split
    program = art.payload
    for name in ("f0", "f0#copy1"):
        parts = program.layers[name].parts
        assert [p.pixels for p in parts] == [(q, q + 1) for q in range(9)]
        # every copy sends to readers, each within a core's output axons
        slots = [p.block.utilization()["out-axons"][0] for p in parts]
        assert max(slots) <= 4096 and min(slots) > 0
    x = np.random.default_rng(4).uniform(0, 1, (2, 4, 3, 3))
    _exact(art, x)


def test_readout_runs_halved_until_their_constants_fit(monkeypatch):
    import fs_hw_loihi.program as program

    _tight_cores(monkeypatch, in_axons=60, compartments=64)
    net = _biased_mlp()
    config = {"synapse_rows": "replicated", "range_samples": 0}
    parts = LoihiBackend().lower(net, config).payload.layers["out"].parts
    widest = max(p.partial.vth for p in parts)
    # a clock synapse may add less than the runs of 4 sources need: the runs are halved
    monkeypatch.setattr(program, "CONSTANT_LIMIT", widest - 1)
    art = LoihiBackend().lower(net, config)
    halved = art.payload.layers["out"].parts
    # the run that did not fit is halved (3 runs), the other kept
    assert sorted(p.feeds[1] - p.feeds[0] for p in halved) == [2, 2, 4]
    assert all(max(p.partial.vth, np.abs(p.partial.baseline).max()) < widest for p in halved)
    assert sorted(p.feeds for p in halved)[0][0] == 0 and max(p.feeds[1] for p in halved) == 8
    _exact(art, np.random.default_rng(5).uniform(0, 1, (3, 16)))


def test_too_many_readers_get_steps_as_atoms_before_copies(monkeypatch):
    # the policy of lower_network when a source pixel has too many reader cores: first the
    # readers hold the source steps as atoms (K / planes times fewer slots each), and only
    # if that is not enough the source gets copies (the requests are injected here)
    import fs_hw_loihi.resources as resources

    real, builds = resources.check_program, []

    def check(program):
        builds.append(program)
        if len(builds) <= 2:
            program.copy_requests["f0"] = (1 + len(builds), "refused")
            return {"f0": max(p.n for p in program.layers["f0"].parts)}
        return real(program)

    monkeypatch.setattr(resources, "check_program", check)
    art = LoihiBackend().lower(fan_out_conv(), {"range_samples": 0})
    first, second, third = builds
    assert "source steps as atoms" not in first.layers["f1"].split_reason
    assert "source steps as atoms" in second.layers["f1"].split_reason and len(second.layers["f0"].copies) == 1
    assert "source steps as atoms" in third.layers["f1"].split_reason and len(third.layers["f0"].copies) == 3
    _exact(art, np.random.default_rng(6).uniform(0, 1, (2, 4, 3, 3)))


def test_more_copies_than_allowed_are_refused(monkeypatch):
    import fs_hw_loihi.resources as resources
    from fs_hw_loihi.config import MAX_COPIES

    from fs_hw.errors import ResourceError

    builds = []

    def check(program):
        builds.append(program)
        program.copy_requests["f0"] = (MAX_COPIES + 1, "layer 'f0' (core 0 of 9): needs 9999 output axon slots")
        return {"f0": max(p.n for p in program.layers["f0"].parts)}

    monkeypatch.setattr(resources, "check_program", check)
    with pytest.raises(ResourceError, match=r"^layer 'f0' \(core 0 of 9\): needs 9999 output axon slots$"):
        LoihiBackend().lower(fan_out_conv(), {"range_samples": 0})
    assert len(builds) == 2  # the second build already had the readers' steps as atoms


def test_rebuilds_reuse_the_splits_of_unchanged_layers(monkeypatch):
    # a rebuild searches again only the layers whose own limits or whose sources' splits
    # changed (here the check asks for a finer split of the last FS layer); the others take
    # their split from the last build, and the program equals one searched from scratch
    import fs_hw_loihi.program as program
    import fs_hw_loihi.resources as resources

    real, builds = resources.check_program, []

    def check(prog):
        builds.append(prog)
        if len(builds) == 1:
            return {"f1": max(p.n for p in prog.layers["f1"].parts) // 2}
        return real(prog)

    monkeypatch.setattr(resources, "check_program", check)
    net = fan_out_conv()
    cached = LoihiBackend().lower(net, {"range_samples": 0})
    assert len(builds) >= 2 and builds[0].reused_splits == []
    assert builds[1].reused_splits == ["f0"]  # f1 changed; f0 reads the host only
    n_builds = len(builds)
    builds.clear()
    monkeypatch.setattr(program.Lowering, "_decision_key", lambda self, layer, cap: object())  # never equal
    fresh = LoihiBackend().lower(net, {"range_samples": 0})
    assert len(builds) == n_builds and all(b.reused_splits == [] for b in builds)
    assert len(fresh.payload.layers["f1"].parts) > len(builds[0].layers["f1"].parts)
    for name, layer in fresh.payload.layers.items():
        other = cached.payload.layers[name]
        assert [(p.pixels, p.channels, p.n) for p in layer.parts] == [(p.pixels, p.channels, p.n) for p in other.parts]
        assert layer.split_reason == other.split_reason
    assert fresh.resources.cores == cached.resources.cores
    _exact(cached, np.random.default_rng(4).uniform(0, 1, (2, 4, 3, 3)))
