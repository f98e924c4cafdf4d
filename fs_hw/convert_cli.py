"""`fs-convert`: a trained torch model (zoo name or torch.export file) into an `.fsnet` file.

    fs-convert resnet20 --out resnet20.fsnet --K 8 --alpha-policy percentile:99.99
    fs-convert my_model.pt2 --out my_model.fsnet --calibration 2000 --evaluate 1000

MODEL is a zoo name (``fs_hw.zoo``) or a file written by ``torch.export.save``. Such a
file is a zip archive that can hold pickles, compiled code and Python source, and
``torch.export.load`` runs them, so by default fs-convert opens it through
``fs_hw.convert.pt2.load_exported``: it refuses, before torch reads the file, any member
that would be unpickled (other than plain tensors through torch's ``weights_only``
unpickler) or executed, and keeps torch's unpicklers refusing while it loads (see
docs/convert-safety.md). ``--trust-archive`` lifts this for a file you trust.

Calibration samples are drawn from the data set's *train* split (seeded, without
replacement); ``--evaluate N`` measures ANN and FS accuracy on the first N *test*
images and records them.

Exit status: 0 on success, 2 on bad input (printed as one line ``fs-convert: error:
...``, without a traceback), 3 on an internal error (a bug: one line, report it), 130 on
Ctrl-C, 143 on SIGTERM.
"""

from __future__ import annotations

import argparse
import sys
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fs_hw.data import load_dataset
from fs_hw.errors import (
    CommandParser,
    FormatError,
    FSHWError,
    MissingDependencyError,
    ValidationError,
    run_command,
)

DEFAULT_CALIBRATION = 2000


def build_parser() -> argparse.ArgumentParser:
    from fs_hw.convert.calibrate import DEFAULT_ALPHA_POLICY

    p = CommandParser(prog="fs-convert", description=(
        "Convert a trained PyTorch network (a zoo name, or a file saved with torch.export.save) into an FS "
        "network file (.fsnet) for fs-deploy. See docs/convert.md."))
    p.add_argument("model", metavar="MODEL", help="zoo model name, or a torch.export file (.pt2)")
    p.add_argument("--out", required=True, help="the .fsnet file to write")
    p.add_argument("--calibration", type=int, default=DEFAULT_CALIBRATION, metavar="N",
                   help=f"calibration images from the train split (default {DEFAULT_CALIBRATION})")
    p.add_argument("--K", type=int, default=None,
                   help="time steps per FS phase, one for the whole network (default: 8 for ReLU networks, "
                   "else the largest K with shipped codes for all activations)")
    p.add_argument("--alpha-policy", default=DEFAULT_ALPHA_POLICY, metavar="P",
                   help=f"ReLU scale policy: 'percentile:<p>', 'max' or a number (default {DEFAULT_ALPHA_POLICY})")
    p.add_argument("--no-half-step", action="store_true",
                   help="do not add the half-step offset to ReLU inputs (the code then truncates)")
    p.add_argument("--input-code", choices=("round", "truncate", "analog"), default="round",
                   help="how the input enters: rounded binary code (default), truncating ReLU code, or analog")
    p.add_argument("--dataset", default="fashion-mnist", help="data set for calibration (default fashion-mnist)")
    p.add_argument("--evaluate", type=int, default=0, metavar="N",
                   help="also measure ANN and FS accuracy on the first N test images and record them")
    p.add_argument("--normalization", default=None, metavar="PRESET",
                   help="the model was trained on normalised inputs of this data set: "
                   "fashion-mnist, mnist or cifar10 (mean/std of the usual recipes)")
    p.add_argument("--input-mean", default=None, metavar="M[,M...]",
                   help="the model was trained on (x - mean) / std: the mean, one or one per channel")
    p.add_argument("--input-std", default=None, metavar="S[,S...]", help="the std to --input-mean")
    p.add_argument("--search", action="store_true",
                   help="choose K and the ReLU scales on held-out training images (calibrating once): the fewest "
                   "spikes within --loss-budget; prints the frontier and writes OUT.search.png")
    p.add_argument("--loss-budget", type=float, default=0.1, metavar="POINTS",
                   help="accuracy loss against the ANN allowed by --search, in points (default 0.1)")
    p.add_argument("--validation", type=int, default=2000, metavar="N",
                   help="validation images for --search, from the train split, disjoint from the calibration "
                   "images (default 2000); the test split is never used to choose")
    p.add_argument("--search-K", default=None, metavar="K,K...", help="Ks the search tries (default 4,5,6,8)")
    p.add_argument("--search-policies", default=None, metavar="P,P...",
                   help="alpha policies the search tries (default percentile:99.9,percentile:99.99)")
    p.add_argument("--search-scales", default=None, metavar="S,S...",
                   help="factors on every alpha the search tries (default 1,2: 2 is one bit coarser)")
    p.add_argument("--seed", type=int, default=0, help="seed of the calibration sample (default 0)")
    p.add_argument("--force", action="store_true", help="overwrite an existing output file")
    p.add_argument("--trust-archive", action="store_true",
                   help="load a .pt2 MODEL with plain torch.export.load, without the safety checks: the file "
                   "can then RUN ARBITRARY CODE (pickles, compiled code); only for files you made or trust")
    return p


