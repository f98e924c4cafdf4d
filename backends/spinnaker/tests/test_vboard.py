"""sPyNNaker's virtual board through fs_hw_spinnaker.vboard: mapping reports, resource refusal.

The build functions are module-level so that ``isolate=True`` can pickle them for the child
interpreter (the child gets this process's ``sys.path``, which holds this folder).
"""

from __future__ import annotations

import functools
import logging
import math
import os
import signal
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("spynnaker")

try:
    import fs_hw_spinnaker.vboard  # noqa: F401
except ImportError:  # the backend is not installed: use the source tree
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fs_hw_spinnaker.vboard import (
    MachineSpec,
    MappingReport,
    check_fits,
    cores_per_population,
    estimate_cores,
    map_on_virtual_board,
    native_delay_slots,
    predicted_ring_buffer_shift,
)

from fs_hw.errors import ResourceError

N_EXC, N_INH, N_IN = 300, 100, 50
#: neurons per core given to map_on_virtual_board; "inh" asks for its own
NPC, NPC_INH = 64, 32
#: max_expected_summed_weight per population (excitatory, inhibitory): exact powers of two
#: (4.0), numbers below one (0.5) and in between, to exercise sPyNNaker's rule
MESW = {"exc": [4.0, 3.0], "inh": [0.5, 100.0]}
CELL = {"tau_m": 0.001, "cm": 0.001, "v_rest": 0.0, "v_reset": 0.0, "v_thresh": 1.0, "tau_refrac": 1.0}


def small_network(sim, seed: int = 0) -> None:
    """Two IF_curr_delta populations, a spike source, FromListConnector projections with
    delays of 1-10 ms; negative weights stay on the inhibitory receptor."""
    rng = np.random.default_rng(seed)
    exc = sim.Population(N_EXC, sim.IF_curr_delta(**CELL), label="exc",
                         additional_parameters={"max_expected_summed_weight": MESW["exc"]})
    inh = sim.Population(N_INH, sim.IF_curr_delta(**CELL), label="inh",
                         additional_parameters={"max_expected_summed_weight": MESW["inh"],
                                                "neurons_per_core": NPC_INH})
    src = sim.Population(N_IN, sim.SpikeSourceArray(spike_times=[[1.0 + i % 7, 20.0] for i in range(N_IN)]),
                         label="input")

    def conns(n_pre, n_post, n, sign):
        pre, post = rng.integers(0, n_pre, n), rng.integers(0, n_post, n)
        w = sign * rng.uniform(0.1, 1.0, n).round(3)
        d = rng.integers(1, 11, n).astype(float)  # whole ticks, 1-10 ms
        return np.column_stack([pre, post, w, d])

    sim.Projection(src, exc, sim.FromListConnector(conns(N_IN, N_EXC, 400, +1)), receptor_type="excitatory")
    sim.Projection(exc, inh, sim.FromListConnector(conns(N_EXC, N_INH, 600, +1)), receptor_type="excitatory")
    sim.Projection(inh, exc, sim.FromListConnector(conns(N_INH, N_EXC, 600, -1)), receptor_type="inhibitory")
    sim.Projection(src, inh, sim.FromListConnector(conns(N_IN, N_INH, 100, -1)), receptor_type="inhibitory")


def many_populations(sim, n_pops: int = 80, size: int = 100) -> None:
    """n_pops unconnected populations: at 10 neurons per core, 800 cores > 759 of one board."""
    for i in range(n_pops):
        sim.Population(size, sim.IF_curr_delta(), label=f"P{i}")


def delayed_network(sim) -> None:
    """A -> B with 40-tick delays: B's cores (300 cells, 256 per core) hold 32 delay slots,
    so A gets a delay extension split like A."""
    a = sim.Population(300, sim.IF_curr_delta(), label="A")
    b = sim.Population(300, sim.IF_curr_delta(), label="B")
    s = sim.Population(20, sim.SpikeSourceArray(spike_times=[[1.0]] * 20), label="S")
    sim.Projection(s, a, sim.FromListConnector([(i, i, 1.0, 2.0) for i in range(20)]), receptor_type="excitatory")
    sim.Projection(a, b, sim.FromListConnector([(i, i, 1.0, 40.0) for i in range(300)]),
                   receptor_type="excitatory")


def _listing(path: Path) -> set[str]:
    return {p.name for p in path.iterdir()} if path.is_dir() else set()


