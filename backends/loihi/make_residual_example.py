"""Write a small CNN with a residual block, and inputs, for ``fs-deploy --target loihi``.

The network is the conformance kit's ``residual`` scenario (conv stem, two convs with
an identity skip around them, global average pooling, dense read-out; ReLU FS codes,
K = 6); inputs are uniform in [0, 1). Usage::

    python backends/loihi/make_residual_example.py            # writes backends/loihi/examples/
    fs-deploy backends/loihi/examples/residual_cnn.fsnet --target loihi \\
        --inputs backends/loihi/examples/residual_cnn_inputs.npz --samples 32
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from fs_hw import conformance
from fs_hw.ir import save_network

HERE = Path(__file__).resolve().parent / "examples"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(HERE), help="folder to write into")
    p.add_argument("--samples", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    net, inputs = conformance.scenario("residual", samples=args.samples, seed=args.seed)
    net = net.replace(metadata={**net.metadata, "name": "residual_cnn",
                                "description": "CNN with a residual block (conformance scenario 'residual')"})
    save_network(net, out / "residual_cnn.fsnet", overwrite=True)
    np.savez(out / "residual_cnn_inputs.npz", images=inputs.astype(np.float64))
    print(f"wrote {out / 'residual_cnn.fsnet'} and {out / 'residual_cnn_inputs.npz'} ({args.samples} samples)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
