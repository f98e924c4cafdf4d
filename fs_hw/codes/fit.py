r"""Fit the tables :math:`T, h, d` of an :class:`~fs_hw.ir.code.FSCode` to a scalar activation.

The fit minimises, by Adam, the mean squared error between the FS output and the target
function on a dense grid of :math:`x` over ``x_range`` (a fresh random sub-cell offset
every iteration, so the loss estimates the integral, not a fixed set of points), plus an
optional spike-count penalty

.. math::

    L = \frac{1}{N}\sum_i \bigl(y(x_i) - f(x_i)\bigr)^2
        + \lambda \, \frac{\sum_i w(x_i)\, n(x_i)}{\sum_i w(x_i)}
        + \mu \, \max\bigl(0, \bar n - n_{\max}\bigr)

where :math:`n(x)` is the spike count, :math:`w` an optional input-distribution weight
and :math:`\bar n` the plain mean spike count on the grid.

The forward pass is :func:`fs_hw.dynamics.simulate_fs` itself: the same dynamics that
every inference path uses (the published code's training script subtracted :math:`h`
before the threshold test and its inference code after; one definition avoids that
trap). The only thing fitting adds is ``spike_fn``: :class:`PseudoSpike`, whose forward
value is exactly :func:`fs_hw.dynamics.threshold_test` and whose backward pass is the
pseudo-derivative

.. math::

    \frac{\partial z}{\partial v} = -\frac{\partial z}{\partial T}
        = \gamma \, \frac{\max(1 - |v_s|, 0)}{|v| + 1}, \qquad
    v_s = \frac{v - T}{|v| + 1}.

Each restart starts from an initial code (the published table for that function and
:math:`K` where one exists, a saturating binary code fitted to the function's clipped
linear shape, or a noisy copy of either), and keeps the iterate with the lowest MSE that
meets the spike budget, measured in numpy float64 with :func:`fs_hw.codes.evaluate_code`
on the uniform grid that is reported. The returned code's :class:`Provenance` carries
those numbers. Fitting is deterministic given ``seed`` (use one torch thread).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from fs_hw.codes.library import ACTIVATIONS, evaluate_code, published_codes
from fs_hw.dynamics import RULES, simulate_fs, threshold_test
from fs_hw.errors import ValidationError
from fs_hw.ir.code import FSCode, Provenance

#: Torch twins of :data:`fs_hw.codes.library.ACTIVATIONS`.
TORCH_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": torch.relu,
    "swish": lambda x: x * torch.sigmoid(x),
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "gelu": lambda x: 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0))),
}


class PseudoSpike(torch.autograd.Function):
    """Exact threshold test forward, pseudo-derivative backward (w.r.t. ``v`` and ``T``)."""

    @staticmethod
    def forward(ctx, v: torch.Tensor, T_t: torch.Tensor, rule: str, dampening: float = 1.0):
        ctx.save_for_backward(v, T_t)
        ctx.dampening = dampening
        return threshold_test(v, T_t, rule).to(v.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        v, T_t = ctx.saved_tensors
        scale = 1.0 / (v.abs() + 1.0)
        v_s = (v - T_t) * scale
        psi = ctx.dampening * torch.clamp(1.0 - v_s.abs(), min=0.0) * scale
        grad_v = grad * psi
        grad_T = None
        if ctx.needs_input_grad[1]:
            grad_T = (-grad_v).sum().reshape(T_t.shape)
        return grad_v, grad_T, None, None


def pseudo_spike(v: torch.Tensor, T_t: torch.Tensor, rule: str, dampening: float = 1.0):
    """``spike_fn`` for :func:`fs_hw.dynamics.simulate_fs` with a pseudo-derivative."""
    return PseudoSpike.apply(v, T_t, rule, dampening)


@dataclass
class FitReport:
    """What :func:`fit` returns: the best code, its start, and every restart's result."""

    code: FSCode
    initial: FSCode
    initial_metrics: dict
    restarts: list[dict] = field(default_factory=list)


# --------------------------------------------------------------------------- inits


