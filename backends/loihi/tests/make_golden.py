"""Regenerate the golden spike records in ``tests/golden/``.

Run after a deliberate change of semantics (core reference or Loihi lowering)::

    .venv/bin/python backends/loihi/tests/make_golden.py

It lowers each network, runs it on nengo-loihi's emulator, checks the run equals the
reference on the Loihi profile spike for spike, and writes inputs, read-out values,
predictions and every spiking node's spike train (``spikes/<node>``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from fs_hw_loihi.backend import LoihiBackend

from fs_hw import conformance
from fs_hw.reference.simulator import run_reference

GOLDEN = Path(__file__).resolve().parent / "golden"
CASES = {"mlp": ("mlp_relu_ge", 6, 3), "conv": ("conv", 6, 3), "residual": ("residual", 6, 3)}


def golden_case(name: str):
    scenario, samples, seed = CASES[name]
    return conformance.scenario(scenario, samples=samples, seed=seed)


def main() -> int:
    GOLDEN.mkdir(exist_ok=True)
    backend = LoihiBackend()
    for name in CASES:
        net, x = golden_case(name)
        art = backend.lower(net, {})
        res = backend.run(art, x, record_spikes=True)
        ref = run_reference(art.network, x, "spike", art.profile, record_spikes=True)
        comp = conformance.compare_runs(ref, res)
        if not comp.exact:
            print(f"{name}: emulator and reference differ: {comp}", file=sys.stderr)
            return 1
        arrays = {"inputs": x, "outputs": res.outputs, "predictions": res.predictions}
        for node, train in res.spike_trains.items():
            arrays[f"spikes/{node}"] = train
        np.savez_compressed(GOLDEN / f"{name}.npz", **arrays)
        print(f"wrote {GOLDEN / (name + '.npz')}: {sum(int(t.sum()) for t in res.spike_trains.values())} spikes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
