"""``fs_hw.deploy``: lower an FS network to a target, run it, check it against the reference.

This is the workflow behind ``fs-deploy`` as a library function::

    import fs_hw
    report = fs_hw.deploy("mlp", "loihi", samples=5)   # a Network, a .fsnet path or a zoo name
    report.accuracy, report.spike_mismatches, report.passed
    report.plot("spikes.png")        # spikes per neuron per layer (and a raster when recorded)
    report.save("report.json")       # the JSON report fs-deploy --report writes (docs/deploy-report.md)

``fs-deploy`` parses its arguments, calls :func:`plan_deploy` and :meth:`DeployPlan.run`
(which is what :func:`deploy` does), prints :meth:`DeployReport.summary_rows` and writes
the files through :meth:`DeployReport.export` and :meth:`DeployReport.save`.

Every check of the caller's input (network, config, inputs, samples, runner) happens in
:func:`plan_deploy`, before anything runs or any file is locked; errors are
:class:`~fs_hw.errors.FSHWError` naming the argument.

The module is callable (``fs_hw.deploy(...)`` is :func:`deploy`): importing the submodule
makes ``fs_hw.deploy`` this module, so the module itself must do what the function does.
"""

from __future__ import annotations

import contextlib
import html
import json
import logging
import math
import os
import stat
import time
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from fs_hw._callable import make_callable
from fs_hw.backend import FLOAT64, RunResult, choose_runner, get_backend, parse_target_config
from fs_hw.conformance import compare_runs
from fs_hw.errors import FormatError, ValidationError
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

__all__ = ["CLI_NAMES", "REPORT_MARKER", "REPORT_VERSION", "DeployPlan", "DeployReport", "deploy",
           "plan_deploy"]

#: The key every report holds (``true``): a file without it is not ours and is never overwritten.
REPORT_MARKER = "fs_deploy_report"
#: The JSON report's schema version (docs/deploy-report.md). Raise it when a field changes
#: meaning or goes away; adding a field keeps it.
REPORT_VERSION = 1
TOP_LEVEL_KEYS = {"samples": int, "target": dict}
#: A deploy config is a few lines of TOML; anything bigger is not one (and must not fill memory).
CONFIG_READ_LIMIT = 1 << 20
#: Samples per call of the target's run when the config sets no [target] batch_size.
DEFAULT_BATCH_SIZE = 100
#: Samples per call of the reference runs (memory bound, not a setting of the target).
REFERENCE_BATCH_SIZE = 200
#: the report's ``config`` when deploy() was given the settings as a mapping, not a file
MAPPING_CONFIG = "(mapping given to deploy())"
#: the deploy configs shipped with fs-hw (a source checkout); deploy() falls back to them
SHIPPED_CONFIGS = Path(__file__).resolve().parents[1] / "deploy_configs"


@dataclass(frozen=True)
class ArgNames:
    """How error messages name the caller's arguments: ``fs-deploy`` says ``--samples``,
    the Python API ``samples``."""

    who: str = "deploy()"
    samples: str = "samples"
    inputs: str = "inputs"
    report: str = "report"
    out: str = "out"
    leave_samples_out: str = "leave samples=None"
    pass_inputs: str = "pass inputs= (an array, an npz file or a data-set name)"
    force: str = "pass force=True"


#: the names fs-deploy's messages use
CLI_NAMES = ArgNames(who="fs-deploy", samples="--samples", inputs="--inputs", report="--report",
                     out="--out", leave_samples_out="leave --samples out",
                     pass_inputs="pass --inputs FILE.npz", force="pass --force")
API_NAMES = ArgNames()


# --- resolving the network, the config and the inputs ---------------------------------------

def _example_path(name: str) -> Path:
    return Path(str(resources.files("fs_hw").joinpath("examples", name)))


def resolve_network(arg: str | os.PathLike | None) -> tuple[Path, bool]:
    """A .fsnet path, a zoo name (its converted network), or (None) the bundled example.
    Returns the path and whether it is the bundled example (which has bundled inputs)."""
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

    if str(arg) in ZOO:
        zoo_path = Path(str(resources.files("fs_hw").joinpath("zoo", "networks", f"{arg}.fsnet")))
        if not zoo_path.is_file():
            raise FormatError(
                f"zoo network {str(arg)!r} has no converted file {zoo_path}; "
                f"make it with: fs-convert {arg} --out {arg}.fsnet"
            )
        return zoo_path, False
    raise FormatError(f"{arg}: no such network file, and not a zoo name (zoo: {', '.join(ZOO)})")


