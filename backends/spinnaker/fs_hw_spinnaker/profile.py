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
from fs_hw.errors import UnsupportedError, ValidationError
from fs_hw.ir import Add, AvgPool2d, Conv2d, Dense, Flatten, FSActivation, Input, Network, Readout
from fs_hw.ir.code import FSCode
from fs_hw.ir.nodes import Node

#: units per mV: s16.15
FRACTION_BITS = 15
#: the largest column sum a layer is scaled to, in mV (half of s16.15's 2^16 range, so
#: a membrane that sums every positive and then every negative input never overflows)
TARGET_SUM_MV = 2.0**14
#: a stored weight magnitude (16 bits)
WEIGHT_MAGNITUDE_MAX = 0xFFFF
#: the input code runs on the host in this many units per activation unit
INPUT_SCALE = 2.0**20
SUPPORTED = (Input, Dense, Conv2d, AvgPool2d, Flatten, Add, FSActivation, Readout)
RECEPTORS = ("excitatory", "inhibitory")


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


def _receiver_of(network: Network, name: str) -> str:
    """The FS node or read-out a linear node's output ends in (through adds, not through
    weighted nodes, pooling or flatten: those get their own receiver's scale)."""
    node = network.by_name[name]
    for consumer in network.consumers[name]:
        c = network.by_name[consumer]
        if isinstance(c, (FSActivation, Readout)):
            return consumer
        if isinstance(c, Add):
            return _receiver_of(network, consumer)
    raise UnsupportedError(
        f"{node.label}: on SpiNNaker a weighted node must feed an FS activation or the read-out "
        f"(directly or through a residual add); it feeds {list(network.consumers[name])}"
    )


def _window_product(network: Network, chain: tuple[str, ...]) -> float:
    m = 1.0
    for name in chain:
        node = network.by_name[name]
        if isinstance(node, AvgPool2d):
            (kh, kw), _ = node.window(network.shapes[node.input])
            m *= kh * kw
        elif not isinstance(node, Flatten):
            raise UnsupportedError(f"{node.label}: only pooling and flatten may lie between a spiking node "
                                   "and the weights that read it on SpiNNaker")
    return m


