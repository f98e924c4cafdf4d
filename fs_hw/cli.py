"""`fs-deploy`: lower an FS network to a target, run it, check it against the reference.

A shell over :func:`fs_hw.deploy.deploy`: it parses the arguments, calls
:func:`fs_hw.deploy.plan_deploy` (every check of the input) and the plan's ``run``, prints
the report's table and writes the files. The workflow itself lives in :mod:`fs_hw.deploy`.

Exit status: 0 when the target's spikes equal the reference's, 1 when they differ,
2 on bad input (the error is printed as one line, without a traceback), 3 on an internal
error (a bug: one line asking to report it), 130 on Ctrl-C.

Output files (``--report``, the ``--out`` folder's files) are written atomically through
:mod:`fs_hw.outputs`: their destinations are checked and locked before the run starts.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from fs_hw import deploy as api
from fs_hw.backend import KNOWN_TARGETS, available_targets, get_backend
from fs_hw.errors import CommandParser, FSHWError, ValidationError, run_command


def deploy(args: argparse.Namespace) -> int:
    # refuse a bad --out or --report before the run (not after minutes of it)
    api.check_destinations(args.out, args.report, args.force, api.CLI_NAMES)
    if args.emulator and args.runner not in (None, "emulator"):
        raise ValidationError("fs-deploy", "--emulator", f"contradicts --runner {args.runner}")
    plan = api.plan_deploy(args.network, args.target, config=Path(args.config) if args.config else None,
                           inputs=Path(args.inputs) if args.inputs else None, samples=args.samples,
                           runner="emulator" if args.emulator else args.runner, names=api.CLI_NAMES)
    with api.locked_destinations(args.out, args.report, args.force, api.CLI_NAMES) as (out, report_path):
        return _run_and_write(plan, out, report_path, args.force)


def _run_and_write(plan: api.DeployPlan, out: Path | None, report_path: Path | None, force: bool) -> int:
    report = plan.run(progress=True)
    if out is not None:
        report.export(out, force=force)
    if report_path is not None:
        report.save(report_path)
    _print_summary(report.to_dict())
    return 1 if report.passed is False else 0


def _print_summary(data: dict) -> None:
    rows = api.summary_rows(data)
    try:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"fs-deploy --target {data['target']}")
        table.add_column("quantity")
        table.add_column("value", justify="right")
        for k, v in rows:
            table.add_row(k, api.format_value(v))
        Console().print(table)
    except ImportError:
        for k, v in rows:
            print(f"{k:<32} {api.format_value(v)}")
    print(f"config: {data.get('config') or 'none (the target defaults)'}")
    for note in data["notes"]:
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
