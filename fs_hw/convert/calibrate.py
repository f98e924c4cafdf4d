r"""Calibration: statistics of every activation's input, and the scale policy of ReLU codes.

The ReLU code of one layer covers :math:`[0, \alpha)` with :math:`2^K` levels of width
:math:`s = \alpha 2^{-K}`; larger inputs saturate at :math:`\alpha (1 - 2^{-K})`. The
choice of :math:`\alpha` trades clipping (too small) against resolution (too large).
It is taken per layer from the layer's *pre-activations* in the ANN, computed on the
calibration data, by an :class:`AlphaPolicy`:

``"percentile:<p>"`` (default ``"percentile:99.9"``)
    the p-th percentile of the layer's positive pre-activations (linear
    interpolation). Estimated from about :data:`MAX_SAMPLES` values per layer, drawn
    uniformly (seeded, so conversion is deterministic); with fewer positive values all
    are used and the percentile is exact.
``"max"``
    the largest pre-activation seen (exact): no clipping on the calibration data.
``"<number>"`` or a float
    a fixed :math:`\alpha` for every layer (the paper used 25).

A mapping ``{layer: policy, "*": default}`` sets the policy per layer (keys are IR node
names or torch names). Every :math:`\alpha` is rounded to float32
(``np.float32(alpha)``), so the code's grid values are exact in float64 and the
reference backend's closed form for the ReLU code applies.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fs_hw.errors import ValidationError

#: Values kept per layer to estimate a percentile.
MAX_SAMPLES = 1 << 20

DEFAULT_ALPHA_POLICY = "percentile:99.9"


@dataclass(frozen=True)
class AlphaPolicy:
    """How one layer's :math:`\\alpha` is chosen: ``kind`` is percentile, max or fixed."""

    kind: str
    value: float | None = None

    def __str__(self) -> str:
        if self.kind == "percentile":
            return f"percentile:{self.value:g}"
        if self.kind == "fixed":
            return f"{self.value:g}"
        return self.kind

    @property
    def needs_data(self) -> bool:
        return self.kind != "fixed"

    @classmethod
    def parse(cls, spec: Any, where: str = "alpha_policy") -> AlphaPolicy:
        if isinstance(spec, AlphaPolicy):
            return spec
        if isinstance(spec, (int, float)) and not isinstance(spec, bool):
            return cls._fixed(float(spec), where)
        if isinstance(spec, str):
            text = spec.strip().lower()
            if text == "max":
                return cls("max")
            for prefix in ("percentile:", "percentile=", "p"):
                if text.startswith(prefix):
                    try:
                        p = float(text[len(prefix):])
                    except ValueError:
                        break
                    if not 0 < p <= 100:
                        raise ValidationError("from_torch", where, f"percentile must be in (0, 100], got {p:g}")
                    return cls("percentile", p)
            for prefix in ("fixed:", "fixed=", ""):
                if text.startswith(prefix):
                    try:
                        return cls._fixed(float(text[len(prefix):]), where)
                    except ValueError:
                        pass
        raise ValidationError(
            "from_torch", where,
            f"unknown policy {spec!r}; use 'percentile:<p>' (e.g. 'percentile:99.99'), 'max', "
            "or a number (fixed alpha)",
        )

    @classmethod
    def _fixed(cls, value: float, where: str) -> AlphaPolicy:
        if not (math.isfinite(value) and value > 0):
            raise ValidationError("from_torch", where, f"a fixed alpha must be a positive number, got {value}")
        return cls("fixed", value)


def resolve_policies(spec: Any) -> tuple[AlphaPolicy, dict[str, AlphaPolicy]]:
    """The default policy and per-layer overrides from ``alpha_policy``."""
    if isinstance(spec, Mapping):
        per = {str(k): AlphaPolicy.parse(v, f"alpha_policy[{k!r}]") for k, v in spec.items() if k != "*"}
        default = AlphaPolicy.parse(spec.get("*", DEFAULT_ALPHA_POLICY), "alpha_policy['*']")
        return default, per
    return AlphaPolicy.parse(spec), {}