def load_inputs(path: str | os.PathLike | None, network: Network, bundled: bool = False,
                names: ArgNames = API_NAMES) -> tuple[np.ndarray, np.ndarray | None, str]:
    """Inputs (and labels when known): an npz file (no pickles), the bundled set, or the
    test split of the data set the network's metadata names."""
    if path is None:
        dataset = network.metadata.get("dataset")
        if bundled:
            path = _example_path("fashion_test.npz")
        elif dataset is not None:
            from fs_hw.data import DATASETS

            if dataset not in DATASETS:
                raise ValidationError(names.who, names.inputs,
                                      f"network data set {dataset!r} is not one fs-hw loads; {names.pass_inputs}")
            return _dataset_inputs(dataset)
        else:
            raise ValidationError(names.who, names.inputs, f"this network has no bundled inputs; {names.pass_inputs}")
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise FormatError(f"{path}: no such inputs file") from None
    if stat.S_ISDIR(mode):
        raise FormatError(f"{path}: is a folder; {names.inputs} needs an npz file (arrays 'images', "
                          "optional 'labels')")
    if not stat.S_ISREG(mode):
        raise FormatError(f"{path}: is not a regular file (a device or a pipe?); {names.inputs} needs an npz file")
    # The npz reader that bounds memory and refuses pickles, odd shapes and encrypted or
    # oversized members; it applies 'scale' and raises FormatError naming the file.
    from fs_hw.safe_archive import load_inputs_file

    images, labels = load_inputs_file(path)
    if labels is not None and len(labels) != len(images):
        raise FormatError(f"{path}: {len(images)} images but {len(labels)} labels")
    return images, labels, str(path)


def _dataset_inputs(dataset: str) -> tuple[np.ndarray, np.ndarray, str]:
    from fs_hw.data import load_dataset

    images, labels = load_dataset(dataset, "test")
    return images.astype(np.float64), labels, f"{dataset} test split"


def _ann_accuracy(metadata: Mapping) -> float | None:
    """The ANN's test accuracy a network file records: the zoo's whole-test-set figure, or
    what ``fs-convert --evaluate`` measured (its ``evaluation`` block)."""
    value = metadata.get("ann_test_accuracy")
    if value is None and isinstance(metadata.get("evaluation"), dict):
        value = metadata["evaluation"].get("ann_accuracy")
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def default_config_path(target: str) -> Path | None:
    """``deploy_configs/TARGET.toml`` of the current folder, else the one shipped next to
    the package, else none (the target's defaults)."""
    for folder in (Path.cwd() / "deploy_configs", SHIPPED_CONFIGS):
        candidate = folder / f"{target}.toml"
        if candidate.is_file():
            return candidate
    return None


def load_config(path: str | os.PathLike | None, target: str) -> dict[str, Any]:
    """The deploy config at ``path`` (TOML), or the default one for ``target`` (see
    :func:`default_config_path`), checked; ``{}`` when there is none. Its path is under
    ``"_path"``."""
    if path is None:
        path = default_config_path(target)
        if path is None:
            return {}
    path = Path(path)
    # A regular file, read with a bound: /dev/zero or a FIFO given as --config is refused by type.
    raw = read_regular_file(path, "config file (TOML)", CONFIG_READ_LIMIT)
    try:
        config = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise FormatError(f"{path}: not valid TOML ({exc})") from None
    except RecursionError:
        raise FormatError(f"{path}: not valid TOML (nested too deeply)") from None
    _check_config(config, f"config {path}")
    config["_path"] = str(path)
    return config


def _check_config(config: Mapping[str, Any], where: str) -> None:
    for key, value in config.items():
        if key not in TOP_LEVEL_KEYS:
            raise ValidationError(where, key, f"unknown key; known: {sorted(TOP_LEVEL_KEYS)}")
        if not isinstance(value, TOP_LEVEL_KEYS[key]) or isinstance(value, bool):
            raise ValidationError(where, key, f"must be {TOP_LEVEL_KEYS[key].__name__}, got {value!r}")
    if "samples" in config and config["samples"] < 1:
        raise ValidationError(where, "samples", f"must be >= 1, got {config['samples']} "
                              "(leave it out to run every input)")


def _target_batch_size(target_config: Any) -> int:
    """The [target] batch_size (the target is fed chunks of this size); a target whose
    settings have none gets the default. Its range is checked by the config parser."""
    value = getattr(target_config, "batch_size", DEFAULT_BATCH_SIZE)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValidationError("target config", "batch_size", f"must be a positive integer, got {value!r}")
    return value


# --- the plan: every check before anything runs -------------------------------------------

@dataclass
class DeployPlan:
    """What :func:`plan_deploy` resolved and checked; :meth:`run` runs it."""

    backend: Any
    network: Network
    network_name: str
    target_config: Any
    runner: str
    batch_size: int
    images: np.ndarray
    labels: np.ndarray | None
    inputs_name: str
    config_path: str | None

    def run(self, progress: bool = True) -> DeployReport:
        """Quantize, lower, run on the target in chunks, run the reference on the target's
        profile and in float64, compare, and return the report."""
        return _execute(self, progress)


