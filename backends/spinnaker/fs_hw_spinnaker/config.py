"""Settings and limits of the SpiNNaker target (``deploy_configs/spinnaker.toml``)."""

from __future__ import annotations

from dataclasses import dataclass

from fs_hw.lower.config import config_to_dict, setting
from fs_hw.lower.limits import Limit, LimitTable

#: sPyNNaker's default atoms per core for IF_curr_delta
NEURONS_PER_CORE = 256
#: a SpiNN-5 board (sPyNNaker ``version = 5``): 48 chips of 18 ARM cores
BOARD_CHIPS = 48
#: application cores per chip: 18 cores minus the monitor core and the one sPyNNaker's
#: extra monitor takes (a virtual board's mapping confirms the count, see vboard)
APP_CORES_PER_CHIP = 16
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
        Limit("cores", board_cores if board_cores is not None else BOARD_CHIPS * APP_CORES_PER_CHIP,
              "application cores", "board"),
    ))


SPINNAKER_LIMITS = spinnaker_limits()


@dataclass(frozen=True)
class SpiNNakerConfig:
    """Validated settings of the SpiNNaker target (the ``[target]`` table).

    The board: ``version = 5`` is one 48-chip SpiNN-5 board; ``width``/``height`` (in
    chips, multiples of a board's 12 x 12 triad) describe a larger machine. A network that
    needs more cores than the board has is refused before anything runs.
    """

    width: int | None = setting(None, "machine width in chips (with height; default: one 48-chip board)",
                                range=(2, 1024))
    height: int | None = setting(None, "machine height in chips (with width)", range=(2, 1024))
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

    def board_chips(self) -> int:
        if self.width is None and self.height is None:
            return BOARD_CHIPS
        if self.width is None or self.height is None:
            from fs_hw.errors import ValidationError

            raise ValidationError("spinnaker config", "width/height", "give both or neither")
        return self.width * self.height

    def board_cores(self) -> int:
        return self.board_chips() * APP_CORES_PER_CHIP
