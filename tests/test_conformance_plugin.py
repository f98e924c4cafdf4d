"""The shipped conformance suite, run as a backend author runs it (in a subprocess)."""

import subprocess
import sys
import textwrap

import pytest

from fs_hw import conformance

FAKE = textwrap.dedent('''
    import numpy as np
    from fs_hw.reference.backend import ReferenceBackend

    class FlippingBackend(ReferenceBackend):
        """Flips one spike of the first hidden layer: the suite must catch it."""
        name = "flipping"
        unsupported_scenarios = {"residual": "no skip connections here"}

        def run(self, artifact, inputs, record_spikes=False, runner=None):
            result = super().run(artifact, inputs, record_spikes, runner)
            train = result.spike_trains["fs0"]
            train[1, 2].flat[3] ^= 1
            return result
''')


def _suite(tmp_path, *args):
    (tmp_path / "fake_backend.py").write_text(FAKE)
    cmd = [sys.executable, "-m", "pytest", "--pyargs", "fs_hw.testing", "-p", "no:cacheprovider",
           "-p", "no:nengo", "-q", "-rs", *args]
    env = {"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"}
    return subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300)


def test_suite_passes_on_the_reference(tmp_path):
    run = _suite(tmp_path, "--fs-backend", "reference")
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"{len(conformance.SCENARIOS)} passed" in run.stdout


def test_suite_names_the_first_mismatch_and_skips_declared_scenarios(tmp_path):
    run = _suite(tmp_path, "--fs-backend", "fake_backend:FlippingBackend")
    assert run.returncode == 1, run.stdout + run.stderr
    assert "node 'fs0': sample 1, step 2, neuron" in run.stdout
    assert "declares scenario 'residual' unsupported: no skip connections here" in run.stdout
    assert "1 skipped" in run.stdout


def test_unknown_unsupported_scenario_is_an_error():
    class Bad:
        name = "bad"
        unsupported_scenarios = {"no_such_scenario": "why"}

    with pytest.raises(ValueError, match="no_such_scenario"):
        conformance.check_backend(Bad(), "mlp_relu_ge")


def test_input_layer_counted_apart_and_readout_compared():
    from fs_hw.reference.backend import ReferenceBackend

    backend = ReferenceBackend()
    comparison, _ = conformance.check_backend(backend, "mlp_relu_ge")
    net, x = conformance.scenario("mlp_relu_ge")
    in_size = x.shape[0] * net.K * x[0].size
    assert comparison.input_spikes_compared == in_size
    assert comparison.spikes_compared == sum(
        x.shape[0] * net.K * n for name, n in net.neuron_counts().items() if name != net.input.name)
    assert comparison.readout_max_abs_diff <= 1e-9 * max(1.0, comparison.readout_max_abs)


NOISY = textwrap.dedent('''
    from fs_hw.reference.backend import ReferenceBackend

    class NoisyBackend(ReferenceBackend):
        """An analog-like target: read-outs off by 1e-3, within its stated tolerance."""
        name = "noisy"
        exactness = {"spike_mismatch_fraction": 0.01, "readout_atol": 0.01}

        def run(self, artifact, inputs, record_spikes=False, runner=None):
            result = super().run(artifact, inputs, record_spikes, runner)
            result.outputs = result.outputs + 1e-3
            return result

    class TooNoisyBackend(NoisyBackend):
        exactness = {"spike_mismatch_fraction": 0.01, "readout_atol": 1e-4}

    class BadDeclaration(ReferenceBackend):
        unsupported_scenarios = {"no_such_scenario": "why"}
''')


def test_suite_defaults_to_the_reference_and_reads_the_target_table(tmp_path):
    run = _suite(tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"{len(conformance.SCENARIOS)} passed" in run.stdout
    (tmp_path / "fast.toml").write_text('samples = 3\n[target]\nmode = "fast"\n')
    run = _suite(tmp_path, "--fs-backend-config", str(tmp_path / "fast.toml"))
    assert run.returncode == 0, run.stdout + run.stderr
    (tmp_path / "bad.toml").write_text('[target]\nmode = "sideways"\n')
    run = _suite(tmp_path, "--fs-backend-config", str(tmp_path / "bad.toml"))
    assert run.returncode == 4 and "mode" in run.stderr and "sideways" in run.stderr, run.stdout


def test_suite_holds_a_declared_tolerance_and_rejects_unknown_scenario_names(tmp_path):
    (tmp_path / "noisy_backend.py").write_text(NOISY)
    run = _suite(tmp_path, "--fs-backend", "noisy_backend:NoisyBackend", "-s")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "read-out max |diff| 0.001" in run.stdout and "tolerance: spike fraction <= 0.01" in run.stdout
    run = _suite(tmp_path, "--fs-backend", "noisy_backend:TooNoisyBackend")
    assert run.returncode == 1, run.stdout + run.stderr
    assert f"{len(conformance.SCENARIOS)} failed" in run.stdout
    run = _suite(tmp_path, "--fs-backend", "noisy_backend:BadDeclaration")
    # a usage error, once (exit status 4), not an error per scenario
    assert run.returncode == 4 and "names unknown scenarios ['no_such_scenario']" in run.stderr, run.stdout
    run = _suite(tmp_path, "--fs-backend", "noisy_backend:NoSuchThing")
    assert run.returncode == 4 and "cannot load it" in run.stderr, run.stdout
    run = _suite(tmp_path, "--fs-backend", "no-such-target")
    assert run.returncode == 4 and "target 'no-such-target' is not installed" in run.stderr, run.stdout


def test_first_mismatch_as_data_and_both_reference_modes():
    from fs_hw.reference.backend import ReferenceBackend

    class Flip(ReferenceBackend):
        def run(self, artifact, inputs, record_spikes=False, runner=None):
            result = super().run(artifact, inputs, record_spikes, runner)
            result.spike_trains["fs1"][2, 3].flat[1] ^= 1
            result.spike_trains[artifact.network.input.name][0, 0].flat[0] ^= 1  # host side: counted apart
            return result

    comparisons, reason = conformance.check_backend_modes(Flip(), "mlp_relu_ge")
    assert reason == "" and set(comparisons) == {"spike", "fast"}
    for mode, c in comparisons.items():
        assert c.reference_mode == mode
        assert c.mismatches == c.spike_mismatches == 1 and c.input_mismatches == 1
        assert c.compared_spikes == c.spikes_compared and c.input_spikes == c.input_spikes_compared > 0
        assert not c.exact and c.readout_equal is (c.readout_max_abs_diff == 0.0)
        # the input node comes first in the network: its flipped spike is the first difference
        at = c.first_mismatch_at
        assert (at.node, at.sample, at.step, at.neuron) == ("x", 0, 0, (0,))
        assert c.first_mismatch == str(at) and "sample 0, step 0, neuron (0,)" in c.first_mismatch


@pytest.mark.parametrize("declared, kind", [
    (None, "bit-exact"), ("bit-exact", "bit-exact"),
    ({"spike_mismatch_fraction": 0.01, "readout_atol": 0.5}, "tolerance"),
])
def test_exactness_forms(declared, kind):
    from dataclasses import dataclass

    exactness = conformance.as_exactness(declared)
    assert exactness.kind == kind

    @dataclass
    class Tol:
        spike_mismatch_fraction: float = 0.02
        readout_atol: float = 0.1

    assert conformance.as_exactness(Tol()).spike_mismatch_fraction == 0.02
    with pytest.raises(ValueError, match="bit-exact"):
        conformance.as_exactness("roughly")
    with pytest.raises(ValueError, match="unknown fields"):
        conformance.as_exactness({"spike_fraction": 0.1})
