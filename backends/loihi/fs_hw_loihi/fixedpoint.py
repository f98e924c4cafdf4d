r"""Loihi's integer formats, and exact splits of integers into them.

Every number the chip adds is written here in the form the hardware holds, so that
nothing is rounded by nengo-loihi's own discretizer (which is never called) nor by the
chip's weight shift.

**Units.** The program's integers are in *units* of :data:`CHIP_UNIT` = 64 chip steps:
the lowering multiplies every weight, constant and threshold by 64 when it writes the
nengo-loihi objects, and the read-out divides the probed membrane by 64. The reason is
the chip's two-part weight shift (nengo-loihi ``discretize_weights``, ``lossy_shift``): a
stored 8-bit weight is shifted by ``shift_bits + weight_exp`` (``shift_bits = 1`` for
mixed-sign synapses) and then by 6, and a negative first shift drops low bits; the
emulator adds the stored value unchanged, so it cannot see that loss. Only exponents
``>= -1`` are lossless, so the smallest weight the chip can add exactly is 64; and the
hardware builder divides by ``2**(6 + weight_exp)``, which is fractional for ``-7``. So:

* a synaptic weight is :math:`m \cdot 2^{1+e}` units (:math:`m \cdot 2^{7+e}` on the
  chip) with mantissa :math:`|m| \le 127` and an exponent that the lowering writes as
  ``e + 6``; in the convention of this module ``e`` ranges over
  [:data:`WEIGHT_EXP_MIN`, :data:`WEIGHT_EXP_MAX`] = [-7, 1], i.e. chip exponents
  [-1, 7] (the 4-bit field's positive half plus the lossless -1);
* a threshold is any integer number of units (the chip holds ``64 * v_m``, ``v_m < 2**17``);
* the input a compartment receives in one step stays inside 21 signed chip bits
  (``Q_BITS``, 2**15 units), its current and membrane inside 23 (2**17 units).

An integer weight matrix is split into *planes* (7-bit mantissas times a power of two),
and a per-step output weight :math:`d(s)` into signed powers of two, so the product
:math:`w \cdot d(s)` is a sum of terms each exactly representable; constants (gates,
baselines, resets) are split into digits of 1, 128 and 256 units (chip exponents -1, 6
and 7).
"""

from __future__ import annotations

import math

import numpy as np

MANTISSA_MAX = 127
#: one program unit in chip steps: the smallest weight the chip adds without loss
CHIP_UNIT_BITS = 6
CHIP_UNIT = 2**CHIP_UNIT_BITS
#: exponents in this module's convention (weight = m * 2**(7+e) units); the chip's
#: exponent is e + CHIP_UNIT_BITS, in [-1, 7]
WEIGHT_EXP_MIN, WEIGHT_EXP_MAX = -7, 1
CHIP_WEIGHT_EXP_MIN, CHIP_WEIGHT_EXP_MAX = WEIGHT_EXP_MIN + CHIP_UNIT_BITS, WEIGHT_EXP_MAX + CHIP_UNIT_BITS
#: synapse input accumulated in one step: signed 21 chip bits (nengo-loihi Q_BITS)
Q_LIMIT = 2**21 // CHIP_UNIT
#: compartment current: signed 23 bits (U_BITS); membrane: signed 23 bits (24-bit register)
U_LIMIT = 2**23 // CHIP_UNIT
V_LIMIT = 2**23 // CHIP_UNIT
VTH_UNIT = 1
VTH_MANT_MAX = 2**17 - 1
VTH_MAX = VTH_MANT_MAX * VTH_UNIT
#: the largest weight term one synapse holds exactly: a 7-bit mantissa at the top exponent
WEIGHT_TERM_MAX = MANTISSA_MAX * 2 ** (7 + WEIGHT_EXP_MAX)
#: exponents used for constant (clock) synapses: digits of 1, 128 and 256 units
CONSTANT_EXPONENTS = (-7, 0, 1)
CONSTANT_LIMIT = MANTISSA_MAX * 256 + 128 + 63


def weight_scale(exp: int) -> int:
    """Value in units of mantissa 1 in a synapse format with exponent ``exp`` (this module's
    convention)."""
    return 2 ** (7 + exp)


def chip_weight_exp(exp: int) -> int:
    """The exponent the chip holds for this module's exponent ``exp`` (always >= -1)."""
    if not WEIGHT_EXP_MIN <= exp <= WEIGHT_EXP_MAX:
        raise OverflowError(f"weight exponent {exp} outside [{WEIGHT_EXP_MIN}, {WEIGHT_EXP_MAX}]")
    return exp + CHIP_UNIT_BITS


