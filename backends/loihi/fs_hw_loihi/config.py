"""Settings and limits of the Loihi target (``deploy_configs/loihi.toml``)."""

from __future__ import annotations

from dataclasses import dataclass

from nengo_loihi.block import MAX_COMPARTMENTS, MAX_IN_AXONS, MAX_OUT_AXONS, MAX_SYNAPSE_BITS

from fs_hw.lower.config import config_to_dict, setting
from fs_hw.lower.limits import Limit, LimitTable

#: 16 synapse-format slots per core; nengo-loihi leaves slot 0 unused
MAX_SYNAPSE_FORMATS = 15
LOIHI_CORES_PER_CHIP = 128

#: Loihi's per-core limits (values from nengo-loihi 1.1's ``nengo_loihi.block``), the
#: one table the lowering partitions against and refuses with.
LOIHI_LIMITS = LimitTable((
    Limit("compartments", MAX_COMPARTMENTS, "compartments", "core"),
    Limit("in_axons", MAX_IN_AXONS, "input axons", "core"),
    Limit("out_axons", MAX_OUT_AXONS, "output axon slots", "core"),
    Limit("synapse_bits", MAX_SYNAPSE_BITS, "synapse memory bits", "core"),
    Limit("formats", MAX_SYNAPSE_FORMATS, "synapse formats", "core"),
    Limit("K", 32, "time steps per FS stage", "neuron", "compartments per FS neuron"),
))

#: most copies of one FS layer the lowering makes to share its readers out (a source pixel
#: read by more reader cores than a core's output axons reach; see resources.check_program)
MAX_COPIES = 8


@dataclass(frozen=True)
class LoihiConfig:
    """Validated settings of the Loihi target (the ``[target]`` table).

    The board: a network that needs more cores than ``chips * cores_per_chip`` is refused
    before it runs. Which runner (hardware or emulator) is chosen by ``fs-deploy
    --runner``, not here.
    """

    chips: int = setting(1, "chips on the board (Nahuku boards: 8-32)", range=(1, 16384))
    cores_per_chip: int = setting(LOIHI_CORES_PER_CHIP, "cores per chip", range=(1, LOIHI_CORES_PER_CHIP))
    batch_size: int = setting(50, "samples per emulator/hardware run (a pipeline inside a run)",
                              range=(1, 10**6))
    K: int | None = setting(None, "optional check of the network's steps per stage", range=(1, 64))
    d_digits: int = setting(3, "signed powers of two a fitted code's d(t) may use", range=(1, 8))
    max_d_power: int = setting(13, "largest power of two in an output weight d(t)", range=(0, 14))
    step_weights: bool = setting(
        True, "per-source-step weights: a layer fed by one spiking node stores, for each source step t, "
        "w*d(t) rounded to its accumulator unit (low steps lose low bits) instead of w and d(t) exactly; "
        "keeps 7-bit weights where the membrane range would otherwise cut them")
    residual_step_weights: bool = setting(
        True, "per-source-step weights also for a layer that feeds a residual add (in the add's unit, "
        "shared with the skip), with step_weights; false: plain 7-bit weights there (ResNet-20's "
        "predicted loss 0.08 -> 0.33 points, fewer synapses per core)")
    synapse_rows: str = setting(
        "auto", "synapse rows: 'shared' (one row per source pixel reused by K axons: least memory), "
        "'replicated' (rows hold all K decision units: K times fewer input and output axons), 'atoms' "
        "(shared rows; a conv of a spiking image source also holds the source steps as atoms: one axon "
        "per weight plane instead of one per step, for about two planes' memory), or 'auto' (per layer, "
        "whichever needs fewer cores; atoms where no source could serve the readers otherwise)",
        choices=("auto", "shared", "replicated", "atoms"))
    seed: int = setting(0, "emulator seed (no stochastic parts are used)", range=(0, 2**31 - 1))
    range_samples: int = setting(
        200, "training images of the network's data set whose partial sums set the membrane ranges "
        "(0: the worst case of every spike pattern)", range=(0, 100_000))

    @classmethod
    def from_mapping(cls, config) -> LoihiConfig:
        from fs_hw.lower.config import parse_config

        return parse_config(cls, config, "loihi config")

    def to_dict(self) -> dict:
        return config_to_dict(self)