def binary_init(
    function: str,
    K: int,
    x_range: tuple[float, float],
    rule: str = ">",
    points: int = 4001,
    baseline: bool | None = None,
) -> FSCode:
    r"""A saturating binary code fitted to the function's best clipped-linear shape.

    The target is approximated by :math:`g(x) = b + (f_1 - b)\,
    \mathrm{clip}((x - x_0)/(x_1 - x_0), 0, 1)` (grid search over :math:`x_0 < x_1`,
    least squares for :math:`f_1` and, in one variant, :math:`b`; :math:`b = 0` in the
    other). The code spends one step on the baseline :math:`b` if there is one (every
    input fires once, ``h = 0``), one step on the saturation :math:`x \ge x_1` if it
    lies inside the range (fires once, then a reset large enough to silence the rest),
    and the remaining steps on the binary digits of :math:`x - x_0` scaled by the slope
    (the ReLU code, shifted by half a grid step to round). Of the two variants, the FS
    code with the lower MSE on ``x_range`` is returned, or the one ``baseline`` asks for.
    """
    lo, hi = x_range
    f = ACTIVATIONS[function]
    x = np.linspace(lo, hi, points)
    y = f(x)
    cands = np.linspace(lo, hi, 81)
    best: dict[bool, tuple] = {}
    for i, x0 in enumerate(cands[:-1]):
        for x1 in cands[i + 1 :]:
            c = np.clip((x - x0) / (x1 - x0), 0.0, 1.0)
            for with_b in (True, False):
                if with_b:
                    A = np.stack([1.0 - c, c], axis=1)
                    coef, *_ = np.linalg.lstsq(A, y, rcond=None)
                    b, f1 = coef
                else:
                    b, f1 = 0.0, float(c @ y / max(c @ c, 1e-300))
                err = float(np.mean((b + (f1 - b) * c - y) ** 2))
                if with_b not in best or err < best[with_b][0]:
                    best[with_b] = (err, x0, x1, float(b), float(f1))
    variants = (True, False) if baseline is None else (bool(baseline),)
    codes = [_binary_code(function, K, x_range, rule, *best[w][1:], w) for w in variants]
    return min(codes, key=lambda c: evaluate_code(c, function, x_range, points)["mse"])


def _binary_code(function, K, x_range, rule, x0, x1, b, f1, with_b) -> FSCode:
    lo, hi = x_range
    T: list[float] = []
    h: list[float] = []
    d: list[float] = []
    span = hi - lo
    if with_b and len(T) < K - 1:
        T.append(lo - span)
        h.append(0.0)
        d.append(b)
    else:
        b = 0.0
    if x1 < hi - 1e-9 * span and len(T) < K - 1:
        T.append(float(x1))
        h.append(float(hi - x0 + 0.25 * span))
        d.append(f1 - b)
    alpha = x1 - x0
    slope = (f1 - b) / alpha
    nbits = K - len(T)
    step = alpha * 2.0**-nbits
    for t in range(nbits):
        w = alpha * 2.0 ** -(t + 1)
        T.append(float(x0 - 0.5 * step + w))
        h.append(float(w))
        d.append(float(slope * w))
    return FSCode(
        f"{function}_binary{'_b' if with_b else ''}_init_k{K}", T, h, d, rule,
        Provenance(function, (float(lo), float(hi)), source="binary init"),
    )


def published_init(function: str, K: int, rule: str = ">") -> FSCode | None:
    """The published table for ``function`` with ``K`` steps, if there is one."""
    for code in published_codes().values():
        if code.provenance.function == function and code.K == K:
            return FSCode(code.name, code.T, code.h, code.d, rule, code.provenance)
    return None


def prune_init(
    code: FSCode, K: int, function: str, x_range: tuple[float, float], points: int = 4001
) -> FSCode:
    """Shorten ``code`` to ``K`` steps by greedily dropping the step whose removal hurts
    the MSE on ``x_range`` least (an initial code for a smaller ``K`` from a fitted one)."""
    if K > code.K:
        raise ValidationError("prune_init", "K", f"{K} exceeds the code's {code.K} steps")
    T, h, d = list(code.T), list(code.h), list(code.d)
    while len(T) > K:
        best = None
        for t in range(len(T)):
            keep = [i for i in range(len(T)) if i != t]
            cand = FSCode("c", [T[i] for i in keep], [h[i] for i in keep], [d[i] for i in keep],
                          code.rule)
            mse = evaluate_code(cand, function, x_range, points)["mse"]
            if best is None or mse < best[0]:
                best = (mse, t)
        del T[best[1]], h[best[1]], d[best[1]]
    return FSCode(f"{code.name}_pruned_k{K}", T, h, d, code.rule, code.provenance)


def _perturb(code: FSCode, rng: np.random.Generator, scale: float) -> FSCode:
    """A noisy copy: relative noise on every entry plus an absolute part of the same size."""
    if scale <= 0:
        return code
    out = []
    for arr in (code.T, code.h, code.d):
        mag = np.abs(arr) + 0.1 * (np.abs(arr).mean() + 1e-9)
        out.append(arr + scale * mag * rng.standard_normal(arr.shape))
    return FSCode(code.name, *out, code.rule, code.provenance)


# --------------------------------------------------------------------------- fit


def _metrics(code: FSCode, function: str, x_range, points: int) -> dict:
    return evaluate_code(code, function, x_range, points)


