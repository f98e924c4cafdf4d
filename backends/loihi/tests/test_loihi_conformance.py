"""The Loihi backend through fs-hw's conformance kit: in process (each scenario, as the
shipped suite runs it) and as a backend author runs it, ``pytest --pyargs fs_hw.testing
--fs-backend loihi``."""

import subprocess
import sys

import pytest

pytest.importorskip("nengo_loihi")

from fs_hw_loihi.backend import LoihiBackend

from fs_hw import conformance
from fs_hw.backend import get_backend


def test_loihi_declarations():
    backend = get_backend("loihi")  # as the shipped suite finds it
    assert isinstance(backend, LoihiBackend)
    assert conformance.as_exactness(backend.exactness).bit_exact
    assert set(getattr(backend, "unsupported_scenarios", {})) <= set(conformance.SCENARIOS)


@pytest.mark.parametrize("scenario", conformance.SCENARIOS)
def test_conformance(scenario):
    # bit-exact against the reference in both modes, spikes and read-out values
    comparisons = conformance.assert_conforms(LoihiBackend(), scenario, {})
    for comparison in comparisons.values():
        assert comparison.readout_equal and comparison.compared_spikes > 0


def test_residual_step_weights_conform():
    """Per-step weights on the layer that feeds the residual add (residual_step_weights):
    the add mixes a per-step operand with the plain skip, spike-exact on the emulator."""
    comparisons = conformance.assert_conforms(LoihiBackend(), "residual", {"residual_step_weights": True})
    assert comparisons
    q = LoihiBackend().quantize(conformance.scenario("residual")[0], {"residual_step_weights": True})
    net = q.network
    assert any(getattr(n, "step_weight", None) is not None and
               any(type(net.by_name[c]).__name__ == "Add" for c in net.consumers[n.name]) for n in net.nodes)


@pytest.mark.parametrize("scenario", ["mlp_relu_gt", "residual"])
def test_conformance_chunked_pipeline(scenario):
    # 8 samples in runs of 3: samples overlap in the pipeline and runs restart cleanly
    conformance.assert_conforms(LoihiBackend(), scenario, {"batch_size": 3})


def _shipped_suite(cwd, *args):
    return subprocess.run(
        [sys.executable, "-m", "pytest", "--pyargs", "fs_hw.testing", "--fs-backend", "loihi",
         "-p", "no:cacheprovider", "-p", "no:nengo", "-q", *args],
        cwd=cwd, capture_output=True, text=True, timeout=600,
    )


@pytest.mark.slow  # a second pytest process running every scenario on the emulator
def test_shipped_suite_runs_on_loihi(tmp_path):
    run = _shipped_suite(tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"{len(conformance.SCENARIOS)} passed" in run.stdout


@pytest.mark.slow
def test_shipped_suite_on_loihi_with_a_config(tmp_path):
    (tmp_path / "loihi.toml").write_text("[target]\nbatch_size = 3\nchips = 1\n")
    run = _shipped_suite(tmp_path, "--fs-backend-config", str(tmp_path / "loihi.toml"))
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"{len(conformance.SCENARIOS)} passed" in run.stdout
