"""Conversion of trained PyTorch networks into FS networks (see docs/convert.md).

>>> from fs_hw.convert import from_torch
>>> net = from_torch(model.eval(), x[:2], x_calib, K=8)          # doctest: +SKIP
"""

from fs_hw.convert.calibrate import DEFAULT_ALPHA_POLICY, AlphaPolicy
from fs_hw.convert.converter import DEFAULT_K, INPUT_CODES, MAX_K, from_torch
from fs_hw.convert.frontend import TorchGraph, trace

__all__ = ["DEFAULT_ALPHA_POLICY", "DEFAULT_K", "INPUT_CODES", "MAX_K", "AlphaPolicy", "TorchGraph",
           "from_torch", "trace"]
