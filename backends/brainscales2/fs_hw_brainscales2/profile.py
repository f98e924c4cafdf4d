r"""The BrainScaleS-2 profile: the integer network the chip's 6-bit synapses compute.

A synapse holds an unsigned 6-bit weight (0..63) on a row whose sign is fixed
(excitatory or inhibitory). Each receiver layer ``L`` gets one unit ``u_L``: the largest
per-step term ``|w d(s)|`` of the weighted nodes feeding it is 63 units, every per-step
weight is ``round(w d(s) / u_L)`` in [-63, 63] (terms below half a unit become 0: the
light late steps of a code lose first). Biases, resets ``h(t)`` and gates are integers of
the same unit that may exceed 63: they are sent to several synapses at once (as grenade
splits a large weight), which is exact. Thresholds are exact for the integer membrane
(``v >= ceil(T / u)``). The input code runs on the host (its spikes are events).

:func:`bss2_profile` returns the integer IR network and the int64 profile under which the
reference predicts the replayer (and so the chip's digital semantics) spike for spike.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fs_hw.backend import NumericProfile
from fs_hw.ir import FSActivation, Input, Network, Readout
from fs_hw.ir.code import FSCode
from fs_hw.ir.nodes import Node
from fs_hw.lower.stepnet import Rounding, integer_network, integer_threshold, step_network
from fs_hw_brainscales2.config import WEIGHT_MAX

#: the host runs the input code in this many units per activation unit
INPUT_SCALE = 2.0**20


def bss2_numeric_profile() -> NumericProfile:
    return NumericProfile(
        name="brainscales2",
        dtype="int64",
        membrane_bits=None,
        input_scale=INPUT_SCALE,
        input_rounding="floor",
        description=(
            "BrainScaleS-2 (digital semantics of the export): per-step weights of 6 bits + sign per synapse, "
            "integer thresholds, biases and resets as several synapses; the input code runs on the host"
        ),
    )


@dataclass
class ProfileInfo:
    input_scale: float
    units: dict[str, float] = field(default_factory=dict)  # receiver -> activation units per weight step


def bss2_profile(network: Network, synapses_per_weight: int = 1) -> tuple[Network, NumericProfile, list[str],
                                                                           ProfileInfo]:
    """``(integer network, profile, notes, info)`` for BrainScaleS-2 (see the module docstring).

    ``synapses_per_weight``: the largest per-step term is ``63 * synapses_per_weight``
    units, so terms above 63 take several synapses (exact): each doubling buys a bit of
    weight resolution for up to that many rows per input.
    """
    steps = step_network(network, "BrainScaleS-2")
    net = steps.network
    notes: list[str] = []
    units: dict[str, float] = {}
    for node in net.order:
        if isinstance(node, (FSActivation, Readout)):
            top = max((float(np.abs(steps.float_steps[n]).max(initial=0.0)) for n in steps.feeding(node.name)),
                      default=0.0)
            units[node.name] = top / (WEIGHT_MAX * synapses_per_weight) if top > 0 else 1.0

    def step_weights(name: str) -> np.ndarray:
        fl = steps.float_steps[name]
        u = units[steps.receiver[name]]
        sw = np.round(fl / u)
        nz = int(np.count_nonzero(fl))
        if nz:
            zeroed = int(np.count_nonzero((sw == 0) & (fl != 0)))
            err = float(np.abs(sw * u - fl).max()) / float(np.abs(fl).max())
            per_step = [int(np.count_nonzero((sw[t] == 0) & (fl[t] != 0))) for t in range(len(fl))]
            notes.append(
                f"{net.by_name[name].label}: per-step weights w*d(t) as {synapses_per_weight} x 6-bit magnitudes "
                f"+ sign (unit {u:.4g}): "
                f"max error {err:.2e} of the largest term; {zeroed} of {nz} non-zero terms round to 0 "
                f"(per step: {per_step})"
            )
        return sw

    def bias(name: str) -> np.ndarray:
        return np.round(net.by_name[name].bias / units[steps.receiver[name]])

    def code(node: Node, c: FSCode) -> FSCode:
        per = INPUT_SCALE if isinstance(node, Input) else 1.0 / units[node.name]
        T = integer_threshold(c.T, per, c.rule)
        h = np.round(c.h * per)
        top = max(float(np.abs(c.h).max()), 1e-300)
        err = float(np.abs(h / per - c.h).max())
        if isinstance(node, FSActivation) and err > 1e-9 * top:
            notes.append(f"{node.label}: code {c.name!r} resets rounded to the weight step (max error "
                         f"{err / top:.2e} of the largest reset); thresholds kept exactly")
        return FSCode(f"{c.name}@{node.name}", T, h, np.round(c.d * per), ">=", c.provenance)

    int_net = integer_network(steps, Rounding(step_weights, bias, code), "brainscales2_profile",
                              {"input_scale": INPUT_SCALE, "units": dict(units)})
    return int_net, bss2_numeric_profile(), notes, ProfileInfo(INPUT_SCALE, units)
