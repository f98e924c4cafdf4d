"""Splitting a layer over cores, against a target's per-core limits given as data.

A layer of shape ``(C, H, W)`` (an image) is cut into blocks of output channels times
runs of pixels; a vector layer ``(N,)`` into runs of neurons. Each block is one core's
share (:class:`PartSpec`). The target supplies two things: its :class:`LimitTable` and a
``cost`` function that says what one candidate part would use on a core (a mapping from
limit name to number; e.g. Loihi builds the part's synapses and counts compartments,
input axons, synapse bits and formats). The partitioner searches the split with the
fewest parts that fits, and records why it chose it (:attr:`Partition.why`).

Why both axes: a conv part needs the rows of every input pixel its output pixels read,
for every output channel it holds. Fewer pixels per part cut the input axons and the
compartments; fewer channels per part cut the synapse memory (rows hold one entry per
output channel and tap) without adding input axons per part. Large late layers of a
ResNet (64 channels, 3x3 taps, K compartments per neuron) need channel splits: one pixel
with all channels already exceeds a core's synapse memory.

Splitting the *inputs* of one neuron (its fan-in) over several cores needs a partial-sum
stage whose result is added back exactly. A spiking neuron has none (its compartments
compare and reset on the whole sum), so :func:`partition_layer` refuses, naming the layer,
the limit and the numbers for the smallest possible part. A read-out accumulator has one:
its integer membrane is read by the host, which can add several cores' partial
accumulators exactly. :func:`fan_in_groups` cuts such a receiver's source parts into runs
that each fit a core.

No SDK imports: every chip backend uses it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from fs_hw.errors import ResourceError
from fs_hw.lower.limits import LimitTable, Violation


@dataclass(frozen=True, eq=False)
class PartSpec:
    """One core's share of a layer.

    ``neurons`` are flat indices into the layer (C order of its shape), in the part's
    local order: for images pixel-major then channel (local index ``(q - q0) * c + (f -
    f0)`` for pixel ``q`` and channel ``f``), for vectors ascending.
    """

    index: int
    neurons: np.ndarray
    channels: tuple[int, int] | None = None  # [f0, f1) of an image layer
    pixels: tuple[int, int] | None = None  # [q0, q1) flat pixel indices of an image layer

    @property
    def n(self) -> int:
        return int(len(self.neurons))

    @property
    def n_channels(self) -> int:
        return 0 if self.channels is None else self.channels[1] - self.channels[0]

    def local_index(self, channel: int, pixel: int) -> int:
        """Local position of (channel, pixel) in an image part."""
        assert self.channels is not None and self.pixels is not None
        return (pixel - self.pixels[0]) * self.n_channels + (channel - self.channels[0])


def _runs(total: int, per: int) -> list[tuple[int, int]]:
    """``total`` items in balanced runs of at most ``per``."""
    per = max(1, min(per, total))
    n_runs = -(-total // per)
    size = -(-total // n_runs)
    return [(a, min(total, a + size)) for a in range(0, total, size)]


def layer_parts(shape: tuple[int, ...], channels_per_part: int | None = None,
                pixels_per_part: int | None = None, neurons_per_part: int | None = None) -> list[PartSpec]:
    """Cut a layer into parts: images by channel blocks x pixel runs, vectors by runs."""
    if len(shape) == 3:
        C, H, W = shape
        n_pix = H * W
        parts = []
        for f0, f1 in _runs(C, channels_per_part or C):
            for q0, q1 in _runs(n_pix, pixels_per_part or n_pix):
                q = np.arange(q0, q1)
                f = np.arange(f0, f1)
                neurons = (f[None, :] * n_pix + q[:, None]).reshape(-1).astype(np.int64)
                parts.append(PartSpec(len(parts), neurons, (f0, f1), (q0, q1)))
        return parts
    n = int(np.prod(shape))
    return [PartSpec(i, np.arange(a, b, dtype=np.int64)) for i, (a, b) in enumerate(_runs(n, neurons_per_part or n))]


@dataclass
class Partition:
    """The split of one layer and why it was chosen."""

    layer: str
    shape: tuple[int, ...]
    parts: list[PartSpec]
    why: str
    channels_per_part: int | None = None
    pixels_per_part: int | None = None
    neurons_per_part: int | None = None
    trials: int = 0


Cost = Callable[[PartSpec], Mapping[str, int]]


class _Search:
    def __init__(self, layer: str, shape: tuple[int, ...], cost: Cost, limits: LimitTable, scope: str):
        self.layer, self.shape, self.cost, self.limits, self.scope = layer, shape, cost, limits, scope
        self.trials = 0
        self.memo: dict[tuple, Violation | None] = {}

    def violation(self, c: int | None, p: int | None, n: int | None) -> Violation | None:
        key = (c, p, n)
        if key not in self.memo:
            parts = layer_parts(self.shape, c, p, n)
            # the first part and one from the middle: border parts and inner parts of an
            # image differ (inner pixels read more neighbours, border ones more patterns)
            found = None
            # parts are channel-block-major: the middle pixel run of the first channel block
            first_block = [q for q in parts if q.channels == parts[0].channels]
            probes = {0: parts[0], len(first_block) // 2: first_block[len(first_block) // 2]}
            for part in probes.values():
                self.trials += 1
                use = dict(self.cost(part))
                found = self.limits.first_violation(use, self.layer, "one core", scope=self.scope)
                if found is not None:
                    break
            self.memo[key] = found
        return self.memo[key]

    @staticmethod
    def largest(hi: int, fits: Callable[[int], bool]) -> int:
        """Largest ``x`` in [1, hi] with ``fits(x)`` (assumed monotone), or 0."""
        if fits(hi):
            return hi
        if not fits(1):
            return 0
        lo = 1
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if fits(mid):
                lo = mid
            else:
                hi = mid
        return lo


def partition_layer(layer: str, shape: tuple[int, ...], cost: Cost, limits: LimitTable, *,
                    max_neurons: int | None = None, max_pixels: int | None = None, scope: str = "core",
                    unit_name: str = "units",
                    units_per_neuron: int = 1,
                    extra_cores: Callable[[list[PartSpec]], float] | None = None) -> Partition:
    """The split of ``layer`` with the fewest parts whose first and middle parts fit.

    ``extra_cores(parts)``, when given, adds what a split costs elsewhere (e.g. the
    output axons its sources need: every part that reads a source pixel costs that pixel
    axons on the source's core); the split with the fewest cores in all is chosen.

    ``max_pixels`` caps the pixels of an image part (a retry after a target found a core
    short of what grows with its pixels, e.g. output axons sent per pixel).
    ``max_neurons`` caps the neurons of a part (a target's own rule, or a retry after a
    later check found another part too large). ``units_per_neuron`` (e.g. K compartments
    per FS neuron) is only used in the words of :attr:`Partition.why`.
    """
    search = _Search(layer, shape, cost, limits, scope)
    cap = max_neurons or int(np.prod(shape))
    if len(shape) != 3:
        n_total = int(np.prod(shape))
        best = search.largest(min(cap, n_total), lambda n: search.violation(None, None, n) is None)
        if best == 0:
            _refuse(search.violation(None, None, 1), "one neuron per core", units_per_neuron, unit_name)
        parts = layer_parts(shape, neurons_per_part=best)
        best = max(q.n for q in parts)  # balanced runs: the largest part actually made
        why = _why_vector(search, best, n_total, cap, units_per_neuron, unit_name)
        return Partition(layer, shape, parts, why, neurons_per_part=best, trials=search.trials)
    C, H, W = shape
    n_pix = H * W
    candidates: list[tuple[int, int, int]] = []  # (parts, -channels per part, pixels per part)
    seen_c = set()
    n_c = 1
    while n_c <= C:
        c = -(-C // n_c)
        if candidates and -(-C // c) >= min(candidates)[0]:
            break  # at least one part per channel block: no fewer cores from here on
        if c not in seen_c and c <= cap:  # a part holds at least one pixel of c channels
            seen_c.add(c)
            p_cap = max(1, min(cap // c, max_pixels or n_pix))
            p = search.largest(min(p_cap, n_pix),
                               lambda p, c=c: search.violation(c, p, None) is None)
            if p:
                made = layer_parts(shape, c, p)
                total = len(made) + (extra_cores(made) if extra_cores is not None else 0.0)
                candidates.append((total, -c, p))
                if extra_cores is not None:
                    # runs aligned to image rows (whole rows, or equal pieces of one) straddle
                    # no row break, so fewer of them read each input pixel: try them too
                    aligned = {d for d in range(1, W + 1) if W % d == 0 and d < p}
                    aligned |= {W * m for m in range(1, H + 1) if W * m < p}
                    for q in sorted(aligned):
                        made_q = layer_parts(shape, c, q)
                        candidates.append((len(made_q) + extra_cores(made_q), -c, q))
                if p >= n_pix:
                    break  # whole images per part: fewer channels per part cannot need fewer parts
        n_c *= 2
    if not candidates:
        _refuse(search.violation(1, 1, None), "one channel of one pixel per core", units_per_neuron, unit_name)
    n_parts, neg_c, p = min(candidates)
    c = -neg_c
    parts = layer_parts(shape, c, p)
    # balanced blocks and runs: the largest ones actually made
    c = max(q.n_channels for q in parts)
    p = max(q.pixels[1] - q.pixels[0] for q in parts)
    why = _why_image(search, shape, c, p, len(parts), cap, units_per_neuron, unit_name)
    return Partition(layer, shape, parts, why, channels_per_part=c, pixels_per_part=p, trials=search.trials)


def _refuse(v: Violation | None, smallest: str, units_per_neuron: int, unit_name: str) -> None:
    assert v is not None
    raise ResourceError(
        f"{v.message} with {smallest} ({units_per_neuron} {unit_name} per neuron); the fan-in of one "
        f"neuron cannot be split over cores on this target"
    )


def _limit_words(v: Violation | None) -> str:
    return "" if v is None else f"{v.limit.what} ({v.used} > {v.limit.value})"


def _fewer(search: _Search, total: int, per: int, violation_at: Callable[[int], Violation | None]) -> str:
    """Why one run fewer does not fit: its larger runs exceed a limit (or a cap)."""
    runs = -(-total // per)
    larger = -(-total // (runs - 1))
    v = violation_at(larger)
    return f"{larger} a part would exceed {_limit_words(v)}" if v else f"capped at {per} a part"


def _why_vector(search: _Search, best: int, n_total: int, cap: int, k: int, unit_name: str) -> str:
    if best >= n_total:
        return f"{n_total} neurons x {k} {unit_name} fit one core"
    runs = -(-n_total // best)
    return (f"{runs} parts of {best} neurons ({k} {unit_name} per neuron); "
            + _fewer(search, n_total, best, lambda n: search.violation(None, None, n)))


def _why_image(search: _Search, shape, c: int, p: int, n_parts: int, cap: int, k: int, unit_name: str) -> str:
    C, H, W = shape
    n_pix = H * W
    words = f"{n_parts} part(s) of {c} of {C} channels x {p} of {n_pix} pixels ({k} {unit_name} per neuron)"
    if n_parts == 1:
        return words + ": the layer fits one core"
    reasons = []
    if c < C:
        v = search.violation(C, 1, None)
        reasons.append(f"all {C} channels of one pixel exceed {_limit_words(v)}" if v
                       else "channel blocks give fewer cores")
    if p < n_pix:
        reasons.append("pixels: " + _fewer(search, n_pix, p, lambda q: search.violation(c, q, None)))
    return words + "; " + "; ".join(reasons)


def fan_in_groups(layer: str, n_sources: int, cost: Callable[[tuple[int, int]], Mapping[str, int]],
                  limits: LimitTable, scope: str = "core") -> list[tuple[int, int]]:
    """Balanced runs ``[s0, s1)`` of a receiver's ``n_sources`` source parts such that a
    core reading one run fits ``limits``: ``cost((s0, s1))`` is what such a core uses
    (assumed to grow with the run). Only for receivers whose partial sums a later stage
    adds exactly (see the module docstring); refuses, naming the layer, the limit and the
    numbers, when even one source part is too much for a core.
    """
    def violation(run: tuple[int, int]) -> Violation | None:
        return limits.first_violation(dict(cost(run)), layer, f"sources {run[0]}..{run[1] - 1}", scope=scope)

    groups: list[tuple[int, int]] = []
    start = 0
    while start < n_sources:  # greedy runs from the left give the fewest groups
        size = _Search.largest(n_sources - start, lambda k, a=start: violation((a, a + k)) is None)
        if size == 0:
            v = violation((start, start + 1))
            assert v is not None
            raise ResourceError(f"{v.message} reading one source part; the read-out's fan-in cannot be split "
                                f"finer than one source core")
        groups.append((start, start + size))
        start += size
    # the same number of balanced runs (each no longer than the greedy ones' longest) if they fit
    balanced = _runs(n_sources, -(-n_sources // len(groups)))
    if len(balanced) == len(groups) and all(violation(run) is None for run in balanced):
        return balanced
    return groups
