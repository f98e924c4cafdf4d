r"""The exact ReLU code and its closed form.

With :math:`T(t) = h(t) = d(t) = \alpha 2^{-(t+1)}` and rule ``">="``, the spikes of an
input :math:`x \in [0, \alpha)` are the binary digits of
:math:`q = \lfloor x / s \rfloor`, :math:`s = \alpha 2^{-K}`, and the output is
:math:`q s`: :math:`x` truncated to the grid and clipped to :math:`[0, \alpha(1-2^{-K})]`.
With rule ``">"`` a value exactly on the grid rounds one step lower
(:math:`q = \lceil x/s \rceil - 1`).

In floating point the step dynamics are exact for this code (every subtraction
:math:`v - \alpha 2^{-(t+1)}` with :math:`\alpha 2^{-(t+1)} \le v < \alpha 2^{-t}` is
exact by Sterbenz' lemma), so the closed form must reproduce them bit for bit; it is
used by the reference fast mode only after the correction step below, and is tested
against :func:`fs_hw.dynamics.simulate_fs`.
"""

from __future__ import annotations

import numpy as np

from fs_hw.errors import ValidationError
from fs_hw.ir.code import FSCode, Provenance


def relu_code(alpha: float, K: int, rule: str = ">=", name: str | None = None) -> FSCode:
    """The exact FS code of ReLU on :math:`[0, \\alpha)` with ``K`` steps."""
    if not (np.isfinite(alpha) and alpha > 0):
        raise ValidationError("relu_code", "alpha", f"must be a positive finite number, got {alpha}")
    if not (isinstance(K, (int, np.integer)) and 1 <= K <= 40):
        raise ValidationError("relu_code", "K", f"must be an integer in [1, 40], got {K}")
    table = [float(alpha) * 2.0 ** -(t + 1) for t in range(K)]
    return FSCode(
        name=name or f"relu_a{alpha:g}_k{K}",
        T=table,
        h=table,
        d=table,
        rule=rule,
        provenance=Provenance(
            function="relu", x_range=(0.0, float(alpha)), mse=None, source="analytic"
        ),
    )


def relu_grid(code: FSCode) -> float | None:
    """The grid step :math:`s` if ``code`` is an exact ReLU code, else ``None``.

    A code counts as the ReLU code when its tables equal :math:`\\alpha 2^{-(t+1)}`
    exactly and :math:`\\alpha` has few enough mantissa bits that every
    :math:`q s`, :math:`q < 2^{K+1}`, is a float64 without rounding (needed by
    :func:`relu_closed_form`).
    """
    K = code.K
    alpha = float(code.T[0]) * 2.0
    if alpha <= 0:
        return None
    expected = np.array([alpha * 2.0 ** -(t + 1) for t in range(K)])
    if not (np.array_equal(code.T, expected) and np.array_equal(code.h, expected)
            and np.array_equal(code.d, expected)):
        return None
    mantissa, _ = np.frexp(alpha)
    bits = 0
    while mantissa != np.floor(mantissa) and bits < 60:
        mantissa *= 2
        bits += 1
    if bits + K + 1 > 52:
        return None
    return alpha * 2.0 ** -K


def relu_closed_form(x: np.ndarray, code: FSCode, grid: float) -> tuple[np.ndarray, np.ndarray]:
    """Output and spike count of the ReLU code without stepping time.

    ``q = floor(x / s)`` can be off by one where ``x / s`` rounds across an integer;
    ``q * s`` is exact (see :func:`relu_grid`), so one comparison per side corrects it.
    """
    K = code.K
    levels = 2**K - 1
    q = np.floor(x / grid)
    q -= q * grid > x  # rounded up across an integer
    q += (q + 1) * grid <= x  # rounded down across an integer
    if code.rule == ">":
        q -= q * grid == x  # on the grid: the strict rule does not fire the last bit
    np.clip(q, 0, levels, out=q)
    qi = q.astype(np.int64)
    count = _popcount(qi)
    return q * grid, count.astype(x.dtype)


_POPCOUNT16 = np.array([bin(i).count("1") for i in range(1 << 16)], dtype=np.uint8)


def _popcount(values: np.ndarray) -> np.ndarray:
    """Number of 1-bits of non-negative integers (16 bits per table look-up)."""
    count = _POPCOUNT16[values & 0xFFFF].astype(np.int64)
    rest = values >> 16
    while np.any(rest):
        count += _POPCOUNT16[rest & 0xFFFF]
        rest >>= 16
    return count