def plan_deploy(network: Network | str | os.PathLike | None, target: Any, *,
                config: str | os.PathLike | Mapping[str, Any] | None = None,
                inputs: Any = None, labels: Any = None, samples: int | None = None,
                runner: str | None = None, names: ArgNames = API_NAMES) -> DeployPlan:
    """Resolve and check what :func:`deploy` takes (see there); runs nothing. ``names``
    says how messages name the arguments (``fs-deploy`` passes :data:`CLI_NAMES`)."""
    # samples=0 is a mistake, not "all": None means every input.
    if samples is not None and (isinstance(samples, bool) or not isinstance(samples, (int, np.integer))
                                or samples < 1):
        raise ValidationError(names.who, names.samples, f"must be >= 1, got {samples} "
                              f"({names.leave_samples_out} to run every input)")
    bundled = False
    if isinstance(network, Network):
        net = network
        name = net.metadata.get("name") or net.metadata.get("model")
        network_name = f"(in-memory network{f' {name}' if name else ''})"
    else:
        network_path, bundled = resolve_network(network)
        net = load_network(network_path)
        network_name = str(network_path)
    backend = get_backend(target) if isinstance(target, str) else target
    config = _config_from(config, backend.name)
    where = f"config {config['_path']}" if "_path" in config else f"{backend.name} config"
    try:
        target_config = parse_target_config(backend, config.get("target", {}))
    except ValidationError as exc:
        raise ValidationError(where, f"[target] {exc.field}", exc.problem) from None
    runner_name = choose_runner(backend.runners, runner, backend.name).name
    batch_size = _target_batch_size(target_config)
    images, known_labels, inputs_name = _inputs_from(inputs, labels, net, bundled, names)
    # the samples argument is a request that must be met; the config's samples is an upper bound
    if samples is not None:
        count = int(samples)
    else:
        count = min(config.get("samples", len(images)), len(images))
    if count < 1:
        raise ValidationError(names.who, names.inputs, f"{inputs_name} holds no samples")
    if count > len(images):
        raise ValidationError(names.who, names.samples, f"{count} requested, the inputs hold {len(images)}")
    node = net.input
    if tuple(images.shape[1:]) != tuple(node.shape):  # refused now, not minutes into a run
        raise ValidationError(names.who, names.inputs, f"{inputs_name}: samples of shape {tuple(images.shape[1:])}; "
                              f"the network's input {node.name!r} takes {tuple(node.shape)}")
    return DeployPlan(backend=backend, network=net, network_name=network_name, target_config=target_config,
                      runner=runner_name, batch_size=batch_size, images=images[:count],
                      labels=None if known_labels is None else known_labels[:count],
                      inputs_name=inputs_name, config_path=config.get("_path"))


def _config_from(config: Any, target: str) -> dict[str, Any]:
    """A path (TOML), a mapping (the TOML's contents) or None (the default lookup)."""
    if isinstance(config, Mapping):
        # "_path" is what load_config adds: a mapping it returned keeps saying where it came from
        clean = {k: v for k, v in config.items() if k != "_path"}
        _check_config(clean, f"{target} config")
        source = config.get("_path")
        if source is not None or clean:
            clean["_path"] = str(source) if source is not None else MAPPING_CONFIG
        return clean
    if config is None or isinstance(config, (str, os.PathLike)):
        return load_config(config, target)
    raise ValidationError("deploy()", "config", f"must be a path, a mapping or None, got {type(config).__name__}")


def _inputs_from(inputs: Any, labels: Any, network: Network, bundled: bool,
                 names: ArgNames) -> tuple[np.ndarray, np.ndarray | None, str]:
    """Array inputs (with optional labels), a data-set name (its test split), an npz path,
    or None (the bundled set or the network's data set)."""
    if inputs is None or isinstance(inputs, (str, os.PathLike)):
        if labels is not None:
            raise ValidationError(names.who, "labels", "given only with array inputs (a file or data set "
                                  "brings its own labels)")
        if isinstance(inputs, str) and not Path(inputs).exists():
            from fs_hw.data import DATASETS

            if inputs in DATASETS:
                return _dataset_inputs(inputs)
        return load_inputs(inputs, network, bundled, names)
    try:
        images = np.asarray(inputs, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValidationError(names.who, names.inputs, f"not a numeric array ({exc})") from None
    if images.ndim < 1:
        raise ValidationError(names.who, names.inputs, "must be an array of samples (N, *input_shape)")
    known = None
    if labels is not None:
        known = np.asarray(labels)
        if known.ndim != 1 or len(known) != len(images) or not np.issubdtype(known.dtype, np.integer):
            raise ValidationError(names.who, "labels", f"must be {len(images)} integer class indices "
                                  f"(one per input), got shape {known.shape} of {known.dtype}")
    return images, known, f"array of {len(images)} samples"


# --- running ---------------------------------------------------------------------------

#: the logger a backend writes what it is doing to during long steps (a lowering that
#: partitions layer after layer for minutes): ``logging.getLogger(PROGRESS_LOGGER + ".loihi")``
PROGRESS_LOGGER = "fs_hw.progress"


def _progress_wanted() -> bool:
    """Progress lines go to a terminal, or anywhere with ``FS_HW_PROGRESS=1`` (a log file of
    a long run); otherwise stderr keeps its one-line-per-error contract for scripts."""
    import sys

    return os.environ.get("FS_HW_PROGRESS") == "1" or sys.stderr.isatty()


@contextlib.contextmanager
def _progress_lines(enabled: bool) -> Iterator[None]:
    """Backends' progress messages on stderr, stamped with the seconds since the start."""
    if not enabled:
        yield
        return
    logger = logging.getLogger(PROGRESS_LOGGER)
    handler = logging.StreamHandler()  # stderr
    start = time.perf_counter()

    class _Elapsed(logging.Formatter):
        def format(self, record: logging.LogRecord) -> str:
            return f"[{time.perf_counter() - start:6.0f} s] {record.getMessage()}"

    handler.setFormatter(_Elapsed())
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _progress_bar(label: str):
    try:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
    except ImportError:
        return None
    return Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=Console(stderr=True), transient=True)


