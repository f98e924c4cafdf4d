"""The stage schedule of a time-unrolled FS network, and the relays that align skips.

Stage ``s`` of a network (:attr:`fs_hw.ir.Network.stages`) decides during steps
``[sK, (s+1)K)``: a receiver at stage ``r`` integrates what its sources emit during stage
``r - 1``. A source that decided earlier (a residual skip from stage ``s < r - 1``) must
have its spikes *re-emitted* at stage ``r - 1``. On a chip without synaptic delays (Loihi)
that is a chain of relay copies, one per skipped stage, each a latch that re-fires a
spike ``K`` steps later; a chip with delays (SpiNNaker) can instead add ``(r - 1 - s) K``
steps of delay to those synapses. :func:`relay_plan` lists the copies a network needs,
in the order a backend can create them, and :func:`skip_delays` the same fact as delays.

The host-encoded input is excluded by default (``host_delays=True``): the host can send
its spikes again at any stage, which costs the chip nothing.

No SDK imports: every chip backend uses it.
"""

from __future__ import annotations

from dataclasses import dataclass

from fs_hw.ir import FSActivation, Input, Network, Readout


def spiking_sources(network: Network, name: str) -> tuple[str, ...]:
    """The spiking nodes a receiver's input reads through linear nodes (sorted)."""
    node = network.by_name[name]
    stack = list(node.inputs)
    found: set[str] = set()
    seen: set[str] = set()
    while stack:
        cur = stack.pop()
        if cur in seen:
            continue
        seen.add(cur)
        n = network.by_name[cur]
        if network.is_spiking(n):
            found.add(cur)
        elif not isinstance(n, Input):
            stack.extend(n.inputs)
    return tuple(sorted(found))


def relay_name(source: str, stage: int) -> str:
    return f"{source}@relay{stage}"


@dataclass(frozen=True)
class Relay:
    """A copy of ``source`` that re-emits at ``stage`` what ``previous`` emitted at ``stage - 1``."""

    source: str
    stage: int
    previous: str

    @property
    def name(self) -> str:
        return relay_name(self.source, self.stage)


def skip_delays(network: Network) -> dict[tuple[str, str], int]:
    """``(source, receiver) -> stages`` of delay its spikes need (0: no skip)."""
    stages = network.stages
    out = {}
    for node in network.order:
        if isinstance(node, (FSActivation, Readout)):
            for src in spiking_sources(network, node.name):
                out[(src, node.name)] = stages[node.name] - 1 - stages[src]
    return out


def relay_plan(network: Network, host_delays: bool = True) -> list[Relay]:
    """Relay copies that align every skip connection, sources in network order and
    each source's copies by stage (so ``previous`` always exists before its copy)."""
    stages = network.stages
    latest: dict[str, int] = {}
    for (src, _), delay in skip_delays(network).items():
        if delay < 0:
            raise ValueError(f"node {src!r} is read before it decides")
        latest[src] = max(latest.get(src, stages[src]), stages[src] + delay)
    plan = []
    for node in network.order:
        name = node.name
        if name not in latest or (host_delays and isinstance(node, Input)):
            continue
        previous = name
        for stage in range(stages[name] + 1, latest[name] + 1):
            plan.append(Relay(name, stage, previous))
            previous = relay_name(name, stage)
    return plan
