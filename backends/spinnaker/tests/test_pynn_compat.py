"""Tests of ``fs_hw_spinnaker.pynn_compat``: fast PyNN projections on NEST, exact to the bit.

NEST's kernel is global; every test calls ``sim.setup`` (which resets it) first.
"""

from __future__ import annotations

import os
import sys
import types
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("PYNEST_QUIET", "1")  # before nest is imported (by pyNN.nest)
sim = pytest.importorskip("pyNN.nest")
nest = pytest.importorskip("nest")

try:
    from fs_hw_spinnaker.pynn_compat import connect_arrays, is_pynn_nest
except ImportError:  # the backend package is not installed: import it from the tree
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from fs_hw_spinnaker.pynn_compat import connect_arrays, is_pynn_nest

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")


def setup(max_delay: float = 10.0) -> None:
    sim.setup(timestep=1.0, min_delay=1.0, max_delay=max_delay, spike_precision="on_grid")


def nest_connections(proj) -> np.ndarray:
    """(pre index, post index, NEST weight, delay) of every synapse of ``proj``, read back from
    NEST, as a float array sorted lexicographically (repeated pairs stay)."""
    conns = nest.GetConnections(synapse_model=proj.nest_synapse_model, synapse_label=proj.nest_synapse_label)
    if len(conns) == 0:
        return np.zeros((0, 4))
    got = conns.get(["source", "target", "weight", "delay"])
    pre_ids = np.asarray(proj.pre.node_collection.tolist())
    post_ids = np.asarray(proj.post.node_collection.tolist())
    rows = np.column_stack([
        np.searchsorted(pre_ids, np.atleast_1d(got["source"])),
        np.searchsorted(post_ids, np.atleast_1d(got["target"])),
        np.atleast_1d(got["weight"]),
        np.atleast_1d(got["delay"]),
    ]).astype(np.float64)
    return rows[np.lexsort(rows.T[::-1])]


def requested(pre_idx, post_idx, weights, delays) -> np.ndarray:
    rows = np.column_stack([pre_idx, post_idx, weights, delays]).astype(np.float64)
    return rows[np.lexsort(rows.T[::-1])]


def random_case(rng, n_pre, n_post, n, sign):
    pre_idx = rng.integers(0, n_pre, n)
    post_idx = rng.integers(0, n_post, n)
    pre_idx[:3], post_idx[:3] = 0, 0  # a repeated pair: two synapses between the same cells
    weights = sign * rng.uniform(1e-3, 3.0, n)  # arbitrary doubles, not dyadic
    delays = rng.integers(1, 6, n).astype(np.float64)
    return pre_idx, post_idx, weights, delays


def test_is_pynn_nest():
    assert is_pynn_nest(sim)
    assert not is_pynn_nest(types.SimpleNamespace(__name__="pyNN.spiNNaker"))


def test_delta_connections_exact():
    """IF_curr_delta: NEST holds the given mV weight bit for bit, on both receptors, and the
    sign that PyNN expects (negative on "inhibitory") reaches NEST unchanged."""
    setup()
    rng = np.random.default_rng(7)
    pre = sim.Population(13, sim.SpikeSourceArray(spike_times=[5.0]))
    post = sim.Population(11, sim.IF_curr_delta())
    exc = random_case(rng, 13, 11, 150, +1.0)
    inh = random_case(rng, 13, 11, 120, -1.0)
    p_exc = connect_arrays(sim, pre, post, *exc, receptor_type="excitatory")
    p_inh = connect_arrays(sim, pre, post, *inh, receptor_type="inhibitory", label="inh")

    assert isinstance(p_exc, sim.Projection) and p_inh.label == "inh"
    assert p_exc.nest_synapse_label != p_inh.nest_synapse_label
    np.testing.assert_array_equal(nest_connections(p_exc), requested(*exc))
    np.testing.assert_array_equal(nest_connections(p_inh), requested(*inh))
    assert (nest_connections(p_inh)[:, 2] < 0).all()
    assert len(p_exc) == 150 and len(p_inh) == 120
    # PyNN's own reading: weight * 0.001 (PyNN does not undo IF_curr_delta's receptor_scale)
    listed = np.array(p_inh.get(["weight", "delay"], format="list"))
    np.testing.assert_allclose(np.sort(listed[:, 2]), np.sort(inh[2]) * 1e-3, rtol=1e-15)


def test_curr_exp_matches_pynn_fromlist():
    """IF_curr_exp (weights in nA, NEST in pA): the shim makes exactly the synapses that
    PyNN's FromListConnector makes, and PyNN reads them back the same way."""
    rng = np.random.default_rng(3)
    exc = random_case(rng, 9, 8, 60, +0.01)
    inh = random_case(rng, 9, 8, 50, -0.01)
    results = []
    for build in ("pynn", "shim"):
        setup()
        pre = sim.Population(9, sim.SpikeSourceArray(spike_times=[5.0]))
        post = sim.Population(8, sim.IF_curr_exp())
        projs = []
        for case, receptor in ((exc, "excitatory"), (inh, "inhibitory")):
            if build == "pynn":
                conn = sim.FromListConnector(np.column_stack(case), column_names=("weight", "delay"))
                projs.append(sim.Projection(pre, post, conn, receptor_type=receptor))
            else:
                projs.append(connect_arrays(sim, pre, post, *case, receptor_type=receptor))
        results.append([(nest_connections(p), p.get("weight", format="array"), len(p)) for p in projs])
    for (conns_a, w_a, n_a), (conns_b, w_b, n_b) in zip(*results):
        np.testing.assert_array_equal(conns_a, conns_b)
        # repeated pairs are summed, in NEST's connection order, which differs
        np.testing.assert_allclose(w_a, w_b, rtol=1e-15, atol=0)
        assert n_a == n_b
    exc_rows = results[1][0][0]
    np.testing.assert_array_equal(exc_rows[:, 2], requested(*exc)[:, 2] * 1000.0)


