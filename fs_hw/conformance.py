"""Conformance kit for backend authors.

A backend conforms when, on every standard scenario it supports, the spikes its target
produced equal the reference's spike for spike (every node, sample, step and neuron) and
its read-out values equal the reference's (not only the predicted classes). The
reference here is :func:`run_reference` on the artifact's own ``network`` and
``profile`` (what the backend says its chip computes), in both its ``spike`` and
``fast`` modes. The host-encoded input layer is counted apart: the host, not the chip,
computed its spike code. A backend declares scenarios it cannot run in
``unsupported_scenarios`` (name -> why; skipped with the reason) and how close it must
be in ``exactness`` (``"bit-exact"``, the default, or a stated tolerance).

Run the whole kit against an installed backend with the shipped pytest suite::

    pytest --pyargs fs_hw.testing -p no:nengo --fs-backend NAME [--fs-backend-config my.toml]

or use it from a backend's own tests::

    import pytest
    from fs_hw import conformance

    @pytest.mark.parametrize("scenario", conformance.SCENARIOS)
    def test_conformance(scenario):
        conformance.assert_conforms(MyBackend(), scenario, config={...})
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import numpy as np

from fs_hw.backend import BIT_EXACT, Backend, Exactness, RunResult
from fs_hw.codes import published_codes, relu_code, shipped_codes
from fs_hw.ir import Add, AvgPool2d, Conv2d, Dense, Flatten, FSActivation, Input, Network, Readout
from fs_hw.ir.code import FSCode
from fs_hw.reference.simulator import run_reference

K_DEFAULT = 6


def _input_code(K: int, rule: str = ">=") -> FSCode:
    return relu_code(1.0, K, rule=rule, name=f"input_k{K}")


def _mlp(rng, code: FSCode, K: int, sizes=(16, 12, 8, 4), rule: str = ">=") -> Network:
    inp = _input_code(K, rule)
    nodes: list = [Input("x", (sizes[0],), inp.name)]
    prev = "x"
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        w = rng.normal(0, 1.5 / np.sqrt(a), size=(b, a))
        nodes.append(Dense(f"dense{i}", prev, w, rng.normal(0, 0.1, size=b)))
        prev = f"dense{i}"
        if i < len(sizes) - 2:
            nodes.append(FSActivation(f"fs{i}", prev, code.name))
            prev = f"fs{i}"
    nodes.append(Readout("out", prev))
    return Network(tuple(nodes), {inp.name: inp, code.name: code}, {"scenario": "mlp"})


def _conv(rng, K: int, rule: str = ">=") -> Network:
    inp, act = _input_code(K, rule), relu_code(2.0, K, rule=rule, name=f"relu_k{K}")
    nodes = (
        Input("x", (1, 6, 6), inp.name),
        Conv2d("conv0", "x", rng.normal(0, 0.6, (3, 1, 3, 3)), rng.normal(0, 0.1, 3), stride=1, padding=1),
        FSActivation("fs0", "conv0", act.name),
        Conv2d("conv1", "fs0", rng.normal(0, 0.4, (4, 3, 3, 3)), rng.normal(0, 0.1, 4), stride=2, padding=1),
        FSActivation("fs1", "conv1", act.name),
        AvgPool2d("pool", "fs1", kernel=None),
        Flatten("flat", "pool"),
        Dense("fc", "flat", rng.normal(0, 1.0, (3, 4)), np.zeros(3)),
        Readout("out", "fc"),
    )
    return Network(nodes, {inp.name: inp, act.name: act}, {"scenario": "conv"})


def _conv_bias_map(rng, K: int) -> Network:
    """The conv scenario as a converter writes a normalised model: the first conv's bias is
    a map (a constant input offset seen through zero padding differs at the border) and the
    input records its normalisation."""
    net = _conv(rng, K)
    conv0 = net.by_name["conv0"]
    border = np.zeros((1, 6, 6))
    border[:, [0, -1], :] += 1
    border[:, :, [0, -1]] += 1
    bias_map = conv0.bias.reshape(-1, 1, 1) - 0.3 * border * rng.uniform(0.5, 1.5, (3, 1, 1))
    nodes = tuple(
        Input("x", (1, 6, 6), n.code, mean=np.array([0.25]), std=np.array([0.5])) if n.name == "x" else
        Conv2d("conv0", "x", conv0.weight, bias_map, conv0.stride, conv0.padding) if n.name == "conv0" else n
        for n in net.nodes
    )
    return Network(nodes, net.codes, {"scenario": "conv_bias_map"})


def _residual(rng, K: int, rule: str = ">=") -> Network:
    inp, act = _input_code(K, rule), relu_code(2.0, K, rule=rule, name=f"relu_k{K}")
    nodes = (
        Input("x", (1, 5, 5), inp.name),
        Conv2d("stem", "x", rng.normal(0, 0.8, (2, 1, 3, 3)), rng.normal(0, 0.1, 2), padding=1),
        FSActivation("fs_stem", "stem", act.name),
        Conv2d("conv_a", "fs_stem", rng.normal(0, 0.5, (2, 2, 3, 3)), rng.normal(0, 0.1, 2), padding=1),
        FSActivation("fs_a", "conv_a", act.name),
        Conv2d("conv_b", "fs_a", rng.normal(0, 0.5, (2, 2, 3, 3)), rng.normal(0, 0.1, 2), padding=1),
        Add("residual", operands=("conv_b", "fs_stem")),
        FSActivation("fs_out", "residual", act.name),
        AvgPool2d("pool", "fs_out", kernel=(5, 5)),
        Flatten("flat", "pool"),
        Dense("fc", "flat", rng.normal(0, 1.0, (3, 2)), np.zeros(3)),
        Readout("out", "fc"),
    )
    return Network(nodes, {inp.name: inp, act.name: act}, {"scenario": "residual"})


def _code_scenario(rng, code: FSCode) -> Network:
    # Inputs spread over the code's range: the dense layer maps [0, 1) onto it.
    lo, hi = code.provenance.x_range if code.provenance else (-4.0, 4.0)
    inp = _input_code(code.K)
    w = rng.normal(0, 1.0, (6, 8)) * (hi - lo) / 4
    nodes = (
        Input("x", (8,), inp.name),
        Dense("dense0", "x", w, np.full(6, (lo + hi) / 2)),
        FSActivation("fs0", "dense0", code.name),
        Dense("dense1", "fs0", rng.normal(0, 0.5, (3, 6)), np.zeros(3)),
        Readout("out", "dense1"),
    )
    return Network(nodes, {inp.name: inp, code.name: code}, {"scenario": f"code {code.name}"})


@cache
def _all_codes() -> dict[str, FSCode]:
    return {**published_codes(), **shipped_codes()}


def _scenario_names() -> list[str]:
    names = ["mlp_relu_ge", "mlp_relu_gt", "conv", "conv_bias_map", "residual"]
    names += [f"code:{name}" for name in _all_codes()]
    return names


SCENARIOS: list[str] = _scenario_names()


def scenario(name: str, samples: int = 8, seed: int = 0) -> tuple[Network, np.ndarray]:
    """A standard scenario network and a batch of inputs in [0, 1)."""
    rng = np.random.default_rng(seed)
    if name == "mlp_relu_ge":
        net = _mlp(rng, relu_code(2.0, K_DEFAULT, ">=", name="relu_k6"), K_DEFAULT, rule=">=")
    elif name == "mlp_relu_gt":
        net = _mlp(rng, relu_code(2.0, K_DEFAULT, ">", name="relu_k6"), K_DEFAULT, rule=">")
    elif name == "conv":
        net = _conv(rng, K_DEFAULT)
    elif name == "conv_bias_map":
        net = _conv_bias_map(rng, K_DEFAULT)
    elif name == "residual":
        net = _residual(rng, K_DEFAULT)
    elif name.startswith("code:") and name[5:] in _all_codes():
        net = _code_scenario(rng, _all_codes()[name[5:]])
    else:
        raise KeyError(f"unknown scenario {name!r}; known: {SCENARIOS}")
    inputs = rng.uniform(0, 1, size=(samples, *net.input.shape))
    return net, inputs


@dataclass(frozen=True)
class Mismatch:
    """Where two runs first differ: a spike (``node``, ``sample``, ``step``, ``neuron``) or,
    with ``node`` ``None``, a read-out shape."""

    node: str | None
    sample: int = -1
    step: int = -1
    neuron: tuple[int, ...] = ()
    expected: int = 0
    got: int = 0
    detail: str = ""

    def __str__(self) -> str:
        if self.detail:
            return self.detail
        return (f"node {self.node!r}: sample {self.sample}, step {self.step}, neuron {self.neuron}: "
                f"expected {self.expected}, got {self.got}")


@dataclass
class Comparison:
    """Spike-for-spike and read-out comparison of two runs.

    Spike counts are the spikes the target produced (every FS node but the input); the
    host-encoded input layer (``input_name`` of :func:`compare_runs`) is reported apart
    in ``input_spikes_compared`` / ``input_mismatches``.
    """

    spike_mismatches: int
    spikes_compared: int
    agreement: float
    missing_nodes: list[str] = field(default_factory=list)
    first_mismatch: str = ""
    #: the host-encoded input layer, reported apart: the chip did not produce those spikes
    input_spikes_compared: int = 0
    input_mismatches: int = 0
    #: read-out values: largest absolute difference (0.0 when equal)
    readout_max_abs_diff: float = 0.0
    readout_max_abs: float = 0.0  # largest |expected read-out|, the scale of the difference
    #: the first difference as data (``first_mismatch`` is its text); ``None`` when none
    first_mismatch_at: Mismatch | None = None
    #: the reference mode this run was compared with ("spike" or "fast"), when known
    reference_mode: str = ""

    # names of the conformance report (aliases of the fields above)
    @property
    def compared_spikes(self) -> int:
        return self.spikes_compared

    @property
    def mismatches(self) -> int:
        return self.spike_mismatches

    @property
    def input_spikes(self) -> int:
        return self.input_spikes_compared

    @property
    def spike_mismatch_fraction(self) -> float:
        return self.spike_mismatches / max(self.spikes_compared, 1)

    @property
    def exact(self) -> bool:
        """Every spike (input layer included) and every predicted class equal."""
        return (self.spike_mismatches == 0 and self.input_mismatches == 0 and not self.missing_nodes
                and self.agreement == 1.0)

    @property
    def readout_equal(self) -> bool:
        return self.readout_max_abs_diff == 0.0

    def readout_close(self, rtol: float = 1e-9) -> bool:
        """Read-outs equal to ``rtol`` of their scale (float64 sums in another order)."""
        return self.readout_max_abs_diff <= rtol * max(1.0, self.readout_max_abs)

    def summary(self) -> str:
        mode = f" (reference mode {self.reference_mode!r})" if self.reference_mode else ""
        return (f"{self.spike_mismatches} spike mismatches of {self.spikes_compared} target spikes"
                f"{mode} (fraction {self.spike_mismatch_fraction:.3g}; input layer: {self.input_mismatches} of "
                f"{self.input_spikes_compared}), agreement {self.agreement}, read-out max |diff| "
                f"{self.readout_max_abs_diff:g} (scale {self.readout_max_abs:g}), missing {self.missing_nodes}; "
                f"first: {self.first_mismatch or 'none'}")


def compare_runs(expected: RunResult, actual: RunResult, input_name: str | None = None) -> Comparison:
    """Count spikes that differ (every node, sample, step and neuron), class agreement and
    read-out differences. Spikes of ``input_name`` (the host-encoded input) are counted
    apart from the spikes the target produced."""
    if expected.spike_trains is None or actual.spike_trains is None:
        raise ValueError("both runs need record_spikes=True")
    mismatches = compared = in_mismatches = in_compared = 0
    missing: list[str] = []
    first: Mismatch | None = None
    for name, want in expected.spike_trains.items():
        got = actual.spike_trains.get(name)
        if got is None or got.shape != want.shape:
            missing.append(name)
            if name == input_name:
                in_mismatches += int(want.sum())
            else:
                mismatches += int(want.sum())
            if got is not None and first is None:
                first = Mismatch(name, detail=f"node {name!r}: spike train shape {got.shape}, expected {want.shape}")
            elif first is None:
                first = Mismatch(name, detail=f"node {name!r}: no spike train recorded")
            continue
        diff = got != want
        if name == input_name:
            in_compared += int(want.size)
            in_mismatches += int(diff.sum())
        else:
            compared += int(want.size)
            mismatches += int(diff.sum())
        if first is None and diff.any():
            idx = tuple(int(i) for i in np.argwhere(diff)[0])
            first = Mismatch(name, idx[0], idx[1], idx[2:], int(want[idx]), int(got[idx]))
    agreement = float(np.mean(expected.predictions == actual.predictions)) if len(expected.predictions) else 1.0
    want_out = np.asarray(expected.outputs, np.float64)
    got_out = np.asarray(actual.outputs, np.float64)
    if want_out.shape != got_out.shape:
        readout_diff = float("inf")
        if first is None:
            first = Mismatch(None, detail=f"read-out shape {got_out.shape}, expected {want_out.shape}")
    else:
        readout_diff = float(np.abs(want_out - got_out).max(initial=0.0))
    return Comparison(mismatches, compared, agreement, missing, str(first) if first else "", in_compared,
                      in_mismatches, readout_diff, float(np.abs(want_out).max(initial=0.0)), first)


#: the reference's two modes: spike-level (global time steps) and decoded (fast)
REFERENCE_MODES: tuple[str, ...] = ("spike", "fast")


def as_exactness(value: Any) -> Exactness:
    """A backend's ``exactness`` as an :class:`Exactness`: ``None`` or ``"bit-exact"``
    (bit-exact), an ``Exactness``, a mapping or any object with ``spike_mismatch_fraction``
    / ``readout_atol`` (a tolerance; missing figures are 0)."""
    if value is None:
        return BIT_EXACT
    if isinstance(value, Exactness):
        return value
    if isinstance(value, str):
        if value != "bit-exact":
            raise ValueError(f"exactness must be 'bit-exact' or a stated tolerance, got {value!r}")
        return BIT_EXACT
    if isinstance(value, Mapping):
        items = dict(value)
    elif dataclasses.is_dataclass(value):
        items = dataclasses.asdict(value)
    else:
        items = {k: getattr(value, k) for k in ("kind", "spike_mismatch_fraction", "readout_atol", "why")
                 if hasattr(value, k)}
    unknown = sorted(set(items) - {"kind", "spike_mismatch_fraction", "readout_atol", "why"})
    if unknown:
        raise ValueError(f"exactness: unknown fields {unknown}; known: kind, spike_mismatch_fraction, "
                         f"readout_atol, why")
    kind = items.pop("kind", None)
    if kind is None:
        kind = "tolerance" if ("spike_mismatch_fraction" in items or "readout_atol" in items) else "bit-exact"
    return Exactness(kind=kind, **{k: (v if k == "why" else float(v)) for k, v in items.items()})


def _declared_unsupported(backend: Any) -> dict[str, str]:
    declared = dict(getattr(backend, "unsupported_scenarios", {}) or {})
    unknown = sorted(set(declared) - set(SCENARIOS))
    if unknown:
        raise ValueError(f"{getattr(backend, 'name', backend)}: unsupported_scenarios names unknown scenarios "
                         f"{unknown}; known: {SCENARIOS}")
    return declared


def skip_reason(backend: Backend, name: str, network: Network | None = None) -> str:
    """Why ``backend`` does not run scenario ``name`` ("" when it does): declared in its
    ``unsupported_scenarios``, or node kinds / firing rules outside its capabilities."""
    declared = _declared_unsupported(backend)
    if name not in SCENARIOS:
        raise KeyError(f"unknown scenario {name!r}; known: {SCENARIOS}")
    if name in declared:
        return f"{backend.name} declares scenario {name!r} unsupported: {declared[name]}"
    if network is None:
        network, _ = scenario(name, 1)
    caps = backend.capabilities
    kinds = {node.kind for node in network.nodes}
    unsupported = sorted(kinds - set(caps.node_kinds))
    if unsupported:
        return f"{backend.name} does not support node kinds {unsupported}"
    rules = {c.rule for c in network.codes.values()}
    if not rules <= set(caps.firing_rules):
        return f"{backend.name} does not support firing rules {sorted(rules - set(caps.firing_rules))}"
    return ""


def check_backend_modes(backend: Backend, name: str, config: Mapping[str, Any] | None = None, samples: int = 8,
                        modes: tuple[str, ...] = REFERENCE_MODES) -> tuple[dict[str, Comparison] | None, str]:
    """Lower and run one scenario on ``backend`` once, and compare it with the reference in
    each of ``modes``; returns ({mode: comparison}, "") or (None, skip reason)."""
    network, inputs = scenario(name, samples)
    reason = skip_reason(backend, name, network)
    if reason:
        return None, reason
    artifact = backend.lower(network, dict(config or {}))
    actual = backend.run(artifact, inputs, record_spikes=True)
    out = {}
    for mode in modes:
        expected = run_reference(artifact.network, inputs, mode=mode, profile=artifact.profile, record_spikes=True)
        comparison = compare_runs(expected, actual, input_name=network.input.name)
        comparison.reference_mode = mode
        out[mode] = comparison
    return out, ""


def _badness(c: Comparison) -> tuple:
    return (len(c.missing_nodes), c.spike_mismatches + c.input_mismatches, 1.0 - c.agreement, c.readout_max_abs_diff)


def check_backend(backend: Backend, name: str, config: Mapping[str, Any] | None = None,
                  samples: int = 8, modes: tuple[str, ...] = REFERENCE_MODES) -> tuple[Comparison | None, str]:
    """Run one scenario on ``backend``; returns (comparison, "") or (None, skip reason).

    The run is compared with the reference in every one of ``modes``; the comparison
    returned is the worst of them (the first mode on a tie)."""
    comparisons, reason = check_backend_modes(backend, name, config, samples, modes)
    if comparisons is None:
        return None, reason
    return max(comparisons.values(), key=_badness), ""


def assert_conforms(backend: Backend, name: str, config: Mapping[str, Any] | None = None,
                    samples: int = 8, modes: tuple[str, ...] = REFERENCE_MODES) -> dict[str, Comparison]:
    """pytest helper: skip if unsupported, fail with the first mismatch otherwise.

    The backend's run is compared with the reference in each of ``modes``. A bit-exact
    backend (``exactness`` absent or ``"bit-exact"``) must equal the reference in every
    spike and every read-out value (integer profiles: exactly; float64 profiles: to 1e-9
    relative, the reference's own float64 reordering); a backend declaring a tolerance
    is held to it, and the measured figures are printed. Returns the comparisons.
    """
    comparisons, reason = check_backend_modes(backend, name, config, samples, modes)
    if comparisons is None:
        import pytest

        pytest.skip(reason)
    exactness = as_exactness(getattr(backend, "exactness", None))
    for comparison in comparisons.values():
        where = f"{backend.name} on scenario {name!r}: {comparison.summary()}"
        if exactness.bit_exact:
            assert comparison.exact, where
            # float64 profiles add the same terms in another order: last bits may differ
            assert comparison.readout_close(1e-9), where
        else:
            print(f"{where}; tolerance: spike fraction <= {exactness.spike_mismatch_fraction:g}, "
                  f"read-out |diff| <= {exactness.readout_atol:g}")
            assert not comparison.missing_nodes, where
            assert comparison.spike_mismatch_fraction <= exactness.spike_mismatch_fraction, where
            assert comparison.readout_max_abs_diff <= exactness.readout_atol, where
    return comparisons