def load_model(spec: str, trust_archive: bool = False) -> tuple[Any, str, dict]:
    """The model, its display name, and metadata known about it.

    A file is opened safely (no code from it runs) unless ``trust_archive``; see ``fs_hw.convert.pt2``.
    """
    try:
        import torch  # noqa: F401 - only whether torch is installed; the loaders import it themselves
    except ImportError:
        raise MissingDependencyError("fs-convert needs torch: pip install 'fs-hw[torch]' (torch==2.13.0)") from None
    from fs_hw.zoo import ZOO
    from fs_hw.zoo import load as zoo_load
    from fs_hw.zoo import metadata as zoo_metadata

    path = Path(spec)
    if path.is_file():
        from fs_hw.convert.pt2 import load_exported

        if not zipfile.is_zipfile(path):
            raise FormatError(f"{path}: not a torch.export file (torch.export.save writes a zip archive)")
        program = load_exported(path, trust=trust_archive)
        return program, path.name, {"source_file": str(path)}
    if spec in ZOO:
        model = zoo_load(spec)
        meta: dict[str, Any] = {}
        try:
            info = zoo_metadata(spec)
        except FSHWError:
            info = {}
        if "test_accuracy" in info:
            meta["ann_test_accuracy"] = float(info["test_accuracy"]) / 100.0
        if "dataset" in info:
            meta["dataset"] = info["dataset"]
        return model, spec, meta
    raise ValidationError("fs-convert", "MODEL",
                          f"{spec!r} is neither a file nor a zoo model (known: {', '.join(ZOO)})")


def _read_nir(args: argparse.Namespace) -> int:
    """MODEL.nir: a compact NIR graph fs-hw wrote (backends/nir) back into an .fsnet, as it
    was; nothing is traced or calibrated. The plugin is imported only here (the core never
    imports NIR); other neuron kinds are refused by its reader, which says why."""
    try:
        from fs_hw_nir.compact import read_nir
    except ImportError:
        raise MissingDependencyError("reading a .nir file needs the NIR target: pip install -e backends/nir") from None
    from fs_hw.ir import save_network

    out = Path(args.out)
    if out.exists() and not args.force:
        raise FormatError(f"{out}: exists; refusing to overwrite (pass --force)")
    net = read_nir(args.model)
    save_network(net, out, overwrite=args.force)
    print(f"wrote {out}: read from NIR {args.model}, K={net.K}, {len(net.nodes)} nodes")
    return 0


