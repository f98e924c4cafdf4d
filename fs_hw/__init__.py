"""fs-hw: few-spike (FS) networks on neuromorphic hardware.

``fs_hw.deploy(network, target, ...)`` lowers a network to a target, runs it and checks it
against the reference (what ``fs-deploy`` does; see :mod:`fs_hw.deploy`).
``fs_hw.convert(model, calibration_data, ...)`` converts a trained torch model (what
``fs-convert`` does; see :mod:`fs_hw.convert`).
"""

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["__version__", "convert", "deploy"]

if TYPE_CHECKING:
    from fs_hw.convert import convert
    from fs_hw.deploy import deploy


def __getattr__(name: str) -> Any:
    # Lazy: `import fs_hw` stays light (no numpy, backends or torch) until deploy is used.
    # The submodule is callable, and importing it makes it the package's `deploy` attribute.
    if name in ("deploy", "convert"):
        import importlib

        return importlib.import_module(f"fs_hw.{name}")
    raise AttributeError(f"module 'fs_hw' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), "convert", "deploy"])
