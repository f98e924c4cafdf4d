r"""`convert`: what ``fs-convert`` does, as one documented function.

>>> from fs_hw.convert import convert, SearchSpace
>>> result = convert(model, x_train[:2000], input_normalization=(0.286, 0.353),
...                  search=SearchSpace(), validation=(x_val, y_val), loss_budget=0.1,
...                  test=(x_test, y_test))                              # doctest: +SKIP
>>> result.network, result.search.chosen, result.evaluation              # doctest: +SKIP

The steps, each reusing the one calibration pass:

1. :class:`~fs_hw.convert.search.FSTwin` traces the model and collects the calibration
   statistics (the only pass over the calibration data).
2. With ``search``: every candidate operating point (K, alpha policy, grid scale) is scored
   by the twin on the *validation* samples (never the test split): accuracy loss against
   the ANN in points, prediction flips and spikes per neuron. The rule: the fewest spikes
   whose loss is within ``loss_budget`` points (else the smallest loss).
3. :func:`~fs_hw.convert.from_torch` writes the chosen point with the same statistics;
   the search is recorded in ``metadata["search"]``.
4. Fitted codes (swish, sigmoid, ...) are checked against the model's logit margins: when
   the twin changes more than :data:`FLIP_WARNING` of the ANN's predictions, a warning
   gives the codes' measured error, the margins and the shipped K that fixes it.
5. With ``test``: ANN and FS accuracy (the reference, float64) and spikes per neuron,
   recorded in ``metadata["evaluation"]``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fs_hw.convert import calibrate as cal
from fs_hw.convert.converter import from_torch
from fs_hw.convert.search import FSTwin, select
from fs_hw.errors import FSHWError, ValidationError

#: Input normalisations of the data sets fs-hw loads (pixels in [0, 1]), as trained on
#: by the usual recipes: ``--normalization NAME``.
NORMALIZATION_PRESETS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "mnist": ((0.1307,), (0.3081,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}
#: Share of the ANN's predictions the FS twin may change before fitted codes are reported.
FLIP_WARNING = 0.01
#: Calibration samples the code-error check runs on.
CHECK_SAMPLES = 512


@dataclass(frozen=True)
class SearchSpace:
    """The candidate operating points: every K x alpha policy x grid scale.

    ``scales`` multiply each layer's alpha (``2`` moves every ReLU grid one bit coarser:
    fewer spikes, less resolution). Ks without a shipped code for a fitted activation
    are skipped (and said so)."""

    Ks: tuple[int, ...] = (4, 5, 6, 8)
    policies: tuple[str, ...] = ("percentile:99.9", "percentile:99.99")
    scales: tuple[float, ...] = (1.0, 2.0)

    def __post_init__(self) -> None:
        if not self.Ks or not self.policies or not self.scales:
            raise ValidationError("SearchSpace", "Ks/policies/scales", "each needs at least one value")
        for K in self.Ks:
            if isinstance(K, bool) or not isinstance(K, (int, np.integer)) or not 1 <= K <= 16:
                raise ValidationError("SearchSpace", "Ks", f"must be integers in [1, 16], got {K!r}")
        for p in self.policies:
            cal.AlphaPolicy.parse(p, "SearchSpace.policies")
        for s in self.scales:
            if not (isinstance(s, (int, float)) and math.isfinite(s) and s > 0):
                raise ValidationError("SearchSpace", "scales", f"must be finite numbers > 0, got {s!r}")

    def candidates(self) -> list[tuple[int, str, float]]:
        return [(K, p, float(s)) for K in self.Ks for p in self.policies for s in self.scales]


@dataclass
class SearchResult:
    """Every scored point (dicts: K, policy, scale, val_accuracy, val_loss in points,
    val_flip in %, spikes_per_neuron), the chosen one, the rule and the validation size."""

    points: list[dict[str, Any]]
    chosen: dict[str, Any]
    rule: str
    ann_val_accuracy: float
    validation_samples: int
    skipped: list[str] = field(default_factory=list)

    def table(self) -> str:
        lines = [f"{'K':>3} {'policy':<18} {'scale':>6} {'val acc':>8} {'loss':>7} {'flips %':>8} {'spikes/n':>9}"]
        for p in sorted(self.points, key=lambda q: q["spikes_per_neuron"]):
            mark = "  <- chosen" if p is self.chosen else ""
            lines.append(f"{p['K']:>3} {p['policy']:<18} {p['scale']:>6.3g} {100 * p['val_accuracy']:>7.2f}% "
                         f"{p['val_loss']:>+7.2f} {p['val_flip']:>8.2f} {p['spikes_per_neuron']:>9.3f}{mark}")
        return "\n".join(lines)

    def frontier(self) -> list[dict[str, Any]]:
        """The Pareto front: no other point has both fewer spikes and a smaller loss."""
        pts = sorted(self.points, key=lambda q: (q["spikes_per_neuron"], q["val_loss"]))
        out, best = [], math.inf
        for p in pts:
            if p["val_loss"] < best:
                out.append(p)
                best = p["val_loss"]
        return out

    def plot(self, path: Any) -> Any:
        """Validation accuracy against spikes per neuron, the front and the chosen point (PNG)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from fs_hw.outputs import atomic_output

        fig, ax = plt.subplots(figsize=(6, 4))
        xs = [p["spikes_per_neuron"] for p in self.points]
        ax.scatter(xs, [100 * p["val_accuracy"] for p in self.points], s=14, c="0.6", label="candidates")
        front = self.frontier()
        ax.plot([p["spikes_per_neuron"] for p in front], [100 * p["val_accuracy"] for p in front], "-o", ms=4,
                label="front")
        ax.scatter([self.chosen["spikes_per_neuron"]], [100 * self.chosen["val_accuracy"]], s=80, marker="*",
                   c="C3", zorder=5, label=f"chosen: K={self.chosen['K']}, {self.chosen['policy']} "
                                          f"x{self.chosen['scale']:g}")
        ax.axhline(100 * self.ann_val_accuracy, ls="--", c="k", lw=1, label="ANN")
        ax.set_xlabel("spikes per neuron")
        ax.set_ylabel(f"validation accuracy (%), {self.validation_samples} samples")
        ax.set_title(self.rule, fontsize=9)
        ax.legend(fontsize=7)
        fig.tight_layout()
        with atomic_output(path, "wb") as fh:
            fig.savefig(fh, format="png", dpi=110)
        plt.close(fig)
        return path

    def to_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "validation_samples": self.validation_samples,
                "ann_val_accuracy": self.ann_val_accuracy, "chosen": dict(self.chosen),
                "points": [dict(p) for p in self.points], "skipped": list(self.skipped)}


