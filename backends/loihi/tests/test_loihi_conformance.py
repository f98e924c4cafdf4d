import pytest

pytest.importorskip("nengo_loihi")

from fs_hw_loihi.backend import LoihiBackend

from fs_hw import conformance


@pytest.mark.parametrize("scenario", conformance.SCENARIOS)
def test_conformance(scenario):
    conformance.assert_conforms(LoihiBackend(), scenario, {})


@pytest.mark.parametrize("scenario", ["mlp_relu_gt", "residual"])
def test_conformance_chunked_pipeline(scenario):
    # 8 samples in runs of 3: samples overlap in the pipeline and runs restart cleanly
    conformance.assert_conforms(LoihiBackend(), scenario, {"batch_size": 3})


@pytest.mark.slow  # a second pytest process running every scenario on the emulator
def test_shipped_suite_runs_on_loihi(tmp_path):
    import subprocess
    import sys

    run = subprocess.run(
        [sys.executable, "-m", "pytest", "--pyargs", "fs_hw.testing", "--fs-backend", "loihi",
         "-p", "no:cacheprovider", "-p", "no:nengo", "-q"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"{len(conformance.SCENARIOS)} passed" in run.stdout
