import numpy as np
import pytest

from fs_hw import conformance


@pytest.fixture
def residual_net():
    return conformance.scenario("residual", samples=16)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
