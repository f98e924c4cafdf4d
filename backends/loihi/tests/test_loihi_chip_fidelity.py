"""Does every program the backend emits mean the same on the chip as on the emulator?

The backend writes integer synapse weights itself and runs them on nengo-loihi's
emulator, which adds each stored weight unchanged. The chip does two things the
emulator does not:

* it applies the weight exponent in a two-part shift (``lossy_shift`` in
  ``nengo_loihi.builder.discretize.discretize_weights``): when ``shift_bits +
  weight_exp < 0`` the low bits of each weight are dropped;
* the hardware builder (``nengo_loihi.hardware.builder``) writes ``w // scale`` into
  8-bit-plus-sign synapse memory, which must be an integer in [-256, 255], and gives
  pop32 axons population ids under the rule "each compartment can only have axons
  belonging to one population".

These tests check the programs for every conformance scenario and the bundled example
against those rules. The hardware builder is run against a recording stand-in for
NxSDK (``nxsdk_standin``), so no chip or NxSDK is needed.
"""

from __future__ import annotations

import traceback
import warnings
from collections import Counter, defaultdict
from functools import cache
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("nengo_loihi")

import nxsdk_standin
from fs_hw_loihi.backend import LoihiBackend
from loihi_nets import wide_conv
from nengo_loihi.builder.discretize import discretize_weights
from nengo_loihi.hardware.allocators import Greedy

from fs_hw import conformance
from fs_hw.errors import ResourceError
from fs_hw.ir.io import load_network

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "residual_cnn.fsnet"
# "atoms:" cases force the conv layers to hold the source steps as atoms (synapse_rows = atoms)
# "wide_conv": a layer whose output channels are split over cores (one source pixel read
# by several reader cores)
CASES = [*conformance.SCENARIOS, "example:residual_cnn", "atoms:conv", "atoms:residual", "atoms:example:residual_cnn",
         "wide_conv", "atoms:wide_conv"]
N_EXAMPLES = 5  # violation examples quoted per message


@cache
def _lowered(case: str):
    config = {}
    if case.startswith("atoms:"):
        case, config = case[len("atoms:"):], {"synapse_rows": "atoms"}
    if case == "example:residual_cnn":
        net = load_network(EXAMPLE)
    elif case == "wide_conv":
        net, config = wide_conv(), {**config, "chips": 2}
    else:
        net, _ = conformance.scenario(case)
    try:
        return LoihiBackend().lower(net, config).payload, None
    except ResourceError as exc:
        return None, str(exc)


def _program(case: str):
    """The program the backend emits for ``case``; skips when the backend refuses it
    (a refused network emits nothing for the chip to get wrong)."""
    program, refused = _lowered(case)
    if program is None:
        pytest.skip(f"{case}: the backend refuses to lower it (ResourceError: {refused})")
    return program


def _synapses(program):
    for block in program.model.blocks:
        for synapse in block.synapses:
            yield block, synapse


def _label(obj) -> str:
    return getattr(obj, "label", None) or repr(obj)


# --- 1. weights through the chip's two-part shift ------------------------------------


