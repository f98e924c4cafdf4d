r"""Fast PyNN ``Projection`` building from flat arrays: an isolated compatibility shim.

Why it exists
-------------
The SpiNNaker backend builds its networks through PyNN, and tests them on PyNN's NEST
backend (the one simulator that runs here). PyNN 0.13's NEST backend connects one target
neuron at a time: every connector ends in ``pyNN.nest.projections.Projection.
_convergent_connect``, which calls ``NodeCollection.tolist()`` and ``nest.Connect`` once per
target. For 1M synapses (1000x1000, per-synapse weights, delays 1-5 ms) that took 45-80 s
wall (about 20 s CPU) with ``FromListConnector``, ``ArrayConnector`` and
``AllToAllConnector`` alike, about 72 % of it in ``NodeCollection.tolist()``; one
``nest.Connect`` on flat arrays (NEST's ``connect_arrays``) builds the same synapses in
about 1 s. On a quieter machine ``benchmarks/bench_spinnaker_build.py`` measured 8-15 s for
``FromListConnector``, 0.14-0.19 s for the direct ``nest.Connect`` and 0.21-0.24 s (1.3-1.6x
the direct call) for this shim; most of the difference is the synapse label, which NEST's
``connect_arrays`` sets connection by connection.

What it does
------------
:func:`connect_arrays` is the backend's only way to make a projection. On ``pyNN.nest``
it still creates an ordinary ``sim.Projection`` (same class, same synapse model
``static_synapse_lbl``, same synapse label), but hands it a connector
(:class:`FlatArrayConnector`, built on first use) whose ``connect`` makes every
connection with one vectorised ``nest.Connect`` and fills in the bookkeeping the
projection reads later (its set of source node ids, the stale-connection flag). Nothing
in PyNN is patched or monkey-patched. On any other simulator (sPyNNaker) it falls back
to ``sim.Projection(pre, post, sim.FromListConnector(array), receptor_type=...)`` with a
float array of columns ``(i, j, weight, delay)``, which sPyNNaker takes as is (it splits
the columns with numpy; no Python loop per connection): 0.1 s for 1M synapses, against
0.8 s when the same synapses go in as a list of tuples.

Units and signs (the same arrays go to both simulators)
-------------------------------------------------------
Weights are in PyNN's unit for the target cell: nA for current-based cells (``IF_curr_exp``),
uS for conductance-based ones and, for ``IF_curr_delta``, the unit of each simulator's
delta input:

* ``pyNN.nest``: ``IF_curr_delta`` is NEST's ``iaf_psc_delta``, whose weight is a voltage
  jump in mV. PyNN multiplies every static weight by 1000 (nA -> pA,
  ``StaticSynapse.translations``) and then by the cell's ``receptor_scale = 1e-3``
  (``pyNN/nest/standardmodels/cells.py``: "synaptic weight is in mV"), so NEST holds
  ``(w * 1000) * 0.001``, which is *not* always ``w`` (0.7 becomes 0.7000000000000001; 14 %
  of uniform random weights differ in the last bit). This shim multiplies by the product of
  the two factors, which is exactly 1.0, so NEST holds the double that was given, bit for
  bit. Other cells get ``w * 1000`` (pA or nS), as through PyNN.
* sPyNNaker: no weight scaling on the host. ``IF_curr_delta``'s input (``input_type_delta.h``)
  divides the summed weight by the time step and feeds it to the LIF closed form as a
  current, so a weight ``w`` raises the membrane by
  :math:`w \cdot \tau_m / (c_m\, \Delta t) \cdot (1 - e^{-\Delta t/\tau_m})` mV, not ``w``
  mV; the caller picks ``cm`` to make that factor 1 (see docs/notes).

Signs follow PyNN's own check (``pyNN.standardmodels.base.check_weights``): weights on the
``"excitatory"`` receptor and all conductance-based weights are ``>= 0``; weights on the
``"inhibitory"`` receptor of a *current-based* cell are ``<= 0``. :func:`connect_arrays`
raises ``ValueError`` otherwise. This convention is the one that works on both simulators:

* ``pyNN.nest`` passes current-based weights to NEST unchanged, and NEST's ``iaf_psc_*``
  models pick the receptor from the *sign* of the weight (PyNN passes no receptor port
  for them). A positive weight on PyNN's "inhibitory" receptor would excite; PyNN's
  ``FromListConnector`` does not check and lets it through silently (its
  ``AllToAllConnector`` raises "Weights must be negative for current-based, inhibitory
  synapses"). For conductance-based cells PyNN negates inhibitory weights itself; so
  does this shim.
* sPyNNaker stores ``|w|`` (``numpy.abs`` in ``synapse_dynamics_static.py``) in the
  receptor's ring buffer, and the LIF update computes ``exc - inh``, so the receptor
  alone sets the sign: ``-0.5`` on "inhibitory" inhibits by 0.5; ``-0.5`` on
  "excitatory" would excite.

Delays are in ms; NEST and sPyNNaker both round them to the time step, so pass multiples
of it (``setup(min_delay=..., max_delay=...)`` must cover them on NEST).

What works on a projection made on NEST by this shim
----------------------------------------------------
Checked by ``backends/spinnaker/tests/test_pynn_compat.py``:

* the connections themselves, read back with ``nest.GetConnections`` (exact);
* ``len(proj)``; ``proj.get(["weight", "delay"], format="list")`` and
  ``format="array"`` (PyNN's code, unchanged; for ``format="array"`` PyNN loops in Python
  over every connection, about 1 s per 100k synapses); ``proj.set(...)`` goes through
  PyNN's ``_set_attributes`` as usual;
* ``proj.get("weight")`` reports NEST's weight times 0.001, which for ``IF_curr_delta`` is
  *not* the mV value given (1.5 mV is reported as 0.0015): PyNN 0.13 does not undo
  ``receptor_scale`` on reading, for projections built through its own connectors too.

What does not: MPI distribution is not handled specially (NEST's ``connect_arrays``
creates only the connections whose targets are local, so it is correct, but untested);
PopulationView and Assembly targets, native NEST cell types with receptor ports and
synapse types other than PyNN's default ``StaticSynapse`` are not supported by the fast
path (``TypeError``); the connector cannot be reused for a
second projection with other populations, and ``describe()`` reports only its size.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

__all__ = ["connect_arrays", "is_pynn_nest", "nest_weight_factor"]

_RECEPTORS = ("excitatory", "inhibitory")


def is_pynn_nest(sim: Any) -> bool:
    """Whether ``sim`` is PyNN's NEST backend (``pyNN.nest``), judged without importing it."""
    module = getattr(getattr(sim, "Projection", None), "__module__", "") or ""
    return getattr(sim, "__name__", "") == "pyNN.nest" or module.startswith("pyNN.nest.")


