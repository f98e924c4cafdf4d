r"""The Loihi profile: the integer network the chip computes, and how it was chosen.

:func:`loihi_profile` turns a float IR network into an IR network whose arrays hold the
exact integers the chip uses, plus the integer :class:`~fs_hw.backend.NumericProfile`
under which :func:`fs_hw.reference.simulator.run_reference` predicts the chip spike for
spike. Every value is given a *unit* (the real number one integer step stands for):

* the input is multiplied by ``input_scale`` and floored (the host does this); the
  input code's thresholds and resets are in the same unit;
* a spiking node's output weights ``d(t)`` get a unit :math:`\delta` such that
  :math:`d(t)/\delta` is an integer made of at most ``d_digits`` signed powers of two
  no larger than ``2**max_d_power`` (exact for ReLU codes, whose ``d`` are powers of two);
* a dense or conv node gets the unit that makes its largest weight a 7-bit mantissa:
  :math:`W = \mathrm{round}(w\, u_{in}/u)`, :math:`|W| \le 127\cdot 2^k` (the chip's
  weight format); biases are rounded to the same unit;
* average pooling becomes an integer window *sum* (a conv with ones), whose unit is the
  input unit divided by the window size: exact, nothing rounded;
* a residual add needs one unit for all operands: a weighted operand is re-scaled to it,
  an operand that is a spiking node's output gets an explicit integer scaling node
  (a 1x1 conv or diagonal dense with weight :math:`2^q`, exact);
* an FS node's thresholds and resets are rounded to its input's unit.

If the worst-case membrane of some layer does not fit Loihi's registers (see
:mod:`fs_hw_loihi.bounds`), that layer's unit is doubled (one weight bit less) and the
profile is recomputed. Every rounding is listed in the returned notes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from fs_hw.backend import NumericProfile
from fs_hw.errors import ResourceError, UnsupportedError, ValidationError
from fs_hw.ir import Add, AvgPool2d, Conv2d, Dense, Flatten, FSActivation, Input, Network, Readout
from fs_hw.ir.code import FSCode
from fs_hw.ir.nodes import Node
from fs_hw_loihi.config import LoihiConfig
from fs_hw_loihi.fixedpoint import WEIGHT_TERM_MAX, quantize_mantissa, round_to_digits

#: Loihi's 24-bit membrane in the program's units of 64 chip steps (fixedpoint.CHIP_UNIT)
MEMBRANE_BITS = 18
#: a receiver's input unit is never coarsened further than this (every weight would be 0)
MAX_COARSEN_BITS = 24
SUPPORTED = (Input, Dense, Conv2d, AvgPool2d, Flatten, Add, FSActivation, Readout)


def loihi_numeric_profile(input_scale: float) -> NumericProfile:
    return NumericProfile(
        name="loihi",
        dtype="int64",
        membrane_bits=MEMBRANE_BITS,
        input_scale=float(input_scale),
        input_rounding="floor",
        description=(
            "Loihi: integer weights (7-bit mantissa x 2^k), integer FS tables, in units of 64 "
            "chip steps (24-bit membrane = 18 bits of units); inputs scaled and floored by the host"
        ),
    )


@dataclass
class ProfileInfo:
    """What the quantization chose (kept in the artifact for users and tests)."""

    input_scale: float
    units: dict[str, float] = field(default_factory=dict)
    d_units: dict[str, float] = field(default_factory=dict)
    coarsened: dict[str, int] = field(default_factory=dict)
    readout_unit: float = 1.0
    #: per receiver, the partial-sum extremes measured on calibration data (None: the
    #: worst case of every spike pattern sets the constants)
    observed: dict | None = None


def loihi_profile(network: Network, config=None) -> tuple[Network, NumericProfile, list[str]]:
    """Quantize ``network`` for Loihi.

    Returns ``(integer network, profile, notes)``: running
    :func:`fs_hw.reference.simulator.run_reference` on the first two predicts the chip
    exactly; ``notes`` lists every rounding made.
    """
    net, profile, notes, _ = fit_profile(network, config)
    return net, profile, notes


def fit_profile(network: Network, config=None, calibration: np.ndarray | None = None,
                ) -> tuple[Network, NumericProfile, list[str], ProfileInfo]:
    """:func:`loihi_profile` plus the units chosen (used by the lowering).

    ``calibration``: inputs whose measured partial sums (widened by
    ``fs_hw.lower.ranges.DATA_MARGIN``) replace the worst case of every spike pattern where that is
    tighter; without it every constant covers every possible spike pattern.
    """
    cfg = config if isinstance(config, LoihiConfig) else LoihiConfig.from_mapping(config)
    # Loihi's membrane holds 17 bits of the program's units (see fixedpoint): the range of
    # d(t) and the weight bits share them. Try the configured d range first; if some
    # layer cannot fit even with 1-bit weights, give d fewer bits (coarser d, so fitted
    # codes round more; the prediction shows what that costs).
    first_error: ResourceError | None = None
    for max_d_power in range(cfg.max_d_power, 2, -2):
        try:
            int_net, profile, notes, info = _fit_with(network, replace(cfg, max_d_power=max_d_power),
                                                      calibration)
        except ResourceError as exc:
            first_error = first_error or exc
            continue
        if max_d_power != cfg.max_d_power:
            notes.append(
                f"membrane range: output weights d(t) limited to 2^{max_d_power} units (config "
                f"max_d_power={cfg.max_d_power}) so every layer fits Loihi's 17-bit membrane"
            )
        return int_net, profile, notes, info
    raise first_error


def _fit_with(network: Network, cfg: LoihiConfig, calibration: np.ndarray | None):
    from fs_hw.lower.maps import receiver_inputs
    from fs_hw.lower.ranges import observe
    from fs_hw_loihi.bounds import layer_ranges

    coarsen: dict[str, int] = {}
    for _ in range(24):
        q = _Quantizer(network, cfg, coarsen)
        int_net, profile, notes, info = q.run()
        rins = receiver_inputs(int_net)  # composed once per trial, shared by both passes below
        observed = None if calibration is None else observe(int_net, profile, calibration, rins=rins)
        ranges = layer_ranges(int_net, observed, rins)
        failing = {name: r.problem for name, r in ranges.items() if r.problem}
        if not failing:
            info.observed = observed
            if observed is not None:
                notes.append(
                    f"membrane ranges: measured on {len(calibration)} calibration inputs and widened "
                    f"x2 (never wider than the worst case); an input beyond them would clip or fire "
                    f"early on the chip, which fs-deploy's spike comparison reports as mismatches"
                )
            if coarsen:
                notes.append(
                    "membrane range: the input unit of "
                    + ", ".join(f"{k!r} coarsened by {v} bit(s)" for k, v in coarsen.items())
                    + " so its range fits Loihi's registers (plain weights lose those bits; per-step "
                    "weights lose only what their steps' exponents cannot absorb, listed above)"
                )
            return int_net, profile, notes, info
        for name, problem in failing.items():
            # coarsen by as many bits as the range is too large (at least one), in one go
            bits = max(1, math.ceil(math.log2(ranges[name].excess)))
            coarsen[name] = coarsen.get(name, 0) + bits
            if coarsen[name] > MAX_COARSEN_BITS:
                raise ResourceError(
                    f"layer {name!r}: {problem}, even with its input's unit coarsened by {coarsen[name]} bits"
                )
    raise ResourceError(f"could not fit the membrane ranges of {sorted(coarsen)}")


def _is_pow2_table(values: np.ndarray) -> bool:
    nz = np.abs(values[values != 0])
    if nz.size == 0:
        return True
    r = np.log2(nz.max() / nz)
    return bool(np.all(np.abs(r - np.round(r)) < 1e-12))


def quantize_d(d: np.ndarray, digits: int, max_power: int) -> tuple[np.ndarray, float]:
    """Output weights as integers of few signed powers of two, and their unit."""
    d = np.asarray(d, dtype=np.float64)
    dmax = float(np.abs(d).max())
    if dmax == 0:
        return np.zeros_like(d), 1.0
    nz = np.abs(d[d != 0])
    spread = math.log2(dmax / nz.min())
    if _is_pow2_table(d):
        P = min(max_power, int(round(spread)))
    else:
        P = min(max_power, int(math.ceil(spread)) + 6)
    delta = dmax / 2.0**P
    d_int = np.array([round_to_digits(v / delta, digits, P) for v in d], dtype=np.float64)
    return d_int, delta


def input_scale_for(code: FSCode) -> float:
    """Host input scale: exact powers of two for ReLU-like codes, else ~12-bit tables."""
    t = np.concatenate([code.T, code.h])
    tmax = float(np.abs(t).max())
    if tmax == 0:
        return 1.0
    if _is_pow2_table(t) and code.T[0] > 0:
        return 2.0 ** (code.K - 1) / tmax
    return 2.0 ** (11 - math.floor(math.log2(tmax)))


class _Quantizer:
    def __init__(self, network: Network, cfg: LoihiConfig, coarsen: dict[str, int]):
        self.net = network
        self.cfg = cfg
        self.coarsen = coarsen
        self.prov: dict[str, float] = {}  # provisional units of weighted nodes
        self.pinned: dict[str, float] = {}
        self.add_unit: dict[str, float] = {}
        self.fixed: dict[str, bool] = {}
        self.d_int: dict[str, np.ndarray] = {}
        self.d_unit: dict[str, float] = {}
        self.notes: list[str] = []

    # -- units ------------------------------------------------------------------------
    def unit(self, name: str) -> float:
        node = self.net.by_name[name]
        if self.net.is_spiking(node):
            return self.d_unit[name]
        if isinstance(node, (Dense, Conv2d)):
            return self.pinned.get(name, self.prov[name])
        if isinstance(node, Flatten):
            return self.unit(node.input)
        if isinstance(node, AvgPool2d):
            (kh, kw), _ = node.window(self.net.shapes[node.input])
            return self.unit(node.input) / (kh * kw)
        if isinstance(node, Add):
            return self.add_unit[name]
        raise UnsupportedError(f"{node.label}: no unit")

    def pin(self, name: str, u: float, coarsening: bool = False) -> bool:
        """Give ``name`` the unit ``u``; False if a fixed unit forbids it.

        ``coarsening``: the membrane-range pass re-pins a weighted node that residual
        reconciliation pinned before (a coarser unit for the same add), which is allowed;
        two different adds asking one node for different units is not.
        """
        node = self.net.by_name[name]
        if self.net.is_spiking(node):
            return math.isclose(self.d_unit[name], u, rel_tol=1e-12)
        if isinstance(node, (Dense, Conv2d)):
            old = self.pinned.get(name)
            if old is not None and not coarsening and not math.isclose(old, u, rel_tol=1e-12):
                raise UnsupportedError(
                    f"{node.label}: feeds two residual adds that need different scales ({old:g} vs {u:g})"
                )
            self.pinned[name] = u
            return True
        if isinstance(node, Flatten):
            return self.pin(node.input, u, coarsening)
        if isinstance(node, AvgPool2d):
            (kh, kw), _ = node.window(self.net.shapes[node.input])
            return self.pin(node.input, u * kh * kw, coarsening)
        if isinstance(node, Add):
            for op in node.operands:
                if self.fixed[op] and self.unit(op) / u < 1 - 1e-12:
                    return False
            for op in node.operands:
                if not self.fixed[op]:
                    self.pin(op, u, coarsening)
            self.add_unit[name] = u
            return True
        return False

    # -- passes -----------------------------------------------------------------------
    def run(self):
        net, cfg = self.net, self.cfg
        for node in net.nodes:
            if not isinstance(node, SUPPORTED):
                raise UnsupportedError(f"{node.label}: node kind {node.kind!r} is not supported by the Loihi target")
        inp = net.input
        if inp.code is None:
            raise UnsupportedError(
                f"{inp.label}: analog input; Loihi receives spikes only: give the input an FS code"
            )
        # pass 1: provisional units
        for node in net.order:
            name = node.name
            if net.is_spiking(node):
                code = net.code_of(node)
                self.d_int[name], self.d_unit[name] = quantize_d(code.d, cfg.d_digits, cfg.max_d_power)
                self.fixed[name] = True
            elif isinstance(node, (Dense, Conv2d)):
                wmax = float(np.abs(node.weight).max()) if node.weight.size else 0.0
                u_in = self.unit(node.input)
                self.prov[name] = wmax * u_in / 127.0 if wmax > 0 else u_in
                src = self._step_source(node)
                if src is not None and wmax > 0:
                    # per-step weights: the finest unit at which the largest term w*d(t) still
                    # fits one synapse (a 7-bit mantissa at the top exponent)
                    dmax = float(np.abs(net.code_of(net.by_name[src]).d).max())
                    top = wmax * dmax * u_in / self.d_unit[src]
                    self.prov[name] = max(top / WEIGHT_TERM_MAX, 1e-300)
                self.fixed[name] = False
            elif isinstance(node, (Flatten, AvgPool2d)):
                self.fixed[name] = self.fixed[node.input]
            elif isinstance(node, Add):
                self._reconcile(node)
                self.fixed[name] = all(self.fixed[op] for op in node.operands)
            elif isinstance(node, Readout):
                self.fixed[name] = True
        for name, bits in self.coarsen.items():
            node = net.by_name[name]
            u = self.unit(node.input) * 2.0**bits
            if not self.pin(node.input, u, coarsening=True):
                raise ResourceError(
                    f"layer {name!r}: its worst-case membrane exceeds Loihi's registers and its input "
                    f"has no weights to coarsen"
                )
        return self._build()

    def _reconcile(self, node: Add) -> None:
        fixed_units = [self.unit(op) for op in node.operands if self.fixed[op]]
        free_units = [self.unit(op) for op in node.operands if not self.fixed[op]]
        if fixed_units:
            u_f = min(fixed_units)
            q = 0
            if free_units:
                q = max(0, math.ceil(math.log2(u_f / min(free_units)) - 1e-12))
            u = u_f / 2.0**q
        else:
            u = min(free_units)
        self.add_unit[node.name] = u
        for op in node.operands:
            if not self.fixed[op]:
                self.pin(op, u)

    def _build(self):
        net = self.net
        new_nodes: list[Node] = []
        codes: dict[str, FSCode] = {}
        units: dict[str, float] = {}
        inp = net.input
        in_code = net.code_of(inp)
        scale = input_scale_for(in_code)
        for node in net.order:
            name = node.name
            if isinstance(node, Input):
                code = self._code(node, in_code, 1.0 / scale, f"input {name!r}")
                codes[code.name] = code
                new_nodes.append(Input(name, node.shape, code.name))
            elif isinstance(node, FSActivation):
                code = self._code(node, net.code_of(node), self.unit(node.input), node.label)
                codes[code.name] = code
                new_nodes.append(FSActivation(name, node.input, code.name))
            elif isinstance(node, (Dense, Conv2d)):
                new_nodes.append(self._weighted(node))
            elif isinstance(node, Flatten):
                new_nodes.append(Flatten(name, node.input))
            elif isinstance(node, AvgPool2d):
                new_nodes.append(self._pool(node))
            elif isinstance(node, Add):
                new_nodes.extend(self._add(node))
            elif isinstance(node, Readout):
                new_nodes.append(Readout(name, node.input))
            units[name] = self.unit(node.input) if isinstance(node, (FSActivation, Readout)) else (
                self.unit(name) if not isinstance(node, Input) else 1.0 / scale
            )
        info = ProfileInfo(
            input_scale=scale,
            units=units,
            d_units=dict(self.d_unit),
            coarsened=dict(self.coarsen),
            readout_unit=self.unit(net.readout.input),
        )
        metadata = dict(net.metadata)
        metadata["loihi_profile"] = {
            "input_scale": scale,
            "readout_unit": info.readout_unit,
            "units": {k: float(v) for k, v in units.items()},
            "d_units": {k: float(v) for k, v in self.d_unit.items()},
        }
        int_net = Network(tuple(new_nodes), codes, metadata)
        return int_net, loihi_numeric_profile(scale), self.notes, info

    # -- node builders ----------------------------------------------------------------
    def _code(self, node: Node, code: FSCode, unit: float, label: str) -> FSCode:
        T = np.round(code.T / unit)
        h = np.round(code.h / unit)
        d = self.d_int[node.name]
        scale = max(float(np.abs(code.T).max()), float(np.abs(code.h).max()), 1e-300)
        err_th = max(float(np.abs(T * unit - code.T).max()), float(np.abs(h * unit - code.h).max()))
        if err_th > 1e-12 * scale:
            self.notes.append(
                f"{label}: code {code.name!r} thresholds/resets rounded to the membrane unit "
                f"{unit:.4g} (max error {err_th / scale:.2e} of the largest entry)"
            )
        du = self.d_unit[node.name]
        dmax = max(float(np.abs(code.d).max()), 1e-300)
        err_d = float(np.abs(d * du - code.d).max())
        if err_d > 1e-12 * dmax:
            self.notes.append(
                f"{label}: code {code.name!r} output weights d rounded to <= {self.cfg.d_digits} signed "
                f"powers of two (max error {err_d / dmax:.2e} of max |d|)"
            )
        return FSCode(f"{code.name}@{node.name}", T, h, d, code.rule, code.provenance)

    def _step_source(self, node: Dense | Conv2d) -> str | None:
        """The spiking node whose raw spikes this node can weigh per step (its input chain
        holds only flatten and pooling), when the config asks for per-step weights."""
        if not self.cfg.step_weights:
            return None
        # a node feeding a residual add shares the add's unit with the skip path, which the
        # membrane-range pass cannot coarsen past the skip's own unit: by default w and d(t)
        # stay exact apart (residual_step_weights: per-step weights in the add's unit)
        if not self.cfg.residual_step_weights and any(
                isinstance(self.net.by_name[c], Add) for c in self.net.consumers[node.name]):
            return None
        try:
            src, chain = self.net.step_source(node.name)
        except ValidationError:
            return None
        # only weight-free chains: the units along them are the source's, scaled (pooling)
        if all(isinstance(self.net.by_name[c], (Flatten, AvgPool2d)) for c in chain):
            return src
        return None

    def _step_weights(self, node: Dense | Conv2d, src: str, u: float, u_in: float) -> np.ndarray:
        """``step_weight[t] = round(w d(t) / u)`` in the node's output unit ``u``, each step a
        7-bit mantissa times a power of two (one synapse format per step on the chip)."""
        d = self.net.code_of(self.net.by_name[src]).d  # the float code: d(t) exactly
        ratio = u_in / self.d_unit[src]  # the chain's unit ratio (pooling: 1 / window)
        steps, kept = [], []
        for t in range(len(d)):
            values = node.weight * (float(d[t]) * ratio / u)
            if not np.any(values):
                steps.append(np.zeros_like(node.weight))
                kept.append(0)
                continue
            W, k = quantize_mantissa(values)
            steps.append(W.astype(np.float64))
            kept.append(int(np.abs(W >> k).max()).bit_length() if np.any(W) else 0)
        sw = np.stack(steps)
        wmax = float(np.abs(node.weight).max()) if node.weight.size else 0.0
        if wmax > 0:
            self.notes.append(
                f"{node.label}: per-step weights w*d(t) in unit {u:.4g}; mantissa bits kept per step t: "
                f"{kept} (low steps carry small d(t))"
            )
        return sw

    def _weighted(self, node: Dense | Conv2d) -> Node:
        u = self.unit(node.name)
        u_in = self.unit(node.input)
        src = self._step_source(node)
        if src is not None and float(np.abs(node.weight).max(initial=0.0)) > 0:
            sw = self._step_weights(node, src, u, u_in)
            # the nominal weight (documentation: what W y would use), rounded as a 7-bit mantissa
            W, _ = quantize_mantissa(node.weight * (u_in / u))
            b = np.round(node.bias / u)
            if isinstance(node, Dense):
                return Dense(node.name, node.input, W.astype(np.float64), b, step_weight=sw)
            return Conv2d(node.name, node.input, W.astype(np.float64), b, stride=node.stride, padding=node.padding,
                          step_weight=sw)
        values = node.weight * (u_in / u)
        W, k = quantize_mantissa(values)
        b = np.round(node.bias / u)
        wmax = float(np.abs(node.weight).max()) if node.weight.size else 0.0
        if wmax > 0:
            err = float(np.abs(W * (u / u_in) - node.weight).max()) / wmax
            bits = int(np.abs(W >> k).max()).bit_length() + 1 if np.any(W) else 1
            if err > 1e-12:
                self.notes.append(
                    f"{node.label}: weights rounded to mantissas of {bits - 1} bits + sign, x 2^{k} "
                    f"(max error {err:.2e} of max |w|)"
                )
        bmax = float(np.abs(node.bias).max()) if node.bias.size else 0.0
        if bmax > 0:
            err_b = float(np.abs(b * u - node.bias).max())
            if err_b > 1e-12 * bmax:
                self.notes.append(f"{node.label}: bias rounded to unit {u:.4g} (max error {err_b:.3g})")
        if isinstance(node, Dense):
            return Dense(node.name, node.input, W.astype(np.float64), b)
        return Conv2d(node.name, node.input, W.astype(np.float64), b, stride=node.stride, padding=node.padding)

    def _pool(self, node: AvgPool2d) -> Node:
        shape = self.net.shapes[node.input]
        (kh, kw), stride = node.window(shape)
        C = shape[0]
        weight = np.zeros((C, C, kh, kw))
        for c in range(C):
            weight[c, c] = 1.0
        return Conv2d(node.name, node.input, weight, np.zeros(C), stride=stride, padding=0)

    def _add(self, node: Add) -> list[Node]:
        u = self.add_unit[node.name]
        out: list[Node] = []
        operands = []
        for op in node.operands:
            u_op = self.unit(op)
            factor = u_op / u
            if not self.fixed[op] or math.isclose(factor, 1.0, rel_tol=1e-12):
                if not math.isclose(factor, 1.0, rel_tol=1e-9):
                    raise ValidationError(node.label, "operands", f"operand {op!r} unit mismatch ({factor})")
                operands.append(op)
                continue
            c = float(round(factor))
            if abs(c - factor) > 1e-9 * factor:
                self.notes.append(
                    f"{node.label}: skip operand {op!r} scaled by {c:g} instead of {factor:.6g}"
                )
            shape = self.net.shapes[op]
            name = f"{node.name}__scale_{op}"
            if len(shape) == 3:
                w = np.zeros((shape[0], shape[0], 1, 1))
                for i in range(shape[0]):
                    w[i, i] = c
                out.append(Conv2d(name, op, w, np.zeros(shape[0])))
            else:
                out.append(Dense(name, op, np.eye(shape[0]) * c, np.zeros(shape[0])))
            operands.append(name)
        out.append(Add(node.name, operands=tuple(operands)))
        return out
