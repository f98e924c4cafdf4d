"""FS codes: the exact ReLU code, the published tables, fitted codes."""

from fs_hw.codes.library import ACTIVATIONS, evaluate_code, get_code, published_codes, shipped_codes
from fs_hw.codes.relu import relu_closed_form, relu_code, relu_grid

__all__ = [
    "ACTIVATIONS",
    "evaluate_code",
    "get_code",
    "published_codes",
    "relu_closed_form",
    "relu_code",
    "relu_grid",
    "shipped_codes",
]
