"""Settings and limits of the BrainScaleS-2 target (``deploy_configs/brainscales2.toml``)."""

from __future__ import annotations

from dataclasses import dataclass

from fs_hw.lower.config import config_to_dict, setting
from fs_hw.lower.limits import Limit, LimitTable

#: FPGA clock: 125 cycles per microsecond (8 ns)
CYCLES_PER_US = 125
#: the chip runs this much faster than biological time
SPEEDUP = 1000
CIRCUITS_PER_HEMISPHERE = 256
HEMISPHERES = 2
#: synapse drivers per hemisphere, each driving an excitatory and an inhibitory row
DRIVERS_PER_HEMISPHERE = 128
#: distinct sources one driver's rows can tell apart (6-bit synapse labels)
LABELS_PER_DRIVER = 64
WEIGHT_MAX = 63

BSS2_LIMITS = LimitTable((
    Limit("circuits", CIRCUITS_PER_HEMISPHERE * HEMISPHERES, "neuron circuits", "chip"),
    Limit("circuits_per_neuron", CIRCUITS_PER_HEMISPHERE, "circuits per logical neuron (one hemisphere)",
          "neuron", "a logical neuron merges neighbouring circuits of one hemisphere"),
    Limit("labels", LABELS_PER_DRIVER, "sources per synapse driver (6-bit synapse labels)", "chip"),
    Limit("weight", WEIGHT_MAX, "weight steps per synapse (6 bits)", "synapse"),
    Limit("instances", 100_000, "execution instances", "board",
          "the config's max_instances replaces it"),
))


@dataclass(frozen=True)
class BrainScaleS2Config:
    """Validated settings of the BrainScaleS-2 target (the ``[target]`` table)."""

    step_us: float = setting(10.0, "length of one FS step on the chip in microseconds of hardware time "
                             "(10 us = 10 ms biological at the 1000x speed-up)", range=(0.1, 10_000.0))
    max_instances: int = setting(100_000, "execution instances allowed (1: the network must fit one chip "
                                 "and one step)", range=(1, 10**7))
    synapses_per_weight: int = setting(1, "synapses a per-step weight may use: the largest term is 63 x this, "
                                       "larger weights split over synapses (exact; more rows)", range=(1, 16))
    batch_size: int = setting(200, "samples per replay batch", range=(1, 100_000))
    K: int | None = setting(None, "optional check of the network's steps per stage", range=(1, 64))
    monte_carlo_chips: int = setting(5, "simulated analog chips for the predicted accuracy spread (0: off)",
                                     range=(0, 1000))
    weight_mismatch: float = setting(0.10, "fixed-pattern synapse weight variation, relative standard deviation",
                                     range=(0.0, 2.0))
    threshold_mismatch: float = setting(2.0, "fixed-pattern threshold variation per logical neuron, standard "
                                        "deviation in weight steps (LSB)", range=(0.0, 1000.0))
    noise: float = setting(1.0, "trial-to-trial membrane noise, standard deviation in weight steps (LSB)",
                           range=(0.0, 1000.0))
    seed: int = setting(0, "seed of the simulated chips", range=(0, 2**31 - 1))

    @classmethod
    def from_mapping(cls, config) -> BrainScaleS2Config:
        from fs_hw.lower.config import parse_config

        return parse_config(cls, config, "brainscales2 config")

    def to_dict(self) -> dict:
        return config_to_dict(self)

    @property
    def step_cycles(self) -> int:
        return int(round(self.step_us * CYCLES_PER_US))
