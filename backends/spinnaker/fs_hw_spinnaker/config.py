"""Settings and limits of the SpiNNaker target (``deploy_configs/spinnaker.toml``)."""

from __future__ import annotations

from dataclasses import dataclass

from fs_hw.lower.config import config_to_dict, setting
from fs_hw.lower.limits import Limit, LimitTable

#: sPyNNaker's default atoms per core for IF_curr_delta
NEURONS_PER_CORE = 256
#: a SpiNN-5 board (sPyNNaker ``version = 5``): 48 chips, 856 cores, 759 of them for the
#: application (a monitor and an extra monitor per chip, a packet gatherer): see vboard
BOARD_CHIPS = 48
BOARD_APP_CORES = 759
#: sPyNNaker's ring buffer index bits (``MAX_RING_BUFFER_BITS``): atom bits + synapse-type
#: bit + delay bits
RING_BUFFER_BITS = 14
#: delay-extension stages (``DelayExtensionVertex.MAX_SLOTS``)
DELAY_EXTENSION_STAGES = 8


def native_delay_ticks(neurons_per_core: int) -> int:
    """Delay slots a core holds (32 at 256 atoms: 14 bits - 8 atom bits - 1 synapse-type bit)."""
    atom_bits = max(0, (neurons_per_core - 1).bit_length())
    return 2 ** (RING_BUFFER_BITS - atom_bits - 1)


def spinnaker_limits(neurons_per_core: int = NEURONS_PER_CORE, board_cores: int | None = None) -> LimitTable:
    """The limits for a given atoms-per-core setting and board (one table, as data)."""
    native = native_delay_ticks(neurons_per_core)
    return LimitTable((
        Limit("neurons", neurons_per_core, "cells", "core", "sPyNNaker's atoms per core for IF_curr_delta"),
        Limit("delay", native * DELAY_EXTENSION_STAGES, "ticks of synaptic delay", "synapse",
              f"{native} ticks natively at {neurons_per_core} atoms per core, x{DELAY_EXTENSION_STAGES} "
              "through delay-extension cores"),
        Limit("weight_magnitude", 0xFFFF, "weight steps (16-bit magnitude)", "synapse"),
        Limit("cores", board_cores if board_cores is not None else BOARD_APP_CORES,
              "application cores (neuron populations, spike sources, delay extensions)", "board"),
    ))


SPINNAKER_LIMITS = spinnaker_limits()


@dataclass(frozen=True)
class SpiNNakerConfig:
    """Validated settings of the SpiNNaker target (the ``[target]`` table).

    The board: one 48-chip SpiNN-5 board (8 x 8 chips) by default; ``width``/``height``
    (chips per side, each a multiple of 12, or of 12 plus 4, as spalloc allocates:
    ``12a x 12b`` chips hold ``3ab`` boards) describe a larger machine. A network that
    needs more cores than the board has is refused before anything runs.
    """

    width: int | None = setting(None, "machine width in chips, with height (12k or 12k+4; 12 x 12 = 3 boards); "
                                "default: one 48-chip board", range=(8, 256))
    height: int | None = setting(None, "machine height in chips, with width", range=(8, 256))
    neurons_per_core: int = setting(NEURONS_PER_CORE, "cells per core (sPyNNaker's atoms per core)",
                                    range=(1, 1024))
    timestep_ms: float = setting(1.0, "simulation time step in ms (one tick)", range=(0.015625, 10.0))
    batch_size: int = setting(50, "samples per simulator run (pipelined: one enters every K ticks)",
                              range=(1, 100_000))
    K: int | None = setting(None, "optional check of the network's steps per stage", range=(1, 64))

    @classmethod
    def from_mapping(cls, config) -> SpiNNakerConfig:
        from fs_hw.lower.config import parse_config

        return parse_config(cls, config, "spinnaker config")

    def to_dict(self) -> dict:
        return config_to_dict(self)

    def machine(self):
        """The machine as :class:`fs_hw_spinnaker.vboard.MachineSpec` (sizes checked there)."""
        from fs_hw.errors import ValidationError
        from fs_hw_spinnaker.vboard import MachineSpec

        try:
            return MachineSpec(width=self.width, height=self.height)
        except ValueError as exc:
            raise ValidationError("spinnaker config", "width/height", str(exc).split(": ", 1)[-1]) from None

    def board_chips(self) -> int:
        return self.machine().n_chips

    def board_cores(self) -> int:
        return self.machine().application_cores
