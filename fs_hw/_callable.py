"""Modules that can be called: ``fs_hw.deploy(...)`` and ``fs_hw.convert(...)``.

Python sets an imported submodule as its package's attribute, so ``fs_hw.deploy`` is the
module ``fs_hw/deploy.py`` once anything imported it; making the module callable lets the
short spelling call its main function either way.
"""

from __future__ import annotations

import inspect
import sys
import types
from collections.abc import Callable
from typing import Any


def make_callable(module_name: str, function: Callable[..., Any]) -> None:
    """Calling module ``module_name`` calls ``function``; help() and inspect.signature show it."""

    class CallableModule(types.ModuleType):
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            return function(*args, **kwargs)

    module = sys.modules[module_name]
    module.__class__ = CallableModule
    module.__signature__ = inspect.signature(function)  # type: ignore[attr-defined]
