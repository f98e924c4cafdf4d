"""Conversion of trained PyTorch networks into FS networks (see docs/convert.md).

>>> from fs_hw.convert import from_torch
>>> net = from_torch(model.eval(), x[:2], x_calib, K=8)          # doctest: +SKIP
>>> result = convert(model.eval(), x_calib, search=SearchSpace(), validation=(x_val, y_val))  # doctest: +SKIP

``convert`` is what ``fs-convert`` runs (one calibration, optional operating-point search,
code-error warnings, evaluation); ``from_torch`` is the conversion step itself.
"""

from fs_hw._callable import make_callable
from fs_hw.convert.api import NORMALIZATION_PRESETS, ConversionResult, SearchResult, SearchSpace, convert
from fs_hw.convert.calibrate import DEFAULT_ALPHA_POLICY, AlphaPolicy
from fs_hw.convert.converter import DEFAULT_K, INPUT_CODES, MAX_K, from_torch
from fs_hw.convert.frontend import TorchGraph, trace

__all__ = ["DEFAULT_ALPHA_POLICY", "DEFAULT_K", "INPUT_CODES", "MAX_K", "NORMALIZATION_PRESETS", "AlphaPolicy",
           "ConversionResult", "SearchResult", "SearchSpace", "TorchGraph", "convert", "from_torch", "trace"]

# fs_hw.convert(...) calls convert() (what fs-convert runs), as fs_hw.deploy(...) calls deploy()
make_callable(__name__, convert)
