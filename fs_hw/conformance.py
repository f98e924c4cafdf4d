"""Conformance kit for backend authors.

A backend conforms when, on every standard scenario it supports, its spikes equal
the reference's spike for spike (every node, sample, step and neuron) and its predicted
classes equal the reference's. The reference here is :func:`run_reference` on the
artifact's own ``network`` and ``profile``: what the backend says its chip computes.

Use it from a backend's tests::

    import pytest
    from fs_hw import conformance

    @pytest.mark.parametrize("scenario", conformance.SCENARIOS)
    def test_conformance(scenario):
        conformance.assert_conforms(MyBackend(), scenario, config={...})
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import numpy as np

from fs_hw.backend import Backend, RunResult
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
    names = ["mlp_relu_ge", "mlp_relu_gt", "conv", "residual"]
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
    elif name == "residual":
        net = _residual(rng, K_DEFAULT)
    elif name.startswith("code:") and name[5:] in _all_codes():
        net = _code_scenario(rng, _all_codes()[name[5:]])
    else:
        raise KeyError(f"unknown scenario {name!r}; known: {SCENARIOS}")
    inputs = rng.uniform(0, 1, size=(samples, *net.input.shape))
    return net, inputs


@dataclass
class Comparison:
    """Spike-for-spike comparison of two runs."""

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

    @property
    def exact(self) -> bool:
        return (self.spike_mismatches == 0 and self.input_mismatches == 0 and not self.missing_nodes
                and self.agreement == 1.0)

    @property
    def readout_equal(self) -> bool:
        return self.readout_max_abs_diff == 0.0


def compare_runs(expected: RunResult, actual: RunResult, input_name: str | None = None) -> Comparison:
    """Count spikes that differ (every node, sample, step and neuron), class agreement and
    read-out differences. Spikes of ``input_name`` (the host-encoded input) are counted
    apart from the spikes the target produced."""
    if expected.spike_trains is None or actual.spike_trains is None:
        raise ValueError("both runs need record_spikes=True")
    mismatches = compared = in_mismatches = in_compared = 0
    missing: list[str] = []
    first = ""
    for name, want in expected.spike_trains.items():
        got = actual.spike_trains.get(name)
        if got is None:
            missing.append(name)
            mismatches += int(want.sum())
            continue
        if got.shape != want.shape:
            missing.append(name)
            first = first or f"node {name!r}: spike train shape {got.shape}, expected {want.shape}"
            mismatches += int(want.sum())
            continue
        diff = got != want
        if name == input_name:
            in_compared += int(want.size)
            in_mismatches += int(diff.sum())
        else:
            compared += int(want.size)
            mismatches += int(diff.sum())
        if diff.any() and not first:
            idx = tuple(int(i) for i in np.argwhere(diff)[0])
            first = (
                f"node {name!r}: sample {idx[0]}, step {idx[1]}, neuron {idx[2:]}: "
                f"expected {int(want[idx])}, got {int(got[idx])}"
            )
    agreement = float(np.mean(expected.predictions == actual.predictions)) if len(expected.predictions) else 1.0
    want_out = np.asarray(expected.outputs, np.float64)
    got_out = np.asarray(actual.outputs, np.float64)
    if want_out.shape != got_out.shape:
        readout_diff = float("inf")
        first = first or f"read-out shape {got_out.shape}, expected {want_out.shape}"
    else:
        readout_diff = float(np.abs(want_out - got_out).max(initial=0.0))
    return Comparison(mismatches, compared, agreement, missing, first, in_compared, in_mismatches, readout_diff,
                      float(np.abs(want_out).max(initial=0.0)))


def check_backend(backend: Backend, name: str, config: Mapping[str, Any] | None = None,
                  samples: int = 8) -> tuple[Comparison | None, str]:
    """Run one scenario on ``backend``; returns (comparison, "") or (None, skip reason)."""
    declared = dict(getattr(backend, "unsupported_scenarios", {}) or {})
    unknown = sorted(set(declared) - set(SCENARIOS))
    if unknown:
        raise ValueError(f"{backend.name}: unsupported_scenarios names unknown scenarios {unknown}; "
                         f"known: {SCENARIOS}")
    if name in declared:
        return None, f"{backend.name} declares scenario {name!r} unsupported: {declared[name]}"
    network, inputs = scenario(name, samples)
    caps = backend.capabilities
    kinds = {node.kind for node in network.nodes}
    unsupported = sorted(kinds - set(caps.node_kinds))
    if unsupported:
        return None, f"{backend.name} does not support node kinds {unsupported}"
    rules = {c.rule for c in network.codes.values()}
    if not rules <= set(caps.firing_rules):
        return None, f"{backend.name} does not support firing rules {sorted(rules - set(caps.firing_rules))}"
    artifact = backend.lower(network, dict(config or {}))
    actual = backend.run(artifact, inputs, record_spikes=True)
    expected = run_reference(artifact.network, inputs, mode="fast", profile=artifact.profile, record_spikes=True)
    return compare_runs(expected, actual, input_name=network.input.name), ""


def assert_conforms(backend: Backend, name: str, config: Mapping[str, Any] | None = None,
                    samples: int = 8) -> None:
    """pytest helper: skip if unsupported, fail with the first mismatch otherwise.

    A bit-exact backend must equal the reference in every spike and every read-out value
    (float profiles: read-outs to 1e-9 relative, the reference's own float64 reordering);
    a backend declaring a tolerance (``exactness``) is held to it.
    """
    comparison, reason = check_backend(backend, name, config, samples)
    if comparison is None:
        import pytest

        pytest.skip(reason)
    exactness = getattr(backend, "exactness", None)
    where = (f"{backend.name} on scenario {name!r}: {comparison.spike_mismatches} spike mismatches of "
             f"{comparison.spikes_compared} target spikes (input layer: {comparison.input_mismatches} of "
             f"{comparison.input_spikes_compared}), agreement {comparison.agreement}, read-out max |diff| "
             f"{comparison.readout_max_abs_diff:g}, missing {comparison.missing_nodes}; "
             f"first: {comparison.first_mismatch}")
    if exactness is None or exactness.bit_exact:
        assert comparison.exact, where
        # float64 profiles add the same terms in another order: last bits may differ
        assert comparison.readout_max_abs_diff <= 1e-9 * max(1.0, comparison.readout_max_abs), where
    else:
        fraction = comparison.spike_mismatches / max(comparison.spikes_compared, 1)
        assert not comparison.missing_nodes, where
        assert fraction <= exactness.spike_mismatch_fraction, where
        assert comparison.readout_max_abs_diff <= exactness.readout_atol, where