def _run_chunked(run: Callable[[np.ndarray], RunResult], inputs: np.ndarray, chunk: int, label: str,
                 progress: bool) -> RunResult:
    parts = []
    bar = _progress_bar(label) if progress else None
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


def _input_units_note(network: Network, images: np.ndarray) -> str:
    """Samples far outside the input code's range while the network records a folded
    normalisation are most likely normalised already: the network takes raw samples."""
    node = network.input
    code = network.codes.get(node.code) if node.code else None
    if node.normalization is None or code is None or code.provenance is None or not images.size:
        return ""
    lo, hi = code.provenance.x_range
    a, b = float(images.min()), float(images.max())
    slack = 0.5 * (hi - lo)
    if lo - slack <= a and b <= hi + slack:
        return ""
    mean, std = node.normalization
    return (f"inputs span [{a:.3g}, {b:.3g}], far outside the input code's range [{lo:.3g}, {hi:.3g}]: this "
            f"network takes RAW samples (its normalisation (x - {mean.tolist()}) / {std.tolist()} is folded into "
            "its first layers); feed unnormalised data")


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


def _execute(plan: DeployPlan, progress: bool) -> DeployReport:
    backend, network, images, labels, runner = plan.backend, plan.network, plan.images, plan.labels, plan.runner
    samples = len(images)
    t0 = time.perf_counter()
    with _progress_lines(progress and _progress_wanted()):
        said = logging.getLogger(PROGRESS_LOGGER + ".deploy")
        said.info("quantizing for %s", backend.name)
        quantized = backend.quantize(network, plan.target_config)
        t_quantize = time.perf_counter() - t0
        t0 = time.perf_counter()
        said.info("lowering for %s", backend.name)
        try:
            artifact = backend.lower(quantized, plan.target_config)
        except MemoryError as exc:  # not the samples' fault: say which step needed the memory
            raise MemoryError(f"lowering {network.metadata.get('name', 'the network')!r} for {backend.name} "
                              f"needs more memory than this machine has (the samples and batch size "
                              f"do not matter for lowering)") from exc
        t_lower = time.perf_counter() - t0
    t0 = time.perf_counter()
    result = _run_chunked(lambda x: backend.run(artifact, x, record_spikes=True, runner=runner),
                          images, plan.batch_size, f"{backend.name} ({runner})", progress)
    t_run = time.perf_counter() - t0
    # What the target should compute: the reference on the artifact's network and
    # profile. For the reference target itself this is the fast mode checking the
    # spike-level mode.
    expected = _run_chunked(
        lambda x: run_reference(artifact.network, x, "fast", artifact.profile, record_spikes=True),
        images, REFERENCE_BATCH_SIZE, "reference (target profile)", progress,
    )
    # a runner that maps without executing (sPyNNaker's virtual board) returns no spikes:
    # nothing to compare, the report holds the mapping and the predicted accuracy
    mapped_only = result.info.get("spikes_returned") is False
    comparison = None if mapped_only else compare_runs(expected, result, input_name=network.input.name)
    if artifact.profile == FLOAT64 and artifact.network is network:
        float_fs = expected
    else:
        float_fs = run_reference(network, images, "fast", FLOAT64, batch_size=REFERENCE_BATCH_SIZE)

    def accuracy(r):
        return None if labels is None else float(np.mean(r.predictions == labels))

    notes = list(artifact.notes)
    units = _input_units_note(network, images)
    if units:
        notes.insert(0, units)
    if mapped_only:
        notes.insert(0, f"runner {runner!r} mapped the network but returned no spikes "
                        f"({result.info.get('why_no_spikes', 'no board')}): nothing compared; the accuracy "
                        "shown for the target is the prediction")
    stats = expected if mapped_only else result  # the prediction stands in for spike statistics
    report = DeployReport(
        target=backend.name,
        network=plan.network_name,
        inputs=plan.inputs_name,
        samples=int(samples),
        accuracy=None if mapped_only else accuracy(result),
        reference_accuracy=accuracy(float_fs),
        predicted_accuracy=accuracy(expected),
        ann_accuracy=_ann_accuracy(network.metadata),
        agreement=None if comparison is None else comparison.agreement,
        spike_mismatches=None if comparison is None else comparison.spike_mismatches,
        spikes_compared=None if comparison is None else comparison.spikes_compared,
        input_spikes_compared=None if comparison is None else comparison.input_spikes_compared,
        readout_max_abs_diff=None if comparison is None else comparison.readout_max_abs_diff,
        first_mismatch=None if comparison is None else (comparison.first_mismatch or None),
        spikes_per_neuron=stats.spikes_per_neuron(input_name=network.input.name),
        spikes_per_neuron_with_input=stats.spikes_per_neuron(include_input=True),
        spikes_per_sample=float(sum(c.sum() for c in stats.spike_counts.values()) / samples),
        layers=_layer_stats(stats, notes),
        time_steps=int(stats.time_steps),
        K=network.K,
        profile=artifact.profile.name,
        runner=runner,
        config=plan.config_path,
        exactness=backend.exactness.to_dict(),
        resources=artifact.resources.to_dict(),
        notes=notes,
        info=dict(result.info),
        seconds={"quantize": round(t_quantize, 3), "lower": round(t_lower, 3), "run": round(t_run, 3)},
        target_run=result, predicted_run=expected, reference_run=float_fs, comparison=comparison,
        artifact=artifact, backend=backend,
    )
    # an analog target predicts its accuracy over simulated chips (mean and spread)
    monte_carlo = getattr(backend, "monte_carlo", None)
    if callable(monte_carlo) and labels is not None:
        mc = report.monte_carlo = monte_carlo(artifact, images, labels)
        if mc.get("chips"):
            notes.append(f"predicted accuracy over {mc['chips']} simulated analog chips: {100 * mc['mean']:.2f} % "
                         f"+- {100 * mc['std']:.2f} (weights +-{100 * mc['weight_mismatch']:.0f} %, thresholds "
                         f"+-{mc['threshold_mismatch_lsb']:g} LSB, noise {mc['noise_lsb']:g} LSB)")
    return report


