"""The codes fs-hw ships: the published tables, our fitted codes, and how to measure them."""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import cache
from importlib import resources

import numpy as np

from fs_hw.errors import ValidationError
from fs_hw.ir.code import FSCode, Provenance

#: Target activations by name, in numpy. The fitting routine has torch twins.
ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "relu": lambda x: np.maximum(x, 0.0),
    "swish": lambda x: x / (1.0 + np.exp(-x)),
    "sigmoid": lambda x: 1.0 / (1.0 + np.exp(-x)),
    "tanh": np.tanh,
    "gelu": lambda x: 0.5 * x * (1.0 + _erf(x / np.sqrt(2.0))),
}


def _erf(x: np.ndarray) -> np.ndarray:
    from scipy.special import erf

    return erf(x)


def evaluate_code(
    code: FSCode, function: str, x_range: tuple[float, float], points: int = 100_001
) -> dict:
    """MSE, max |error| and mean spikes of ``code`` against ``function`` on a uniform grid."""
    if function not in ACTIVATIONS:
        raise ValidationError(
            f"FSCode {code.name!r}", "function", f"unknown activation {function!r}; known: {sorted(ACTIVATIONS)}"
        )
    x = np.linspace(x_range[0], x_range[1], points)
    result = code(x)
    err = result.output - ACTIVATIONS[function](x)
    return {
        "mse": float(np.mean(err**2)),
        "max_abs_error": float(np.max(np.abs(err))),
        "mean_spikes": float(np.mean(result.spike_count)),
    }


def _read_json(name: str) -> dict:
    text = resources.files("fs_hw.codes").joinpath("data", name).read_text()
    return json.loads(text)


@cache
def published_codes() -> dict[str, FSCode]:
    """Stöckl & Maass 2021's published swish and sigmoid tables (strict rule ``>``)."""
    data = _read_json("stoeckl2021_fs_tables.json")["codes"]
    codes = {}
    for fn in ("swish", "sigmoid"):
        entry = data[fn]
        lo, hi = entry["fit_range"]
        codes[f"{fn}_published_k{entry['K']}"] = FSCode(
            name=f"{fn}_published_k{entry['K']}",
            T=entry["T"],
            h=entry["h"],
            d=entry["d"],
            rule=">",
            provenance=Provenance(
                function=fn, x_range=(float(lo), float(hi)), source="Stoeckl & Maass 2021, published tables"
            ),
        )
    return codes


@cache
def shipped_codes() -> dict[str, FSCode]:
    """Codes fitted by fs-hw (``fs_hw/codes/data/fitted.json``), by name."""
    try:
        data = _read_json("fitted.json")
    except FileNotFoundError:
        return {}
    return {entry["name"]: FSCode.from_dict(entry, "fitted.json") for entry in data["codes"]}


def get_code(name: str) -> FSCode:
    """A shipped or published code by name."""
    known = {**published_codes(), **shipped_codes()}
    if name not in known:
        raise ValidationError("code library", "name", f"no code named {name!r}; known: {sorted(known)}")
    return known[name]
