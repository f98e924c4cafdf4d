"""The SpiNNaker backend on NEST through fs-hw's conformance kit: every scenario (MLPs with
both firing rules, a CNN, a residual block, every shipped code) spike-exact against the
reference on the SpiNNaker profile, in process and as a backend author runs it
(``pytest --pyargs fs_hw.testing --fs-backend spinnaker``)."""

import subprocess
import sys

import pytest
from fs_hw_spinnaker.backend import SpiNNakerBackend

from fs_hw import conformance
from fs_hw.backend import get_backend


def test_spinnaker_declarations():
    backend = get_backend("spinnaker")  # as the shipped suite finds it
    assert isinstance(backend, SpiNNakerBackend)
    assert conformance.as_exactness(backend.exactness).bit_exact
    assert [r.name for r in backend.runners] == ["nest", "spinnaker"]


@pytest.mark.parametrize("scenario", conformance.SCENARIOS)
def test_conformance_on_nest(scenario):
    comparisons = conformance.assert_conforms(SpiNNakerBackend(), scenario, {})
    for comparison in comparisons.values():
        assert comparison.readout_equal and comparison.compared_spikes > 0


def test_conformance_in_runs_of_three():
    # 8 samples in three NEST builds: each run starts clean
    conformance.assert_conforms(SpiNNakerBackend(), "residual", {"batch_size": 3})


@pytest.mark.slow  # a second pytest process running every scenario on NEST
def test_shipped_suite_runs_on_spinnaker(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "--pyargs", "fs_hw.testing", "--fs-backend", "spinnaker",
         "-p", "no:cacheprovider", "-p", "no:nengo", "-q"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert list(tmp_path.iterdir()) == []  # nothing written into the working folder