class _Profiler:
    def __init__(self, network: Network):
        self.net = network
        self.notes: list[str] = []
        # per weighted node: (source, chain) and float per-step weights in activation units
        self.sources: dict[str, tuple[str, tuple[str, ...]]] = {}
        self.float_steps: dict[str, np.ndarray] = {}
        self.receiver: dict[str, str] = {}
        self.scales: dict[str, LayerScale] = {}
        #: per receiver, column sums (activation units) measured on the rounded weights:
        #: rounding up may push a sum past the float bound
        self.floors: dict[str, tuple[float, float]] = {}

    # -- checks and float step weights ------------------------------------------------
    def check(self) -> None:
        net = self.net
        for node in net.nodes:
            if not isinstance(node, SUPPORTED):
                raise UnsupportedError(
                    f"{node.label}: node kind {node.kind!r} is not supported by the SpiNNaker target")
        if net.input.code is None:
            raise UnsupportedError(
                f"{net.input.label}: analog input; SpiNNaker receives spikes only: give the input an FS code"
            )
        for node in net.nodes:
            if isinstance(node, (FSActivation, Readout)) and net.is_spiking(net.by_name[node.input]):
                raise UnsupportedError(
                    f"{node.label}: reads the spiking node {node.input!r} directly; put a weighted node between"
                )
            if isinstance(node, Add):
                for op in node.operands:
                    o = net.by_name[op]
                    if not (net.is_spiking(o) or isinstance(o, (Dense, Conv2d))):
                        raise UnsupportedError(
                            f"{node.label}: operand {op!r} is a {o.kind}; on SpiNNaker an add sums weighted "
                            "nodes and spiking nodes"
                        )

    def float_step_weights(self, node: Dense | Conv2d) -> np.ndarray:
        net = self.net
        try:
            src, chain = net.step_source(node.name)
        except ValidationError as exc:
            raise UnsupportedError(
                f"{node.label}: SpiNNaker stores one weight per source step, so a weighted node must read "
                f"one spiking node through pooling/flatten only ({exc})"
            ) from None
        window = _window_product(net, chain)
        d = net.code_of(net.by_name[src]).d
        self.sources[node.name] = (src, chain)
        base = node.weight if node.step_weight is None else None
        if base is None:
            raise UnsupportedError(f"{node.label}: already carries per-step weights; convert from a float network")
        return np.stack([base * (float(dt) / window) for dt in d])

    # -- column sums ------------------------------------------------------------------
    @staticmethod
    def _row_sums(node: Dense | Conv2d, steps: np.ndarray, window: float) -> tuple[np.ndarray, np.ndarray]:
        """Per output neuron (dense) or channel (conv): sum over steps and inputs of the
        positive and of the negative entries of the composed map (an upper bound at
        image borders, where padding drops taps)."""
        pos = np.where(steps > 0, steps, 0.0) * window
        neg = np.where(steps < 0, -steps, 0.0) * window
        axes = (0, 2) if isinstance(node, Dense) else (0, 2, 3, 4)
        return pos.sum(axis=axes), neg.sum(axis=axes)

    def choose_scales(self) -> None:
        net = self.net
        sums: dict[str, list[np.ndarray]] = {}
        for node in net.order:
            if isinstance(node, (Dense, Conv2d)):
                steps = self.float_steps[node.name]
                _, chain = self.sources[node.name]
                pos, neg = self._row_sums(node, steps, _window_product(net, chain))
                b = node.bias
                pos = pos + np.where(b > 0, b, 0.0)
                neg = neg + np.where(b < 0, -b, 0.0)
                rec = self.receiver[node.name]
                acc = sums.setdefault(rec, [np.zeros_like(pos), np.zeros_like(neg)])
                acc[0] = acc[0] + pos
                acc[1] = acc[1] + neg
        for node in net.order:
            if not isinstance(node, (FSActivation, Readout)):
                continue
            pos, neg = sums[node.name]
            s_exc, s_inh = float(pos.max(initial=0.0)), float(neg.max(initial=0.0))
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

    def _weighted(self, node: Dense | Conv2d) -> Node:
        scale = self.scales[self.receiver[node.name]]
        sw = self._on_grid(self.float_steps[node.name], scale, node.label)
        b = self._on_grid(node.bias, scale, node.label)
        unit = 1.0 / (scale.mv_per_unit * 2.0**FRACTION_BITS)
        nominal = np.round(node.weight / unit)
        wmax = float(np.abs(self.float_steps[node.name]).max(initial=0.0))
        if wmax > 0:
            err = float(np.abs(sw * unit - self.float_steps[node.name]).max()) / wmax
            zeroed = int(np.count_nonzero((sw == 0) & (self.float_steps[node.name] != 0)))
            total = int(np.count_nonzero(self.float_steps[node.name]))
            self.notes.append(
                f"{node.label}: per-step weights w*d(t) on 16-bit grids of 2^{scale.shift['excitatory']} "
                f"(excitatory) / 2^{scale.shift['inhibitory']} (inhibitory) units of 2^-15 mV: max error "
                f"{err:.2e} of the largest term; {zeroed} of {total} non-zero terms round to 0"
            )
        if isinstance(node, Dense):
            return Dense(node.name, node.input, nominal, b, step_weight=sw)
        return Conv2d(node.name, node.input, nominal, b, stride=node.stride, padding=node.padding, step_weight=sw)

    def _identity_for(self, add: Add, op: str) -> Node:
        """An explicit identity node with per-step weights d(t) for a spiking add operand."""
        net = self.net
        shape = net.shapes[op]
        name = f"{add.name}__skip_{op}"
        if len(shape) == 3:
            w = np.zeros((shape[0], shape[0], 1, 1))
            for i in range(shape[0]):
                w[i, i] = 1.0
            return Conv2d(name, op, w, np.zeros(shape[0]))
        return Dense(name, op, np.eye(shape[0]), np.zeros(shape[0]))

    def _code(self, node: Node, code: FSCode, mv_per_unit: float, grids: tuple[int, int]) -> FSCode:
        """The code in units: thresholds exact for an integer membrane (``v >= T`` iff
        ``v >= ceil(T)``, ``v > T`` iff ``v >= floor(T) + 1``), resets on their receptor's grid
        (a positive reset inhibits, a negative one excites)."""
        per = mv_per_unit * 2.0**FRACTION_BITS
        scaled = code.T * per
        T = np.ceil(scaled) if code.rule == ">=" else np.floor(scaled) + 1
        g_exc, g_inh = grids
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
        d = np.round(code.d * per)
        return FSCode(f"{code.name}@{node.name}", T, h, d, ">=", code.provenance)

    def run(self) -> tuple[Network, list[str], ProfileInfo]:
        self.check()
        net = self.net
        # a spiking operand of an add becomes an identity node with per-step weights
        nodes: list[Node] = []
        for node in net.order:
            if isinstance(node, Add):
                ops = []
                for op in node.operands:
                    if net.is_spiking(net.by_name[op]):
                        ident = self._identity_for(node, op)
                        nodes.append(ident)
                        ops.append(ident.name)
                    else:
                        ops.append(op)
                nodes.append(Add(node.name, operands=tuple(ops)))
            else:
                nodes.append(node)
        self.net = net = Network(tuple(nodes), dict(net.codes), dict(net.metadata))
        for node in net.order:
            if isinstance(node, (Dense, Conv2d)):
                self.float_steps[node.name] = self.float_step_weights(node)
                self.receiver[node.name] = _receiver_of(net, node.name)
        for _ in range(4):
            self.choose_scales()
            notes_before = len(self.notes)
            int_net = self._build()
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

        sums: dict[str, list[np.ndarray]] = {}
        for name, rec in self.receiver.items():
            node = int_net.by_name[name]
            _, chain = self.sources[name]
            pos, neg = self._row_sums(node, node.step_weight, _window_product(self.net, chain))
            b = node.bias
            pos = pos + np.where(b > 0, b, 0.0)
            neg = neg + np.where(b < 0, -b, 0.0)
            acc = sums.setdefault(rec, [np.zeros_like(pos), np.zeros_like(neg)])
            acc[0] = acc[0] + pos
            acc[1] = acc[1] + neg
        out = {}
        for rec, (pos, neg) in sums.items():
            exc, inh = float(pos.max(initial=0.0)), float(neg.max(initial=0.0))
            node = int_net.by_name[rec]
            if isinstance(node, FSActivation):
                code = int_net.code_of(node)
                inh += float(np.clip(code.h[:-1], 0, None).sum())
                exc += float(np.clip(-code.h[:-1], 0, None).sum())
                exc += float(gates(code.T, self.scales[rec].grid("excitatory")).max(initial=0))
            out[rec] = (exc / 2.0**FRACTION_BITS, inh / 2.0**FRACTION_BITS)
        return out

    def _build(self) -> Network:
        net = self.net
        new_nodes: list[Node] = []
        codes: dict[str, FSCode] = {}
        inp = net.input
        in_code = net.code_of(inp)
        for node in net.order:
            if isinstance(node, Input):
                c = self._code(node, in_code, INPUT_SCALE / 2.0**FRACTION_BITS, (1, 1))
                codes[c.name] = c
                new_nodes.append(Input(node.name, node.shape, c.name))
            elif isinstance(node, FSActivation):
                scale = self.scales[node.name]
                c = self._code(node, net.code_of(node), scale.mv_per_unit,
                               (scale.grid("excitatory"), scale.grid("inhibitory")))
                codes[c.name] = c
                new_nodes.append(FSActivation(node.name, node.input, c.name))
            elif isinstance(node, (Dense, Conv2d)):
                new_nodes.append(self._weighted(node))
            elif isinstance(node, AvgPool2d):
                shape = net.shapes[node.input]
                (kh, kw), stride = node.window(shape)
                C = shape[0]
                w = np.zeros((C, C, kh, kw))
                for c in range(C):
                    w[c, c] = 1.0
                new_nodes.append(Conv2d(node.name, node.input, w, np.zeros(C), stride=stride, padding=0))
            else:
                new_nodes.append(node)
        return Network(tuple(new_nodes), codes, dict(net.metadata))


def spinnaker_profile(network: Network) -> tuple[Network, NumericProfile, list[str], ProfileInfo]:
    """Quantize ``network`` as sPyNNaker stores it: ``(integer network, profile, notes, info)``.

    The reference run on the first two predicts the board (and NEST running the same
    weights) spike for spike; ``notes`` lists every rounding; ``info.layers`` holds each
    receiver's voltage scale, ``max_expected_summed_weight`` and ring-buffer shifts.
    """
    int_net, notes, info = _Profiler(network).run()
    return int_net, spinnaker_numeric_profile(), notes, info
