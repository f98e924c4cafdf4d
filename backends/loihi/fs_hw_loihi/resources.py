"""Resource accounting and the checks that refuse a network before it runs.

Per core (one nengo-loihi block is one core): compartments, input axons, output axon
slots, synapse memory bits and synapse formats, counted with nengo-loihi's own
``LoihiBlock.utilization`` and ``Synapse.bits``; per board: cores against
``chips x cores_per_chip``. The model is then passed through nengo-loihi's validator
and its ``Greedy`` allocator, whose board goes through the hardware validator.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fs_hw.backend import LayerResources, Resources
from fs_hw.errors import ResourceError
from fs_hw_loihi.config import LOIHI_LIMITS, MAX_COPIES

if TYPE_CHECKING:
    from fs_hw_loihi.program import Program



def _block_use(block) -> dict[str, int]:
    util = block.utilization()
    return {
        "compartments": util["compartments"][0],
        "in_axons": util["in-axons"][0],
        "out_axons": util["out-axons"][0],
        "synapse_bits": util["synapses"][0],
        "formats": len({s.synapse_cfg for s in block.synapses}),
    }


CORE_LIMITS = LOIHI_LIMITS.scope("core")


def check_program(program: Program) -> dict[str, int]:
    """Check every core and the board; fill ``program.resources``.

    Returns layers to re-partition with fewer neurons per core (empty when all fits);
    raises :class:`~fs_hw.errors.ResourceError` when the network cannot fit.
    """
    cfg = program.config
    shrink: dict[str, int] = {}
    cores_by_layer: dict[str, int] = {"clock": program.clock_cores}
    for name, layer in program.layers.items():
        if layer.kind == "host":
            continue
        cores_by_layer[name] = len(layer.parts)
        for i, part in enumerate(layer.parts):
            use = _block_use(part.block)
            found = LOIHI_LIMITS.first_violation(use, name, f"core {i} of {len(layer.parts)}", scope="core")
            if found is not None:
                per = max(p.n for p in layer.parts)
                target = layer.source if layer.kind == "relay" else layer.node
                if layer.image and layer.kind == "fs" and found.limit.name == "out_axons":
                    # per pixel of this core: the slots it sends to its own compartments
                    # (inhibition inside a neuron) and, were there one copy of the layer, to readers
                    px = part.pixels[1] - part.pixels[0]
                    n_copies = len(program.layers[target].copies) or 1
                    own_synapses = {id(syn) for syn in part.block.synapses}
                    own = sum(ax.axon_slots() for ax in part.block.axons if id(ax.target) in own_synapses) / px
                    readers = (found.used / px - own) * n_copies
                    if own + readers > 0.9 * found.limit.value:
                        # even one pixel a core sends to too many readers: copies of the layer
                        # (each computing the same spikes) share its readers out
                        room = 0.85 * found.limit.value - own
                        need = -(-int(readers) // max(1, int(room))) if room > 0 else MAX_COPIES + 1
                        refusal = (f"{found.message}, even with one pixel per core and {n_copies} copies of the "
                                   f"layer ({own:.0f} slots a pixel go to its own inhibition, {readers:.0f} to its "
                                   f"readers; at most {MAX_COPIES} copies share the readers out)")
                        if need > program.copy_requests.get(target, (0, ""))[0]:
                            program.copy_requests[target] = (need, refusal)
                        if px > 1:
                            program.pixel_caps[target] = 1
                        shrink[target] = shrink.get(target, per)
                        continue
                if layer.image and found.limit.name == "out_axons" and part.pixels[1] - part.pixels[0] > 1:
                    # an image core's output axons grow with its pixels (its channels are atoms of
                    # one axon): fewer pixels a core, as many fewer as the use is too large
                    px = part.pixels[1] - part.pixels[0]
                    fewer = max(1, min(px - 1, int(px * found.limit.value / found.used * 0.95)))
                    program.pixel_caps[target] = min(fewer, program.pixel_caps.get(target, fewer))
                    shrink[target] = shrink.get(target, per)
                    program.out_axon_layers.add(target)
                    continue
                # an image layer's output axons are per pixel (its channels are atoms of one
                # axon): splitting a pixel's channels over cores does not reduce them
                floor = (min(p.n_channels for p in layer.parts) if layer.image and found.limit.name == "out_axons"
                         else 1)
                if per <= floor or layer.kind == "relay" and program.layers[target].kind == "host":
                    smallest = "one pixel" if layer.image and found.limit.name == "out_axons" else "one neuron"
                    raise ResourceError(
                        f"{found.message}, even with {smallest} per core (the layers reading it are split "
                        f"over too many cores: each one costs every source compartment K axons)"
                        if found.limit.name == "out_axons" else f"{found.message}, even with {smallest} per core")
                # re-partition that layer with as many fewer neurons a core as the use is too
                # large (output axons grow with the neurons a core sends from)
                fewer = int(per * found.limit.value / found.used * 0.95)
                shrink[target] = max(floor, min(per - 1, fewer, shrink.get(target, per)))
                if found.limit.name == "out_axons":
                    program.out_axon_layers.add(target)
    if shrink:
        return shrink
    total = sum(cores_by_layer.values())
    board = cfg.chips * cfg.cores_per_chip
    if total > board:
        biggest = sorted(cores_by_layer.items(), key=lambda kv: -kv[1])
        detail = ", ".join(f"{k}: {v}" for k, v in biggest[:6])
        raise ResourceError(
            f"layer {biggest[0][0]!r} needs {biggest[0][1]} cores and the network {total} cores "
            f"({detail}); the board has {cfg.chips} chip(s) x {cfg.cores_per_chip} cores = {board} cores"
        )
    _nengo_checks(program)
    program.resources = summarize(program, cores_by_layer)
    return {}


def _validate_axon(axon) -> None:
    """nengo-loihi's ``validate_axon`` (every compartment's atom is below the number of
    populations of the synapse row its axon reads), over numpy arrays instead of a Python
    loop per compartment: the same assertion on the same indices (including the unused
    axon index -1, which nengo-loihi checks too)."""
    import numpy as np
    from nengo_loihi.block import Synapse

    if isinstance(axon.target, Synapse) and axon.compartment_atoms is not None:
        atoms = np.asarray(axon.compartment_atoms)
        axon_ids = np.asarray(axon.map_axon(np.arange(len(atoms))))
        a2w = axon.target.axon_to_weight_map
        widx = np.asarray(a2w)[axon_ids] if a2w is not None else axon_ids
        pops = np.array([w.shape[0] for w in axon.target.weights])[widx]
        assert np.all((atoms >= 0) & (atoms < pops))


def _nengo_checks(program: Program) -> None:
    import nengo_loihi.builder.validate as nengo_validate
    from nengo_loihi.hardware.allocators import Greedy
    from nengo_loihi.hardware.validate import validate_board

    cfg = program.config
    original = nengo_validate.validate_axon
    nengo_validate.validate_axon = _validate_axon  # nengo-loihi's check, vectorized
    try:
        nengo_validate.validate_model(program.model)
        board = Greedy(cores_per_chip=cfg.cores_per_chip)(program.model, n_chips=cfg.chips)
        validate_board(board)
    except (AssertionError, ValueError, Exception) as exc:  # nengo raises BuildError/asserts
        raise ResourceError(f"nengo-loihi rejects the program: {type(exc).__name__}: {exc}") from None
    finally:
        nengo_validate.validate_axon = original
    program.board_chips = board.n_chips


def summarize(program: Program, cores_by_layer: dict[str, int]) -> Resources:
    """Resource figures for the artifact and the report."""
    blocks = list(program.model.blocks)
    uses = [_block_use(b) for b in blocks]
    data_entries = 0
    data_bits = 0
    per_layer = {}
    for name, layer in program.layers.items():
        if layer.kind in ("host",):
            continue
        entries = bits = 0
        for part in layer.parts:
            for syn in part.block.synapses:
                if "<" in (syn.label or ""):
                    entries += syn.size()
                    bits += syn.bits()
        data_entries += entries
        data_bits += bits
        if layer.kind in ("fs", "readout"):
            rin = program_maps(program).get(name)
            weights = 0
            if rin is not None:
                for m in rin.maps.values():
                    weights += m.n_weights()
            per_layer[name] = LayerResources(
                name=name, kind=layer.kind, parts=len(layer.parts),
                neurons_per_part=int(max(p.n for p in layer.parts)),
                units=int(sum(p.block.compartment.n_compartments for p in layer.parts)),
                weights=int(weights), synapse_entries=int(entries),
                split=getattr(layer, "split_reason", ""),
                inputs=tuple(sorted(rin.maps)) if rin else (),
                connection_kinds=tuple(sorted({k for m in rin.maps.values() for k in _kinds(m, layer.image)})) if rin
                else (),
            )
        elif layer.kind == "relay":
            per_layer[name] = LayerResources(
                name=name, kind="relay", parts=len(layer.parts),
                neurons_per_part=int(max(p.n for p in layer.parts)),
                units=int(sum(p.block.compartment.n_compartments for p in layer.parts)),
                inputs=(layer.source,), connection_kinds=("relay",),
            )
    program.layer_resources = per_layer
    ir_weights = sum(v.weights for v in per_layer.values())
    total_bits = int(sum(u["synapse_bits"] for u in uses))
    extra = {
        "compartments": int(sum(u["compartments"] for u in uses)),
        "synapse_memory_bits": total_bits,
        "synapse_memory_bits_data": int(data_bits),
        "synapse_entries_data": int(data_entries),
        "synapse_entries_per_weight": round(data_entries / ir_weights, 3) if ir_weights else None,
        "synapse_bits_per_weight": round(data_bits / ir_weights, 2) if ir_weights else None,
        "input_axons": int(sum(u["in_axons"] for u in uses)),
        "output_axon_slots": int(sum(u["out_axons"] for u in uses)),
        # nengo-loihi's emulator visits every axon object every step: its time grows with them
        "axon_objects": int(sum(len(b.axons) for b in blocks) + sum(len(i.axons) for i in program.model.inputs)),
        "max_core_use": ", ".join(f"{lim.name} {max(u[lim.name] for u in uses)}/{lim.value}"
                                  for lim in CORE_LIMITS),
        "K": int(program.K),
        "cores_by_layer": ", ".join(f"{k} {v}" for k, v in cores_by_layer.items()),
    }
    return Resources(
        cores=len(blocks),
        chips=int(getattr(program, "board_chips", -(-len(blocks) // program.config.cores_per_chip))),
        neurons=int(sum(n for n in program.network.neuron_counts().values())),
        time_steps_per_sample=int(program.period),
        latency_steps=int(program.readout_stage * program.K),
        layers=per_layer,
        extra=extra,
    )


def _kinds(m, image: bool) -> tuple[str, ...]:
    """How a map is stored: ``conv`` (rows shared across positions) or ``dense``, plus
    ``per-step`` when each source step has its own weights."""
    from fs_hw.lower.maps import ConvMap, StepMap

    first = m.steps[0] if isinstance(m, StepMap) else m
    kind = "conv" if isinstance(first, ConvMap) and image else "dense"
    return (kind, "per-step") if isinstance(m, StepMap) else (kind,)


def program_maps(program: Program):
    from fs_hw.lower.maps import receiver_inputs

    cache = getattr(program, "_maps", None)
    if cache is None:
        cache = receiver_inputs(program.network)
        program._maps = cache
    return cache
