"""`fs-deploy`: lower an FS network to a target, run it, check it against the reference.

Exit status: 0 when the target's spikes equal the reference's, 1 when they differ,
2 on bad input (the error is printed as one line, without a traceback).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from fs_hw.backend import FLOAT64, available_targets, get_backend, KNOWN_TARGETS
from fs_hw.conformance import compare_runs
from fs_hw.errors import FormatError, FSHWError, ValidationError, run_command
from fs_hw.ir.io import load_network
from fs_hw.ir.network import Network
from fs_hw.reference.simulator import concat_results, run_reference

REPORT_MARKER = "fs_deploy_report"
TOP_LEVEL_KEYS = {"samples": int, "target": dict}


def _example_path(name: str) -> Path:
    return Path(str(resources.files("fs_hw").joinpath("examples", name)))


def resolve_network(arg: str | None) -> tuple[Path, bool]:
    """A .fsnet path, a zoo name (its converted network), or the bundled example."""
    if arg is None:
        return _example_path("fashion_mlp.fsnet"), True
    path = Path(arg)
    if path.exists():
        return path, False
    from fs_hw.zoo.models import ZOO

    if arg in ZOO:
        zoo_path = Path(str(resources.files("fs_hw").joinpath("zoo", "networks", f"{arg}.fsnet")))
        if not zoo_path.is_file():
            raise FormatError(
                f"zoo network {arg!r} has no converted file {zoo_path}; "
                f"make it with: fs-convert {arg} --out {arg}.fsnet"
            )
        return zoo_path, False
    raise FormatError(f"{arg}: no such network file, and not a zoo name (zoo: {', '.join(ZOO)})")


def load_inputs(path: Path | None, network: Network, bundled: bool = False) -> tuple[np.ndarray, np.ndarray | None, str]:
    """Inputs (and labels when known): an npz file (no pickles), the bundled set, or the
    test split of the data set the network's metadata names."""
    if path is None:
        dataset = network.metadata.get("dataset")
        if bundled:
            path = _example_path("fashion_test.npz")
        elif dataset is not None:
            from fs_hw.data import DATASETS, load_dataset

            if dataset not in DATASETS:
                raise ValidationError("fs-deploy", "--inputs", f"network data set {dataset!r} is not one fs-hw loads; pass --inputs FILE.npz")
            images, labels = load_dataset(dataset, "test")
            return images.astype(np.float64), labels, f"{dataset} test split"
        else:
            raise ValidationError("fs-deploy", "--inputs", "this network has no bundled inputs; pass --inputs FILE.npz")
    if not Path(path).is_file():
        raise FormatError(f"{path}: no such inputs file")
    try:
        with np.load(path, allow_pickle=False) as data:
            if "images" not in data:
                raise FormatError(f"{path}: needs an array 'images' (and optionally 'labels', 'scale'); has {sorted(data)}")
            images = data["images"].astype(np.float64)
            if "scale" in data:
                images = images * float(data["scale"])
            labels = data["labels"].astype(np.int64) if "labels" in data else None
    except FSHWError:
        raise
    except (ValueError, OSError, KeyError, EOFError) as exc:
        raise FormatError(f"{path}: not a readable npz inputs file ({exc})") from None
    if labels is not None and len(labels) != len(images):
        raise FormatError(f"{path}: {len(images)} images but {len(labels)} labels")
    return images, labels, str(path)


def load_config(path: Path | None, target: str) -> dict[str, Any]:
    if path is None:
        default = Path.cwd() / "deploy_configs" / f"{target}.toml"
        if not default.is_file():
            return {}
        path = default
    try:
        config = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise FormatError(f"{path}: no such config file") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise FormatError(f"{path}: not valid TOML ({exc})") from None
    for key, value in config.items():
        if key not in TOP_LEVEL_KEYS:
            raise ValidationError(f"config {path}", key, f"unknown key; known: {sorted(TOP_LEVEL_KEYS)}")
        if not isinstance(value, TOP_LEVEL_KEYS[key]) or isinstance(value, bool):
            raise ValidationError(f"config {path}", key, f"must be {TOP_LEVEL_KEYS[key].__name__}, got {value!r}")
    config["_path"] = str(path)
    return config


def _progress(total: int, label: str):
    try:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
    except ImportError:
        return None
    return Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=_console(), transient=True)


def _console():
    from rich.console import Console

    return Console(stderr=True)