def _real_config_places() -> list[Path]:
    home = Path.home()
    xdg = Path(os.environ.get("XDG_CONFIG_HOME") or home / ".config")
    return [home / ".spynnaker.cfg", xdg / ".spynnaker.cfg"]


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """The small network mapped once (isolated), from an empty working folder; what the real
    HOME and the working folder held before and after."""
    cwd = tmp_path_factory.mktemp("cwd")
    reports = tmp_path_factory.mktemp("vboard") / "small"
    home = Path.home()
    before = _listing(home)
    old = os.getcwd()
    os.chdir(cwd)
    try:
        report = map_on_virtual_board(small_network, report_dir=reports, run_ms=50.0, neurons_per_core=NPC)
    finally:
        os.chdir(old)
    return {"report": report, "cwd": cwd, "home_before": before, "home_after": _listing(home)}


# --------------------------------------------------------------------------- no sPyNNaker run


def test_machine_spec_sizes():
    one = MachineSpec()
    assert (one.size, one.n_boards, one.n_chips, one.n_cores, one.application_cores) == ((8, 8), 1, 48, 856, 759)
    assert MachineSpec(version=5, width=8, height=8).n_chips == 48
    assert (MachineSpec(version=3).size, MachineSpec(version=3).application_cores) == ((2, 2), 63)
    # spalloc sizes: 12k (wrap-around) or 12k+4; a 12a(+4) x 12b(+4) machine has 3ab boards
    for w, h, boards in [(12, 12, 3), (16, 16, 3), (24, 12, 6), (28, 16, 6), (52, 52, 48)]:
        spec = MachineSpec(width=w, height=h)
        assert (spec.n_boards, spec.n_chips, spec.application_cores) == (boards, 48 * boards, 759 * boards)
    assert MachineSpec.from_boards(1) == MachineSpec()
    assert MachineSpec.from_boards(3).size == (16, 16)
    assert MachineSpec.from_boards(4).size == (28, 16)
    assert MachineSpec.from_boards(4).n_boards >= 4


