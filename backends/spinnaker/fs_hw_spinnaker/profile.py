r"""The SpiNNaker profile: the integer network sPyNNaker's fixed point computes.

sPyNNaker (``IF_curr_delta``) holds membranes and thresholds in s16.15 (a ``REAL`` is
an int32 counting :math:`2^{-15}` mV) and every synaptic weight as a 16-bit magnitude
that the neuron receives shifted left by a per-population, per-receptor *ring-buffer
shift* ``p``: a weight is a multiple of :math:`2^{p}` units of :math:`2^{-15}` mV, at
most :math:`65535 \cdot 2^{p}`. sPyNNaker chooses ``p`` from
``max_expected_summed_weight`` (its rule: :math:`p = \lceil\log_2 S\rceil`, one more
when :math:`2^p \le S`); the backend passes the worst-case column sum ``S`` of each
receptor, because an FS volley lands in one tick. The weight is written as
``rint(|w| * 2**(15 - p)) & 0xFFFF`` (``synapse_dynamics_static.py``): a magnitude of
65536 would wrap to 0, which :func:`spinnaker_profile` rules out.

The integer network counts everything in :math:`2^{-15}` mV ("units"):

* each receiver layer ``L`` (an FS node or the read-out) gets a voltage scale
  :math:`\lambda_L` (a power of two, mV per activation unit) that puts its largest
  column sum near :math:`2^{14}` mV, half the s16.15 range, so thresholds and resets keep
  as many bits as the membrane allows;
* every weighted node that feeds ``L`` stores *per-step weights* (``step_weight``, see
  docs/ir-format.md): ``round(w d_S(t) \lambda_L 2^{15} / 2^p) 2^p``, with ``p`` the
  excitatory shift for positive and the inhibitory shift for negative entries (the
  receptor a sign goes to); biases likewise (they arrive as spikes of a bias source);
* a skip connection that adds a spiking node's output directly gets an explicit
  identity node with per-step weights ``d_S(t)`` (1x1 conv or diagonal dense);
* average pooling becomes a window *sum* (the ``1/window`` goes into the next weights);
* thresholds :math:`T(t)` are rounded to units (``>`` becomes ``>=`` one unit higher:
  the membrane is an integer number of units); resets :math:`h(t)` are inhibitory
  weights, rounded to the inhibitory grid :math:`2^{p_{inh}}`;
* the input is multiplied by ``input_scale`` and floored by the host, which also runs
  the input code (its spikes are sent, not computed on the board).

Every rounding is listed in the notes; the reference on this network with
:func:`spinnaker_numeric_profile` predicts the board (and NEST running the same
weights) spike for spike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from fs_hw.backend import NumericProfile
from fs_hw.errors import ValidationError
from fs_hw.ir import FSActivation, Input, Network, Readout
from fs_hw.ir.code import FSCode
from fs_hw.ir.nodes import Node
from fs_hw.lower.stepnet import Rounding, integer_network, integer_threshold, receiver_sums, step_network

#: units per mV: s16.15
FRACTION_BITS = 15
#: the largest column sum a layer is scaled to, in mV (half of s16.15's 2^16 range, so
#: a membrane that sums every positive and then every negative input never overflows)
TARGET_SUM_MV = 2.0**14
#: a stored weight magnitude (16 bits)
WEIGHT_MAGNITUDE_MAX = 0xFFFF
#: the input code runs on the host in this many units per activation unit
INPUT_SCALE = 2.0**20


def ring_buffer_shift(max_summed_weight: float) -> int:
    """sPyNNaker 7.4's rule (``PopulationVertex.get_ring_buffer_shifts``): the power of
    two just above the largest summed weight (mV), one more when it is met exactly."""
    if max_summed_weight <= 0:
        return 0
    p = int(math.ceil(max(0.0, math.log2(max_summed_weight))))
    return p + 1 if 2.0**p <= max_summed_weight else p


def spinnaker_numeric_profile() -> NumericProfile:
    return NumericProfile(
        name="spinnaker",
        dtype="int64",
        membrane_bits=32,
        input_scale=INPUT_SCALE,
        input_rounding="floor",
        description=(
            "SpiNNaker (sPyNNaker IF_curr_delta): s16.15 membranes and thresholds (integers of "
            "2^-15 mV), 16-bit weight magnitudes shifted per population and receptor, fires on >=; "
            "the input code runs on the host"
        ),
    )


@dataclass
class LayerScale:
    """What the profile chose for one receiver layer (all sums in mV)."""

    name: str
    mv_per_unit: float  # lambda: mV per activation unit
    max_summed: dict[str, float]  # per receptor, worst-case column sum (mV) = max_expected_summed_weight
    shift: dict[str, int]  # per receptor, the ring-buffer shift sPyNNaker derives from it

    def grid(self, receptor: str) -> int:
        """Weights on ``receptor`` are multiples of this many units."""
        return 2 ** self.shift[receptor]

    def to_dict(self) -> dict:
        return {"mv_per_unit": self.mv_per_unit, "max_summed_weight_mv": dict(self.max_summed),
                "ring_buffer_shift": dict(self.shift)}


@dataclass
class ProfileInfo:
    input_scale: float
    layers: dict[str, LayerScale] = field(default_factory=dict)


class _Profiler:
    def __init__(self, network: Network):
        self.steps = step_network(network, "SpiNNaker")
        self.net = self.steps.network
        self.notes: list[str] = []
        self.scales: dict[str, LayerScale] = {}
        #: per receiver, column sums (activation units) measured on the rounded weights:
        #: rounding up may push a sum past the float bound
        self.floors: dict[str, tuple[float, float]] = {}

    def choose_scales(self) -> None:
        net, steps = self.net, self.steps
        sums = receiver_sums(steps, lambda n: steps.float_steps[n], lambda n: net.by_name[n].bias)
        for node in net.order:
            if not isinstance(node, (FSActivation, Readout)):
                continue
            s_exc, s_inh = sums[node.name]
            if isinstance(node, FSActivation):
                code = net.code_of(node)
                # the last cell receives every earlier reset: h > 0 inhibits, h < 0 excites
                s_inh += float(np.clip(code.h[:-1], 0, None).sum())
                s_exc += float(np.clip(-code.h[:-1], 0, None).sum())
                t_max = float(np.abs(code.T).max(initial=0.0))
                # a cell whose threshold is <= 0 would fire at rest: it rests that far below 0
                # and a gate input from the bias source lifts it in its decision tick
                # (fs_hw.lower.unroll); the gate is at most twice that far, on the grid
                s_exc += 2.0 * max(0.0, -float(code.T.min())) + 2.0**-12 * max(s_exc, s_inh)
            else:
                t_max = 0.0
            floor_exc, floor_inh = self.floors.get(node.name, (0.0, 0.0))
            s_exc, s_inh = max(s_exc, floor_exc), max(s_inh, floor_inh)
            top = max(s_exc, s_inh, t_max, 1e-300)
            lam = 2.0 ** math.floor(math.log2(TARGET_SUM_MV / top))
            shift = {"excitatory": ring_buffer_shift(s_exc * lam), "inhibitory": ring_buffer_shift(s_inh * lam)}
            self.scales[node.name] = LayerScale(node.name, lam, {"excitatory": s_exc * lam,
                                                                 "inhibitory": s_inh * lam}, shift)

    # -- integer network --------------------------------------------------------------
    def _on_grid(self, values: np.ndarray, scale: LayerScale, what: str) -> np.ndarray:
        """Values (activation units) as integers of units, positive ones on the excitatory
        grid, negative ones on the inhibitory grid."""
        units = values * scale.mv_per_unit * 2.0**FRACTION_BITS
        g_exc, g_inh = scale.grid("excitatory"), scale.grid("inhibitory")
        out = np.where(units > 0, np.round(units / g_exc) * g_exc, np.round(units / g_inh) * g_inh)
        for receptor, mask, g in (("excitatory", out > 0, g_exc), ("inhibitory", out < 0, g_inh)):
            if mask.any() and float(np.abs(out[mask]).max()) / g > WEIGHT_MAGNITUDE_MAX:
                raise ValidationError(what, "weight", f"needs a {receptor} magnitude above 16 bits (internal error)")
        return out

    def _step_weights(self, name: str) -> np.ndarray:
        node = self.net.by_name[name]
        scale = self.scales[self.steps.receiver[name]]
        fl = self.steps.float_steps[name]
        sw = self._on_grid(fl, scale, node.label)
        wmax = float(np.abs(fl).max(initial=0.0))
        if wmax > 0:
            unit = 1.0 / (scale.mv_per_unit * 2.0**FRACTION_BITS)
            err = float(np.abs(sw * unit - fl).max()) / wmax
            zeroed = int(np.count_nonzero((sw == 0) & (fl != 0)))
            self.notes.append(
                f"{node.label}: per-step weights w*d(t) on 16-bit grids of 2^{scale.shift['excitatory']} "
                f"(excitatory) / 2^{scale.shift['inhibitory']} (inhibitory) units of 2^-15 mV: max error "
                f"{err:.2e} of the largest term; {zeroed} of {int(np.count_nonzero(fl))} non-zero terms round to 0"
            )
        return sw

    def _bias(self, name: str) -> np.ndarray:
        node = self.net.by_name[name]
        return self._on_grid(node.bias, self.scales[self.steps.receiver[name]], node.label)

    def _code(self, node: Node, code: FSCode) -> FSCode:
        """The code in units: thresholds exact for an integer membrane, resets on their
        receptor's grid (a positive reset inhibits, a negative one excites)."""
        if isinstance(node, Input):
            per, g_exc, g_inh = INPUT_SCALE, 1, 1
        else:
            scale = self.scales[node.name]
            per = scale.mv_per_unit * 2.0**FRACTION_BITS
            g_exc, g_inh = scale.grid("excitatory"), scale.grid("inhibitory")
        T = integer_threshold(code.T, per, code.rule)
        hs = code.h * per
        h = np.where(hs > 0, np.round(hs / g_inh) * g_inh, np.round(hs / g_exc) * g_exc)
        err = float(np.abs(h / per - code.h).max())
        top = max(float(np.abs(code.h).max()), 1e-300)
        if err > 1e-9 * top:
            self.notes.append(
                f"{node.label}: code {code.name!r} resets rounded to the receptor grids 2^{int(math.log2(g_inh))} "
                f"(inhibitory) / 2^{int(math.log2(g_exc))} (excitatory) units (max error {err / top:.2e} of "
                f"the largest reset); thresholds kept exactly (an integer membrane)"
            )
        # d is carried by the per-step weights of every consumer; the table keeps the
        # code's d in the same units for reading only
        return FSCode(f"{code.name}@{node.name}", T, h, np.round(code.d * per), ">=", code.provenance)

    def run(self) -> tuple[Network, list[str], ProfileInfo]:
        rounding = Rounding(self._step_weights, self._bias, self._code)
        for _ in range(4):
            self.choose_scales()
            notes_before = len(self.notes)
            int_net = integer_network(self.steps, rounding, "spinnaker_profile", {})
            measured = self._quantized_sums(int_net)
            changed = False
            for name, (exc, inh) in measured.items():
                scale = self.scales[name]
                # sPyNNaker gets a number at least the rounded sum (no ring buffer saturates)
                # that gives the shift the weights were rounded for
                exc = max(exc, scale.max_summed["excitatory"])
                inh = max(inh, scale.max_summed["inhibitory"])
                if (ring_buffer_shift(exc) != scale.shift["excitatory"]
                        or ring_buffer_shift(inh) != scale.shift["inhibitory"]):
                    lam = scale.mv_per_unit
                    self.floors[name] = (exc / lam, inh / lam)
                    changed = True
                scale.max_summed = {"excitatory": exc, "inhibitory": inh}
            if not changed:
                metadata = dict(int_net.metadata)
                metadata["spinnaker_profile"] = {
                    "input_scale": INPUT_SCALE,
                    "layers": {k: v.to_dict() for k, v in self.scales.items()},
                }
                int_net = Network(int_net.nodes, dict(int_net.codes), metadata)
                return int_net, self.notes, ProfileInfo(INPUT_SCALE, dict(self.scales))
            del self.notes[notes_before:]
        raise ValidationError("spinnaker profile", "ring-buffer shifts",
                              "did not settle after rounding (internal error)")

    def _quantized_sums(self, int_net: Network) -> dict[str, tuple[float, float]]:
        """Per receiver, worst-case column sums (mV) of the rounded network: per-step
        weights, biases, resets and gates, as its cells will receive them."""
        from fs_hw.lower.unroll import gates

        sums = receiver_sums(self.steps, lambda n: int_net.by_name[n].step_weight, lambda n: int_net.by_name[n].bias)
        out = {}
        for rec, (exc, inh) in sums.items():
            node = int_net.by_name[rec]
            if isinstance(node, FSActivation):
                code = int_net.code_of(node)
                inh += float(np.clip(code.h[:-1], 0, None).sum())
                exc += float(np.clip(-code.h[:-1], 0, None).sum())
                exc += float(gates(code.T, self.scales[rec].grid("excitatory")).max(initial=0))
            out[rec] = (exc / 2.0**FRACTION_BITS, inh / 2.0**FRACTION_BITS)
        return out


def spinnaker_profile(network: Network) -> tuple[Network, NumericProfile, list[str], ProfileInfo]:
    """Quantize ``network`` as sPyNNaker stores it: ``(integer network, profile, notes, info)``.

    The reference run on the first two predicts the board (and NEST running the same
    weights) spike for spike; ``notes`` lists every rounding; ``info.layers`` holds each
    receiver's voltage scale, ``max_expected_summed_weight`` and ring-buffer shifts.
    """
    int_net, notes, info = _Profiler(network).run()
    return int_net, spinnaker_numeric_profile(), notes, info