def vth_round_up(value: int) -> int:
    """Smallest threshold the chip can hold that is >= ``value`` (a multiple of 64)."""
    return int(VTH_UNIT * max(1, -(-int(value) // VTH_UNIT)))


def weight_planes(values: np.ndarray) -> list[tuple[np.ndarray, int]]:
    """Split integers into planes ``(mantissa, shift)``, ``values = sum m * 2**shift``.

    Each mantissa array holds integers with ``|m| <= 127``. An array of the form
    ``m * 2**k`` (what :func:`quantize_mantissa` produces) gives one plane; other
    integers give as many radix-128 planes as they need bits, exactly.
    """
    rem = np.asarray(values, dtype=np.int64).copy()
    planes: list[tuple[np.ndarray, int]] = []
    while np.any(rem):
        nz = rem[rem != 0]
        shift = int(min(_trailing_zeros(int(v)) for v in np.unique(np.abs(nz))[:4096]))
        scaled = rem >> shift
        if np.abs(scaled).max() <= MANTISSA_MAX:
            planes.append((scaled, shift))
            break
        digit = ((scaled + 64) % 128) - 64
        planes.append((digit, shift))
        rem = rem - (digit << shift)
    return planes


def _trailing_zeros(v: int) -> int:
    return (v & -v).bit_length() - 1 if v else 63


def quantize_mantissa(values: np.ndarray) -> tuple[np.ndarray, int]:
    """Round reals to ``m * 2**k`` with ``|m| <= 127`` and the smallest ``k >= 0``."""
    values = np.asarray(values, dtype=np.float64)
    vmax = float(np.abs(values).max()) if values.size else 0.0
    k = 0 if vmax <= MANTISSA_MAX + 0.5 else int(math.ceil(math.log2(vmax / MANTISSA_MAX)))
    m = np.round(values / 2.0**k)
    while np.abs(m).max(initial=0) > MANTISSA_MAX:  # rounding crossed 127.5
        k += 1
        m = np.round(values / 2.0**k)
    return (m * 2.0**k).astype(np.int64), k


def signed_digits(value: int) -> list[tuple[int, int]]:
    """Non-adjacent form of an integer: ``value = sum sign * 2**power``."""
    out = []
    v = int(value)
    p = 0
    while v:
        if v & 1:
            digit = 2 - (v % 4)  # +1 or -1
            out.append((digit, p))
            v -= digit
        v >>= 1
        p += 1
    return out


def round_to_digits(x: float, digits: int, max_power: int) -> int:
    """Nearest integer to ``x`` with at most ``digits`` signed powers of two <= 2**max_power."""
    best = 0
    r = float(x)
    for _ in range(digits):
        if abs(r) < 0.5:
            break
        p = min(max_power, max(0, int(round(math.log2(abs(r))))))
        candidates = [q for q in (p - 1, p, p + 1) if 0 <= q <= max_power]
        q = min(candidates, key=lambda q: abs(abs(r) - 2.0**q))
        term = int(math.copysign(2**q, r))
        if abs(r - term) >= abs(r):
            break
        best += term
        r -= term
    return best


def constant_planes(values: np.ndarray) -> list[tuple[np.ndarray, int]]:
    """Split integer constants into synapse planes ``(weights, exponent)``.

    ``weights`` are the values added, in units (``digit * 2**(7+exp)``); exponents are
    -7, 0 and 1 (digits of 1, 128 and 256 units; chip exponents -1, 6, 7); planes that are
    all zero are left out. Values must satisfy ``|v| <= CONSTANT_LIMIT`` (about 2**15
    units, the per-step input limit anyway).
    """
    v = np.asarray(values, dtype=np.int64)
    if v.size and np.abs(v).max() > CONSTANT_LIMIT:
        raise OverflowError(f"constant {int(np.abs(v).max())} exceeds {CONSTANT_LIMIT}")
    low = ((v + 64) % 128) - 64  # |low| <= 64, digit of 1
    rest = (v - low) // 128
    mid = np.where(rest >= 0, rest % 2, -((-rest) % 2))  # digit of 128, sign of rest
    high = (rest - mid) // 2  # digit of 256
    out = []
    for digit, exp in ((low, -7), (mid, 0), (high, 1)):
        if np.any(digit):
            out.append((digit * weight_scale(exp), exp))
    return out


def synapse_exponent(mantissa_max: int, power: int) -> tuple[int, int]:
    """Weight exponent for terms ``m * 2**power`` with ``|m| <= mantissa_max``.

    Returns ``(exp, extra)``: the chip stores mantissa ``m * 2**extra`` with exponent
    ``exp = power - 7 - extra``. Raises ``OverflowError`` if no exponent in [-7, 7] can
    hold the terms exactly.
    """
    if power < 0:
        raise OverflowError(f"power {power} < 0: weight below the chip's resolution")
    extra = max(0, power - 7 - WEIGHT_EXP_MAX)  # the rest of the power goes into the mantissa
    if mantissa_max and mantissa_max * 2**extra > MANTISSA_MAX:
        raise OverflowError(
            f"weight terms m*2^{power} (|m| <= {mantissa_max}) need exponent {power - 7} > {WEIGHT_EXP_MAX}"
        )
    return power - 7 - extra, extra
