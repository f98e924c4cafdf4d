"""Backend discovery through entry points, and the conformance kit catching a bad backend."""

import textwrap

import numpy as np
import pytest

from fs_hw import conformance
from fs_hw.backend import Backend, available_targets, get_backend
from fs_hw.errors import TargetNotFoundError
from fs_hw.reference.backend import ReferenceBackend


def test_reference_is_registered_and_implements_protocol():
    assert "reference" in available_targets()
    backend = get_backend("reference")
    assert isinstance(backend, Backend)
    assert "conv2d" in backend.capabilities.node_kinds


def test_a_separately_installed_package_adds_a_target(tmp_path, monkeypatch):
    # A minimal installed distribution: a module plus dist-info with an entry point.
    (tmp_path / "toy_target.py").write_text(textwrap.dedent("""
        from fs_hw.reference.backend import ReferenceBackend

        class ToyBackend(ReferenceBackend):
            name = "toy"
    """))
    info = tmp_path / "toy_target-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-target\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[fs_hw.backends]\ntoy = toy_target:ToyBackend\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "toy" in available_targets()
    backend = get_backend("toy")
    assert backend.name == "toy"
    comparison, _ = conformance.check_backend(backend, "conv")
    assert comparison.exact


def test_unknown_and_broken_targets(tmp_path, monkeypatch):
    with pytest.raises(TargetNotFoundError, match=r"target 'loihi2' is not installed. Available targets: .*reference"):
        get_backend("loihi2")
    info = tmp_path / "broken-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[fs_hw.backends]\nbroken = no_such_module:Backend\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(TargetNotFoundError, match="registered but cannot be imported"):
        get_backend("broken")


class OffByOneBackend(ReferenceBackend):
    """Fires one extra spike: the kind of bug the kit exists to catch."""

    name = "off-by-one"

    def run(self, artifact, inputs, record_spikes=False):
        result = super().run(artifact, inputs, record_spikes)
        train = result.spike_trains["fs0"]
        idx = tuple(int(i) for i in np.argwhere(train == 0)[0])
        train[idx] = 1
        return result


def test_conformance_kit_catches_a_single_wrong_spike():
    comparison, _ = conformance.check_backend(OffByOneBackend(), "conv")
    assert comparison.spike_mismatches == 1 and not comparison.exact
    assert comparison.first_mismatch.startswith("node 'fs0': sample 0, step")
    with pytest.raises(AssertionError, match="1 spike mismatches"):
        conformance.assert_conforms(OffByOneBackend(), "conv")


class NoConvBackend(ReferenceBackend):
    name = "no-conv"

    from fs_hw.backend import Capabilities

    capabilities = Capabilities(node_kinds=frozenset({"input", "dense", "fs", "readout"}))


def test_conformance_skips_unsupported_kinds_with_reason():
    comparison, reason = conformance.check_backend(NoConvBackend(), "residual")
    assert comparison is None and "does not support node kinds ['add', 'avgpool2d', 'conv2d', 'flatten']" in reason


@pytest.mark.parametrize("scenario", conformance.SCENARIOS)
def test_reference_backend_conforms(scenario):
    conformance.assert_conforms(ReferenceBackend(), scenario, {"mode": "spike"})