def _better(a: dict, b: dict | None, max_spikes: float | None, spike_lambda: float = 0.0) -> bool:
    """Is metrics ``a`` better than ``b``: within the spike budget first, then a lower
    ``mse + spike_lambda * mean_spikes`` (the training objective, on the uniform grid)."""
    if b is None:
        return True
    if max_spikes is not None:
        ok_a, ok_b = a["mean_spikes"] <= max_spikes, b["mean_spikes"] <= max_spikes
        if ok_a != ok_b:
            return ok_a
        if not ok_a:
            return a["mean_spikes"] < b["mean_spikes"]
    return a["mse"] + spike_lambda * a["mean_spikes"] < b["mse"] + spike_lambda * b["mean_spikes"]


def _weights(spike_weight, x: torch.Tensor) -> torch.Tensor | None:
    if spike_weight is None:
        return None
    if callable(spike_weight):
        return spike_weight(x)
    kind, mu, sigma = spike_weight
    if kind != "normal":
        raise ValidationError("fit", "spike_weight", f"unknown weighting {kind!r}")
    return torch.exp(-0.5 * ((x - mu) / sigma) ** 2)


def _train_one(
    start: FSCode,
    function: str,
    x_range: tuple[float, float],
    *,
    rule: str,
    iterations: int,
    lr: float,
    grid_points: int,
    spike_lambda: float,
    spike_weight,
    max_spikes: float | None,
    budget_lambda: float,
    dampening: float,
    eval_every: int,
    eval_points: int,
    generator: torch.Generator,
) -> tuple[FSCode, dict]:
    lo, hi = x_range
    target = TORCH_ACTIVATIONS[function]
    params = [torch.tensor(np.array(a), dtype=torch.float64, requires_grad=True)
              for a in (start.T, start.h, start.d)]
    opt = torch.optim.Adam(params, lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(iterations, 1),
                                                       eta_min=lr * 0.02)
    base = torch.arange(grid_points, dtype=torch.float64)

    def spike_fn(v, T_t, r):
        return pseudo_spike(v, T_t, r, dampening)

    def snapshot() -> FSCode:
        T, h, d = (p.detach().numpy().copy() for p in params)
        return FSCode(start.name, T, h, d, rule, start.provenance)

    best_code = snapshot()
    best = _metrics(best_code, function, x_range, eval_points)
    for it in range(1, iterations + 1):
        u = torch.rand(grid_points, generator=generator, dtype=torch.float64)
        x = lo + (base + u) * ((hi - lo) / grid_points)
        T, h, d = params
        res = simulate_fs(x, T, h, d, rule, spike_fn=spike_fn)
        loss = torch.mean((res.output - target(x)) ** 2)
        if spike_lambda > 0:
            w = _weights(spike_weight, x)
            if w is None:
                loss = loss + spike_lambda * res.spike_count.mean()
            else:
                loss = loss + spike_lambda * (w * res.spike_count).sum() / w.sum()
        if max_spikes is not None and budget_lambda > 0:
            loss = loss + budget_lambda * torch.relu(res.spike_count.mean() - max_spikes)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if it % eval_every == 0 or it == iterations:
            cand = snapshot()
            m = _metrics(cand, function, x_range, eval_points)
            if _better(m, best, max_spikes, spike_lambda):
                best, best_code = m, cand
    return best_code, best