def _floats(text: str | None, flag: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise ValidationError("fs-convert", flag, f"must be numbers separated by commas, got {text!r}") from None
    return values


def _search_space(args: argparse.Namespace) -> Any:
    from fs_hw.convert import SearchSpace

    default = SearchSpace()
    try:
        Ks = default.Ks if args.search_K is None else tuple(int(k) for k in args.search_K.split(","))
    except ValueError:
        raise ValidationError("fs-convert", "--search-K", f"must be integers separated by commas, got "
                              f"{args.search_K!r}") from None
    policies = default.policies if args.search_policies is None else tuple(args.search_policies.split(","))
    scales = default.scales if args.search_scales is None else _floats(args.search_scales, "--search-scales")
    return SearchSpace(Ks, policies, scales)


def convert(args: argparse.Namespace) -> int:
    if args.model.lower().endswith(".nir"):
        return _read_nir(args)
    import torch

    from fs_hw.convert import AlphaPolicy
    from fs_hw.convert import convert as convert_model
    from fs_hw.convert.api import normalization_from_args
    from fs_hw.ir import save_network

    torch.set_num_threads(max(1, min(torch.get_num_threads(), 2)))
    AlphaPolicy.parse(args.alpha_policy, "--alpha-policy")
    out = Path(args.out)
    if out.exists() and not args.force:
        raise FormatError(f"{out}: exists; refusing to overwrite (pass --force)")
    if args.calibration < 1:
        raise ValidationError("fs-convert", "--calibration", f"must be >= 1, got {args.calibration}")
    if args.evaluate < 0:
        raise ValidationError("fs-convert", "--evaluate", f"must be >= 0, got {args.evaluate}")
    if args.validation < 1:
        raise ValidationError("fs-convert", "--validation", f"must be >= 1, got {args.validation}")
    normalization = normalization_from_args(args.normalization, _floats(args.input_mean, "--input-mean"),
                                            _floats(args.input_std, "--input-std"))
    space = _search_space(args) if args.search else None
    model, model_name, meta = load_model(args.model, getattr(args, "trust_archive", False))
    if meta.get("dataset", args.dataset) != args.dataset:
        print(f"fs-convert: note: {model_name} was trained on {meta['dataset']}, calibrating on {args.dataset}",
              file=sys.stderr)
    train_x, train_y = load_dataset(args.dataset, "train")
    n = min(args.calibration, len(train_x))
    order = np.random.default_rng(args.seed).permutation(len(train_x))
    calib_idx = np.sort(order[:n])
    validation = None
    if space is not None:
        # held out from the training split, disjoint from the calibration samples; never the test split
        val_idx = np.sort(order[n:n + args.validation])
        if len(val_idx) == 0:
            raise ValidationError("fs-convert", "--validation", f"no training samples left after {n} calibration "
                                  f"samples ({len(train_x)} in the split)")
        validation = (train_x[val_idx], train_y[val_idx])
    test = None
    if args.evaluate:
        x, y = load_dataset(args.dataset, "test")
        test = (x[: args.evaluate], y[: args.evaluate])
    meta.update({"model": model_name, "dataset": args.dataset})
    if normalization is not None:
        print(f"input normalisation (x - {list(normalization[0])}) / {list(normalization[1])}: folded; the "
              f"network takes raw {args.dataset} pixels in [0, 1]")

    def progress(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    result = convert_model(
        model, train_x[calib_idx], K=args.K, alpha_policy=args.alpha_policy, half_step=not args.no_half_step,
        input_code=None if args.input_code == "analog" else args.input_code, input_normalization=normalization,
        search=space, validation=validation, loss_budget=args.loss_budget, test=test, name=model_name,
        metadata=meta, progress=progress)
    net = result.network
    for text in result.warnings:
        print(f"fs-convert: warning: {text}", file=sys.stderr)
    if result.search is not None:
        print(f"operating points on {result.search.validation_samples} validation images (training split, not "
              f"used for calibration); ANN {100 * result.search.ann_val_accuracy:.2f}%:")
        print(result.search.table())
        print(f"chosen by the rule: {result.search.rule}")
        plot = out.with_name(out.name + ".search.png")
        try:
            result.search.plot(plot)
            print(f"plot: {plot}")
        except ImportError:
            print("fs-convert: note: matplotlib is not installed; no plot", file=sys.stderr)
    if result.evaluation is not None:
        e = result.evaluation
        print(f"accuracy on {e['samples']} test images: ANN {e['ann_accuracy']:.4f}, FS {e['fs_accuracy']:.4f} "
              f"({100 * (e['fs_accuracy'] - e['ann_accuracy']):+.2f} points), {e['spikes_per_neuron']:.3f} "
              "spikes per neuron")
    save_network(net, out, overwrite=args.force)
    fs_layers = len(net.metadata["conversion"]["layers"])
    seconds = sum(result.seconds.get(k, 0.0) for k in ("calibration", "search", "conversion"))
    print(f"wrote {out}: {model_name}, K={net.K}, {fs_layers} FS layers, alpha policy "
          f"{net.metadata['conversion']['alpha_policy'] if result.search is None else 'chosen by the search'}, "
          f"{n} calibration images, {seconds:.1f} s")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_command("fs-convert", convert, build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