@dataclass
class LayerStats:
    """What calibration saw at the input of one activation."""

    count: int = 0
    positive: int = 0
    max: float = -math.inf
    min: float = math.inf
    outside: int = 0
    samples: list[np.ndarray] = field(default_factory=list)

    def update(self, v: Any, keep: int, generator: Any, positive_only: bool, x_range: tuple | None) -> None:
        import torch

        flat = v.detach().reshape(-1)
        self.count += flat.numel()
        if flat.numel():
            self.max = max(self.max, float(flat.max()))
            self.min = min(self.min, float(flat.min()))
        if x_range is not None:
            self.outside += int(((flat < x_range[0]) | (flat > x_range[1])).sum())
        pos = flat[flat > 0] if positive_only else flat
        self.positive += int((flat > 0).sum())
        if pos.numel() > keep:
            idx = torch.randint(0, pos.numel(), (keep,), generator=generator)
            pos = pos[idx]
        self.samples.append(pos.to(torch.float32).cpu().numpy())

    def percentile(self, p: float) -> float:
        values = np.concatenate(self.samples) if self.samples else np.zeros(0, np.float32)
        if values.size == 0:
            return 0.0
        return float(np.percentile(values.astype(np.float64), p))

    def alpha(self, policy: AlphaPolicy) -> float:
        if policy.kind == "fixed":
            return float(policy.value)  # type: ignore[arg-type]
        if policy.kind == "max":
            return self.max
        return self.percentile(float(policy.value))  # type: ignore[arg-type]

    def summary(self) -> dict:
        return {
            "values": self.count,
            "positive_fraction": self.positive / self.count if self.count else 0.0,
            "min": self.min if self.count else None,
            "max": self.max if self.count else None,
        }


def batches(data: Any, batch_size: int) -> Iterable[Any]:
    """Float tensors ``(B, ...)`` from an array, a tensor, or an iterable of batches / (x, y) pairs."""
    import torch

    if isinstance(data, (np.ndarray, torch.Tensor)):
        for start in range(0, len(data), batch_size):
            yield torch.as_tensor(np.asarray(data[start:start + batch_size]) if isinstance(data, np.ndarray)
                                  else data[start:start + batch_size])
        return
    for item in data:
        if isinstance(item, (tuple, list)):
            item = item[0]
        yield torch.as_tensor(item)


def count(data: Any) -> int | None:
    try:
        return len(data)
    except TypeError:
        return None


def collect(graph: Any, data: Any, act_ranges: Mapping[str, tuple | None], relu_ops: set[str],
            batch_size: int = 256) -> tuple[dict[str, LayerStats], tuple[float, float], int]:
    """Run the ANN (float32) over ``data``; return per-activation stats, the input range and the sample count."""
    import torch

    total = count(data)
    generator = torch.Generator().manual_seed(0)
    stats = {name: LayerStats() for name in act_ranges}
    lo, hi, n = math.inf, -math.inf, 0
    for batch in batches(data, batch_size):
        batch = batch.to(torch.float32)
        if tuple(batch.shape[1:]) != tuple(graph.input_shape):
            raise ValidationError(
                "from_torch", "calibration_data",
                f"samples have shape {tuple(batch.shape[1:])}, the model's input is {tuple(graph.input_shape)}",
            )
        if not torch.isfinite(batch).all():
            raise ValidationError("from_torch", "calibration_data", "contains non-finite values")
        lo, hi = min(lo, float(batch.min())), max(hi, float(batch.max()))
        n += len(batch)
        keep = MAX_SAMPLES // 16 if total is None else max(1, math.ceil(MAX_SAMPLES * len(batch) / max(total, 1)))
        with torch.no_grad():
            _, captured = graph.run(batch, capture=set(stats), dtype=torch.float32)
        for name, value in captured.items():
            stats[name].update(value, keep, generator, name in relu_ops, act_ranges[name])
    if n == 0:
        raise ValidationError("from_torch", "calibration_data", "is empty")
    return stats, (lo, hi), n
