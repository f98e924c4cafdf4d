import pytest

pytest.importorskip("pyNN")
pytest.importorskip("nest")
