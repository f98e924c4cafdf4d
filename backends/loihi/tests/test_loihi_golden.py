"""Golden spike records: a change of semantics on either side shows here.

Regenerate with ``python backends/loihi/tests/make_golden.py`` after a deliberate change.
"""

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("nengo_loihi")

from fs_hw_loihi.backend import LoihiBackend
from make_golden import CASES, golden_case

from fs_hw.reference.simulator import run_reference

GOLDEN = Path(__file__).resolve().parent / "golden"


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden(name):
    with np.load(GOLDEN / f"{name}.npz") as data:
        golden = {k: data[k] for k in data.files}
    net, x = golden_case(name)
    np.testing.assert_array_equal(x, golden["inputs"])
    backend = LoihiBackend()
    art = backend.lower(net, {})
    for res in (
        backend.run(art, x, record_spikes=True),
        run_reference(art.network, x, "spike", art.profile, record_spikes=True),
    ):
        np.testing.assert_array_equal(res.outputs, golden["outputs"])
        np.testing.assert_array_equal(res.predictions, golden["predictions"])
        assert set(res.spike_trains) == {k[len("spikes/"):] for k in golden if k.startswith("spikes/")}
        for node, train in res.spike_trains.items():
            np.testing.assert_array_equal(train, golden[f"spikes/{node}"], err_msg=node)
