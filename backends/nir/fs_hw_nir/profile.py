r"""The NIR target's grid: the integer network that the exact NIR graph computes.

NIR's nodes compute in real numbers; a tool computes them in float32 or float64 and adds
in whatever order its kernels choose. The exact graph is equal to the reference spike for
spike in *every* such tool only if no sum depends on that order, so its weights live on
an integer grid (as SpiNNaker's and BrainScaleS-2's profiles do, through
:mod:`fs_hw.lower.stepnet`):

* each receiver (FS layer or read-out) gets one unit ``u``: its largest per-step term
  ``|w d(s)|`` is ``2^(weight_bits-1) - 1`` units, every per-step weight and bias is
  rounded to the nearest unit, resets ``h(t)`` to the nearest unit;
* thresholds are exact for the integer membrane (``v >= ceil(T / u)``; rule ``>`` as
  ``v >= floor(T / u) + 1``), so every code runs the ``>=`` rule on integers;
* the input enters in units of ``2^-input_bits``, floored.

Every value of the graph is then an integer whose partial sums stay below the bound
recorded in ``info.max_abs_sum``; below 2^53 every float64 order of addition is exact
(the lowering refuses a grid above it), below 2^24 every float32 order too.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fs_hw.backend import NumericProfile
from fs_hw.errors import ResourceError
from fs_hw.ir import FSActivation, Input, Network
from fs_hw.ir.code import FSCode
from fs_hw.ir.nodes import Node
from fs_hw.lower.stepnet import Rounding, StepNetwork, integer_network, integer_threshold, receiver_sums, step_network

#: float64 adds integers exactly, in any order, while every partial sum stays below this
FLOAT64_EXACT = 2.0**53
#: likewise for float32 (what most NIR tools compute in)
FLOAT32_EXACT = 2.0**24


@dataclass
class GridInfo:
    """What the grid chose: the source network, its per-step form, units, and the bound
    on every partial sum of the exact graph (input code excluded: it depends on the data)."""

    source: Network
    steps: StepNetwork
    input_scale: float
    weight_bits: int
    units: dict[str, float] = field(default_factory=dict)  # receiver -> activation units per grid unit
    max_abs_sum: float = 0.0

    @property
    def float32_exact(self) -> bool:
        return self.max_abs_sum < FLOAT32_EXACT


def nir_numeric_profile(input_scale: float) -> NumericProfile:
    return NumericProfile(
        name="nir-grid",
        dtype="int64",
        membrane_bits=None,
        input_scale=input_scale,
        input_rounding="floor",
        description="the exact NIR graph's integer grid: per-step weights w*d(s), biases and resets rounded to one "
                    "unit per receiver, thresholds exact, input floored to 2^-input_bits",
    )


def nir_grid(network: Network, weight_bits: int, input_scale: float) -> tuple[Network, NumericProfile, list[str],
                                                                               GridInfo]:
    """``(integer network, profile, notes, info)`` of the exact NIR graph (module docstring)."""
    steps = step_network(network, "NIR")
    net = steps.network
    top_units = 2 ** (weight_bits - 1) - 1
    info = GridInfo(network, steps, input_scale, weight_bits)
    for receiver in sorted(set(steps.receiver.values())):
        top = max(float(np.abs(steps.float_steps[n]).max(initial=0.0)) for n in steps.feeding(receiver))
        info.units[receiver] = top / top_units if top > 0 else 1.0
    notes: list[str] = []
    rounded: dict[str, np.ndarray] = {}

    def step_weights(name: str) -> np.ndarray:
        exact = steps.float_steps[name]
        unit = info.units[steps.receiver[name]]
        grid = np.round(exact / unit)
        rounded[name] = grid
        if np.count_nonzero(exact):
            err = float(np.abs(grid * unit - exact).max()) / float(np.abs(exact).max())
            lost = int(np.count_nonzero((grid == 0) & (exact != 0)))
            notes.append(f"{net.by_name[name].label}: per-step weights w*d(s) on a {weight_bits}-bit grid "
                         f"(unit {unit:.4g}): max error {err:.2e} of the largest term, {lost} of "
                         f"{int(np.count_nonzero(exact))} non-zero terms round to 0")
        return grid

    def bias(name: str) -> np.ndarray:
        return np.round(net.by_name[name].bias / info.units[steps.receiver[name]])

    def code(node: Node, c: FSCode) -> FSCode:
        per_unit = input_scale if isinstance(node, Input) else 1.0 / info.units[node.name]
        h = np.round(c.h * per_unit)
        err = float(np.abs(h / per_unit - c.h).max())
        if isinstance(node, FSActivation) and err > 1e-9 * max(float(np.abs(c.h).max()), 1e-300):
            notes.append(f"{node.label}: code {c.name!r} resets rounded to the grid (max error "
                         f"{err * per_unit:.3g} units); thresholds exact")
        return FSCode(f"{c.name}@{node.name}", integer_threshold(c.T, per_unit, c.rule), h,
                      np.round(c.d * per_unit), ">=", c.provenance)

    int_net = integer_network(steps, Rounding(step_weights, bias, code), "nir_grid",
                              {"weight_bits": weight_bits, "input_scale": input_scale, "units": dict(info.units)})
    # the largest |partial sum| a receiver's membrane (or an Affine/Conv2d feeding it) can
    # reach: all its positive or all its negative terms, plus every reset of its code
    def largest_bias(name: str) -> np.ndarray:  # per output channel; a bias map's largest entry
        grid = np.abs(bias(name))
        return grid.reshape(grid.shape[0], -1).max(axis=1) if grid.ndim == 3 else grid

    sums = receiver_sums(steps, lambda n: rounded[n], largest_bias)
    for receiver, (pos, neg) in sums.items():
        node = int_net.by_name[receiver]
        resets = float(np.abs(int_net.code_of(node).h).sum()) if isinstance(node, FSActivation) else 0.0
        info.max_abs_sum = max(info.max_abs_sum, pos + neg + resets)
    if info.max_abs_sum >= FLOAT64_EXACT:
        raise ResourceError(f"NIR grid: weight_bits={weight_bits} lets a membrane reach {info.max_abs_sum:.3g} grid "
                            f"units, above 2^53 (float64 would round sums); lower weight_bits")
    notes.append(f"NIR grid: every partial sum of the exact graph is an integer below {info.max_abs_sum:.3g} "
                 f"(2^{np.log2(max(info.max_abs_sum, 1)):.1f}): exact in float64"
                 + (" and float32" if info.float32_exact else f"; float32 tools need weight_bits <= "
                    f"{_float32_bits(info.max_abs_sum, weight_bits)}"))
    return int_net, nir_numeric_profile(input_scale), notes, info


def _float32_bits(bound: float, weight_bits: int) -> int:
    """The largest weight_bits whose bound stays below 2^24 (the bound scales with 2^bits)."""
    bits = weight_bits
    while bits > 2 and bound >= FLOAT32_EXACT:
        bound /= 2
        bits -= 1
    return bits
