"""pytest plugin (entry point ``pytest11``): the options and fixtures of the shipped
conformance suite, ``pytest --pyargs fs_hw.testing --fs-backend NAME``.

It is registered by fs-hw's distribution, so the options exist in every pytest run of an
environment where fs-hw is installed; they do nothing unless ``fs_hw.testing`` runs.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest


def pytest_addoption(parser):
    group = parser.getgroup("fs-hw conformance")
    group.addoption("--fs-backend", default="reference",
                    help="installed fs-hw target to check, or module:Class (default: reference)")
    group.addoption("--fs-backend-config", default=None,
                    help="TOML file whose [target] table configures the backend")


@pytest.fixture(scope="session")
def fs_backend(request):
    from fs_hw.backend import get_backend

    name = request.config.getoption("--fs-backend")
    if ":" in name:  # a backend under development, not installed as an entry point
        import importlib

        module, _, attr = name.partition(":")
        return getattr(importlib.import_module(module), attr)()
    return get_backend(name)


@pytest.fixture(scope="session")
def fs_backend_config(request) -> dict:
    path = request.config.getoption("--fs-backend-config")
    if path is None:
        return {}
    return dict(tomllib.loads(Path(path).read_text()).get("target", {}))