# --- the report ---------------------------------------------------------------------------

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


#: fields written only when set (a target with simulated chips; an export)
_OPTIONAL_KEYS = ("monte_carlo", "exported")


@dataclass(eq=True)
class DeployReport:
    """The result of :func:`deploy`: every field of the JSON report (docs/deploy-report.md,
    same names, same order) and, not in the JSON, the runs behind them.

    ``accuracy`` is the target's (None when its runner returned no spikes, or without
    labels), ``reference_accuracy`` the float64 FS reference's, ``predicted_accuracy`` the
    reference's with the target's arithmetic. ``spike_mismatches`` and ``first_mismatch``
    compare the target's spikes with that prediction (None when nothing was compared).
    ``seconds`` holds the timings (quantize, lower, run). Equality compares the JSON fields.
    """

    target: str
    network: str
    inputs: str
    samples: int
    accuracy: float | None
    reference_accuracy: float | None
    predicted_accuracy: float | None
    ann_accuracy: float | None
    agreement: float | None
    spike_mismatches: int | None
    spikes_compared: int | None
    input_spikes_compared: int | None
    readout_max_abs_diff: float | None
    first_mismatch: str | None
    spikes_per_neuron: float
    spikes_per_neuron_with_input: float
    spikes_per_sample: float
    layers: dict[str, dict[str, Any]]
    time_steps: int
    K: int
    profile: str
    runner: str
    config: str | None
    exactness: dict[str, Any]
    resources: dict[str, Any]
    notes: list[str]
    info: dict[str, Any]
    seconds: dict[str, float]
    monte_carlo: dict[str, Any] | None = None
    exported: list[str] | None = None
    report_version: int = REPORT_VERSION
    # not in the JSON: what the numbers were computed from
    target_run: RunResult | None = field(default=None, repr=False, compare=False)
    predicted_run: RunResult | None = field(default=None, repr=False, compare=False)
    reference_run: RunResult | None = field(default=None, repr=False, compare=False)
    comparison: Any = field(default=None, repr=False, compare=False)
    artifact: Any = field(default=None, repr=False, compare=False)
    backend: Any = field(default=None, repr=False, compare=False)

    # -- what the numbers say ------------------------------------------------------------

    @property
    def mapped_only(self) -> bool:
        """The runner mapped the network but returned no spikes (nothing was compared)."""
        return self.target_run is not None and self.target_run.info.get("spikes_returned") is False

    @property
    def spikes_run(self) -> RunResult | None:
        """The run the spike statistics come from: the target's, or the prediction where
        the target returned no spikes."""
        return self.predicted_run if self.mapped_only else self.target_run

    @property
    def passed(self) -> bool | None:
        """Whether the target agrees with the reference within its declared exactness
        (spike-exact, or a stated tolerance); None when nothing was compared. fs-deploy
        exits 1 when this is False."""
        if self.comparison is None:
            return None
        from fs_hw.conformance import as_exactness

        c = self.comparison
        exactness = as_exactness(getattr(self.backend, "exactness", None))
        if exactness.bit_exact:
            return bool(c.exact)
        return bool(not c.missing_nodes
                    and c.spike_mismatch_fraction <= exactness.spike_mismatch_fraction
                    # float64 read-outs summed in another order may differ in the last bits
                    and c.readout_max_abs_diff <= exactness.readout_atol + 1e-9 * max(1.0, c.readout_max_abs))

    # -- JSON ----------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The JSON report as a dict of JSON values (what :meth:`to_json` writes): numpy
        values as numbers, NaN and infinity as null with a note, non-JSON ``info`` left out."""
        notes: list[str] = []
        raw: dict[str, Any] = {REPORT_MARKER: True, "report_version": self.report_version}
        for f in fields(self):
            if f.compare and f.name != "report_version":
                value = getattr(self, f.name)
                if f.name in _OPTIONAL_KEYS and value is None:
                    continue
                raw[f.name] = value
        info = {}
        for key, value in raw.pop("info").items():
            with contextlib.suppress(TypeError):  # backend facts that are not JSON are left out
                info[key] = _json_safe(value, f"info.{key}", notes)
        clean = _json_safe(raw, "report", notes)
        # keep the documented order: info after notes, before seconds
        ordered: dict[str, Any] = {}
        for key, value in clean.items():
            if key == "seconds":
                ordered["info"] = info
            ordered[key] = value
        ordered["notes"] = [*ordered["notes"], *notes]
        return ordered

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"

    def save(self, path: str | os.PathLike) -> Path:
        """Write the JSON report to ``path`` atomically (a temporary renamed into place).
        ``path`` must be absent or an earlier report: any other file, a folder, a device or
        a symlink is refused (FormatError), never overwritten."""
        path = Path(path)
        with _claimed(None, path, force=False, names=API_NAMES):
            check_report_destination(path, REPORT_MARKER)  # still absent or ours
            atomic_write_text(path, self.to_json())
        return path

    def export(self, folder: str | os.PathLike, force: bool = False) -> list[Path]:
        """Write the target's program (``backend.export``) and the figures into ``folder``
        (absent or empty, or anything with ``force``); their paths are added to
        :attr:`exported`. Needs the report :func:`deploy` returned (it holds the artifact)."""
        if self.artifact is None or self.backend is None:
            raise ValidationError("DeployReport", "export", "needs the artifact; this report was not made by deploy()")
        folder = Path(folder)
        with _claimed(folder, None, force=force, names=API_NAMES):
            written = [Path(p) for p in self.backend.export(self.artifact, folder)]
            if (self.monte_carlo or {}).get("chips"):
                plot = _plot_monte_carlo(self.monte_carlo, folder / "accuracy_vs_mismatch.png")
                if plot is not None:
                    written.append(plot)
            plot = self.plot(folder / "spikes_per_layer.png", raster=False)
            if plot is not None:
                written.append(folder / "spikes_per_layer.png")
        self.exported = [*(self.exported or []), *map(str, written)]
        return written

    # -- for people ----------------------------------------------------------------------

    def summary_rows(self) -> list[tuple[str, Any]]:
        """(quantity, value) rows: what fs-deploy prints as its table."""
        return summary_rows(self.to_dict())

    def __repr__(self) -> str:
        lines = [f"DeployReport({self.target}, runner {self.runner}, {self.samples} samples, "
                 f"passed={self.passed})"]
        rows = [(k, v) for k, v in self.summary_rows() if not k.startswith(("resource: ", "layer "))]
        width = max(len(k) for k, _ in rows)
        lines += [f"  {k:<{width}}  {format_value(v)}" for k, v in rows]
        lines.append(f"  ({len(self.notes)} notes, {len(self.resources)} resource entries; .notes, .resources)")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        esc = html.escape
        rows = "".join(f"<tr><td>{esc(k)}</td><td style='text-align:right'>{esc(format_value(v))}</td></tr>"
                       for k, v in self.summary_rows())
        notes = "".join(f"<li>{esc(n)}</li>" for n in self.notes)
        return (f"<b>DeployReport</b>: {esc(self.target)} ({esc(self.runner)}), passed={self.passed}"
                f"<table><tr><th>quantity</th><th>value</th></tr>{rows}</table>"
                f"<details><summary>{len(self.notes)} notes</summary><ul>{notes}</ul></details>")

    def plot(self, path: str | os.PathLike | None = None, *, raster: bool | None = None, sample: int = 0):
        """A figure: spikes per neuron per layer; where spike trains were recorded, when
        neurons fire (per step within a stage) and, with ``raster`` (default: when
        recorded), the spike raster of input ``sample`` over global time steps. Saved
        atomically to ``path`` when given. Returns the matplotlib Figure (a notebook shows
        it), or None without matplotlib."""
        try:
            # a bare Figure, not pyplot: no GUI backend, no window, nothing to close
            from matplotlib.figure import Figure
        except ImportError:
            return None
        run = self.spikes_run
        trains = run.spike_trains if run is not None else None
        raster = bool(trains) if raster is None else (raster and bool(trains))
        if raster and not 0 <= sample < self.samples:
            raise ValidationError("DeployReport.plot", "sample", f"must be in [0, {self.samples}), got {sample}")
        panels = 3 if raster else 2
        fig = Figure(figsize=(5 * panels, 3.5))
        axes = fig.subplots(1, panels)
        ax1, ax2 = axes[0], axes[1]
        names = list(self.layers)
        ax1.bar(range(len(names)), [self.layers[n]["spikes_per_neuron"] or 0.0 for n in names], color="tab:green")
        ax1.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
        ax1.set_ylabel("spikes per neuron")
        ax1.set_title(f"{self.target}: {self.samples} samples, K={self.K}")
        if trains:
            per_step = np.zeros(self.K)
            for train in trains.values():
                per_step += train.reshape(train.shape[0], train.shape[1], -1).sum(axis=(0, 2))
            ax2.bar(range(self.K), per_step / self.samples, color="tab:blue")
            ax2.set_xlabel("step t within a stage")
            ax2.set_ylabel("spikes per sample")
            ax2.set_title("when neurons fire (all layers)")
        if raster:
            self._raster(axes[2], trains, sample)
        if path is not None:
            _save_figure(fig, Path(path))
        return fig

    def _raster(self, ax, trains: dict[str, np.ndarray], sample: int) -> None:
        network = self.artifact.network if self.artifact is not None else None
        stages = network.stages if network is not None else {}
        offset, ticks = 0, []
        for i, (name, train) in enumerate(trains.items()):
            one = train[sample].reshape(train.shape[1], -1)  # (K, neurons)
            t, n = np.nonzero(one)
            # global time: a layer's step t is at stage*K + t (its stage's window)
            ax.scatter(t + stages.get(name, 0) * self.K, n + offset, s=1, marker="|", color=f"C{i % 10}")
            ticks.append((offset + one.shape[1] / 2, name))
            offset += one.shape[1]
        ax.set_yticks([y for y, _ in ticks], [n for _, n in ticks], fontsize=7)
        ax.xaxis.get_major_locator().set_params(integer=True)  # time steps are whole
        ax.set_xlabel("global time step")
        ax.set_ylabel("neuron (by layer)")
        ax.set_title(f"spike raster, sample {sample}")


def _save_figure(fig, path: Path) -> Path:
    """Write a figure atomically (a temporary file renamed into place)."""
    fig.tight_layout()
    with atomic_output(path) as fh:
        fig.savefig(fh, format="png", dpi=110)
    return path


def _plot_monte_carlo(mc: dict, path: Path) -> Path | None:
    """Accuracy (mean and spread over simulated chips) against the mismatch scale."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    sweep = mc["sweep"]
    x = [s["scale"] for s in sweep]
    fig = Figure(figsize=(5, 3.5))
    ax = fig.subplots()
    ax.errorbar(x, [100 * s["mean"] for s in sweep], yerr=[100 * s["std"] for s in sweep], marker="o", capsize=3)
    ax.fill_between(x, [100 * s["min"] for s in sweep], [100 * s["max"] for s in sweep], alpha=0.2)
    ax.set_xlabel("mismatch (x the configured variation)")
    ax.set_ylabel("accuracy %")
    ax.set_title(f"{mc['chips']} simulated chips per point")
    return _save_figure(fig, path)


