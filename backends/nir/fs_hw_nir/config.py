"""Settings of the NIR target (``deploy_configs/nir.toml``)."""

from __future__ import annotations

from dataclasses import dataclass

from fs_hw.lower.config import config_to_dict, setting

SCHEDULES = ("demand", "every_tick")


@dataclass(frozen=True)
class NIRConfig:
    """Validated settings of the NIR target (the ``[target]`` table)."""

    weight_bits: int = setting(16, "grid of the exact graph: a receiver's largest per-step weight |w d(s)| is "
                               "2^(weight_bits-1) - 1 grid units (signed integers of this width)", range=(2, 40))
    input_bits: int = setting(20, "the input enters in units of 2^-input_bits (floored)", range=(1, 40))
    schedule: str = setting("demand", "how the interpreter runs the exact graph: 'demand' evaluates each node at "
                            "the ticks that a read spike needs, 'every_tick' every node at every tick "
                            "(a stepping simulator; slower, same spikes)", choices=SCHEDULES)
    batch_size: int = setting(100, "samples per interpreter batch", range=(1, 100_000))
    K: int | None = setting(None, "optional check of the network's steps per stage", range=(1, 64))

    def to_dict(self) -> dict:
        return config_to_dict(self)

    @property
    def input_scale(self) -> float:
        return float(2.0**self.input_bits)
