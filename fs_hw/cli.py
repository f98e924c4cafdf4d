"""`fs-deploy`: lower an FS network to a target, run it, check it against the reference.

Exit status: 0 when the target's spikes equal the reference's, 1 when they differ,
2 on bad input (the error is printed as one line, without a traceback), 3 on an internal
error (a bug: one line asking to report it), 130 on Ctrl-C.

Output files (``--report``, the ``--out`` folder's files) are written atomically through
:mod:`fs_hw.outputs`: their destinations are checked and locked before the run starts.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import stat
import sys
import time
import tomllib
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from fs_hw.backend import (
    FLOAT64,
    KNOWN_TARGETS,
    available_targets,
    choose_runner,
    get_backend,
    parse_target_config,
)
from fs_hw.conformance import compare_runs
from fs_hw.errors import CommandParser, FormatError, FSHWError, ValidationError, run_command
from fs_hw.ir.io import load_network
from fs_hw.ir.network import Network
from fs_hw.outputs import (
    DestinationLock,
    atomic_output,
    atomic_write_text,
    check_report_destination,
    read_regular_file,
)
from fs_hw.reference.simulator import concat_results, run_reference

REPORT_MARKER = "fs_deploy_report"
TOP_LEVEL_KEYS = {"samples": int, "target": dict}
#: A deploy config is a few lines of TOML; anything bigger is not one (and must not fill memory).
CONFIG_READ_LIMIT = 1 << 20
#: Samples per call of the target's run when the config sets no [target] batch_size.
DEFAULT_BATCH_SIZE = 100


def _example_path(name: str) -> Path:
    return Path(str(resources.files("fs_hw").joinpath("examples", name)))


def resolve_network(arg: str | None) -> tuple[Path, bool]:
    """A .fsnet path, a zoo name (its converted network), or the bundled example."""
    if arg is None:
        return _example_path("fashion_mlp.fsnet"), True
    path = Path(arg)
    if path.is_dir():
        inside = sorted(p.name for p in path.glob("*.fsnet"))[:3]
        hint = f" (it holds {', '.join(inside)})" if inside else ""
        raise FormatError(f"{path}: is a folder, not a network file; give the .fsnet file itself{hint}")
    if path.exists():
        if not path.is_file():
            raise FormatError(f"{path}: is not a regular file (a device or a pipe?); give a .fsnet file")
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


def load_inputs(
    path: Path | None, network: Network, bundled: bool = False
) -> tuple[np.ndarray, np.ndarray | None, str]:
    """Inputs (and labels when known): an npz file (no pickles), the bundled set, or the
    test split of the data set the network's metadata names."""
    if path is None:
        dataset = network.metadata.get("dataset")
        if bundled:
            path = _example_path("fashion_test.npz")
        elif dataset is not None:
            from fs_hw.data import DATASETS, load_dataset

            if dataset not in DATASETS:
                raise ValidationError("fs-deploy", "--inputs",
                                      f"network data set {dataset!r} is not one fs-hw loads; "
                                      "pass --inputs FILE.npz")
            images, labels = load_dataset(dataset, "test")
            return images.astype(np.float64), labels, f"{dataset} test split"
        else:
            raise ValidationError("fs-deploy", "--inputs",
                                  "this network has no bundled inputs; pass --inputs FILE.npz")
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise FormatError(f"{path}: no such inputs file") from None
    if stat.S_ISDIR(mode):
        raise FormatError(f"{path}: is a folder; --inputs needs an npz file (arrays 'images', "
                          "optional 'labels')")
    if not stat.S_ISREG(mode):
        raise FormatError(f"{path}: is not a regular file (a device or a pipe?); --inputs needs an npz file")
    # The npz reader that bounds memory and refuses pickles, odd shapes and encrypted or
    # oversized members; it applies 'scale' and raises FormatError naming the file.
    from fs_hw.safe_archive import load_inputs_file

    images, labels = load_inputs_file(path)
    if labels is not None and len(labels) != len(images):
        raise FormatError(f"{path}: {len(images)} images but {len(labels)} labels")
    return images, labels, str(path)


def _ann_accuracy(metadata: dict) -> float | None:
    """The ANN's test accuracy a network file records: the zoo's whole-test-set figure, or
    what ``fs-convert --evaluate`` measured (its ``evaluation`` block)."""
    value = metadata.get("ann_test_accuracy")
    if value is None and isinstance(metadata.get("evaluation"), dict):
        value = metadata["evaluation"].get("ann_accuracy")
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