def _run_chunked(run, inputs: np.ndarray, chunk: int, label: str):
    parts = []
    bar = _progress(len(inputs), label)
    if bar is None:
        for start in range(0, len(inputs), chunk):
            parts.append(run(inputs[start : start + chunk]))
        return concat_results(parts)
    with bar:
        task = bar.add_task(label, total=len(inputs))
        for start in range(0, len(inputs), chunk):
            parts.append(run(inputs[start : start + chunk]))
            bar.update(task, advance=len(inputs[start : start + chunk]))
    return concat_results(parts)


def _safe_write_report(path: Path, report: dict) -> None:
    if path.exists():
        try:
            old = json.loads(path.read_text())
            ours = isinstance(old, dict) and old.get(REPORT_MARKER) is True
        except (ValueError, UnicodeDecodeError, OSError):
            ours = False
        if not ours:
            raise FormatError(f"{path}: exists and is not an fs-deploy report; refusing to overwrite it")
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(path)


def deploy(args: argparse.Namespace) -> int:
    network_path, bundled = resolve_network(args.network)
    network = load_network(network_path)
    config = load_config(Path(args.config) if args.config else None, args.target)
    backend = get_backend(args.target)
    target_config = dict(config.get("target", {}))
    if args.emulator:
        target_config["emulator"] = True
    images, labels, inputs_name = load_inputs(Path(args.inputs) if args.inputs else None, network, bundled)
    # --samples is a request that must be met; the config's samples is an upper bound.
    samples = args.samples or min(config.get("samples") or len(images), len(images))
    if samples < 1:
        raise ValidationError("fs-deploy", "--samples", f"must be >= 1, got {samples}")
    if samples > len(images):
        raise ValidationError("fs-deploy", "--samples", f"{samples} requested, the inputs hold {len(images)}")
    images = images[:samples]
    labels = None if labels is None else labels[:samples]

    t0 = time.perf_counter()
    artifact = backend.lower(network, target_config)
    t_lower = time.perf_counter() - t0
    chunk = int(target_config.get("batch_size", 100))
    t0 = time.perf_counter()
    result = _run_chunked(lambda x: backend.run(artifact, x, record_spikes=True), images, chunk, f"{backend.name}")
    t_run = time.perf_counter() - t0
    # What the target should compute: the reference on the artifact's network and
    # profile. For the reference target itself this is the fast mode checking the
    # spike-level mode.
    expected = _run_chunked(
        lambda x: run_reference(artifact.network, x, "fast", artifact.profile, record_spikes=True),
        images, 200, "reference (target profile)",
    )
    comparison = compare_runs(expected, result)
    if artifact.profile == FLOAT64 and artifact.network is network:
        float_fs = expected
    else:
        float_fs = run_reference(network, images, "fast", FLOAT64, batch_size=200)

    def accuracy(r):
        return None if labels is None else float(np.mean(r.predictions == labels))

    input_name = network.input.name
    report = {
        REPORT_MARKER: True,
        "target": backend.name,
        "network": str(network_path),
        "inputs": inputs_name,
        "samples": int(samples),
        "accuracy": accuracy(result),
        "reference_accuracy": accuracy(float_fs),
        "predicted_accuracy": accuracy(expected),
        "ann_accuracy": network.metadata.get("ann_test_accuracy"),
        "agreement": comparison.agreement,
        "spike_mismatches": comparison.spike_mismatches,
        "spikes_compared": comparison.spikes_compared,
        "first_mismatch": comparison.first_mismatch or None,
        "spikes_per_neuron": result.spikes_per_neuron(input_name=input_name),
        "spikes_per_neuron_with_input": result.spikes_per_neuron(include_input=True),
        "spikes_per_sample": float(sum(c.sum() for c in result.spike_counts.values()) / samples),
        "layers": {
            name: {"neurons": result.neurons[name],
                   "spikes_per_neuron": float(result.spike_counts[name].mean() / result.neurons[name])}
            for name in result.neurons
        },
        "time_steps": int(result.time_steps),
        "K": network.K,
        "profile": artifact.profile.name,
        "resources": artifact.resources,
        "notes": artifact.notes,
        "info": {k: v for k, v in result.info.items() if _jsonable(v)},
        "seconds": {"lower": round(t_lower, 3), "run": round(t_run, 3)},
    }
    if args.out:
        out = Path(args.out)
        if out.exists() and any(out.iterdir()) and not args.force:
            raise FormatError(f"{out}: exists and is not empty; pass --force to write into it")
        report["exported"] = [str(p) for p in backend.export(artifact, out)]
        plot = _plot_layers(report, result, out / "spikes_per_layer.png")
        if plot is not None:
            report["exported"].append(str(plot))
    if args.report:
        _safe_write_report(Path(args.report), report)
    _print_summary(report)
    return 0 if comparison.exact else 1


