"""Build time of PyNN projections on NEST: direct nest.Connect, PyNN's FromListConnector, the shim.

    .venv/bin/python benchmarks/bench_spinnaker_build.py [--synapses 1000000] [--cells 1000]
        [--repeats 3] [--skip-slow]

(keep the venv's bin/ off PATH, or PyNN tries to build its NEST extensions at import.)

Builds the same synapses three ways, each after a fresh ``sim.setup`` (NEST kernel reset):
``--cells`` spike sources onto ``--cells`` IF_curr_delta cells, ``--synapses`` distinct
(pre, post) pairs drawn at random (all of them at the default 1000 x 1000 = 1M), random
weights, integer delays of 1-5 ms, half of the synapses inhibitory (negative weights on the
"inhibitory" receptor), so two projections per way:

(a) ``nest.Connect`` of flat arrays (``one_to_one`` rule: NEST's ``connect_arrays``) onto
    the NEST nodes of PyNN populations: the baseline;
(b) ``sim.Projection(pre, post, sim.FromListConnector(array))``: PyNN 0.13 as shipped,
    which connects one target neuron at a time (``--skip-slow`` leaves it out);
(c) ``fs_hw_spinnaker.pynn_compat.connect_arrays``: a PyNN Projection made by one
    vectorised ``nest.Connect``.

Only the connection step is timed (population creation is not). (a) and (c) are timed
``--repeats`` times (the minimum is reported), (b) once. Wall and CPU seconds both, since a
shared machine's wall time wanders. Each build is checked to have made the requested number of
connections; the shim's connections are checked equal to the baseline's (sources, targets,
weights and delays, as multisets).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("PYNEST_QUIET", "1")  # before nest is imported

try:
    from fs_hw_spinnaker.pynn_compat import connect_arrays
except ImportError:  # the backend package is not installed: use the tree
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "backends" / "spinnaker"))
    from fs_hw_spinnaker.pynn_compat import connect_arrays


def make_synapses(n_syn: int, cells: int, seed: int) -> list[tuple]:
    """Two halves (excitatory, inhibitory) of (pre_idx, post_idx, weights, delays, receptor)."""
    if n_syn > cells * cells:
        raise SystemExit(f"--synapses {n_syn} > cells**2 = {cells * cells} (pairs are distinct)")
    rng = np.random.default_rng(seed)
    flat = np.arange(cells * cells) if n_syn == cells * cells else rng.choice(cells * cells, n_syn, replace=False)
    rng.shuffle(flat)
    pre_idx, post_idx = np.divmod(flat, cells)
    weights = rng.uniform(0.01, 1.0, n_syn)
    delays = rng.integers(1, 6, n_syn).astype(np.float64)
    half = n_syn // 2
    return [
        (pre_idx[:half], post_idx[:half], weights[:half], delays[:half], "excitatory"),
        (pre_idx[half:], post_idx[half:], -weights[half:], delays[half:], "inhibitory"),
    ]


def fresh_network(sim, cells: int):
    sim.setup(timestep=1.0, min_delay=1.0, max_delay=8.0, spike_precision="on_grid")
    pre = sim.Population(cells, sim.SpikeSourceArray(spike_times=[5.0]))
    post = sim.Population(cells, sim.IF_curr_delta(v_rest=0.0, v_reset=0.0, v_thresh=1.0, tau_m=0.1))
    return pre, post


def build_direct(sim, nest, pre, post, halves):
    pre_ids = pre.all_cells.astype(np.int64)  # PyNN's IDs are the NEST node ids
    post_ids = post.all_cells.astype(np.int64)
    for pre_idx, post_idx, w, d, _ in halves:
        nest.Connect(pre_ids[pre_idx], post_ids[post_idx], {"rule": "one_to_one"},
                     {"synapse_model": "static_synapse", "weight": w, "delay": d})


def build_pynn(sim, nest, pre, post, halves):
    for pre_idx, post_idx, w, d, receptor in halves:
        conn = sim.FromListConnector(np.column_stack([pre_idx, post_idx, w, d]), column_names=("weight", "delay"))
        sim.Projection(pre, post, conn, receptor_type=receptor)


def build_shim(sim, nest, pre, post, halves):
    for pre_idx, post_idx, w, d, receptor in halves:
        connect_arrays(sim, pre, post, pre_idx, post_idx, w, d, receptor)


def all_connections(nest) -> np.ndarray:
    """Every connection in the kernel as sorted rows (source, target, weight, delay)."""
    got = nest.GetConnections().get(["source", "target", "weight", "delay"])
    rows = np.column_stack([got["source"], got["target"], got["weight"], got["delay"]]).astype(np.float64)
    return rows[np.lexsort(rows.T[::-1])]


def timed(sim, nest, build, cells, halves, n_syn, repeats, keep=False):
    best_wall = best_cpu = float("inf")
    rows = None
    for r in range(repeats):
        pre, post = fresh_network(sim, cells)
        wall0, cpu0 = time.perf_counter(), time.process_time()
        build(sim, nest, pre, post, halves)
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        made = nest.GetKernelStatus("num_connections")
        if made != n_syn:
            raise SystemExit(f"{build.__name__}: made {made} connections, not {n_syn}")
        best_wall, best_cpu = min(best_wall, wall), min(best_cpu, cpu)
        if keep and r == repeats - 1:
            rows = all_connections(nest)
    return best_wall, best_cpu, rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--synapses", type=int, default=1_000_000)
    ap.add_argument("--cells", type=int, default=1000, help="pre and post population size")
    ap.add_argument("--repeats", type=int, default=3, help="repeats of (a) and (c); the minimum is reported")
    ap.add_argument("--skip-slow", action="store_true", help="leave out (b), PyNN's FromListConnector")
    ap.add_argument("--no-check", action="store_true", help="skip the equality check of (c) against (a)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--network", default=None,
                    help="also time the backend's whole PyNN build (build_model) of this .fsnet against a direct "
                         "nest.Create + nest.Connect of the same cells and synapses (default: the bundled MLP; "
                         "'none' to skip)")
    ap.add_argument("--spinnaker", action="store_true",
                    help="also map that network on sPyNNaker's virtual board and report seconds per million synapses")
    args = ap.parse_args(argv)

    import logging
    import warnings

    warnings.filterwarnings("ignore")
    import nest
    import pyNN
    import pyNN.nest as sim

    logging.getLogger("PyNN").setLevel(logging.ERROR)  # "NEST does not allow setting an initial value for v"

    nest.set_verbosity("M_ERROR")
    halves = make_synapses(args.synapses, args.cells, args.seed)
    n = args.synapses
    print(f"{n} synapses ({n // 2} excitatory + {n - n // 2} inhibitory), {args.cells} -> {args.cells} cells, "
          f"NEST {nest.__version__}, PyNN {pyNN.__version__}")

    results = {}
    check = not args.no_check
    wall, cpu, direct_rows = timed(sim, nest, build_direct, args.cells, halves, n, args.repeats, keep=check)
    results["(a) direct nest.Connect (flat arrays)"] = (wall, cpu)
    if not args.skip_slow:
        wall, cpu, _ = timed(sim, nest, build_pynn, args.cells, halves, n, 1)
        results["(b) PyNN FromListConnector"] = (wall, cpu)
    wall, cpu, shim_rows = timed(sim, nest, build_shim, args.cells, halves, n, args.repeats, keep=check)
    results["(c) pynn_compat.connect_arrays"] = (wall, cpu)
    if check:
        if not np.array_equal(direct_rows[:, 1:], shim_rows[:, 1:]) or not np.array_equal(
                direct_rows[:, 0], shim_rows[:, 0]):
            raise SystemExit("the shim's connections differ from the direct nest.Connect's")
        print("check: the shim's connections equal the direct nest.Connect's (source, target, weight, delay)")

    base_wall, base_cpu = results["(a) direct nest.Connect (flat arrays)"]
    print(f"\n{'way':40s} {'wall s':>9s} {'cpu s':>9s} {'wall ratio':>11s} {'cpu ratio':>10s}")
    for name, (wall, cpu) in results.items():
        print(f"{name:40s} {wall:9.3f} {cpu:9.3f} {wall / base_wall:10.2f}x {cpu / base_cpu:9.2f}x")
    shim_wall, _ = results["(c) pynn_compat.connect_arrays"]
    print(f"\nratio shim / direct nest.Connect: {shim_wall / base_wall:.2f}x")
    if "(b) PyNN FromListConnector" in results:
        print(f"speed-up shim over PyNN FromListConnector: {results['(b) PyNN FromListConnector'][0] / shim_wall:.1f}x")
    if args.network != "none":
        backend_build(sim, nest, args.network, args.spinnaker)


def backend_build(sim, nest, network_path, spinnaker: bool) -> None:
    """The backend's own build of a network (populations, core-sized parts, projections)
    against a direct NEST build of the same cells and synapses, in one run."""
    from fs_hw_spinnaker.build import build_model
    from fs_hw_spinnaker.nest_runner import setup

    from fs_hw.backend import get_backend
    from fs_hw.ir.io import load_network

    path = network_path or str(Path(__file__).resolve().parents[1] / "fs_hw" / "examples" / "fashion_mlp.fsnet")
    backend = get_backend("spinnaker")
    art = backend.lower(backend.quantize(load_network(path), {}), {})
    u = art.payload
    n_syn = sum(len(g) for g in u.groups)
    ticks = [np.array([5], np.int64)] * u.layers[u.input].cells

    def direct():
        setup(sim, 1.0, u.max_delay)
        ids = {}
        for name, layer in u.layers.items():
            model = "spike_generator" if layer.kind in ("input", "bias") else "iaf_psc_delta"
            ids[name] = np.asarray(nest.Create(model, layer.cells).tolist(), np.int64)
        for g in u.groups:
            nest.Connect(ids[g.pre][g.pre_idx], ids[g.post][g.post_idx], {"rule": "one_to_one"},
                         {"synapse_model": "static_synapse", "weight": g.weight / 2.0**15,
                          "delay": g.delay.astype(np.float64)})

    def backend_model():
        setup(sim, 1.0, u.max_delay)
        build_model(sim, u, ticks, 1, 1.0, connect=connect_arrays, cells_per_population=256)

    times = {}
    for name, fn in (("direct NEST (Create + Connect)", direct), ("backend build_model (PyNN)", backend_model)):
        best = float("inf")
        for _ in range(2):
            t0 = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t0)
        times[name] = best
    print(f"\nbackend build of {Path(path).name}: {n_syn} synapses, "
          f"{sum(ly.cells for ly in u.layers.values())} cells")
    for name, t in times.items():
        print(f"{name:40s} {t:9.3f} s")
    ratio = times["backend build_model (PyNN)"] / times["direct NEST (Create + Connect)"]
    print(f"ratio backend build / direct NEST build: {ratio:.2f}x")
    if spinnaker:
        from fs_hw_spinnaker.spinnaker_runner import map_artifact

        from fs_hw.data import load_dataset

        x, _ = load_dataset(art.network.metadata.get("dataset", "fashion-mnist"), "test")
        x = x[:1]
        t0 = time.perf_counter()
        map_artifact(art, x)
        wall = time.perf_counter() - t0
        print(f"sPyNNaker virtual-board mapping: {wall:.1f} s wall (child process, import included), "
              f"{wall / (n_syn / 1e6):.1f} s per million synapses")


if __name__ == "__main__":
    main()
