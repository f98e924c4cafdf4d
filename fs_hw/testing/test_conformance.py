"""Every conformance scenario on the backend named by ``--fs-backend``."""

import pytest

from fs_hw import conformance


@pytest.mark.parametrize("scenario", conformance.SCENARIOS)
def test_scenario(fs_backend, fs_backend_config, scenario):
    conformance.assert_conforms(fs_backend, scenario, fs_backend_config)
