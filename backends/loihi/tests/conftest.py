import pytest

pytest.importorskip("nengo_loihi")
