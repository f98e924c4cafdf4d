r"""The one definition of FS-neuron dynamics.

Every part of fs-hw that simulates an FS-neuron calls :func:`simulate_fs`: the
reference backend (both modes), the code-fitting routine (with a pseudo-derivative
passed as ``spike_fn``), the conformance kit, and every backend's bit-exact
prediction. Nothing else in the project re-implements these equations; closed forms
used for speed (see :mod:`fs_hw.codes.relu`) are tested against this function.

The equations (0-based steps :math:`t = 0 \ldots K-1`, input given once, no leak):

.. math::

    v(0) &= x \\
    z(t) &= \begin{cases} [v(t) > T(t)] & \text{rule ">"} \\
                          [v(t) \ge T(t)] & \text{rule ">="} \end{cases} \\
    y &\mathrel{+}= d(t)\, z(t) \\
    v(t+1) &= v(t) - h(t)\, z(t)

The output is :math:`y = \sum_t d(t) z(t)` and the spike count is :math:`\sum_t z(t)`.

The function is written with array operators only, so the same code runs on numpy
arrays (float or integer: integer arrays give the bit-exact fixed-point semantics a
chip uses) and on torch tensors (for fitting, with gradients through ``spike_fn``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

RULES = (">", ">=")


class FSResult(NamedTuple):
    """What one FS phase produces.

    ``output`` is :math:`y`, ``spike_count`` is :math:`\\sum_t z(t)` (same shape as the
    input), ``spikes`` is the stacked :math:`z(t)` of shape ``(K, *x.shape)`` when asked
    for, else ``None``.
    """

    output: Any
    spike_count: Any
    spikes: Any


def threshold_test(v: Any, threshold: Any, rule: str) -> Any:
    """The firing decision :math:`z = [v > T]` or :math:`[v \\ge T]` as a boolean array."""
    if rule == ">":
        return v > threshold
    if rule == ">=":
        return v >= threshold
    raise ValueError(f"firing rule must be one of {RULES}, got {rule!r}")


def fs_step(
    v: Any, t: int, T: Any, h: Any, rule: str, spike_fn: Callable | None = None
) -> tuple[Any, Any]:
    """One step of the FS dynamics: returns ``(v(t+1), z(t))``.

    Callers that step time themselves (the reference's spike-level mode, a pipelined
    backend model) call this; :func:`simulate_fs` is this step repeated K times.
    """
    z = threshold_test(v, T[t], rule) if spike_fn is None else spike_fn(v, T[t], rule)
    return v - h[t] * z, z


def simulate_fs(
    x: Any,
    T: Any,
    h: Any,
    d: Any,
    rule: str = ">",
    spike_fn: Callable[[Any, Any, str], Any] | None = None,
    record_spikes: bool = False,
) -> FSResult:
    """Run the K-step FS phase on every element of ``x`` at once.

    Parameters
    ----------
    x : array (numpy or torch), any shape
        Initial membrane potential of every neuron (its input, given once).
    T, h, d : sequences of length K
        Per-step threshold, reset and output weight, shared by every neuron.
    rule : {">", ">="}
        Firing rule.
    spike_fn : callable, optional
        ``spike_fn(v, T_t, rule) -> z``: replaces the plain threshold test, used by the
        fitting routine to attach a pseudo-derivative. Its forward value must equal
        ``threshold_test``; the default is exactly that.
    record_spikes : bool
        Also return the spike train of shape ``(K, *x.shape)``.

    Returns
    -------
    FSResult
        ``output`` :math:`y`, ``spike_count``, and ``spikes`` (or ``None``).
    """
    if len(T) != len(h) or len(T) != len(d):
        raise ValueError(f"T, h, d must have equal length, got {len(T)}, {len(h)}, {len(d)}")
    v = x
    y = x * 0
    count = None
    train = []
    for t in range(len(T)):
        v, z = fs_step(v, t, T, h, rule, spike_fn)
        y = y + d[t] * z
        count = z * 1 if count is None else count + z
        if record_spikes:
            train.append(z)
    if count is None:
        count = x * 0
    spikes = None
    if record_spikes:
        spikes = _stack(train, x)
    return FSResult(y, count, spikes)


def _stack(arrays: list, like: Any) -> Any:
    module = type(like).__module__
    if module.startswith("torch"):
        import torch

        return torch.stack(arrays)
    import numpy as np

    return np.stack(arrays)