#: the deploy configs shipped with fs-hw (a source checkout); fs-deploy falls back to them
SHIPPED_CONFIGS = Path(__file__).resolve().parents[1] / "deploy_configs"


def default_config_path(target: str) -> Path | None:
    """``deploy_configs/TARGET.toml`` of the current folder, else the one shipped next to
    the package, else none (the target's defaults)."""
    for folder in (Path.cwd() / "deploy_configs", SHIPPED_CONFIGS):
        candidate = folder / f"{target}.toml"
        if candidate.is_file():
            return candidate
    return None


def load_config(path: Path | None, target: str) -> dict[str, Any]:
    if path is None:
        path = default_config_path(target)
        if path is None:
            return {}
    # A regular file, read with a bound: /dev/zero or a FIFO given as --config is refused by type.
    raw = read_regular_file(path, "config file (TOML)", CONFIG_READ_LIMIT)
    try:
        config = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise FormatError(f"{path}: not valid TOML ({exc})") from None
    except RecursionError:
        raise FormatError(f"{path}: not valid TOML (nested too deeply)") from None
    for key, value in config.items():
        if key not in TOP_LEVEL_KEYS:
            raise ValidationError(f"config {path}", key, f"unknown key; known: {sorted(TOP_LEVEL_KEYS)}")
        if not isinstance(value, TOP_LEVEL_KEYS[key]) or isinstance(value, bool):
            raise ValidationError(f"config {path}", key,
                                  f"must be {TOP_LEVEL_KEYS[key].__name__}, got {value!r}")
    if "samples" in config and config["samples"] < 1:
        raise ValidationError(f"config {path}", "samples", f"must be >= 1, got {config['samples']} "
                              "(leave it out to run every input)")
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


def _target_batch_size(target_config: Any) -> int:
    """The [target] batch_size (fs-deploy feeds the target chunks of this size); a target
    whose settings have none gets the default. Its range is checked by the config parser."""
    value = getattr(target_config, "batch_size", DEFAULT_BATCH_SIZE)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValidationError("target config", "batch_size", f"must be a positive integer, got {value!r}")
    return value


def _check_destinations(args: argparse.Namespace) -> tuple[Path | None, Path | None]:
    """Refuse a bad --out or --report before the run (not after minutes of it)."""
    out = Path(args.out) if args.out else None
    report = Path(args.report) if args.report else None
    if out is not None and out.exists():
        if not out.is_dir():
            raise FormatError(f"{out}: exists and is not a folder; --out needs a folder (absent or empty)")
        if any(out.iterdir()) and not args.force:
            raise FormatError(f"{out}: exists and is not empty; pass --force to write into it")
    if report is not None:
        check_report_destination(report, REPORT_MARKER)
        if out is not None and _real(report) == _real(out):
            raise ValidationError("fs-deploy", "--report",
                                  f"{report} is also the --out folder; give a file path")
    return out, report


def _real(path: Path) -> Path:
    """``path`` with its folder's symlinks resolved (a lock must be one per real place)."""
    return Path(os.path.realpath(path.parent)) / path.name


def _lock_destinations(stack: contextlib.ExitStack, out: Path | None, report: Path | None) -> None:
    # The --out folder is written into, so it is locked where it really is; the report is
    # never a symlink (check_report_destination refuses one).
    if out is not None:
        stack.enter_context(DestinationLock(Path(os.path.realpath(out))))
    if report is not None:
        stack.enter_context(DestinationLock(_real(report)))


def _json_safe(value: Any, where: str, notes: list[str]) -> Any:
    """``value`` as strict JSON: numpy scalars and arrays as numbers and lists, and NaN or
    infinity (JSON has neither) as null with a note saying where. TypeError if not JSON."""
    if isinstance(value, np.generic):
        value = value.item()
    elif isinstance(value, np.ndarray):
        value = value.tolist()
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        notes.append(f"report: {where} was {value}, written as null (JSON has no NaN or infinity)")
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v, f"{where}.{k}", notes) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v, f"{where}[{i}]", notes) for i, v in enumerate(value)]
    raise TypeError(f"{where}: {type(value).__name__} is not JSON")


