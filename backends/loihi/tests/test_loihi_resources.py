"""Partitioning, resource figures, and refusal of networks that do not fit."""

import numpy as np
import pytest

pytest.importorskip("nengo_loihi")

from fs_hw_loihi.backend import LoihiBackend

from fs_hw import conformance
from fs_hw.codes import relu_code
from fs_hw.errors import ResourceError
from fs_hw.ir import Conv2d, Dense, Flatten, FSActivation, Input, Network, Readout


def _mlp(n_in, n_hidden, K=8, seed=0):
    rng = np.random.default_rng(seed)
    inp, act = relu_code(1.0, K, ">=", name="in"), relu_code(2.0, K, ">=", name="act")
    nodes = (
        Input("x", (n_in,), "in"),
        Dense("d0", "x", rng.normal(0, 1 / np.sqrt(n_in), (n_hidden, n_in)), np.zeros(n_hidden)),
        FSActivation("hidden", "d0", "act"),
        Dense("d1", "hidden", rng.normal(0, 1 / np.sqrt(n_hidden), (10, n_hidden)), np.zeros(10)),
        Readout("out", "d1"),
    )
    return Network(nodes, {"in": inp, "act": act}, {})


def _cnn(size, C=4, K=6, seed=0):
    rng = np.random.default_rng(seed)
    inp, act = relu_code(1.0, K, ">=", name="in"), relu_code(2.0, K, ">=", name="act")
    nodes = (
        Input("x", (1, size, size), "in"),
        Conv2d("c0", "x", rng.normal(0, 0.5, (C, 1, 3, 3)), np.zeros(C), padding=1),
        FSActivation("f0", "c0", "act"),
        Conv2d("c1", "f0", rng.normal(0, 0.3, (C, C, 3, 3)), np.zeros(C), padding=1),
        FSActivation("f1", "c1", "act"),
        Flatten("flat", "f1"),
        Dense("fc", "flat", rng.normal(0, 0.1, (3, C * size * size)), np.zeros(3)),
        Readout("out", "fc"),
    )
    return Network(nodes, {"in": inp, "act": act}, {})


def test_resources_reported():
    net, _ = conformance.scenario("mlp_relu_ge")
    res = LoihiBackend().lower(net, {}).resources
    assert res.chips == 1 and res.cores == 1 + len(res.layers)  # clock core + one per layer
    assert res.neurons == sum(net.neuron_counts().values())
    for key in ("compartments", "synapse_memory_bits", "input_axons", "output_axon_slots",
                "synapse_entries_per_weight", "synapse_bits_per_weight"):
        assert isinstance(res.extra[key], (int, float)), key
    assert res.time_steps_per_sample == 2 * net.K
    assert res.latency_steps == net.time_steps
    # dense layers with full weight rows: exactly K synapse entries per weight
    assert res.extra["synapse_entries_per_weight"] == net.K
    for layer in res.layers.values():
        assert layer.entries_per_weight == net.K and "dense" in layer.connection_kinds
    assert res.to_dict()["layers"]["fs0"]["parts"] == 1


# nengo-loihi fills unused emulator state with NaN before casting it to int32 (the runner filters it too)
@pytest.mark.filterwarnings("ignore:invalid value encountered in cast")
def test_axon_objects_are_what_the_emulator_visits_each_step():
    from fs_hw_loihi.runner import StrictEmulator

    net, _ = conformance.scenario("conv")
    art = LoihiBackend().lower(net, {})
    emu = StrictEmulator(art.payload.model, seed=0)
    visited = len(emu.axons.slices) + sum(len(si.axons) for si in emu.inputs)
    assert art.resources.extra["axon_objects"] == visited > len(art.payload.model.blocks)


def test_dense_layer_split_over_cores_by_memory():
    art = LoihiBackend().lower(_mlp(784, 64), {})
    layers = art.resources.layers
    assert layers["hidden"].parts > 1
    assert art.resources.chips == 1
    for block in art.payload.model.blocks:
        util = block.utilization()
        for used, limit in util.values():
            assert used <= limit


def test_conv_memory_grows_with_kernel_not_image():
    small = LoihiBackend().lower(_cnn(6), {"synapse_rows": "shared"}).resources.layers["f1"]
    large = LoihiBackend().lower(_cnn(12), {"synapse_rows": "shared"}).resources.layers["f1"]
    assert small.weights == large.weights == 4 * 4 * 9
    # each core stores the kernel (x K, x border patterns) once: per-core memory does not
    # grow with the image; a dense mapping would store n_in x n_out x K entries
    assert large.parts > small.parts
    # (1.3: a part holding a run of pixels that starts mid-row meets more border patterns)
    assert large.synapse_entries / large.parts <= 1.3 * small.synapse_entries / small.parts
    dense_equivalent = (4 * 144) ** 2 * 6
    # (parts hold fewer pixels since image layers use one discrete inhibition axon per compartment)
    assert large.synapse_entries < 0.03 * dense_equivalent


def test_refused_when_board_too_small():
    net = _mlp(784, 64)
    with pytest.raises(ResourceError) as err:
        LoihiBackend().lower(net, {"chips": 1, "cores_per_chip": 3})
    msg = str(err.value)
    assert "layer 'hidden'" in msg
    assert "1 chip(s) x 3 cores = 3 cores" in msg
    assert "cores" in msg and "needs" in msg


