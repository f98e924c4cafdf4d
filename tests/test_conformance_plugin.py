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