def _layer_stats(result, notes: list[str]) -> dict[str, dict[str, Any]]:
    layers: dict[str, dict[str, Any]] = {}
    for name, neurons in result.neurons.items():
        if neurons == 0:  # spikes per neuron of no neurons is undefined, not a division by zero
            notes.append(f"layer {name!r} has no neurons; its spikes_per_neuron is null")
            spn = None
        else:
            spn = float(result.spike_counts[name].mean() / neurons)
        layers[name] = {"neurons": int(neurons), "spikes_per_neuron": spn}
    return layers


def _report_text(report: dict) -> str:
    notes: list[str] = []
    info = {}
    for key, value in report["info"].items():
        with contextlib.suppress(TypeError):  # backend facts that are not JSON are left out
            info[key] = _json_safe(value, f"info.{key}", notes)
    clean = _json_safe({k: v for k, v in report.items() if k != "info"}, "report", notes)
    clean["info"] = info
    clean["notes"] = [*clean["notes"], *notes]
    return json.dumps(clean, indent=2, allow_nan=False) + "\n"


def deploy(args: argparse.Namespace) -> int:
    # --samples 0 is a mistake, not "all": argparse leaves None when it is not given.
    if args.samples is not None and args.samples < 1:
        raise ValidationError("fs-deploy", "--samples", f"must be >= 1, got {args.samples} "
                              "(leave --samples out to run every input)")
    _check_destinations(args)
    network_path, bundled = resolve_network(args.network)
    network = load_network(network_path)
    config = load_config(Path(args.config) if args.config else None, args.target)
    backend = get_backend(args.target)
    where = f"config {config['_path']}" if "_path" in config else f"{args.target} config"
    try:
        target_config = parse_target_config(backend, config.get("target", {}))
    except ValidationError as exc:
        raise ValidationError(where, f"[target] {exc.field}", exc.problem) from None
    if args.emulator:
        if args.runner not in (None, "emulator"):
            raise ValidationError("fs-deploy", "--emulator", f"contradicts --runner {args.runner}")
        args.runner = "emulator"
    runner = choose_runner(backend.runners, args.runner, backend.name).name
    chunk = _target_batch_size(target_config)
    images, labels, inputs_name = load_inputs(Path(args.inputs) if args.inputs else None, network, bundled)
    # --samples is a request that must be met; the config's samples is an upper bound.
    if args.samples is not None:
        samples = args.samples
    else:
        samples = min(config.get("samples", len(images)), len(images))
    if samples < 1:
        raise ValidationError("fs-deploy", "--inputs", f"{inputs_name} holds no samples")
    if samples > len(images):
        raise ValidationError("fs-deploy", "--samples", f"{samples} requested, the inputs hold {len(images)}")
    images = images[:samples]
    labels = None if labels is None else labels[:samples]

    with contextlib.ExitStack() as stack:
        out, report_path = _check_destinations(args)
        _lock_destinations(stack, out, report_path)
        # again under the locks: a run that finished meanwhile may have filled --out
        out, report_path = _check_destinations(args)
        return _run_and_write(args, backend, network, network_path, target_config, runner, chunk,
                              images, labels, inputs_name, out, report_path, config.get("_path"))