def test_conductance_inhibitory_negated_like_pynn():
    setup()
    pre = sim.Population(3, sim.SpikeSourceArray(spike_times=[5.0]))
    post = sim.Population(2, sim.IF_cond_exp())
    proj = connect_arrays(sim, pre, post, [0, 1, 2], [0, 1, 1], [0.01, 0.02, 0.03], [1.0, 2.0, 3.0], "inhibitory")
    np.testing.assert_array_equal(nest_connections(proj)[:, 2], [-10.0, -20.0, -30.0])
    with pytest.raises(ValueError):
        connect_arrays(sim, pre, post, [0], [0], [-0.01], [1.0], "inhibitory")


def test_sign_and_shape_checks():
    setup()
    pre = sim.Population(3, sim.SpikeSourceArray(spike_times=[5.0]))
    post = sim.Population(2, sim.IF_curr_delta())
    with pytest.raises(ValueError, match="<= 0"):  # would excite on NEST: iaf_psc_delta reads the sign
        connect_arrays(sim, pre, post, [0], [0], [0.5], [1.0], "inhibitory")
    with pytest.raises(ValueError, match=">= 0"):  # sPyNNaker would store |w| and excite
        connect_arrays(sim, pre, post, [0], [0], [-0.5], [1.0], "excitatory")
    with pytest.raises(IndexError):
        connect_arrays(sim, pre, post, [3], [0], [0.5], [1.0], "excitatory")
    with pytest.raises(ValueError):
        connect_arrays(sim, pre, post, [0, 1], [0], [0.5], [1.0], "excitatory")
    with pytest.raises(ValueError):
        connect_arrays(sim, pre, post, [0], [0], [0.5], [1.0], "default")
    empty = connect_arrays(sim, pre, post, [], [], [], [], "excitatory")
    assert len(empty) == 0


def test_delta_cell_fires_at_threshold_tick():
    """A volley lands in one tick: V = sum of the weights; NEST fires on V >= threshold.

    Sources spike at 10 ms (delay 2) and 9 ms (delay 3): everything reaches the cells in the
    tick that ends at 12 ms, where a cell at threshold records its spike.
    """
    setup()
    src = sim.Population(2, sim.SpikeSourceArray(spike_times=[[10.0], [9.0]]))
    cells = sim.Population(4, sim.IF_curr_delta(v_rest=0.0, v_reset=0.0, v_thresh=1.0, tau_m=0.1, tau_refrac=1.0))
    cells.node_collection.set(V_m=0.0)  # pyNN.nest ignores an initial v for IF_curr_delta (V_m would be -70)
    delay = np.array([2.0, 3.0])  # from source 0, from source 1
    # cell 0: 0.75 + 0.5 - 0.25 = 1.0          -> fires (>= threshold, exactly)
    # cell 1: 0.75 + 0.5 - 0.25 - 0.125 = 0.875 -> silent
    # cell 2: 0.75 + 0.25 = 1.0 (no inhibition) -> fires
    # cell 3: 0.75 + (0.25 - 2**-40)            -> silent, one bit-ish below
    exc = np.array([[0, 0, 0.75], [1, 0, 0.5], [0, 1, 0.75], [1, 1, 0.5], [0, 2, 0.75], [1, 2, 0.25],
                    [0, 3, 0.75], [1, 3, 0.25 - 2.0**-40]])
    inh = np.array([[0, 0, -0.25], [0, 1, -0.25], [1, 1, -0.125]])
    for rows, receptor in ((exc, "excitatory"), (inh, "inhibitory")):
        pre_idx = rows[:, 0].astype(int)
        connect_arrays(sim, src, cells, pre_idx, rows[:, 1].astype(int), rows[:, 2], delay[pre_idx], receptor)
    cells.record("spikes")
    sim.run(30.0)
    spiketrains = cells.get_data().segments[0].spiketrains
    trains = {st.annotations["source_index"]: np.asarray(st.magnitude) for st in spiketrains}
    assert trains[0].tolist() == [12.0]
    assert trains[1].tolist() == []
    assert trains[2].tolist() == [12.0]
    assert trains[3].tolist() == []


def test_fallback_uses_fromlist_array():
    """Any simulator but pyNN.nest: sim.Projection with FromListConnector(float array (i, j, w, d))."""
    calls = {}

    class FromListConnector:
        def __init__(self, conn_list, column_names=None):
            calls["conn_list"], calls["column_names"] = conn_list, column_names

    def Projection(pre, post, connector, receptor_type=None, label=None):
        calls["receptor_type"], calls["label"] = receptor_type, label
        return connector

    fake = types.SimpleNamespace(__name__="pyNN.spiNNaker", FromListConnector=FromListConnector, Projection=Projection)
    pop = types.SimpleNamespace(size=4, celltype=types.SimpleNamespace(conductance_based=False))
    connect_arrays(fake, pop, pop, np.array([0, 3]), np.array([1, 2]), np.array([-0.5, -1.5]), np.array([1.0, 4.0]),
                   "inhibitory", label="x")
    np.testing.assert_array_equal(calls["conn_list"], [[0, 1, -0.5, 1.0], [3, 2, -1.5, 4.0]])
    assert calls["conn_list"].dtype == np.float64
    assert calls["column_names"] == ("weight", "delay")
    assert (calls["receptor_type"], calls["label"]) == ("inhibitory", "x")