def format_value(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def summary_rows(report: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """The (quantity, value) rows of a JSON report (as :meth:`DeployReport.to_dict` makes)."""
    rows: list[tuple[str, Any]] = [
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
            f"({report['monte_carlo']['chips']} chips)")] if (report.get("monte_carlo") or {}).get("chips") else []),
        ("time steps to a decision (latency)", report["time_steps"]),
    ]
    info = report["info"]
    if "steps_per_sample" in info:
        rows.append(("time steps per sample (pipelined)", info["steps_per_sample"]))
    if "runner" in info:
        rows.append(("ran on", info["runner"]))
    if "chip_events" in info:  # an event-driven export: what the host sent and got back
        rows.append(("chip events sent / output events", f"{info['chip_events']} / "
                     f"{info.get('output_events', '-')}"))
    for key, value in report["resources"].items():
        if key != "layers":
            rows.append((f"resource: {key}", value))
    for name, layer in report["resources"].get("layers", {}).items():
        text = f"{layer['parts']} part(s) x <= {layer['neurons_per_part']} neurons, {layer['units']} units"
        if layer.get("entries_per_weight") is not None:
            text += f", {layer['entries_per_weight']} entries/weight"
        rows.append((f"layer {name}", text))
    return rows


# --- output destinations ----------------------------------------------------------------