@pytest.mark.parametrize("kwargs, match", [
    ({"version": 4}, "version 5"),
    ({"version": 201}, "SpiNNaker-2"),
    ({"version": "5"}, "must be an int"),
    ({"width": 12}, "both width and height"),
    ({"width": 0, "height": 12}, "positive"),
    ({"width": 8, "height": 12}, "8 x 8"),
    ({"width": 4, "height": 4}, "8 x 8"),
    ({"width": 20, "height": 12}, "width 20 is not a spalloc machine size"),
    ({"width": 12, "height": 18}, "height 18"),
    ({"width": 300, "height": 12}, "8-bit"),
    ({"version": 3, "width": 8, "height": 8}, "2 x 2"),
    ({"width": 12.0, "height": 12}, "must be an int"),
])
def test_machine_spec_rejects_impossible_sizes(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MachineSpec(**kwargs)


def test_estimates_and_refusal_before_running():
    pops = {"a": 300, "b": 100, "c": 256}
    assert cores_per_population(pops) == {"a": 2, "b": 1, "c": 1}
    assert cores_per_population(pops, 64) == {"a": 5, "b": 2, "c": 4}
    assert cores_per_population(pops, 1000) == cores_per_population(pops)  # capped at 256
    assert estimate_cores(pops, 64, sources={"in": 5000}) == 12
    assert estimate_cores(pops, 64, sources={"in": 5}, delay_extensions=["a", "in"]) == 12 + 5 + 1
    with pytest.raises(ValueError, match="no such population"):
        estimate_cores(pops, 64, delay_extensions=["zz"])
    with pytest.raises(ValueError, match="neurons_per_core"):
        estimate_cores(pops, 0)
    big = {f"P{i}": 100 for i in range(80)}
    big["huge"] = 5000
    with pytest.raises(ResourceError, match=r"needs 1300 application cores.*'huge'.*500 cores.*offers 759"):
        check_fits(big, MachineSpec(), 10)
    assert check_fits(big, MachineSpec(width=16, height=16), 10) == 1300
    assert isinstance(ResourceError("x"), ValueError)


def test_native_delay_slots_and_shift_rule():
    assert [native_delay_slots(n) for n in (256, 255, 128, 100, 64, 1)] == [32, 32, 64, 64, 128, 4096]
    assert [predicted_ring_buffer_shift(w) for w in (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 100.0, 128.0)] == \
        [0, 0, 1, 1, 2, 2, 3, 3, 7, 8]


def test_isolated_build_must_be_picklable_by_reference(tmp_path):
    with pytest.raises(TypeError, match="pickle"):
        map_on_virtual_board(lambda sim: None, report_dir=tmp_path, run_ms=1.0)

    def in_main(sim):
        pass

    in_main.__module__ = "__main__"
    with pytest.raises(TypeError, match="__main__"):
        map_on_virtual_board(in_main, report_dir=tmp_path, run_ms=1.0)
    with pytest.raises(ValueError, match="run_ms"):
        map_on_virtual_board(small_network, report_dir=tmp_path, run_ms=0.0)


def test_in_process_refuses_a_local_spynnaker_cfg(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "spynnaker.cfg").write_text("[Machine]\nversion = 3\n")
    with pytest.raises(ValueError, match="spynnaker.cfg exists"):
        map_on_virtual_board(small_network, report_dir=tmp_path / "r", run_ms=1.0, isolate=False)


# --------------------------------------------------------------------------- mappings


def test_small_network_maps(small):
    r: MappingReport = small["report"]
    assert r.isolated
    spec = MachineSpec()
    assert (r.board_width, r.board_height) == spec.size
    assert (r.board_chips, r.board_cores, r.board_application_cores) == (spec.n_chips, spec.n_cores,
                                                                          spec.application_cores)
    assert list(r.populations) == ["exc", "inh", "input"]
    exc, inh, src = (r.populations[k] for k in ("exc", "inh", "input"))
    assert (exc.kind, inh.kind, src.kind) == ("neurons", "neurons", "source")
    for pop, n, per in ((exc, N_EXC, NPC), (inh, N_INH, NPC_INH)):
        assert pop.max_atoms_per_core == per
        assert pop.n_cores == math.ceil(n / per) == len(pop.cores) == len(pop.atoms_per_core)
        assert sum(pop.atoms_per_core) == n and max(pop.atoms_per_core) == per
    assert (src.n_cores, src.atoms_per_core, src.max_atoms_per_core) == (1, [N_IN], None)
    # the estimate made before running agrees with the mapping
    est = estimate_cores({"exc": N_EXC}, NPC) + estimate_cores({"inh": N_INH}, NPC_INH, sources={"input": N_IN})
    assert r.cores_used == est == sum(p.n_cores for p in r.populations.values())
    cores = [c for p in r.populations.values() for c in p.cores]
    assert len(set(cores)) == len(cores) and all(p != 0 for _, _, p in cores)  # core 0 is SCAMP's
    assert r.chips_used == len({(x, y) for x, y, _ in cores}) >= 1
    assert r.system_cores["SCAMP monitor"] == r.board_chips
    assert r.system_cores["ExtraMonitorSupportMachineVertex"] == r.board_chips
    # SDRAM: per core and in total, bytes
    all_sdram = [s for p in r.populations.values() for s in p.sdram_per_core_bytes]
    assert r.sdram_per_core_max_bytes == max(all_sdram) > 0 and r.sdram_total_bytes == sum(all_sdram)
    assert r.sdram_ticks == 50 and r.sdram_per_chip_max_bytes <= r.chip_sdram_bytes
    # routing tables: before and after sPyNNaker's compression
    assert 0 < r.routing_entries_max <= r.routing_entries_total and r.routing_tables >= 1
    assert r.routing_entries_compressed_max is not None
    assert r.routing_entries_compressed_max <= r.routing_entries_max
    assert r.router_capacity == 1023 and "compressor" in r.routing_compression
    assert {"import", "setup", "build", "run", "extract", "end", "total"} <= set(r.timings)
    assert r.timings["fec: Mapping Stage"] > 0 and "Application Placer" in r.algorithm_timings
    for name in ("placement_by_core_using_graph.rpt", "chip_sdram_usage_by_core.rpt",
                 "compressed_routing_summary.rpt", "routing_summary.rpt"):
        assert (r.run_dir / name).is_file(), name
    assert r.log_file.is_file() and "Application Placer" in r.log_file.read_text()


def test_ring_buffer_shifts_follow_max_expected_summed_weight(small):
    r = small["report"]
    for label, weights in MESW.items():
        pop = r.populations[label]
        assert pop.ring_buffer_shifts == [predicted_ring_buffer_shift(w) for w in weights]
        assert pop.weight_scales == [2.0 ** (15 - s) for s in pop.ring_buffer_shifts]
        assert pop.max_delay_slots == native_delay_slots(max(pop.atoms_per_core))
    assert r.populations["exc"].ring_buffer_shifts == [3, 2]
    assert r.populations["inh"].ring_buffer_shifts == [0, 7]
    assert r.populations["input"].ring_buffer_shifts is None


def test_nothing_written_to_cwd_or_real_home(small):
    assert _listing(small["cwd"]) == set()
    new_in_home = small["home_after"] - small["home_before"]
    assert not {n for n in new_in_home if "spynnaker" in n.lower() or n in {"reports", ".config", ".cache"}}
    assert not any(p.exists() for p in _real_config_places())
    r = small["report"]
    assert (r.report_dir.parent.parent / "spynnaker_home" / ".spynnaker.cfg").is_file()


def test_oversized_network_is_refused(tmp_path):
    with pytest.raises(ResourceError, match=r"could not place population 'P\d+'.*needs 800 application cores.*"
                                            r"has 759 on 48 chips"):
        map_on_virtual_board(many_populations, report_dir=tmp_path, run_ms=10.0, neurons_per_core=10)
    # the estimate refuses the same network before anything runs
    with pytest.raises(ResourceError, match="needs 800 application cores"):
        check_fits({f"P{i}": 100 for i in range(80)}, MachineSpec(), 10)


@pytest.mark.slow
def test_larger_machine_takes_what_one_board_cannot(tmp_path):
    spec = MachineSpec(width=16, height=16)
    build = functools.partial(many_populations, n_pops=80, size=100)
    r = map_on_virtual_board(build, report_dir=tmp_path, machine=spec, run_ms=10.0, neurons_per_core=10)
    assert (r.board_chips, r.board_application_cores) == (spec.n_chips, spec.application_cores) == (144, 2277)
    assert r.cores_used == 800 == estimate_cores({f"P{i}": 100 for i in range(80)}, 10)
    assert r.chips_used > 48
    assert r.system_cores["DataSpeedUpPacketGatherMachineVertex"] == spec.n_boards


@pytest.mark.slow
def test_in_process_after_nest_twice_and_state_restored(tmp_path, monkeypatch):
    """In one process: a NEST run, two in-process mappings, NEST again; the caller's
    environment, SIGINT handler, excepthook and root logger come back unchanged."""
    monkeypatch.setenv("PYNEST_QUIET", "1")
    pytest.importorskip("nest")
    import pyNN.nest as nsim

    def nest_spikes():
        nsim.setup(timestep=1.0, min_delay=1.0, max_delay=10.0, spike_precision="on_grid")
        post = nsim.Population(2, nsim.IF_curr_delta(**CELL))
        src = nsim.Population(1, nsim.SpikeSourceArray(spike_times=[3.0, 9.0]))
        nsim.Projection(src, post, nsim.AllToAllConnector(), nsim.StaticSynapse(weight=5.0, delay=2.0))
        post.record("spikes")
        nsim.run(20.0)
        trains = post.get_data().segments[0].spiketrains
        nsim.end()
        return [list(np.asarray(t)) for t in trains]

    first = nest_spikes()
    assert first[0] == [5.0, 11.0]

    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    env = {k: os.environ.get(k) for k in ("HOME", "XDG_CONFIG_HOME", "XDG_CONFIG_DIRS")}
    sigint, hook = signal.getsignal(signal.SIGINT), sys.excepthook
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level

    r1 = map_on_virtual_board(small_network, report_dir=tmp_path / "one", run_ms=20.0, neurons_per_core=NPC,
                              isolate=False)
    r2 = map_on_virtual_board(delayed_network, report_dir=tmp_path / "two", run_ms=20.0, isolate=False,
                              compress_routing=True)
    assert not r1.isolated and r1.cores_used == 5 + 4 + 1
    assert r1.populations["exc"].ring_buffer_shifts == [3, 2]
    # A -> B at 40 ticks exceeds B's 32 native slots: A gets a delay extension split like A
    ext = [p for p in r2.populations.values() if p.kind == "delay_extension"]
    assert [(p.delays_for, p.n_cores) for p in ext] == [("A", 2)]
    assert r2.populations["B"].max_delay_slots == 32 == native_delay_slots(256)
    assert r2.cores_used == estimate_cores({"A": 300, "B": 300}, sources={"S": 20}, delay_extensions=["A"]) == 7
    assert "ran" in r2.routing_compression

    assert {k: os.environ.get(k) for k in env} == env
    assert signal.getsignal(signal.SIGINT) is sigint and sys.excepthook is hook
    assert root.handlers == handlers and root.level == level
    assert _listing(cwd) == set()
    assert nest_spikes() == first
