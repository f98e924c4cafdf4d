"""The hardware-neutral partitioner (fs_hw/lower/partition.py) against synthetic cores."""

from __future__ import annotations

import numpy as np
import pytest

from fs_hw.errors import ResourceError
from fs_hw.lower.limits import Limit, LimitTable
from fs_hw.lower.partition import fan_in_groups, layer_parts, partition_layer

LIMITS = LimitTable((
    Limit("units", 1024, "compartments", "core"),
    Limit("memory", 4000, "synapse entries", "core"),
    Limit("axons", 300, "input axons", "core"),
))


def conv_like(K: int = 4, taps: int = 9, c_in: int = 16, in_pixels_per_out: int = 1):
    """A core holding c channels x p pixels of a 3x3 conv: memory grows with channels x taps
    x input channels per input pattern, axons with the input pixels read."""

    def cost(part):
        c, p = part.n_channels, part.pixels[1] - part.pixels[0]
        return {"units": c * p * K, "memory": c * taps * c_in * K,
                "axons": (p + 2) * in_pixels_per_out * K}
    return cost


@pytest.mark.parametrize("shape,c,p,n", [((6, 4, 5), 4, 7, None), ((6, 4, 5), None, 3, None),
                                         ((3, 1, 1), 1, None, None), ((37,), None, None, 10)])
def test_parts_cover_every_neuron_once(shape, c, p, n):
    parts = layer_parts(shape, c, p, n)
    flat = np.concatenate([q.neurons for q in parts])
    assert np.array_equal(np.sort(flat), np.arange(int(np.prod(shape))))
    if len(shape) == 3:
        C, H, W = shape
        for q in parts:
            # local order: pixel-major, then channel, as local_index says
            for f in range(*q.channels):
                for pix in range(*q.pixels):
                    assert q.neurons[q.local_index(f, pix)] == f * H * W + pix


def test_whole_layer_on_one_core_when_it_fits():
    split = partition_layer("small", (4, 3, 3), conv_like(K=2, c_in=4), LIMITS)
    assert len(split.parts) == 1
    assert "fits one core" in split.why


def test_channel_split_when_one_pixel_with_all_channels_is_too_big():
    # 64 channels x 9 taps x 16 inputs x 4 steps = 36864 entries for one pixel: above 4000,
    # so only channel blocks fit (6 channels: 3456 entries)
    split = partition_layer("res3", (64, 8, 8), conv_like(), LIMITS)
    assert split.channels_per_part is not None and split.channels_per_part < 64
    use = conv_like()(split.parts[0])
    assert all(use[k] <= LIMITS.value(k) for k in use)
    assert "channels of one pixel exceed synapse entries per core" in split.why
    flat = np.sort(np.concatenate([q.neurons for q in split.parts]))
    assert np.array_equal(flat, np.arange(64 * 64))


def test_pixel_split_when_axons_bind():
    # memory is small; axons (p + 2) * 4 <= 300 allows at most 73 pixels a part
    split = partition_layer("wide", (2, 16, 16), conv_like(K=4, taps=1, c_in=1), LIMITS)
    assert split.channels_per_part == 2
    assert split.pixels_per_part <= 73
    assert "would exceed" in split.why


def test_vector_layer_split_and_cap():
    cost = lambda part: {"units": part.n * 8, "memory": part.n * 30, "axons": 8}  # noqa: E731
    split = partition_layer("fc", (300,), cost, LIMITS)
    # 128 * 8 = 1024 compartments: 3 parts, balanced to 100 neurons each
    assert len(split.parts) == 3
    assert split.neurons_per_part == 100 and all(p.n == 100 for p in split.parts)
    capped = partition_layer("fc", (300,), cost, LIMITS, max_neurons=50)
    assert max(p.n for p in capped.parts) <= 50


def test_refusal_names_layer_limit_and_numbers():
    cost = lambda part: {"units": part.n * 8, "memory": 10, "axons": 5000}  # noqa: E731
    with pytest.raises(ResourceError) as exc:
        partition_layer("fc7", (10,), cost, LIMITS, units_per_neuron=8, unit_name="compartments")
    msg = str(exc.value)
    assert "layer 'fc7'" in msg and "5000 input axons per core" in msg and "limit 300" in msg
    assert "one neuron per core" in msg and "fan-in" in msg


def test_extra_cores_steer_the_split():
    # memory grows with channels and pixels: 16 channels x 8 pixels and 8 channels x 16
    # pixels both need 4 cores; the tie goes to wider channel blocks, unless each pixel run
    # is charged what it costs elsewhere (10 cores), which makes one run of 16 pixels win
    def cost(part):
        c, p = part.n_channels, part.pixels[1] - part.pixels[0]
        return {"units": c * p, "memory": c * 200 + p * 100, "axons": p}
    plain = partition_layer("l", (32, 4, 4), cost, LIMITS)
    charged = partition_layer("l", (32, 4, 4), cost, LIMITS,
                              extra_cores=lambda parts: 10.0 * len({q.pixels for q in parts}))
    assert (plain.channels_per_part, plain.pixels_per_part, len(plain.parts)) == (16, 8, 4)
    assert (charged.channels_per_part, charged.pixels_per_part, len(charged.parts)) == (8, 16, 4)


def test_fan_in_groups_fewest_balanced_runs():
    # 10 source parts of 70 axons each (one, the 8th, of 150): a core holds 300 axons
    sizes = [70] * 10
    sizes[7] = 150
    cost = lambda run: {"units": 10, "memory": 0, "axons": sum(sizes[run[0]:run[1]])}  # noqa: E731
    groups = fan_in_groups("readout", 10, cost, LIMITS)
    assert groups[0] == (0, 4) and groups[-1][1] == 10
    assert all(a == b for (_, a), (b, _) in zip(groups, groups[1:]))  # contiguous, no gap
    assert all(cost(g)["axons"] <= 300 for g in groups)
    # one run fewer cannot fit: 850 axons need at least 3 cores of 300
    assert len(groups) == 3
    # balanced when balanced runs fit: 9 equal sources of 100 axons -> 3 runs of 3
    even = lambda run: {"units": 1, "memory": 0, "axons": 100 * (run[1] - run[0])}  # noqa: E731
    assert fan_in_groups("readout", 9, even, LIMITS) == [(0, 3), (3, 6), (6, 9)]
    assert fan_in_groups("readout", 7, even, LIMITS) == [(0, 3), (3, 6), (6, 7)]


def test_fan_in_groups_refuse_a_source_too_big_for_a_core():
    def cost(run):  # 120 axons a source part, source 2 another 400
        return {"units": 1, "memory": 0, "axons": 120 * (run[1] - run[0]) + (400 if run[0] <= 2 < run[1] else 0)}

    with pytest.raises(ResourceError) as exc:
        fan_in_groups("readout", 5, cost, LIMITS)
    msg = str(exc.value)
    assert "layer 'readout' (sources 2..2): needs 520 input axons per core, above the limit 300" in msg
    assert "cannot be split finer than one source core" in msg