def nest_weight_factor(post: Any, synapse_type: Any) -> float:
    """The factor pyNN.nest puts between a PyNN weight and NEST's weight, as one float.

    PyNN applies the synapse's translation (1000 for ``StaticSynapse``: nA -> pA) and then
    the cell's ``receptor_scale`` (1e-3 for ``IF_curr_delta``: NEST's delta weight is in mV)
    one after the other; their product, computed once here, is exactly 1.0 for
    ``IF_curr_delta`` (``1000.0 * 1e-3 == 1.0`` in IEEE doubles).
    """
    from pyNN.parameters import ParameterSpace

    ps = ParameterSpace({"weight": 1.0, "delay": 1.0}, schema=synapse_type.get_schema(), shape=(1,))
    native = synapse_type.translate(ps)
    native.evaluate(simplify=True)
    factor = float(native["weight"])
    return factor * float(getattr(post.celltype, "receptor_scale", 1.0))


def _check(pre, post, pre_idx, post_idx, weights, delays, receptor_type) -> tuple[np.ndarray, ...]:
    pre_idx = np.asarray(pre_idx)
    post_idx = np.asarray(post_idx)
    weights = np.asarray(weights, dtype=np.float64)
    delays = np.asarray(delays, dtype=np.float64)
    n = pre_idx.shape[0] if pre_idx.ndim == 1 else -1
    if not all(a.ndim == 1 and a.shape[0] == n for a in (pre_idx, post_idx, weights, delays)):
        raise ValueError("pre_idx, post_idx, weights and delays must be 1-D arrays of one length")
    for name, idx, pop in (("pre_idx", pre_idx, pre), ("post_idx", post_idx, post)):
        if n and not np.issubdtype(idx.dtype, np.integer):
            raise TypeError(f"{name} must hold integers, not {idx.dtype}")
        if n and (idx.min() < 0 or idx.max() >= pop.size):
            raise IndexError(f"{name} out of range for a population of {pop.size}")
    if receptor_type not in _RECEPTORS:
        raise ValueError(f"receptor_type must be one of {_RECEPTORS}, not {receptor_type!r}")
    if n and not (np.all(np.isfinite(weights)) and np.all(np.isfinite(delays))):
        raise ValueError("weights and delays must be finite")
    conductance = bool(getattr(post.celltype, "conductance_based", False))
    if n and (receptor_type == "excitatory" or conductance) and weights.min() < 0:
        raise ValueError(f"weights on the {receptor_type} receptor of {type(post.celltype).__name__} must be >= 0")
    if n and receptor_type == "inhibitory" and not conductance and weights.max() > 0:
        raise ValueError("weights on the inhibitory receptor of a current-based cell must be <= 0 (PyNN convention)")
    return pre_idx.astype(np.int64, copy=False), post_idx.astype(np.int64, copy=False), weights, delays