#: destinations this process holds a lock on (fs-deploy locks before the run; a save or
#: export inside that run must not try to take the same lock again)
_HELD: set[Path] = set()


def check_destinations(out: str | os.PathLike | None, report: str | os.PathLike | None, force: bool,
                       names: ArgNames = API_NAMES) -> tuple[Path | None, Path | None]:
    """Refuse a bad export folder or report path before a run (not after minutes of it):
    the folder must be absent or empty (anything with ``force``), the report absent or an
    earlier report, and the two different."""
    out = Path(out) if out is not None else None
    report = Path(report) if report is not None else None
    if out is not None and out.exists():
        if not out.is_dir():
            raise FormatError(f"{out}: exists and is not a folder; {names.out} needs a folder (absent or empty)")
        if any(out.iterdir()) and not force:
            raise FormatError(f"{out}: exists and is not empty; {names.force} to write into it")
    if report is not None:
        check_report_destination(report, REPORT_MARKER)
        if out is not None and _real(report) == _real(out):
            raise ValidationError(names.who, names.report, f"{report} is also the {names.out} folder; give a file path")
    return out, report


def _real(path: Path) -> Path:
    """``path`` with its folder's symlinks resolved (a lock must be one per real place)."""
    return Path(os.path.realpath(path.parent)) / path.name


