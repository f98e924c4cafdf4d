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