def _run_and_write(args, backend, network, network_path, target_config, runner, chunk, images, labels,
                   inputs_name, out: Path | None, report_path: Path | None, config_path: str | None = None) -> int:
    samples = len(images)
    t0 = time.perf_counter()
    quantized = backend.quantize(network, target_config)
    t_quantize = time.perf_counter() - t0
    t0 = time.perf_counter()
    artifact = backend.lower(quantized, target_config)
    t_lower = time.perf_counter() - t0
    t0 = time.perf_counter()
    result = _run_chunked(lambda x: backend.run(artifact, x, record_spikes=True, runner=runner),
                          images, chunk, f"{backend.name} ({runner})")
    t_run = time.perf_counter() - t0
    # What the target should compute: the reference on the artifact's network and
    # profile. For the reference target itself this is the fast mode checking the
    # spike-level mode.
    expected = _run_chunked(
        lambda x: run_reference(artifact.network, x, "fast", artifact.profile, record_spikes=True),
        images, 200, "reference (target profile)",
    )
    # a runner that maps without executing (sPyNNaker's virtual board) returns no spikes:
    # nothing to compare, the report holds the mapping and the predicted accuracy
    mapped_only = result.info.get("spikes_returned") is False
    run_info = dict(result.info)
    comparison = None if mapped_only else compare_runs(expected, result, input_name=network.input.name)
    if artifact.profile == FLOAT64 and artifact.network is network:
        float_fs = expected
    else:
        float_fs = run_reference(network, images, "fast", FLOAT64, batch_size=200)

    def accuracy(r):
        return None if labels is None else float(np.mean(r.predictions == labels))

    input_name = network.input.name
    notes = list(artifact.notes)
    if mapped_only:
        notes.insert(0, f"runner {runner!r} mapped the network but returned no spikes "
                        f"({result.info.get('why_no_spikes', 'no board')}): nothing compared; the accuracy "
                        "shown for the target is the prediction")
        result = expected  # the prediction stands in for spike statistics
    report = {
        REPORT_MARKER: True,
        "target": backend.name,
        "network": str(network_path),
        "inputs": inputs_name,
        "samples": int(samples),
        "accuracy": None if mapped_only else accuracy(result),
        "reference_accuracy": accuracy(float_fs),
        "predicted_accuracy": accuracy(expected),
        "ann_accuracy": _ann_accuracy(network.metadata),
        "agreement": None if comparison is None else comparison.agreement,
        "spike_mismatches": None if comparison is None else comparison.spike_mismatches,
        "spikes_compared": None if comparison is None else comparison.spikes_compared,
        "input_spikes_compared": None if comparison is None else comparison.input_spikes_compared,
        "readout_max_abs_diff": None if comparison is None else comparison.readout_max_abs_diff,
        "first_mismatch": None if comparison is None else (comparison.first_mismatch or None),
        "spikes_per_neuron": result.spikes_per_neuron(input_name=input_name),
        "spikes_per_neuron_with_input": result.spikes_per_neuron(include_input=True),
        "spikes_per_sample": float(sum(c.sum() for c in result.spike_counts.values()) / samples),
        "layers": _layer_stats(result, notes),
        "time_steps": int(result.time_steps),
        "K": network.K,
        "profile": artifact.profile.name,
        "runner": runner,
        "config": config_path,
        "exactness": backend.exactness.to_dict(),
        "resources": artifact.resources.to_dict(),
        "notes": notes,
        "info": result.info if not mapped_only else run_info,
        "seconds": {"quantize": round(t_quantize, 3), "lower": round(t_lower, 3), "run": round(t_run, 3)},
    }
    # an analog target predicts its accuracy over simulated chips (mean and spread)
    monte_carlo = getattr(backend, "monte_carlo", None)
    if callable(monte_carlo) and labels is not None:
        report["monte_carlo"] = monte_carlo(artifact, images, labels)
        mc = report["monte_carlo"]
        if mc.get("chips"):
            notes.append(f"predicted accuracy over {mc['chips']} simulated analog chips: {100 * mc['mean']:.2f} % "
                         f"+- {100 * mc['std']:.2f} (weights +-{100 * mc['weight_mismatch']:.0f} %, thresholds "
                         f"+-{mc['threshold_mismatch_lsb']:g} LSB, noise {mc['noise_lsb']:g} LSB)")
    if out is not None:
        report["exported"] = [str(p) for p in backend.export(artifact, out)]
        if report.get("monte_carlo", {}).get("chips"):
            plot = _plot_monte_carlo(report["monte_carlo"], out / "accuracy_vs_mismatch.png")
            if plot is not None:
                report["exported"].append(str(plot))
        plot = _plot_layers(report, result, out / "spikes_per_layer.png")
        if plot is not None:
            report["exported"].append(str(plot))
    text = _report_text(report)
    if report_path is not None:
        check_report_destination(report_path, REPORT_MARKER)  # still absent or ours
        atomic_write_text(report_path, text)
    _print_summary(json.loads(text))
    if comparison is None:
        return 0
    return 0 if _within_exactness(comparison, backend) else 1


def _within_exactness(comparison, backend) -> bool:
    """Spike-exact, or (a target that declares a tolerance) within it."""
    from fs_hw.conformance import as_exactness

    exactness = as_exactness(getattr(backend, "exactness", None))
    if exactness.bit_exact:
        return comparison.exact
    return (not comparison.missing_nodes
            and comparison.spike_mismatch_fraction <= exactness.spike_mismatch_fraction
            # float64 read-outs summed in another order may differ in the last bits
            and comparison.readout_max_abs_diff <= exactness.readout_atol + 1e-9 * max(1.0, comparison.readout_max_abs))


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
    ax1.bar(range(len(names)), [layers[n]["spikes_per_neuron"] or 0.0 for n in names], color="tab:green")
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
    return _save_figure(plt, fig, path)