@contextlib.contextmanager
def locked_destinations(out: str | os.PathLike | None, report: str | os.PathLike | None, force: bool,
                        names: ArgNames = API_NAMES) -> Iterator[tuple[Path | None, Path | None]]:
    """Check the destinations, lock them (one writer at a time), check again under the
    locks (a run that finished meanwhile may have filled the folder), and yield them."""
    out, report = check_destinations(out, report, force, names)
    with contextlib.ExitStack() as stack:
        # The export folder is written into, so it is locked where it really is; the report
        # is never a symlink (check_report_destination refuses one).
        for place in ([Path(os.path.realpath(out))] if out is not None else []) + (
                [_real(report)] if report is not None else []):
            if place in _HELD:
                continue
            stack.enter_context(DestinationLock(place))
            _HELD.add(place)
            stack.callback(_HELD.discard, place)
        yield check_destinations(out, report, force, names)


def _claimed(out: Path | None, report: Path | None, force: bool, names: ArgNames):
    return locked_destinations(out, report, force, names)


# --- the function -------------------------------------------------------------------------

def deploy(network: Network | str | os.PathLike | None, target: Any, *,
           config: str | os.PathLike | Mapping[str, Any] | None = None, inputs: Any = None,
           labels: Any = None, samples: int | None = None, runner: str | None = None,
           progress: bool = True) -> DeployReport:
    """Lower ``network`` to ``target``, run it there, and check it against the reference.

    ``network``: a :class:`~fs_hw.ir.network.Network`, a ``.fsnet`` path, a zoo name
    (``"mlp"``), or None for the bundled Fashion-MNIST example. ``target``: a target name
    (``"reference"``, ``"loihi"``, ...; see ``fs-deploy --list-targets``) or a backend
    object. ``config``: a TOML path, its contents as a mapping (``{"target": {...},
    "samples": N}``), or None: ``deploy_configs/TARGET.toml`` of the current folder, else
    the one shipped with fs-hw, else the target's defaults (the report's ``config`` says
    which). ``inputs``: an array ``(N, *input_shape)`` (with optional ``labels``), an npz
    file, a data-set name (its test split), or None: the network's data set (or the
    bundled inputs). ``samples``: how many inputs to run (all by default; the config's
    ``samples`` caps that). ``runner``: one of the target's runners (default: the first
    available here). ``progress``: progress bars on stderr.

    Returns a :class:`DeployReport`; :meth:`DeployReport.save` writes the JSON report that
    ``fs-deploy --report`` writes. Raises :class:`~fs_hw.errors.FSHWError` on bad input,
    before anything runs.
    """
    plan = plan_deploy(network, target, config=config, inputs=inputs, labels=labels, samples=samples,
                       runner=runner)
    return plan.run(progress=progress)


# fs_hw.deploy(...) calls deploy() (the package's attribute is this module once imported)
make_callable(__name__, deploy)
