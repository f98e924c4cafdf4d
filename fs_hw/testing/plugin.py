"""pytest plugin (entry point ``pytest11``): the options and fixtures of the shipped
conformance suite, ``pytest --pyargs fs_hw.testing --fs-backend NAME``.

It is registered by fs-hw's distribution, so the options exist in every pytest run of an
environment where fs-hw is installed (``--pyargs`` from any working directory, no
conftest needed); they do nothing unless ``fs_hw.testing`` runs.

``--fs-backend`` names an installed target (``fs_hw.backend.get_backend``), or
``module:attr`` for one under development (a backend class, a factory or an instance);
default ``reference``. ``--fs-backend-config PATH`` is a TOML file whose ``[target]``
table configures the backend (checked against its ``config_type`` first); without it,
the backend's own defaults.
"""

from __future__ import annotations

import importlib
import tomllib
from pathlib import Path
from typing import Any

import pytest

DEFAULT_BACKEND = "reference"


def pytest_addoption(parser):
    group = parser.getgroup("fs-hw conformance")
    group.addoption("--fs-backend", default=DEFAULT_BACKEND,
                    help="installed fs-hw target to check, or module:attr of a backend class/factory/instance "
                         f"(default: {DEFAULT_BACKEND})")
    group.addoption("--fs-backend-config", default=None, metavar="PATH",
                    help="TOML file whose [target] table configures the backend (default: the backend's defaults)")


def load_backend(spec: str) -> Any:
    """The backend named by ``--fs-backend``: an installed target, or ``module:attr``."""
    from fs_hw.backend import Backend, get_backend

    if ":" not in spec:
        return get_backend(spec)
    module, _, attr = spec.partition(":")
    try:
        obj = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise pytest.UsageError(f"--fs-backend {spec}: cannot load it ({exc})") from None
    # a class (which itself has the protocol's attributes) or a factory; else an instance
    backend = obj() if isinstance(obj, type) or (callable(obj) and not isinstance(obj, Backend)) else obj
    if not isinstance(backend, Backend):
        raise pytest.UsageError(f"--fs-backend {spec}: {obj!r} does not implement the fs_hw Backend protocol")
    return backend


def load_config(path: str | None) -> dict:
    """The ``[target]`` table of a TOML file (``{}`` without one: the backend's defaults)."""
    if path is None:
        return {}
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise pytest.UsageError(f"--fs-backend-config {path}: {exc}") from None
    table = data.get("target", {})
    if not isinstance(table, dict):
        raise pytest.UsageError(f"--fs-backend-config {path}: [target] must be a table")
    return dict(table)


def _checked(backend: Any, config: dict) -> Any:
    """Fail early (once, not per scenario) on a wrong declaration or config."""
    from fs_hw import conformance
    from fs_hw.backend import parse_target_config

    conformance._declared_unsupported(backend)  # a name that is no scenario is an error
    conformance.as_exactness(getattr(backend, "exactness", None))
    if hasattr(backend, "config_type"):
        parse_target_config(backend, config)
    return backend


_BACKEND = pytest.StashKey[tuple[Any, dict]]()


def _load(config) -> tuple[Any, dict]:
    """The checked backend and its ``[target]`` table, loaded once per session."""
    if _BACKEND not in config.stash:
        from fs_hw.errors import FSHWError

        spec = config.getoption("--fs-backend")
        try:
            table = load_config(config.getoption("--fs-backend-config"))
            config.stash[_BACKEND] = (_checked(load_backend(spec), table), table)
        except (FSHWError, ValueError, TypeError) as exc:
            raise pytest.UsageError(f"--fs-backend {spec}: {exc}") from None
    return config.stash[_BACKEND]


def pytest_collection_modifyitems(session, config, items):
    # Only runs that collect the suite load the backend; a wrong name, declaration or
    # config is then one usage error, not an error per scenario.
    if any("fs_backend" in getattr(item, "fixturenames", ()) for item in items):
        _load(config)


@pytest.fixture(scope="session")
def fs_backend_config(request) -> dict:
    return _load(request.config)[1]


@pytest.fixture(scope="session")
def fs_backend(request):
    return _load(request.config)[0]


def pytest_report_header(config):
    spec = config.getoption("--fs-backend", DEFAULT_BACKEND)
    path = config.getoption("--fs-backend-config", None)
    if spec == DEFAULT_BACKEND and path is None:
        return None
    return f"fs-hw conformance: backend {spec}, config {path or 'backend defaults'}"