@functools.cache
def _flat_array_connector_class() -> type:
    """:class:`FlatArrayConnector`, defined on first use so that importing this module needs no PyNN."""
    import nest
    from pyNN.connectors import Connector

    class FlatArrayConnector(Connector):
        """A PyNN connector for ``pyNN.nest`` that makes all its connections in one ``nest.Connect``.

        ``pre_idx``/``post_idx`` index the populations; ``weights`` are in PyNN units (checked and
        converted by :func:`connect_arrays`, which is the way to use it); ``delays`` in ms.
        """

        parameter_names = ("n_connections",)

        def __init__(self, pre_idx, post_idx, weights, delays):
            super().__init__(safe=False)
            self.pre_idx, self.post_idx = pre_idx, post_idx
            self.weights, self.delays = weights, delays
            self.n_connections = int(pre_idx.shape[0])

        def connect(self, projection) -> None:
            from pyNN.common import Population
            from pyNN.nest.standardmodels.synapses import StaticSynapse

            pre, post = projection.pre, projection.post
            for role, pop in (("pre", pre), ("post", post)):
                if not isinstance(pop, Population):
                    raise TypeError(f"the fast path needs a Population as {role}, not {type(pop).__name__}")
            if type(projection.synapse_type) is not StaticSynapse:
                raise TypeError("the fast path makes StaticSynapse projections only")
            if not post.celltype.standard_receptor_type:  # NEST multi-receptor models: not needed, untested
                raise TypeError(f"the fast path needs a standard PyNN cell type, not {type(post.celltype).__name__}")
            if self.n_connections == 0:
                return
            factor = nest_weight_factor(post, projection.synapse_type)
            if projection.receptor_type == "inhibitory" and post.conductance_based:
                factor = -factor  # as pyNN.nest: NEST wants negative inhibitory conductances
            weights = self.weights if factor == 1.0 else self.weights * factor
            # node ids from PyNN's ID objects (ints): NodeCollection.tolist() takes ~10 ms per 1000
            pre_ids = pre.all_cells.astype(np.int64)
            post_ids = post.all_cells.astype(np.int64)
            sources = pre_ids[self.pre_idx]
            syn_spec = {
                "synapse_model": projection.nest_synapse_model,
                # per connection: NEST's connect_arrays sets extra keys one connection at a time,
                # about 0.15 s per million; making it the model's default instead would be faster,
                # but NEST cannot set that default back to "unlabelled" (-1) afterwards
                "synapse_label": projection.nest_synapse_label,
                "weight": np.ascontiguousarray(weights, dtype=np.float64),
                "delay": np.ascontiguousarray(self.delays, dtype=np.float64),
            }
            nest.Connect(sources, post_ids[self.post_idx], {"rule": "one_to_one"}, syn_spec)
            # what PyNN's _convergent_connect records: the sources (read by nest_connections,
            # get, set) and a stale connection cache
            used = np.zeros(pre_ids.shape[0], dtype=bool)
            used[self.pre_idx] = True
            projection._sources.update(pre_ids[used].tolist())
            projection._connections = None
            projection._simulator.state.stale_connection_cache = True

    return FlatArrayConnector


def connect_arrays(sim, pre, post, pre_idx, post_idx, weights, delays, receptor_type: str, label=None):
    """Make a PyNN ``Projection`` from ``pre`` to ``post`` with one synapse per array entry.

    Parameters
    ----------
    sim : module
        The PyNN simulator module (``pyNN.nest`` or ``pyNN.spiNNaker``), set up.
    pre, post : Population
        PyNN populations.
    pre_idx, post_idx : int arrays
        Indices within ``pre`` and ``post`` (not node ids); repeated pairs make several synapses.
    weights : float array
        PyNN units: mV-per-spike input for ``IF_curr_delta`` (see the module docstring for
        what that means on each simulator), nA/uS otherwise; ``>= 0`` on ``"excitatory"``,
        ``<= 0`` on ``"inhibitory"`` of current-based cells, ``>= 0`` for conductances.
    delays : float array
        Milliseconds, multiples of the time step.
    receptor_type : {"excitatory", "inhibitory"}
    label : str, optional
        The projection's label.

    Returns the ``sim.Projection``. On ``pyNN.nest`` NEST then holds, for entry ``k``, a
    ``static_synapse_lbl`` from ``pre[pre_idx[k]]`` to ``post[post_idx[k]]`` with the weight
    ``weights[k]`` (times 1000 except for ``IF_curr_delta``, where it is the same double) and
    the delay ``delays[k]``; elsewhere the arrays go through ``FromListConnector`` unchanged.
    Raises ``ValueError``/``IndexError``/``TypeError`` on malformed input or a wrong sign.
    """
    pre_idx, post_idx, weights, delays = _check(pre, post, pre_idx, post_idx, weights, delays, receptor_type)
    if is_pynn_nest(sim):
        connector = _flat_array_connector_class()(pre_idx, post_idx, weights, delays)
    elif pre_idx.shape[0] == 0:  # sPyNNaker takes an empty list only without column names
        connector = sim.FromListConnector([])
    else:
        columns = np.empty((pre_idx.shape[0], 4), dtype=np.float64)
        columns[:, 0], columns[:, 1], columns[:, 2], columns[:, 3] = pre_idx, post_idx, weights, delays
        connector = sim.FromListConnector(columns, column_names=("weight", "delay"))
    return sim.Projection(pre, post, connector, receptor_type=receptor_type, label=label)