def fit(
    function: str,
    K: int,
    x_range: tuple[float, float],
    *,
    rule: str = ">",
    name: str | None = None,
    restarts: int = 4,
    iterations: int = 3000,
    lr: float = 0.01,
    grid_points: int = 8192,
    spike_lambda: float = 0.0,
    spike_weight=None,
    max_spikes: float | None = None,
    budget_lambda: float = 0.0,
    dampening: float = 1.0,
    init: str | FSCode | Sequence[FSCode] = "auto",
    init_noise: float = 0.05,
    eval_every: int = 25,
    eval_points: int = 100_001,
    seed: int = 0,
    try_both_rules: bool = True,
    progress: Callable[[str], None] | None = None,
) -> FitReport:
    """Fit an FS code with ``K`` steps to ``function`` on ``x_range``.

    Parameters
    ----------
    function : str
        A key of :data:`fs_hw.codes.library.ACTIVATIONS`.
    K : int
        Number of steps.
    x_range : (float, float)
        Interval to fit on; also the interval of the reported errors.
    rule : {">", ">="}
        Firing rule used while fitting. With ``try_both_rules`` the final tables are
        also measured under the other rule, and the better one is kept and recorded.
    restarts : int
        Number of restarts; the best result (lowest MSE within the spike budget) wins.
        Restart 0 starts from the clean initial code, the others from noisy copies.
    iterations, lr, grid_points : int, float, int
        Adam steps per restart (cosine-decayed learning rate), and training grid size.
    spike_lambda : float
        Weight of the mean spike count in the loss.
    spike_weight : None, ("normal", mu, sigma) or callable
        Input distribution under which the spike penalty averages (uniform if None).
    max_spikes : float, optional
        Spike budget (plain mean on the reported uniform grid): selection prefers codes
        within it; ``budget_lambda`` adds a hinge penalty above it while training. Among
        codes within budget, the lowest ``mse + spike_lambda * mean_spikes`` wins.
    dampening : float
        Factor :math:`\\gamma` of the pseudo-derivative.
    init : "auto", "binary", "published", an FSCode or a list of FSCodes
        Initial code(s); restarts cycle through them. ``"auto"`` uses the published
        table for this function and ``K`` if there is one, and the binary init.
    init_noise : float
        Relative noise of the restarts after the first of each initial code.
    eval_every, eval_points : int
        How often (iterations) and on how many uniform points the iterates are measured
        with :func:`fs_hw.codes.evaluate_code` for selection.
    seed : int
        Seeds the restart noise and the training grids: equal seeds give equal codes.
    progress : callable, optional
        Called with one line of text per restart.
    """
    if function not in TORCH_ACTIVATIONS:
        raise ValidationError("fit", "function", f"unknown activation {function!r}")
    if rule not in RULES:
        raise ValidationError("fit", "rule", f"must be one of {RULES}, got {rule!r}")
    if not (isinstance(K, int) and K >= 1):
        raise ValidationError("fit", "K", f"must be a positive integer, got {K!r}")
    x_range = (float(x_range[0]), float(x_range[1]))
    inits = _initial_codes(function, K, x_range, rule, init)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)

    best_code = best = None
    best_init = None
    report_restarts = []
    for r in range(restarts):
        base = inits[r % len(inits)]
        start = base if r < len(inits) else _perturb(base, rng, init_noise)
        start_m = _metrics(start, function, x_range, eval_points)
        code, m = _train_one(
            start, function, x_range, rule=rule, iterations=iterations, lr=lr,
            grid_points=grid_points, spike_lambda=spike_lambda, spike_weight=spike_weight,
            max_spikes=max_spikes, budget_lambda=budget_lambda, dampening=dampening,
            eval_every=eval_every, eval_points=eval_points, generator=gen,
        )
        report_restarts.append({"restart": r, "init": base.name, "start": start_m, "end": m})
        if progress is not None:
            progress(
                f"  {function} K={K} restart {r + 1}/{restarts} from {base.name}: "
                f"mse {start_m['mse']:.4g} -> {m['mse']:.4g}, "
                f"spikes {start_m['mean_spikes']:.3f} -> {m['mean_spikes']:.3f}"
            )
        if _better(m, best, max_spikes, spike_lambda):
            best, best_code, best_init = m, code, (start, start_m)

    final_rule = rule
    if try_both_rules:
        other = ">=" if rule == ">" else ">"
        alt = FSCode(best_code.name, best_code.T, best_code.h, best_code.d, other)
        alt_m = _metrics(alt, function, x_range, eval_points)
        if _better(alt_m, best, max_spikes, spike_lambda):
            best, final_rule = alt_m, other

    name = name or f"{function}_k{K}"
    code = FSCode(
        name, best_code.T, best_code.h, best_code.d, final_rule,
        Provenance(
            function=function,
            x_range=x_range,
            mse=best["mse"],
            max_abs_error=best["max_abs_error"],
            mean_spikes=best["mean_spikes"],
            source=f"fs-hw fit, seed {seed}, {restarts} restarts x {iterations} Adam steps",
        ),
    )
    # The provenance must be what evaluate_code says about the final code.
    check = evaluate_code(code, function, x_range, eval_points)
    if check != best:  # pragma: no cover - would mean two dynamics disagree
        raise RuntimeError(f"fit: final evaluation {check} differs from selection {best}")
    return FitReport(code, best_init[0], best_init[1], report_restarts)


def fit_code(function: str, K: int, x_range: tuple[float, float], **kwargs) -> FSCode:
    """:func:`fit` returning only the fitted :class:`FSCode` (with its provenance)."""
    return fit(function, K, x_range, **kwargs).code


def _initial_codes(function, K, x_range, rule, init) -> list[FSCode]:
    if isinstance(init, FSCode):
        return [FSCode(init.name, init.T, init.h, init.d, rule, init.provenance)]
    if isinstance(init, (list, tuple)):
        return [FSCode(c.name, c.T, c.h, c.d, rule, c.provenance) for c in init]
    out = []
    if init in ("auto", "published"):
        pub = published_init(function, K, rule)
        if pub is not None:
            out.append(pub)
        elif init == "published":
            raise ValidationError("fit", "init", f"no published {function} table with K={K}")
    if init in ("auto", "binary"):
        out.append(binary_init(function, K, x_range, rule))
    if not out:
        raise ValidationError("fit", "init", f"unknown init {init!r}")
    return out