def _plot_layers(report: dict, result, path: Path) -> Path | None:
    """Bar chart of spikes per neuron per layer and a spike-count histogram (if matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    layers = report["layers"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.5))
    names = list(layers)
    ax1.bar(range(len(names)), [layers[n]["spikes_per_neuron"] for n in names], color="tab:green")
    ax1.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
    ax1.set_ylabel("spikes per neuron")
    ax1.set_title(f"{report['target']}: {report['samples']} samples, K={report['K']}")
    if result.spike_trains:
        per_step = np.zeros(report["K"])
        for train in result.spike_trains.values():
            per_step += train.reshape(train.shape[0], train.shape[1], -1).sum(axis=(0, 2))
        ax2.bar(range(report["K"]), per_step / report["samples"], color="tab:blue")
        ax2.set_xlabel("step t within a stage")
        ax2.set_ylabel("spikes per sample")
        ax2.set_title("when neurons fire (all layers)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
        return True
    except (TypeError, ValueError):
        return False


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _print_summary(report: dict) -> None:
    rows = [
        ("target", report["target"]),
        ("samples", report["samples"]),
        ("accuracy (target)", report["accuracy"]),
        ("accuracy (float FS reference)", report["reference_accuracy"]),
        ("accuracy predicted for target", report["predicted_accuracy"]),
        ("ANN accuracy (whole test set, from metadata)", report["ann_accuracy"]),
        ("agreement with reference", report["agreement"]),
        ("spike mismatches", f"{report['spike_mismatches']} of {report['spikes_compared']} compared"),
        ("spikes per neuron", report["spikes_per_neuron"]),
        ("time steps to a decision (latency)", report["time_steps"]),
    ]
    if "steps_per_sample" in report["info"]:
        rows.append(("time steps per sample (pipelined)", report["info"]["steps_per_sample"]))
    if "runner" in report["info"]:
        rows.append(("ran on", report["info"]["runner"]))
    for key, value in report["resources"].items():
        rows.append((f"resource: {key}", value))
    try:
        from rich.table import Table

        table = Table(title=f"fs-deploy --target {report['target']}")
        table.add_column("quantity")
        table.add_column("value", justify="right")
        for k, v in rows:
            table.add_row(k, _fmt(v))
        from rich.console import Console

        Console().print(table)
    except ImportError:
        for k, v in rows:
            print(f"{k:<32} {_fmt(v)}")
    for note in report["notes"]:
        print(f"note: {note}")


def list_targets() -> int:
    found = available_targets()
    for name in sorted(set(found) | set(KNOWN_TARGETS)):
        status = "installed" if name in found else f"not installed: {KNOWN_TARGETS.get(name, '')}"
        print(f"{name:<14} {status}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fs-deploy",
        description="Lower an FS network to a target, run it, and check it spike for spike against the reference.",
    )
    p.add_argument("network", nargs="?", help="a .fsnet file or a zoo name (default: the bundled Fashion-MNIST example)")
    p.add_argument("--target", help="target name (see --list-targets)")
    p.add_argument("--config", help="TOML settings (default: deploy_configs/<target>.toml if present)")
    p.add_argument("--samples", type=int, help="number of input samples to run")
    p.add_argument("--inputs", help="npz with 'images' (N, *input_shape), optional 'labels' and 'scale'")
    p.add_argument("--out", help="export the target's program into this folder")
    p.add_argument("--report", help="write a JSON report here")
    p.add_argument("--emulator", action="store_true", help="force the target's emulator (where it has one)")
    p.add_argument("--force", action="store_true", help="allow writing into a non-empty --out folder")
    p.add_argument("--list-targets", action="store_true", help="list targets and exit")
    return p


def _main(args: argparse.Namespace) -> int:
    if args.list_targets:
        return list_targets()
    if not args.target:
        raise ValidationError("fs-deploy", "--target", "is required (see --list-targets)")
    return deploy(args)


def main(argv: Sequence[str] | None = None) -> int:
    return run_command("fs-deploy", _main, build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