def test_weights_survive_the_chip_shift_self_check():
    # The check below must notice a weight the chip would change: with weight_exp=-7,
    # 8-bit mixed-sign weights (shift_bits=1, as the backend emits) the two-part shift
    # keeps only multiples of 64 of the stored value.
    from nengo_loihi.block import SynapseConfig

    cfg = SynapseConfig(weight_exp=-7, weight_bits=7, fanout_type=1)
    assert cfg.shift_bits == 1
    w = np.array([[64, 65, 0, -128]], dtype=np.int32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        chip = discretize_weights(cfg, w / cfg.scale, lossy_shift=True, check_result=False)
    assert list(chip[0] != w[0]) == [False, True, False, False]


@pytest.mark.parametrize("case", CASES)
def test_weights_survive_the_chip_shift(case):
    program = _program(case)
    per_exp = defaultdict(lambda: [0, 0, 0])  # exp -> [changed entries, entries, synapses hit]
    examples = []
    for block, synapse in _synapses(program):
        cfg = synapse.synapse_cfg
        exp = cfg.weight_exp
        hit = False
        for k, w in enumerate(synapse.weights):
            w = np.asarray(w)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                chip = discretize_weights(cfg, w / cfg.scale, lossy_shift=True, check_result=False)
            changed = chip != w
            n = int(changed.sum())
            per_exp[exp][0] += n
            per_exp[exp][1] += w.size
            if n:
                hit = True
                if len(examples) < N_EXAMPLES:
                    idx = tuple(int(i) for i in np.argwhere(changed)[0])
                    examples.append(
                        f"block {_label(block)!r} synapse {_label(synapse)!r} weight_exp={exp} "
                        f"(shift_bits={cfg.shift_bits}) weights[{k}]{list(idx)}: "
                        f"emulator adds {int(w[idx])}, chip adds {int(chip[idx])} "
                        f"({n}/{w.size} entries of this array change)"
                    )
        per_exp[exp][2] += hit
    changed = sum(v[0] for v in per_exp.values())
    total = sum(v[1] for v in per_exp.values())
    if changed:
        table = "; ".join(
            f"weight_exp={e}: {c}/{t} entries ({c / t:.1%}) change, in {s} synapse(s)"
            for e, (c, t, s) in sorted(per_exp.items())
        )
        pytest.fail(
            f"{case}: {changed}/{total} synapse entries ({changed / total:.1%}) are not what the "
            f"chip adds after its two-part weight shift (lossy_shift). Per exponent: {table}. "
            f"Examples: " + " | ".join(examples),
            pytrace=False,
        )


# --- 2. weight exponents the hardware builder can write --------------------------------


@pytest.mark.parametrize("case", CASES)
def test_weight_exponents_in_builder_range(case):
    program = _program(case)
    problems = Counter()  # (exp, kind) -> entries
    examples = []
    for block, synapse in _synapses(program):
        cfg = synapse.synapse_cfg
        for k, w in enumerate(synapse.weights):
            w = np.asarray(w)
            ws = w // cfg.scale  # exactly what build_synapse writes
            bad_int = ws != np.round(ws)
            bad_range = (ws > 255) | (ws < -256)
            for kind, bad in (("non-integer", bad_int), ("out of [-256, 255]", bad_range)):
                n = int(bad.sum())
                if not n:
                    continue
                problems[(cfg.weight_exp, kind)] += n
                if len(examples) < N_EXAMPLES:
                    idx = tuple(int(i) for i in np.argwhere(bad)[0])
                    examples.append(
                        f"block {_label(block)!r} synapse {_label(synapse)!r} "
                        f"weight_exp={cfg.weight_exp} scale={cfg.scale}: weights[{k}]{list(idx)}="
                        f"{int(w[idx])} -> w // scale = {ws[idx]} ({kind}; {n}/{w.size} entries)"
                    )
    if problems:
        table = "; ".join(f"weight_exp={e}: {n} entries {kind}" for (e, kind), n in sorted(problems.items()))
        pytest.fail(
            f"{case}: the hardware builder cannot write these weights ({table}). Examples: " + " | ".join(examples),
            pytrace=False,
        )


# --- 3. the hardware builder, against the NxSDK stand-in -------------------------------


@cache
def _built(case: str):
    program = _program(case)
    cfg = program.config
    board = Greedy(cores_per_chip=cfg.cores_per_chip)(program.model, n_chips=cfg.chips)
    nxsdk_board = nxsdk_standin.build_board(board, use_snips=False, seed=0)
    return board, nxsdk_board


def _build_or_fail(case: str):
    try:
        return _built(case)
    except Exception as exc:  # the builder asserts; report which case, where and why
        frame = traceback.extract_tb(exc.__traceback__)[-1]
        where = f"{Path(frame.filename).name}:{frame.lineno} in {frame.name}: {frame.line}"
        pytest.fail(
            f"{case}: nengo_loihi.hardware.builder.build_board rejects the program: "
            f"{type(exc).__name__}: {str(exc)[:500]} at {where}{_empty_inputs(case)}",
            pytrace=False,
        )


def _empty_inputs(case: str) -> str:
    # build_spike_input asserts every SpikeInput has axons; name the ones that do not.
    empty = [_label(i) for i in _program(case).model.inputs if len(getattr(i, "axons", [])) == 0]
    return f" (SpikeInputs without axons: {empty})" if empty else ""


def test_standin_records_builder_writes():
    board = nxsdk_standin.N2Board(1, 1, [2], [[0, 0]])
    core = board.n2Chips[0].n2CoresAsList[1]
    assert core.parent.parent is board and core.id == 1 and board.n2Chips[0].n2Cores[1] is core
    assert not hasattr(board, "global_spike_generator")
    board.global_spike_generator = None
    assert board.global_spike_generator is None
    core.synapseMap[3].synapsePtr = 7
    core.synapseMap[3].population32MapEntry.configure(cxBase=2)
    core.createPop32Axon(popId=0, srcCxId=1, srcRelCxId=0, dstChipId=0, dstCoreId=0, dstSynMapId=3)
    assert core.synapseMap[3].synapsePtr == 7
    assert core.synapseMap[3].population32MapEntry.fields == {"cxBase": 2}
    (call,) = board.axons["createPop32Axon"]
    assert call.core is core and call.kwargs["dstSynMapId"] == 3
    assert board.summary()["configure"] == 1


@pytest.mark.parametrize("case", CASES)  # under 1 s each: not marked slow
def test_hardware_builder_accepts_program(case):
    board, nxsdk_board = _build_or_fail(case)
    s = nxsdk_board.summary()
    n_blocks = sum(len(core.blocks) for chip in board.chips for core in chip.cores)
    assert n_blocks == len(_program(case).model.blocks)
    assert s["configure"] > 0, f"{case}: the builder configured nothing: {s}"


def _block_of(board, chip_id: int, core_id: int) -> str:
    core = board.chips[chip_id].cores[core_id]
    return ",".join(_label(b) for b in core.blocks) or f"chip{chip_id}/core{core_id}"


@pytest.mark.parametrize("case", CASES)
def test_population_rule(case):
    board, nxsdk_board = _build_or_fail(case)
    # NxSDK ids equal the stand-in's indices: chip i has id i, core j of a chip has id j.
    calls = nxsdk_board.axons["createPop32Axon"] + nxsdk_board.axons["createPop16Axon"]
    by_target = defaultdict(set)  # (dstChip, dstCore, dstSynMap) -> {(src core, popId)}
    by_source = defaultdict(set)  # (src chip, src core, srcCxId) -> {(popId, srcRelCxId)}
    by_pop = defaultdict(set)  # (src chip, src core, popId, srcRelCxId) -> {srcCxId}
    targets_of_pop = defaultdict(set)  # (src chip, src core, popId) -> {target}
    for call in calls:
        kw = call.kwargs
        core = call.core
        src = (int(core.parent.id), int(core.id))
        target = (int(kw["dstChipId"]), int(kw["dstCoreId"]), int(kw["dstSynMapId"]))
        pop, atom, cx = int(kw["popId"]), int(kw["srcRelCxId"]), int(kw["srcCxId"])
        by_target[target].add((src, pop))
        by_source[(*src, cx)].add((pop, atom))
        by_pop[(*src, pop, atom)].add(cx)
        targets_of_pop[(*src, pop)].add(target)

    def describe(src_chip, src_core):
        return f"{_block_of(board, src_chip, src_core)!r} (chip {src_chip} core {src_core})"

    failures = []
    bad = {t: v for t, v in by_target.items() if len({p for _, p in v}) > 1 or len({s for s, _ in v}) > 1}
    if bad:
        ex = [
            f"synmap (chip, core, id) {t} <- "
            + ", ".join(f"{describe(*s)} popId {p}" for s, p in sorted(v)[:6])
            + (f" ... {len(v)} (core, popId) pairs" if len(v) > 6 else "")
            for t, v in list(bad.items())[:N_EXAMPLES]
        ]
        failures.append(
            f"(a) {len(bad)}/{len(by_target)} target synapse maps receive axons of more than one "
            f"population: " + " | ".join(ex)
        )
    bad = {c: v for c, v in by_source.items() if len(v) > 1}
    if bad:
        ex = [
            f"{describe(c[0], c[1])} compartment {c[2]}: (popId, atom) = {sorted(v)[:6]}"
            + (f" ... {len(v)} pairs" if len(v) > 6 else "")
            for c, v in list(bad.items())[:N_EXAMPLES]
        ]
        n_axons = sum(
            1 for call in calls if (int(call.core.parent.id), int(call.core.id), int(call.kwargs["srcCxId"])) in bad
        )
        failures.append(
            f"(b) {len(bad)}/{len(by_source)} source compartments send pop axons under more than one "
            f"(popId, atom) ({n_axons} axons involved); on the chip a compartment has one population "
            f"id and one atom, so all but one of its targets would see the wrong atom: " + " | ".join(ex)
        )
    bad = {k: v for k, v in by_pop.items() if len(v) > 1}
    if bad:
        ex = [
            f"{describe(k[0], k[1])} popId {k[2]} atom {k[3]}: compartments {sorted(v)[:8]}"
            + (f" ... {len(v)}" if len(v) > 8 else "")
            for k, v in list(bad.items())[:N_EXAMPLES]
        ]
        failures.append(
            f"(c) {len(bad)}/{len(by_pop)} (popId, atom) pairs are claimed by more than one "
            f"compartment: " + " | ".join(ex)
        )
    if failures:
        multi = sum(1 for v in targets_of_pop.values() if len(v) > 1)
        pytest.fail(
            f"{case}: pop axons break the chip's population rule ({len(calls)} pop axons, "
            f"{len(targets_of_pop)} populations, {multi} of them spanning several synapse maps). "
            + " || ".join(failures),
            pytrace=False,
        )
