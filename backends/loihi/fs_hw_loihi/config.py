"""Settings of the Loihi target (the ``[target]`` table of ``deploy_configs/loihi.toml``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from fs_hw.errors import ValidationError


@dataclass(frozen=True)
class LoihiConfig:
    """Validated target settings.

    Parameters
    ----------
    chips, cores_per_chip
        The board: a network that needs more cores than ``chips * cores_per_chip`` is
        refused before it runs. Loihi has 128 cores per chip; Nahuku boards 8-32 chips.
    emulator
        ``True`` forces nengo-loihi's emulator; ``False`` (default) uses the hardware
        when NxSDK can be imported, else the emulator.
    batch_size
        Samples per emulator/hardware run (fs-deploy feeds the inputs in chunks of this
        size; inside a chunk samples flow as a pipeline).
    K
        Optional check: the steps per stage the network must have.
    d_digits
        Signed powers of two a fitted code's output weight ``d(t)`` may use (each one
        is one more synapse per weight); ReLU codes need one.
    max_d_power
        Largest power of two in an output weight (range of ``d`` in bits).
    seed
        Seed passed to the emulator (no stochastic parts are used).
    """

    chips: int = 1
    cores_per_chip: int = 128
    emulator: bool = False
    batch_size: int = 50
    K: int | None = None
    d_digits: int = 3
    max_d_power: int = 13
    seed: int = 0

    @classmethod
    def from_mapping(cls, config: Mapping[str, Any] | None) -> LoihiConfig:
        where = "loihi config"
        known = {f.name: f for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, value in dict(config or {}).items():
            if key not in known:
                raise ValidationError(where, key, f"unknown key; known: {sorted(known)}")
            if key == "emulator":
                if not isinstance(value, bool):
                    raise ValidationError(where, key, f"must be true or false, got {value!r}")
            elif isinstance(value, bool) or not isinstance(value, int):
                raise ValidationError(where, key, f"must be an integer, got {value!r}")
            values[key] = value
        cfg = cls(**values)
        checks = {
            "chips": (1, 16384),
            "cores_per_chip": (1, 128),
            "batch_size": (1, 10**6),
            "K": (1, 64),
            "d_digits": (1, 8),
            "max_d_power": (0, 14),
            "seed": (0, 2**31 - 1),
        }
        for key, (lo, hi) in checks.items():
            value = getattr(cfg, key)
            if value is not None and not lo <= value <= hi:
                raise ValidationError(where, key, f"must be in [{lo}, {hi}], got {value}")
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}