def _save_figure(plt, fig, path: Path) -> Path:
    """Write a figure atomically (a temporary file renamed into place) and close it."""
    fig.tight_layout()
    try:
        with atomic_output(path) as fh:
            fig.savefig(fh, format="png", dpi=110)
    finally:
        plt.close(fig)
    return path


def _plot_monte_carlo(mc: dict, path: Path) -> Path | None:
    """Accuracy (mean and spread over simulated chips) against the mismatch scale."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    sweep = mc["sweep"]
    x = [s["scale"] for s in sweep]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.errorbar(x, [100 * s["mean"] for s in sweep], yerr=[100 * s["std"] for s in sweep], marker="o", capsize=3)
    ax.fill_between(x, [100 * s["min"] for s in sweep], [100 * s["max"] for s in sweep], alpha=0.2)
    ax.set_xlabel("mismatch (x the configured variation)")
    ax.set_ylabel("accuracy %")
    ax.set_title(f"{mc['chips']} simulated chips per point")
    return _save_figure(plt, fig, path)


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
        ("ANN accuracy (from the network's metadata)", report["ann_accuracy"]),
        ("agreement with reference", report["agreement"]),
        ("spike mismatches", "not compared (no spikes returned)" if report["spike_mismatches"] is None
         else f"{report['spike_mismatches']} of {report['spikes_compared']} compared"),
        ("spikes per neuron", report["spikes_per_neuron"]),
        *([("accuracy over simulated analog chips",
            f"{100 * report['monte_carlo']['mean']:.2f} % +- {100 * report['monte_carlo']['std']:.2f} "
            f"({report['monte_carlo']['chips']} chips)")] if report.get("monte_carlo", {}).get("chips") else []),
        ("time steps to a decision (latency)", report["time_steps"]),
    ]
    if "steps_per_sample" in report["info"]:
        rows.append(("time steps per sample (pipelined)", report["info"]["steps_per_sample"]))
    if "runner" in report["info"]:
        rows.append(("ran on", report["info"]["runner"]))
    if "chip_events" in report["info"]:  # an event-driven export: what the host sent and got back
        rows.append(("chip events sent / output events", f"{report['info']['chip_events']} / "
                     f"{report['info'].get('output_events', '-')}"))
    for key, value in report["resources"].items():
        if key != "layers":
            rows.append((f"resource: {key}", value))
    for name, layer in report["resources"].get("layers", {}).items():
        text = f"{layer['parts']} part(s) x <= {layer['neurons_per_part']} neurons, {layer['units']} units"
        if layer.get("entries_per_weight") is not None:
            text += f", {layer['entries_per_weight']} entries/weight"
        rows.append((f"layer {name}", text))
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
    print(f"config: {report.get('config') or 'none (the target defaults)'}")
    for note in report["notes"]:
        print(f"note: {note}")


def list_targets() -> int:
    found = available_targets()
    for name in sorted(set(found) | set(KNOWN_TARGETS)):
        if name not in found:
            print(f"{name:<14} not installed: {KNOWN_TARGETS.get(name, '')}")
            continue
        try:
            backend = get_backend(name)
        except FSHWError as exc:
            print(f"{name:<14} broken: {exc}")
            continue
        runners = ", ".join(r.name + ("" if r.available() else " (unavailable)") for r in backend.runners)
        print(f"{name:<14} installed; runners: {runners}; {backend.exactness.kind}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = CommandParser(
        prog="fs-deploy",
        description="Lower an FS network to a target, run it, and check it spike for spike against the "
        "reference.",
    )
    p.add_argument("network", nargs="?",
                   help="a .fsnet file or a zoo name (default: the bundled Fashion-MNIST example)")
    p.add_argument("--target", help="target name (see --list-targets)")
    p.add_argument("--config", help="TOML settings (default: deploy_configs/<target>.toml if present)")
    p.add_argument("--samples", type=int, help="number of input samples to run")
    p.add_argument("--inputs", help="npz with 'images' (N, *input_shape), optional 'labels' and 'scale'")
    p.add_argument("--out", help="export the target's program into this folder")
    p.add_argument("--report", help="write a JSON report here")
    p.add_argument("--runner", help="how to run the target (its runners: see --list-targets); "
                   "default: the first one available here")
    p.add_argument("--emulator", action="store_true", help="same as --runner emulator")
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
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help (0), or a usage error already printed as one line (2)
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    return run_command("fs-deploy", _main, args)


if __name__ == "__main__":
    sys.exit(main())