def test_refused_when_fan_in_exceeds_a_core():
    # one neuron's 8 compartments, each reading 40000 inputs per source step: above 1 Mbit
    net = _mlp(40000, 2)
    with pytest.raises(ResourceError) as err:
        LoihiBackend().lower(net, {})
    msg = str(err.value)
    assert "layer 'hidden'" in msg
    assert "synapse memory bits per core" in msg
    assert "limit 1048576" in msg or "the limit 1048576" in msg


def test_several_chips():
    art = LoihiBackend().lower(_mlp(784, 64), {"chips": 4, "cores_per_chip": 4})
    assert 1 < art.resources.chips <= 4
    assert art.resources.cores <= 16


def test_replicated_conv_rows_trade_memory_for_axons():
    shared = LoihiBackend().lower(_cnn(12), {"synapse_rows": "shared"})
    replicated = LoihiBackend().lower(_cnn(12), {"synapse_rows": "replicated"})
    s, r = shared.resources.layers["f1"], replicated.resources.layers["f1"]
    assert "rows shared" in s.split and "rows replicated" in r.split
    # the same weights; replicated rows store each K times (one entry per decision unit)
    assert s.weights == r.weights
    assert r.synapse_entries / r.parts > 2 * s.synapse_entries / s.parts
    # and need K times fewer input axons per core for the same data
    in_s = shared.resources.extra["input_axons"]
    in_r = replicated.resources.extra["input_axons"]
    assert in_r < in_s


def _out_slots_to(program, source: str, reader: str) -> int:
    """Output axon slots the cores of ``source`` spend on axons into ``reader``'s synapses."""
    return sum(ax.axon_slots() for part in program.layers[source].parts for ax in part.block.axons
               if (ax.label or "").startswith(reader + "["))


def test_source_steps_as_atoms_cut_output_axons():
    # per source pixel and reader core: 2 slots (pop32) x K steps x K decision units with
    # per-step synapses, 2 x planes x K with the steps as atoms of radix-128 planes
    K = 6
    shared = LoihiBackend().lower(_cnn(6, K=K), {"synapse_rows": "shared"})
    atoms = LoihiBackend().lower(_cnn(6, K=K), {"synapse_rows": "atoms"})
    assert "source steps as atoms" in atoms.resources.layers["f1"].split
    assert "source steps as atoms" not in atoms.resources.layers["f0"].split  # read from the host
    planes = {s.label.split(".a")[-1] for part in atoms.payload.layers["f1"].parts for s in part.block.synapses
              if "<f0" in s.label}
    assert 1 <= len(planes) < K
    s_slots = _out_slots_to(shared.payload, "f0", "f1")
    a_slots = _out_slots_to(atoms.payload, "f0", "f1")
    assert shared.resources.layers["f1"].parts == atoms.resources.layers["f1"].parts == 1
    assert a_slots * K == s_slots * len(planes)
    # the same weights, about `planes` times the entries
    s, a = shared.resources.layers["f1"], atoms.resources.layers["f1"]
    assert s.weights == a.weights
    assert a.synapse_entries <= len(planes) * s.synapse_entries * 1.01


def test_vectorized_axon_check_agrees_with_nengo_loihi():
    # resources._validate_axon replaces nengo-loihi's per-compartment loop in validate_model
    from fs_hw_loihi.resources import _validate_axon
    from nengo_loihi.builder.validate import validate_axon

    program = LoihiBackend().lower(_cnn(6), {"synapse_rows": "atoms"}).payload
    axons = [ax for block in program.model.blocks for ax in block.axons]
    assert any(ax.compartment_atoms is not None and np.max(ax.compartment_atoms) > 0 for ax in axons)
    for ax in axons:
        validate_axon(ax)
        _validate_axon(ax)
    bad = next(ax for ax in axons if ax.target.pop_type == 32 and ax.compartment_atoms is not None)
    bad.compartment_atoms = np.array(bad.compartment_atoms).copy()
    bad.compartment_atoms[0] = bad.target.axon_populations(bad.map_axon(np.arange(1))[0])
    for check in (validate_axon, _validate_axon):
        with pytest.raises(AssertionError):
            check(bad)


def test_partition_pixel_cap():
    # fs_hw.lower.partition: a target that found a core short of something sent per pixel
    # (Loihi: output axons) re-splits with fewer pixels a core, channels unchanged
    from fs_hw.lower.limits import Limit, LimitTable
    from fs_hw.lower.partition import partition_layer

    limits = LimitTable((Limit("units", 1024, "compartments", "core"), Limit("axons", 300, "input axons", "core")))

    def cost(part):
        p = part.pixels[1] - part.pixels[0]
        return {"units": part.n_channels * p * 4, "axons": (p + 2) * 4}

    free = partition_layer("wide", (2, 16, 16), cost, limits)
    capped = partition_layer("wide", (2, 16, 16), cost, limits, max_pixels=5)
    assert free.pixels_per_part > 5
    assert capped.pixels_per_part <= 5 and capped.channels_per_part == 2
    assert all(q.pixels[1] - q.pixels[0] <= 5 for q in capped.parts)
    assert "capped at" in capped.why
