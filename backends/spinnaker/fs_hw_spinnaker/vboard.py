"""Map a PyNN network on sPyNNaker's virtual board and return what the mapping produced.

:func:`map_on_virtual_board` runs sPyNNaker 7.4.1 (``pyNN.spiNNaker``) on a *virtual*
machine: it partitions, places, routes, allocates keys, compresses routing tables and
generates data specs, but loads and runs nothing (``get_data()`` would be empty). What
the mapping produced comes back as a :class:`MappingReport`.

Where the numbers come from (sPyNNaker's data view, read before ``end()``; text reports
only where no object holds the number):

====================================  ======================================================
placements, cores, chips, atoms/core  ``SpynnakerDataView.iterate_placemements()`` (sic) and
                                      each application vertex's ``machine_vertices`` /
                                      ``vertex_slice`` / ``get_max_atoms_per_core()``
board chips / cores                   ``SpynnakerDataView.get_machine()``; application cores =
                                      ``total_available_user_cores`` minus one monitor per
                                      chip and the ethernet chips' extra gatherer (as in
                                      ``AbstractSpinnakerBase.get_number_of_available_cores_on_machine``)
SDRAM per core / per chip             ``machine_vertex.sdram_required`` (``fixed`` +
                                      ``per_timestep`` x the run's ticks): what the report
                                      ``chip_sdram_usage_by_core.rpt`` prints as "planned"
routing entries before compression    ``SpynnakerDataView.get_uncompressed()``
routing entries after compression     the text report ``compressed_routing_summary.rpt``
                                      (sPyNNaker keeps no compressed tables object on a
                                      virtual board)
ring-buffer shifts, weight scales     ``PopulationVertex.get_ring_buffer_shifts()`` /
                                      ``get_weight_scales()``
native delay slots                    ``PopulationVertex.max_delay_steps``
timings                               wall clock here, and sPyNNaker's own timers
                                      (``GlobalProvenance``: ``category_timer_provenance``,
                                      ``timer_view``)
warnings                              ``GlobalProvenance.retreive_log_messages(WARNING)``
====================================  ======================================================

Facts about sPyNNaker 7.4.1 this module relies on (found by trial, see the tests):

* The user config is ``~/.spynnaker.cfg`` or ``$XDG_CONFIG_HOME/.spynnaker.cfg`` or
  ``$XDG_CONFIG_DIRS``'s first folder + ``/.spynnaker.cfg`` (two present is an error, none
  makes it write one into ``~`` and fail); a ``./spynnaker.cfg`` in the working folder is
  read *after* it and overrides it. This module writes its own config into a private
  HOME under ``report_dir`` and points all three variables there.
* ``[Machine] virtual_board = True`` with ``version = 5`` and *no* width/height is not a
  48-chip board: the virtual machine grows to whatever the partitioned graph needs
  (1000 cores gave 144 chips). So :class:`MachineSpec` always writes ``width``/``height``
  (8 x 8 is one board); only then does a network too big for the board fail.
* A network that does not fit raises ``pacman.exceptions.PacmanPlaceException``
  ("No more chips to start with for <label> Out of 48 ..."); sPyNNaker then shuts
  itself down. This module turns it (and the other placement/routing resource errors)
  into :class:`fs_hw.errors.ResourceError`.
* Neurons per core: ``sim.set_number_of_neurons_per_core(sim.IF_curr_delta, n)`` after
  ``setup`` (reset by every ``setup``) or ``Population(..., additional_parameters=
  {"neurons_per_core": n})`` per population (which wins). A neuron population is capped
  at 256 atoms per core by its (static) synapse dynamics whatever is asked, silently.
  ``SpikeSourceArray`` has no cap (1000 sources map on one core).
* ``additional_parameters={"max_expected_summed_weight": [exc, inh]}`` fixes the
  ring-buffer shifts: ``p = ceil(log2 w)`` (0 for w <= 1), ``p + 1`` when ``2**p <= w``.
* sPyNNaker can map twice in one process and after ``pyNN.nest`` ran (NEST still runs
  after it), but it leaves process-wide state behind: a SIGINT handler that swallows
  Ctrl-C (logs "User has cancelled simulation" instead of raising), ``sys.excepthook``,
  ``logging.basicConfig(INFO)`` plus filters on every root handler, and ``atexit``
  handlers that print its warnings at exit. Hence ``isolate=True`` (the default) runs the
  mapping in a child interpreter; ``isolate=False`` runs it here and puts that state back.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import logging
import math
import os
import pickle
import re
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fs_hw.errors import ResourceError

__all__ = [
    "MachineSpec", "MappingReport", "PopulationMapping", "map_on_virtual_board", "estimate_cores",
    "cores_per_population", "check_fits", "native_delay_slots", "predicted_ring_buffer_shift",
    "NEURON_ATOMS_PER_CORE_CAP",
]

#: sPyNNaker's cap on atoms per core of a neuron population with static synapses
#: (``POP_TABLE_MAX_ROW_LENGTH``; ``AbstractSynapseDynamics.absolute_max_atoms_per_core``)
NEURON_ATOMS_PER_CORE_CAP = 256
#: sPyNNaker's ring-buffer index bits (``MAX_RING_BUFFER_BITS``): atom + synapse-type + delay bits
_RING_BUFFER_BITS = 14

# One SpiNN-5 board (sPyNNaker version 5): 48 chips, 856 cores (chips of 17 or 18 cores).
# Every chip gives one core to SCAMP (the monitor) and one to sPyNNaker's extra monitor;
# the board's ethernet chip also holds a packet gatherer: 856 - 48 - 48 - 1 = 759.
_BOARD_CHIPS = {3: 4, 5: 48}
_BOARD_CORES = {3: 72, 5: 856}
_BOARD_APP_CORES = {3: 72 - 4 - 4 - 1, 5: 856 - 48 - 48 - 1}
#: largest width/height: SpiNNaker's chip coordinates are 8-bit
_MAX_SIDE = 256

_CFG_NAME = ".spynnaker.cfg"
_HOME_DIRNAME = "spynnaker_home"
_LOG_NAME = "spynnaker.log"


# --------------------------------------------------------------------------- the machine


@dataclass(frozen=True)
class MachineSpec:
    """The virtual machine to map on.

    ``MachineSpec()`` is one 48-chip SpiNN-5 board (sPyNNaker ``version = 5``, 8 x 8 chips);
    ``MachineSpec(version=3)`` the 4-chip SpiNN-3 board. A larger (version 5) machine is
    given by ``width`` and ``height`` in chips, as spalloc allocates them: each side a
    multiple of 12 (a wrap-around machine) or a multiple of 12 plus 4 (no wrap-around);
    a ``12a (+4)`` x ``12b (+4)`` machine has ``3ab`` boards. :meth:`from_boards` picks the
    size spalloc (and sPyNNaker's ``size_from_n_boards``) would. Impossible sizes raise
    ``ValueError``.
    """

    version: int = 5
    width: int | None = None
    height: int | None = None

    def __post_init__(self) -> None:
        def bad(problem: str) -> ValueError:
            return ValueError(f"MachineSpec(version={self.version!r}, width={self.width!r}, "
                              f"height={self.height!r}): {problem}")

        if isinstance(self.version, bool) or not isinstance(self.version, int):
            raise bad("version must be an int: 5 (48-chip boards) or 3 (4-chip board)")
        if self.version not in _BOARD_CHIPS:
            raise bad("sPyNNaker 7.4.1 maps PyNN networks on SpiNNaker-1 boards only: version 5 (48-chip "
                      "boards, the default) or 3 (one 4-chip board); 201/248 are SpiNNaker-2 boards")
        if (self.width is None) != (self.height is None):
            raise bad("give both width and height (in chips) or neither")
        if self.width is None:
            return
        for name, side in (("width", self.width), ("height", self.height)):
            if isinstance(side, bool) or not isinstance(side, int):
                raise bad(f"{name} must be an int number of chips")
            if side < 1:
                raise bad(f"{name} must be positive")
            if side > _MAX_SIDE:
                raise bad(f"{name} {side} exceeds {_MAX_SIDE} chips (chip coordinates are 8-bit)")
        w, h = self.width, self.height
        if self.version == 3:
            if (w, h) != (2, 2):
                raise bad("a version 3 board is 2 x 2 chips; use version 5 for larger machines")
            return
        if (w, h) == (8, 8):
            return
        if w <= 8 or h <= 8:
            raise bad("a version 5 machine is 8 x 8 chips (one board) or larger than 8 chips on both sides "
                      "(12k or 12k+4 chips per side)")
        for name, side in (("width", w), ("height", h)):
            if side % 12 not in (0, 4):
                near = sorted({12 * (side // 12), 12 * (side // 12) + 4, 12 * (side // 12) + 12} - {0})
                raise bad(f"{name} {side} is not a spalloc machine size: each side must be a multiple of 12 "
                          f"(wrap-around) or a multiple of 12 plus 4 (no wrap-around), e.g. "
                          f"{', '.join(map(str, near))}")

    @classmethod
    def from_boards(cls, n_boards: int) -> MachineSpec:
        """The machine spalloc allocates for ``n_boards`` 48-chip boards (a rectangle of
        triads of 3 boards, ``12 tw + 4`` x ``12 th + 4`` chips)."""
        if isinstance(n_boards, bool) or not isinstance(n_boards, int) or n_boards < 1:
            raise ValueError(f"MachineSpec.from_boards: n_boards must be a positive int, not {n_boards!r}")
        if n_boards == 1:
            return cls()
        triads = math.ceil(n_boards / 3)
        tw = math.ceil(math.sqrt(triads))
        th = math.ceil(triads / tw)
        return cls(version=5, width=12 * tw + 4, height=12 * th + 4)

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in chips, as written into sPyNNaker's config."""
        if self.width is not None and self.height is not None:
            return self.width, self.height
        return (2, 2) if self.version == 3 else (8, 8)

    @property
    def n_boards(self) -> int:
        w, h = self.size
        if self.version == 3 or (w, h) == (8, 8):
            return 1
        return 3 * (w // 12) * (h // 12)

    @property
    def n_chips(self) -> int:
        return self.n_boards * _BOARD_CHIPS[self.version]

    @property
    def n_cores(self) -> int:
        """All cores, monitor (SCAMP) cores included."""
        return self.n_boards * _BOARD_CORES[self.version]

    @property
    def application_cores(self) -> int:
        """Cores left for populations (sPyNNaker's defaults: one SCAMP core and one extra
        monitor per chip, one packet gatherer per board): 759 per 48-chip board."""
        return self.n_boards * _BOARD_APP_CORES[self.version]

    def describe(self) -> str:
        w, h = self.size
        if self.n_boards == 1:
            kind = "4-chip SpiNN-3 board" if self.version == 3 else "48-chip SpiNN-5 board"
            return f"one {kind} ({w} x {h} chips)"
        return f"a {w} x {h} virtual machine ({self.n_boards} boards, {self.n_chips} chips)"


# --------------------------------------------------------------------------- estimates


def native_delay_slots(atoms_per_core: int, n_synapse_types: int = 2) -> int:
    """Delay ticks a neuron core holds without a delay extension (sPyNNaker's
    ``2 ** (14 - atom bits - synapse-type bits)``: 32 at 256 atoms, 64 at 128)."""
    def bits(n: int) -> int:
        return 0 if n <= 0 else 1 if n == 1 else (n - 1).bit_length()

    return 2 ** (_RING_BUFFER_BITS - bits(atoms_per_core) - bits(n_synapse_types))


def predicted_ring_buffer_shift(max_summed_weight: float) -> int:
    """The shift sPyNNaker derives from a ``max_expected_summed_weight`` entry
    (``PopulationVertex.get_ring_buffer_shifts``, current-based models: global scale 1)."""
    w = float(max_summed_weight)
    p = 0 if w <= 0 else int(math.ceil(max(0.0, math.log2(w))))
    return p + 1 if 2**p <= w else p


def cores_per_population(populations: Mapping[str, int], neurons_per_core: int | None = None) -> dict[str, int]:
    """Cores per neuron population: ``ceil(n / min(neurons_per_core, 256))``.

    ``neurons_per_core=None`` is sPyNNaker's default (256). Valid at ``timestep_ms >= 1``,
    where sPyNNaker puts neurons and synapses of a slice on one core.
    """
    per = _effective_per_core(neurons_per_core)
    out = {}
    for name, n in populations.items():
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"population {name!r}: size must be a positive int, not {n!r}")
        out[name] = -(-n // per)
    return out


def estimate_cores(populations: Mapping[str, int], neurons_per_core: int | None = None, *,
                   sources: Mapping[str, int] | None = None,
                   delay_extensions: Iterable[str] = ()) -> int:
    """Application cores sPyNNaker will place, before running anything.

    ``populations``: neuron populations (name -> cells), split at
    ``min(neurons_per_core, 256)`` per core; ``sources``: ``SpikeSourceArray`` populations
    (name -> sources), one core each (sPyNNaker does not split them); ``delay_extensions``:
    names (of ``populations`` or ``sources``) that send some projection a delay beyond the
    receiving core's :func:`native_delay_slots`: each gets a delay-extension vertex split
    like its source. Exact for the fixed splitter used at ``timestep_ms >= 1`` (the tests
    compare it with real mappings); system cores are not counted (compare with
    :attr:`MachineSpec.application_cores`).
    """
    cores = cores_per_population(populations, neurons_per_core)
    sources = dict(sources or {})
    for name, n in sources.items():
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"source {name!r}: size must be a positive int, not {n!r}")
    total = sum(cores.values()) + len(sources)
    for name in delay_extensions:
        if name in cores:
            total += cores[name]
        elif name in sources:
            total += 1
        else:
            raise ValueError(f"delay extension of {name!r}: no such population or source")
    return total


def check_fits(populations: Mapping[str, int], machine: MachineSpec | None = None,
               neurons_per_core: int | None = None, *, sources: Mapping[str, int] | None = None,
               delay_extensions: Iterable[str] = ()) -> int:
    """:func:`estimate_cores`, and ``ResourceError`` when the machine has fewer application
    cores (the message names the largest population and the numbers). Returns the estimate."""
    machine = machine or MachineSpec()
    delay_extensions = list(delay_extensions)
    need = estimate_cores(populations, neurons_per_core, sources=sources, delay_extensions=delay_extensions)
    have = machine.application_cores
    if need > have:
        per = cores_per_population(populations, neurons_per_core)
        biggest = max(per, key=per.get) if per else None
        what = (f"; the largest, population {biggest!r}, needs {per[biggest]} cores for {populations[biggest]} "
                f"cells at {_effective_per_core(neurons_per_core)} per core" if biggest is not None else "")
        raise ResourceError(
            f"the network needs {need} application cores ({len(per)} neuron populations, "
            f"{len(sources or {})} spike sources, {len(delay_extensions)} delay extensions){what}; "
            f"{machine.describe()} offers {have}: use more neurons per core (at most "
            f"{NEURON_ATOMS_PER_CORE_CAP}), a smaller network or a larger MachineSpec")
    return need


def _effective_per_core(neurons_per_core: int | None) -> int:
    if neurons_per_core is None:
        return NEURON_ATOMS_PER_CORE_CAP
    _check_neurons_per_core(neurons_per_core)
    return min(neurons_per_core, NEURON_ATOMS_PER_CORE_CAP)


def _check_neurons_per_core(neurons_per_core: int | None) -> None:
    if neurons_per_core is None:
        return
    if isinstance(neurons_per_core, bool) or not isinstance(neurons_per_core, int) or neurons_per_core < 1:
        raise ValueError(f"neurons_per_core must be a positive int or None, not {neurons_per_core!r}")


# --------------------------------------------------------------------------- the report


@dataclass
class PopulationMapping:
    """One application vertex of the mapped graph: a PyNN population or a delay extension.

    Lists are per placed core, in slice order.
    """

    label: str
    #: "neurons" (a PopulationVertex), "source" (spike source), "delay_extension", or the
    #: vertex class name for anything else
    kind: str
    #: sPyNNaker vertex class (``PopulationVertex``, ``SpikeSourceArrayVertex``, ...)
    vertex: str
    #: the PyNN model (``IF_curr_delta``...) where there is one
    model: str | None
    n_atoms: int
    #: the cap sPyNNaker applied (``get_max_atoms_per_core()``; None: no cap)
    max_atoms_per_core: int | None
    n_cores: int
    atoms_per_core: list[int]
    #: (x, y, p) of each core
    cores: list[tuple[int, int, int]]
    #: fixed + per-tick x the run's ticks, bytes
    sdram_per_core_bytes: list[int]
    #: neuron populations: one shift per receptor (excitatory, inhibitory)
    ring_buffer_shifts: list[int] | None = None
    #: neuron populations: the factor a weight is multiplied by before it is stored as a
    #: 16-bit integer (2 ** (15 - shift)); 1/scale is the weight step
    weight_scales: list[float] | None = None
    #: neuron populations: delay ticks a core holds without a delay extension
    max_delay_slots: int | None = None
    #: delay extensions: the label of the population whose spikes it delays
    delays_for: str | None = None


@dataclass
class MappingReport:
    """What sPyNNaker's mapping on the virtual machine produced (see the module docstring
    for the API or report behind each number)."""

    machine: MachineSpec
    board_width: int
    board_height: int
    #: chips / all cores (monitor cores included) / cores left for populations
    board_chips: int
    board_cores: int
    board_application_cores: int
    #: chips holding at least one application core
    chips_used: int
    #: application cores: populations, spike sources and delay extensions
    cores_used: int
    #: placed system cores by vertex class, plus "SCAMP monitor" (one per chip of the machine)
    system_cores: dict[str, int]
    #: application vertices by label (graph order; a repeated label gets "#2", "#3"...)
    populations: dict[str, PopulationMapping]
    #: ticks the SDRAM figures are computed for: ceil(run_ms / timestep_ms)
    sdram_ticks: int
    sdram_per_core_max_bytes: int
    sdram_total_bytes: int
    #: the fullest chip, all its placements (system ones too), and a chip's capacity
    sdram_per_chip_max_bytes: int
    chip_sdram_bytes: int
    #: routing table entries, before compression (sPyNNaker's uncompressed tables)
    routing_entries_max: int
    routing_entries_total: int
    routing_tables: int
    #: after the compression sPyNNaker ran (equal to the above when it skipped compressing
    #: because every table already fits; None if the report is missing)
    routing_entries_compressed_max: int | None
    routing_entries_compressed_total: int | None
    routing_compression: str
    #: entries a chip's router holds
    router_capacity: int
    #: seconds: import, setup, build, run (the mapping), extract, end, total (wall clock,
    #: process start and transfer included), and sPyNNaker's own stage timers ("fec: ...")
    timings: dict[str, float]
    #: seconds per sPyNNaker algorithm that ran (summed over repeats)
    algorithm_timings: dict[str, float]
    #: sPyNNaker's WARNING-or-worse log messages
    warnings: list[str]
    #: sPyNNaker's timestamp folder (``reports/<time>/``) and its ``run_1`` folder
    report_dir: Path
    run_dir: Path
    #: our log of sPyNNaker's output (progress bars, INFO logs)
    log_file: Path
    #: whether the mapping ran in a child interpreter
    isolated: bool = True

    def summary(self) -> str:
        pops = ", ".join(f"{p.label}: {p.n_cores}" for p in self.populations.values())
        return (f"{self.cores_used} application cores on {self.chips_used} of {self.board_chips} chips "
                f"({self.board_application_cores} application cores) [{pops}]; SDRAM max "
                f"{self.sdram_per_core_max_bytes} B/core, total {self.sdram_total_bytes} B; routing entries "
                f"max {self.routing_entries_max}/chip (compressed {self.routing_entries_compressed_max}), "
                f"total {self.routing_entries_total}; mapping {self.timings.get('run', float('nan')):.2f} s")


# --------------------------------------------------------------------------- the entry point


def map_on_virtual_board(build: Callable[[Any], Any], *, report_dir: Path, machine: MachineSpec | None = None,
                         timestep_ms: float = 1.0, run_ms: float, neurons_per_core: int | None = None,
                         isolate: bool = True, compress_routing: bool = False,
                         timeout_s: float | None = None) -> MappingReport:
    """Map the network ``build(sim)`` creates on sPyNNaker's virtual ``machine``.

    ``build`` gets the ``pyNN.spiNNaker`` module after ``sim.setup(timestep=timestep_ms)``
    (and, when ``neurons_per_core`` is given, after ``sim.set_number_of_neurons_per_core``
    for every neuron model; a population's own ``additional_parameters={"neurons_per_core":
    n}`` wins). It creates populations and projections and must not call ``run``/``end``;
    what it returns is ignored. Then ``sim.run(run_ms)`` maps (nothing executes), the
    report is read, ``sim.end()``.

    ``isolate=True`` (default) runs all of it in a child Python (``sys.executable``, the
    parent's ``sys.path``), so none of sPyNNaker's process-wide state (signal handler,
    excepthook, logging, atexit) reaches the caller, and ``./spynnaker.cfg`` of the
    caller's folder is not read. ``build`` then travels by pickle: a module-level function
    of an importable module (not ``__main__``), or ``functools.partial`` of one with
    picklable arguments. ``isolate=False`` maps in this process (no interpreter start and
    no import after the first call; ``build`` may be a closure), swaps HOME /
    XDG_CONFIG_HOME / XDG_CONFIG_DIRS for the call, sends sPyNNaker's output to the log
    file, and restores the environment, the SIGINT handler, ``sys.excepthook`` and the
    root logger afterwards; it refuses to run where ``./spynnaker.cfg`` exists.

    Everything is written under ``report_dir`` (created): ``spynnaker_home/`` (the config,
    HOME and working folder of the mapping), ``spynnaker.log``, and sPyNNaker's
    ``reports/<timestamp>/`` (sPyNNaker keeps the 10 newest there). Nothing goes into the
    working folder or the real HOME.

    ``compress_routing=True`` makes sPyNNaker compress every routing table as far as it can
    (``router_table_compress_as_far_as_possible``), not only those over a router's 1023
    entries. Raises :class:`~fs_hw.errors.ResourceError` when the network does not fit the
    machine (the message names the population, the limit and the numbers), ``ValueError``
    on bad arguments, ``TypeError`` when ``isolate=True`` and ``build`` cannot be pickled
    by reference, ``TimeoutError`` after ``timeout_s`` (isolated only).
    """
    t0 = time.perf_counter()
    machine = MachineSpec() if machine is None else machine
    if not isinstance(machine, MachineSpec):
        raise TypeError(f"machine must be a MachineSpec, not {type(machine).__name__}")
    if not callable(build):
        raise TypeError("build must be a callable taking the pyNN.spiNNaker module")
    _check_neurons_per_core(neurons_per_core)
    for name, value in (("timestep_ms", timestep_ms), ("run_ms", run_ms)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or math.isinf(value):
            raise ValueError(f"{name} must be a positive number of ms, not {value!r}")
    if not isolate and Path("spynnaker.cfg").exists():
        raise ValueError(f"{Path('spynnaker.cfg').resolve()} exists: sPyNNaker would read it over this module's "
                         "config (it reads ./spynnaker.cfg last); move it or use isolate=True")
    report_dir = Path(report_dir).resolve()
    home = report_dir / _HOME_DIRNAME
    home.mkdir(parents=True, exist_ok=True)
    (home / _CFG_NAME).write_text(_config_text(machine, report_dir, compress_routing), encoding="utf-8")
    log_file = report_dir / _LOG_NAME
    args = {"timestep_ms": float(timestep_ms), "run_ms": float(run_ms), "neurons_per_core": neurons_per_core,
            "machine": machine, "log_file": str(log_file)}
    if isolate:
        report = _map_in_child(build, args, home, log_file, timeout_s)
    else:
        with _process_state_restored(home, log_file):
            report = _map_here(build, **args)
        report.isolated = False
    report.timings["total"] = time.perf_counter() - t0
    return report


def _config_text(machine: MachineSpec, report_dir: Path, compress_routing: bool) -> str:
    w, h = machine.size
    lines = [
        "# written by fs_hw_spinnaker.vboard for one virtual-board mapping",
        "[Machine]",
        "virtual_board = True",
        f"version = {machine.version}",
        # without width/height a virtual board grows to whatever the graph needs
        f"width = {w}",
        f"height = {h}",
        "[Mode]",
        "mode = Debug",
        "[Reports]",
        "write_network_graph = False",
        f"default_report_file_path = {report_dir}",
    ]
    if compress_routing:
        lines += ["[Mapping]", "router_table_compress_as_far_as_possible = True"]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- child process


def _module_name() -> str:
    return "fs_hw_spinnaker.vboard" if __name__ == "__main__" else __name__


def _defined_in_main(obj: Any) -> bool:
    func = getattr(obj, "func", obj)  # functools.partial
    return getattr(func, "__module__", None) == "__main__" or getattr(obj, "__module__", None) == "__main__"


def _map_in_child(build: Callable, args: dict, home: Path, log_file: Path, timeout_s: float | None) -> MappingReport:
    if _defined_in_main(build):
        raise TypeError("map_on_virtual_board(isolate=True) sends build to a child Python by pickle, and a function "
                        "defined in __main__ cannot be found there: define it in an importable module (or use "
                        "functools.partial of such a function), or pass isolate=False")
    try:
        payload = pickle.dumps((build, args), protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        raise TypeError(f"map_on_virtual_board(isolate=True) pickles build for a child Python and could not: "
                        f"{type(exc).__name__}: {exc} (use a module-level function or functools.partial of one, "
                        "or pass isolate=False)") from exc
    payload_path, result_path = home / "payload.pkl", home / "result.pkl"
    payload_path.write_bytes(payload)
    result_path.unlink(missing_ok=True)
    env = _child_env(home)
    here = str(Path(__file__).resolve().parent.parent)
    paths = [p if p else os.getcwd() for p in sys.path]
    if here not in paths:
        paths.insert(0, here)
    env["PYTHONPATH"] = os.pathsep.join(paths)
    code = "import importlib, sys; importlib.import_module(sys.argv[1])._child_main(sys.argv[2], sys.argv[3])"
    cmd = [sys.executable, "-c", code, _module_name(), str(payload_path), str(result_path)]
    t0 = time.perf_counter()
    try:
        with open(log_file, "ab") as log:
            proc = subprocess.run(cmd, cwd=home, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                  stderr=subprocess.STDOUT, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as exc:
        raise TimeoutError(f"the virtual-board mapping took more than {timeout_s} s (log: {log_file})") from exc
    finally:
        payload_path.unlink(missing_ok=True)
    wall = time.perf_counter() - t0
    if not result_path.exists():
        raise RuntimeError(f"the virtual-board mapping process exited with status {proc.returncode} and no result; "
                           f"last lines of {log_file}:\n{_tail(log_file)}")
    try:
        status, value = pickle.loads(result_path.read_bytes())
    except Exception as exc:  # e.g. an exception class this process cannot import
        raise RuntimeError(f"could not read the mapping process's result ({type(exc).__name__}: {exc}); last "
                           f"lines of {log_file}:\n{_tail(log_file)}") from exc
    finally:
        result_path.unlink(missing_ok=True)
    if status == "ok":
        value.timings["child_process"] = wall
        return value
    if status == "error":
        with contextlib.suppress(Exception):
            value.add_note(f"sPyNNaker's output: {log_file}")
        raise value
    type_name, message, tb = value
    raise RuntimeError(f"virtual-board mapping failed: {type_name}: {message}\n{tb}")


def _child_env(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"),
                "XDG_CONFIG_DIRS": str(home / ".config-system"), "PYTHONUNBUFFERED": "1"})
    return env


def _child_main(payload_path: str, result_path: str) -> None:
    """Entry point of the child interpreter: unpickle, map, pickle the report or the error."""
    try:
        build, args = pickle.loads(Path(payload_path).read_bytes())
        result: tuple[str, Any] = ("ok", _map_here(build, **args))
    except BaseException as exc:  # everything goes back to the parent
        traceback.print_exc()
        result = ("error", exc)
    try:
        data = pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        exc = result[1]
        data = pickle.dumps(("error_text", (type(exc).__name__, str(exc), traceback.format_exc())))
    Path(result_path).write_bytes(data)
    sys.stdout.flush()
    sys.stderr.flush()


def _tail(path: Path, n: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


# --------------------------------------------------------------------------- in-process mode


_ENV_KEYS = ("HOME", "XDG_CONFIG_HOME", "XDG_CONFIG_DIRS")


@contextlib.contextmanager
def _process_state_restored(home: Path, log_file: Path) -> Iterator[None]:
    """Swap HOME and the XDG config variables to ``home``, send stdout/stderr and logging to
    ``log_file``; afterwards restore them, the SIGINT handler, ``sys.excepthook``, the root
    logger, and drop sPyNNaker's atexit printers (its warnings are in the report)."""
    saved_env = {k: os.environ.get(k) for k in _ENV_KEYS}
    root = logging.getLogger()
    saved_level, saved_handlers = root.level, list(root.handlers)
    saved_handler_state = [(h, list(h.filters), h.formatter) for h in saved_handlers]
    saved_hook = sys.excepthook
    in_main = _in_main_thread()
    saved_sigint = signal.getsignal(signal.SIGINT) if in_main else None
    os.environ.update({"HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"),
                       "XDG_CONFIG_DIRS": str(home / ".config-system")})
    root.handlers = []  # so that sPyNNaker's logging.basicConfig writes into the log file
    try:
        with open(log_file, "a", encoding="utf-8") as log, contextlib.redirect_stdout(log), \
                contextlib.redirect_stderr(log):
            yield
    finally:
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        for h in root.handlers:
            if h not in saved_handlers:
                with contextlib.suppress(Exception):
                    h.close()
        root.handlers = saved_handlers
        root.setLevel(saved_level)
        for h, filters, formatter in saved_handler_state:
            h.filters = filters
            h.setFormatter(formatter)
        sys.excepthook = saved_hook
        if in_main and saved_sigint is not None:
            signal.signal(signal.SIGINT, saved_sigint)
        _drop_spynnaker_atexit()


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _drop_spynnaker_atexit() -> None:
    with contextlib.suppress(Exception):
        from spinn_utilities.log import FormatAdapter

        atexit.unregister(FormatAdapter.atexit_handler)
    with contextlib.suppress(Exception):
        from spinn_utilities.data.utils_data_writer import UtilsDataWriter

        atexit.unregister(UtilsDataWriter.write_errored_file)


# --------------------------------------------------------------------------- the mapping


def _map_here(build: Callable, *, timestep_ms: float, run_ms: float, neurons_per_core: int | None,
              machine: MachineSpec, log_file: str) -> MappingReport:
    """setup, build, run, read, end: in whichever process runs sPyNNaker."""
    timings: dict[str, float] = {}
    t = time.perf_counter()
    sim = importlib.import_module("pyNN.spiNNaker")
    timings["import"] = time.perf_counter() - t
    t = time.perf_counter()
    sim.setup(timestep=timestep_ms)
    timings["setup"] = time.perf_counter() - t
    ok = False
    try:
        if neurons_per_core is not None:
            for model in _neuron_models(sim):
                sim.set_number_of_neurons_per_core(model, neurons_per_core)
        t = time.perf_counter()
        build(sim)
        timings["build"] = time.perf_counter() - t
        t = time.perf_counter()
        try:
            sim.run(run_ms)
        except Exception as exc:
            converted = _resource_error(exc, machine)
            if converted is not None:
                raise converted from exc
            raise
        timings["run"] = time.perf_counter() - t
        t = time.perf_counter()
        report = _read_mapping(machine, timestep_ms, run_ms, timings, Path(log_file))
        timings["extract"] = time.perf_counter() - t
        ok = True
    finally:
        t = time.perf_counter()
        try:
            sim.end()
        except Exception:
            if ok:
                raise
        timings["end"] = time.perf_counter() - t
    return report


def _neuron_models(sim) -> list[type]:
    from spynnaker.pyNN.models.neuron.abstract_pynn_neuron_model import AbstractPyNNNeuronModel

    found: list[type] = []
    for ns in (sim, getattr(sim, "extra_models", None)):
        for obj in vars(ns).values() if ns is not None else ():
            if isinstance(obj, type) and issubclass(obj, AbstractPyNNNeuronModel) and obj not in found:
                found.append(obj)
    return found


_RESOURCE_EXCEPTIONS = ("PacmanPlaceException", "PacmanTooBigToPlace", "MinimisationFailedError",
                        "PacmanElementAllocationException", "PacmanRouteInfoAllocationException",
                        "PacmanRoutingException")


def _resource_error(exc: Exception, machine: MachineSpec) -> ResourceError | None:
    """sPyNNaker's placement/routing failures as a ResourceError with the numbers."""
    if type(exc).__name__ not in _RESOURCE_EXCEPTIONS:
        return None
    said = " ".join(str(exc).split())
    from spynnaker.pyNN.data import SpynnakerDataView as V

    need = pops = None
    per_vertex: dict[str, tuple[int, int, int | None]] = {}
    with contextlib.suppress(Exception):
        need, pops = 0, 0
        for v in V.iterate_vertices():
            n = len(v.machine_vertices)
            need += n
            pops += 1
            cap = v.get_max_atoms_per_core()
            per_vertex[v.label] = (n, v.n_atoms, cap if cap < sys.maxsize else None)
    have, chips = machine.application_cores, machine.n_chips
    with contextlib.suppress(Exception):
        m = V.get_machine()
        chips = m.n_chips
        have = _application_cores(m, V)
    label = None
    found = re.search(r"for (.+?) Out of \d+", said)
    if found:
        label = found.group(1)
    if label is not None and label in per_vertex:
        n, atoms, cap = per_vertex[label]
        who = (f"population {label!r} ({atoms} cells on {n} cores"
               + (f", at most {cap} per core)" if cap is not None else ")"))
    elif label is not None:
        who = f"population {label!r}"
    else:
        who = "the network"
    if type(exc).__name__ == "PacmanPlaceException":
        numbers = (f"the partitioned network needs {need} application cores ({pops} vertices, delay extensions "
                   f"included); {machine.describe()} has {have} on {chips} chips"
                   if need is not None else f"{machine.describe()} has {have} application cores")
        return ResourceError(f"sPyNNaker could not place {who}: {numbers}; use more neurons per core (at most "
                             f"{NEURON_ATOMS_PER_CORE_CAP}), a smaller network or a larger MachineSpec "
                             f"(sPyNNaker: {said[:400]})")
    return ResourceError(f"sPyNNaker could not map {who} on {machine.describe()}: {type(exc).__name__}: "
                         f"{said[:600]}")


def _application_cores(m, V) -> int:
    eth = len(m.ethernet_connected_chips)
    return (m.total_available_user_cores - (m.n_chips - eth) * V.get_all_monitor_cores()
            - eth * V.get_ethernet_monitor_cores())


def _kind(vertex) -> str:
    from spynnaker.pyNN.models.neuron import PopulationVertex
    from spynnaker.pyNN.models.utility_models.delays import DelayExtensionVertex

    if isinstance(vertex, PopulationVertex):
        return "neurons"
    if isinstance(vertex, DelayExtensionVertex):
        return "delay_extension"
    if "SpikeSource" in type(vertex).__name__:
        return "source"
    return type(vertex).__name__


def _read_mapping(machine: MachineSpec, timestep_ms: float, run_ms: float, timings: dict[str, float],
                  log_file: Path) -> MappingReport:
    from spinn_utilities.config_holder import get_report_path
    from spynnaker.pyNN.data import SpynnakerDataView as V

    m = V.get_machine()
    ticks = max(1, math.ceil(run_ms / timestep_ms - 1e-9))
    app_vertices = list(V.iterate_vertices())
    app_set = set(map(id, app_vertices))

    chip_sdram: dict[tuple[int, int], int] = {}
    app_chips: set[tuple[int, int]] = set()
    system: dict[str, int] = {"SCAMP monitor": m.n_chips}
    cores_used = 0
    for pl in V.iterate_placemements():
        mv = pl.vertex
        sdram = int(mv.sdram_required.get_total_sdram(ticks))
        chip_sdram[pl.x, pl.y] = chip_sdram.get((pl.x, pl.y), 0) + sdram
        app = mv.app_vertex
        if app is not None and id(app) in app_set:
            cores_used += 1
            app_chips.add((pl.x, pl.y))
        else:
            name = type(mv).__name__
            system[name] = system.get(name, 0) + 1

    populations: dict[str, PopulationMapping] = {}
    models = {}
    with contextlib.suppress(Exception):
        for pop in V.iterate_populations():
            models[pop.label] = type(pop.celltype).__name__
    sdram_all: list[int] = []
    for v in app_vertices:
        placed = []
        for mv in v.machine_vertices:
            with contextlib.suppress(Exception):
                placed.append((V.get_placement_of_vertex(mv), mv))
        placed.sort(key=lambda pm: (pm[1].vertex_slice.lo_atom, pm[0].x, pm[0].y, pm[0].p))
        sdram = [int(mv.sdram_required.get_total_sdram(ticks)) for _, mv in placed]
        sdram_all += sdram
        cap = v.get_max_atoms_per_core()
        kind = _kind(v)
        entry = PopulationMapping(
            label=v.label, kind=kind, vertex=type(v).__name__, model=models.get(v.label),
            n_atoms=int(v.n_atoms), max_atoms_per_core=int(cap) if cap < sys.maxsize else None,
            n_cores=len(placed), atoms_per_core=[int(mv.vertex_slice.n_atoms) for _, mv in placed],
            cores=[(int(p.x), int(p.y), int(p.p)) for p, _ in placed], sdram_per_core_bytes=sdram)
        if kind == "neurons":
            shifts = [int(s) for s in v.get_ring_buffer_shifts()]
            entry.ring_buffer_shifts = shifts
            entry.weight_scales = [float(s) for s in v.get_weight_scales(shifts)]
            with contextlib.suppress(Exception):
                entry.max_delay_slots = int(v.max_delay_steps)
        elif kind == "delay_extension":
            with contextlib.suppress(Exception):
                entry.delays_for = v.source_vertex.label
        key, i = v.label, 1
        while key in populations:
            i += 1
            key = f"{v.label}#{i}"
        populations[key] = entry

    tables = V.get_uncompressed()
    counts = [t.number_of_entries for t in tables.routing_tables]
    compressed_max = compressed_total = None
    with contextlib.suppress(OSError, ValueError):
        text = Path(get_report_path("path_compression_summary")).read_text()
        found = re.search(r"Total entries (\d+), max per chip (\d+)", text)
        if found:
            compressed_total, compressed_max = int(found.group(1)), int(found.group(2))

    fec, algorithms, warnings, compression = _provenance()
    for name, ms in fec.items():
        timings[f"fec: {name}"] = ms / 1000.0

    run_dir = Path(V.get_run_dir_path())
    return MappingReport(
        machine=machine, board_width=int(m.width), board_height=int(m.height), board_chips=int(m.n_chips),
        board_cores=int(m.total_cores), board_application_cores=int(_application_cores(m, V)),
        chips_used=len(app_chips), cores_used=cores_used, system_cores=system, populations=populations,
        sdram_ticks=ticks, sdram_per_core_max_bytes=max(sdram_all, default=0), sdram_total_bytes=sum(sdram_all),
        sdram_per_chip_max_bytes=max(chip_sdram.values(), default=0),
        chip_sdram_bytes=int(min((c.sdram for c in m.chips), default=0)),
        routing_entries_max=max(counts, default=0), routing_entries_total=sum(counts), routing_tables=len(counts),
        routing_entries_compressed_max=compressed_max, routing_entries_compressed_total=compressed_total,
        routing_compression=compression, router_capacity=int(m.min_n_router_enteries),
        timings=timings, algorithm_timings=algorithms, warnings=warnings,
        report_dir=Path(V.get_timestamp_dir_path()), run_dir=run_dir, log_file=log_file)


def _provenance() -> tuple[dict[str, float], dict[str, float], list[str], str]:
    """sPyNNaker's timers (ms) by stage and by algorithm, its warnings, and what its
    routing-table compressor did."""
    from spinn_front_end_common.interface.provenance import GlobalProvenance

    stages: dict[str, float] = {}
    algorithms: dict[str, float] = {}
    warnings: list[str] = []
    compression = "unknown"
    with contextlib.suppress(Exception), GlobalProvenance() as db:
        for category, ms in db.run_query(
                "SELECT category, sum(time_taken) FROM category_timer_provenance GROUP BY category"):
            stages[str(category)] = float(ms or 0.0)
        for algorithm, ms, skip in db.run_query(
                "SELECT algorithm, time_taken, skip_reason FROM full_timer_view ORDER BY timer_id"):
            if "compressor" in str(algorithm).lower() and "report" not in str(algorithm).lower():
                compression = f"{algorithm}: " + (f"skipped ({skip})" if skip else "ran")
            if skip is None:
                algorithms[str(algorithm)] = algorithms.get(str(algorithm), 0.0) + float(ms or 0.0) / 1000.0
        warnings = [str(w) for w in db.retreive_log_messages(logging.WARNING)]
    return stages, algorithms, warnings, compression