@dataclass
class ConversionResult:
    network: Any
    search: SearchResult | None = None
    evaluation: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


def _labels_of(pair: Any, what: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        x, y = pair
    except (TypeError, ValueError):
        raise ValidationError("convert", what, "must be (inputs, labels)") from None
    x, y = np.asarray(x), np.asarray(y).reshape(-1)
    if len(x) != len(y) or len(x) == 0:
        raise ValidationError("convert", what, f"needs as many labels as inputs (> 0), got {len(x)} and {len(y)}")
    return x, y


def search_operating_point(twin: FSTwin, space: SearchSpace, x_val: np.ndarray, y_val: np.ndarray,
                           loss_budget: float, progress: Callable[[str], None] | None = None) -> SearchResult:
    """Score every candidate of ``space`` with the twin on the validation samples; choose by
    the rule "fewest spikes per neuron whose accuracy loss is <= ``loss_budget`` points"."""
    ann_logits, _ = twin.run(x_val, 8, {}, count_spikes=False, ann=True)
    ann_pred = ann_logits.argmax(1)
    ann_acc = float(np.mean(ann_pred == y_val))
    points, skipped = [], []
    cands = space.candidates()
    for i, (K, policy, scale) in enumerate(cands):
        try:
            twin.codes(K)
        except FSHWError as exc:
            skipped.append(f"K={K}: {exc}")
            continue
        logits, spikes = twin.run(x_val, K, twin.alphas(policy, scale))
        pred = logits.argmax(1)
        acc = float(np.mean(pred == y_val))
        points.append({"K": K, "policy": policy, "scale": scale, "val_accuracy": acc,
                       "val_loss": 100.0 * (ann_acc - acc), "val_flip": 100.0 * float(np.mean(pred != ann_pred)),
                       "spikes_per_neuron": twin.spikes_per_neuron(spikes, len(x_val))})
        if progress is not None:
            progress(f"search {i + 1}/{len(cands)}: K={K} {policy} x{scale:g}: {100 * acc:.2f}% "
                     f"({points[-1]['val_loss']:+.2f} points), {points[-1]['spikes_per_neuron']:.3f} spikes/neuron")
    if not points:
        raise ValidationError("convert", "search", "no candidate could be scored: " + "; ".join(skipped))
    chosen = select(points, loss_budget)
    rule = (f"fewest spikes/neuron with validation loss <= {loss_budget:g} points"
            + ("" if chosen["val_loss"] <= loss_budget else " (none met it: smallest loss)"))
    return SearchResult(points, chosen, rule, ann_acc, len(x_val), skipped)


def code_error_warnings(twin: FSTwin, x: np.ndarray, K: int, alphas: Mapping[str, float],
                        codes: Mapping[str, Any]) -> list[str]:
    """Fitted codes whose error exceeds the model's logit margins, measured on ``x``.

    The twin's FS predictions are compared with the ANN's; when more than
    :data:`FLIP_WARNING` change, the message gives each fitted code's largest error
    ``max |code(v) - f(v)|`` over its range, the ANN's median top-2 logit margin, and the
    smallest shipped K (above ``K``) at which the twin changes at most that share."""
    from fs_hw.codes.library import evaluate_code

    if not twin.functions:
        return []
    ann, _ = twin.run(x, K, {}, count_spikes=False, ann=True)
    fs, _ = twin.run(x, K, alphas, count_spikes=False)
    flips = float(np.mean(ann.argmax(1) != fs.argmax(1)))
    if flips <= FLIP_WARNING:
        return []
    top2 = np.sort(ann, axis=1)[:, -2:]
    margin = float(np.median(top2[:, 1] - top2[:, 0]))
    errors = []
    for fn, code in codes.items():
        lo, hi = code.provenance.x_range if code.provenance is not None else (-4.0, 4.0)
        err = evaluate_code(code, fn, (lo, hi), points=4001)["max_abs_error"]
        errors.append(f"{code.name} up to {err:.3g} on [{lo:g}, {hi:g}]")
    fix = None
    for K2 in range(K + 1, 17):
        try:
            twin.codes(K2)
        except FSHWError:
            continue
        scaled = {n: a * 2.0 ** (K2 - K) for n, a in alphas.items()}  # same ReLU grids, more headroom
        fs2, _ = twin.run(x, K2, scaled, count_spikes=False)
        f2 = float(np.mean(ann.argmax(1) != fs2.argmax(1)))
        if f2 <= FLIP_WARNING:
            fix = (K2, f2)
            break
    advice = (f"K={fix[0]} (shipped codes) changes {100 * fix[1]:.1f}%: convert with --K {fix[0]}" if fix else
              "no shipped K fixes it: fit codes at a larger K over the layers' ranges with "
              "fs_hw.codes.fit.fit_code and pass codes={function: code}")
    return [f"fitted codes err ({'; '.join(errors)}, measured as max |code(v) - f(v)|) by more than the model's "
            f"logit margins (median top-2 margin {margin:.3g}): at K={K} the FS network changes "
            f"{100 * flips:.1f}% of the ANN's predictions on {len(x)} calibration samples; {advice}"]


def convert(model: Any, calibration_data: Any, *, example_input: Any = None, K: int | None = None,
            alpha_policy: Any = cal.DEFAULT_ALPHA_POLICY, half_step: bool = True, input_code: str | None = "round",
            input_normalization: tuple[Any, Any] | None = None, search: SearchSpace | None = None,
            validation: tuple[Any, Any] | None = None, loss_budget: float = 0.1, test: tuple[Any, Any] | None = None,
            name: str | None = None, metadata: Mapping[str, Any] | None = None,
            progress: Callable[[str], None] | None = None) -> ConversionResult:
    """Convert ``model`` as ``fs-convert`` does; see the module docstring for the steps.

    ``calibration_data``, ``validation`` and ``test`` hold raw samples when
    ``input_normalization`` is given (the model's own units otherwise). ``validation`` is
    required with ``search`` and must not be the test split (the caller's duty: fs-convert
    draws it from the training split, disjoint from the calibration samples)."""
    import torch

    from fs_hw.reference.simulator import run_reference

    if search is not None and validation is None:
        raise ValidationError("convert", "validation",
                              "is required with search (held-out samples, never the test split)")
    if not (isinstance(loss_budget, (int, float)) and math.isfinite(loss_budget) and loss_budget >= 0):
        raise ValidationError("convert", "loss_budget", f"must be a number of points >= 0, got {loss_budget!r}")
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    calib = torch.as_tensor(np.asarray(calibration_data)) if not isinstance(calibration_data, torch.Tensor) \
        else calibration_data
    example = calib[:2] if example_input is None and isinstance(model, torch.nn.Module) else example_input
    twin = FSTwin(model, example, calib, input_normalization=input_normalization)
    seconds["calibration"] = time.perf_counter() - t0
    stats = (twin.stats, twin.data_range, twin.calibration_samples)
    meta = dict(metadata or {})
    result = ConversionResult(None, seconds=seconds)
    chosen_K, policy = K, alpha_policy
    if search is not None:
        t1 = time.perf_counter()
        x_val, y_val = _labels_of(validation, "validation")
        result.search = search_operating_point(twin, search, x_val, y_val, loss_budget, progress)
        c = result.search.chosen
        chosen_K = c["K"]
        policy: dict[str, Any] = dict(twin.alphas(c["policy"], c["scale"]))
        policy["*"] = c["policy"]
        meta["search"] = result.search.to_dict()
        seconds["search"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    net = from_torch(model, example, calib, K=chosen_K, alpha_policy=policy, half_step=half_step,
                     input_code=input_code, input_normalization=input_normalization, calibration_stats=stats,
                     name=name, metadata=meta)
    seconds["conversion"] = time.perf_counter() - t2
    alphas = {e["node"]: e["alpha"] for e in net.metadata["conversion"]["layers"] if "alpha" in e}
    codes = {e["function"]: net.codes[e["code"]] for e in net.metadata["conversion"]["layers"]
             if e["function"] != "relu"}
    result.warnings = code_error_warnings(twin, np.asarray(calib[:CHECK_SAMPLES]), net.K, alphas, codes)
    if test is not None:
        t3 = time.perf_counter()
        x, y = _labels_of(test, "test")
        ann, _ = twin.run(x, net.K, {}, count_spikes=False, ann=True)
        fs = run_reference(net, x, "fast", batch_size=250, library="torch")
        ann_acc, fs_acc = float(np.mean(ann.argmax(1) == y)), float(np.mean(fs.predictions == y))
        spn = fs.spikes_per_neuron(input_name=net.input.name)
        result.evaluation = {"samples": len(x), "split": "test", "ann_accuracy": ann_acc, "fs_accuracy": fs_acc,
                             "spikes_per_neuron": spn}
        net = net.replace(metadata={**net.metadata, "evaluation": result.evaluation})
        seconds["evaluation"] = time.perf_counter() - t3
    result.network = net
    return result


def normalization_from_args(preset: str | None, mean: Sequence[float] | None,
                            std: Sequence[float] | None) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """``(mean, std)`` from a preset name or explicit values (not both), or None."""
    if preset is not None and (mean is not None or std is not None):
        raise ValidationError("fs-convert", "--normalization", "give a preset or --input-mean/--input-std, not both")
    if preset is not None:
        if preset not in NORMALIZATION_PRESETS:
            raise ValidationError("fs-convert", "--normalization",
                                  f"unknown preset {preset!r}; known: {', '.join(NORMALIZATION_PRESETS)}")
        return NORMALIZATION_PRESETS[preset]
    if (mean is None) != (std is None):
        raise ValidationError("fs-convert", "--input-mean/--input-std", "give both (the model's (x - mean) / std)")
    return None if mean is None else (tuple(mean), tuple(std))


__all__ = ["NORMALIZATION_PRESETS", "ConversionResult", "SearchResult", "SearchSpace", "code_error_warnings",
           "convert", "normalization_from_args", "search_operating_point"]
