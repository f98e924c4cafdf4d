"""One error hierarchy for the whole project.

Every error that fs-hw raises on bad input derives from :class:`FSHWError` and from the
builtin that fits (``ValueError``, ``KeyError``...), so callers can catch either. The
message names the object, the field, the problem and the numbers; the CLI prints it as
one line and exits non-zero.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from typing import Any, NoReturn


class FSHWError(Exception):
    """Base of every error fs-hw raises on purpose."""


class ValidationError(FSHWError, ValueError):
    """An object (node, code, network, config) is malformed: names the object and field."""

    def __init__(self, obj: str, field: str, problem: str):
        self.obj, self.field, self.problem = obj, field, problem
        super().__init__(f"{obj}: {field}: {problem}")


class FormatError(FSHWError, ValueError):
    """A file cannot be read as an fs-hw file (truncated, corrupted, wrong version)."""


class UnsupportedError(FSHWError, NotImplementedError):
    """A layer, node kind or feature is not supported by the converter or a backend."""


class ResourceError(FSHWError, ValueError):
    """A network does not fit a target: names the layer, the limit and the numbers."""


class TargetNotFoundError(FSHWError, LookupError):
    """An unknown or uninstalled target was requested."""


class MissingDependencyError(FSHWError, ImportError):
    """An optional package (torch, an SDK, a data set) is needed and absent."""


class CommandParser(argparse.ArgumentParser):
    """The argument parser of every fs-hw command: a usage error is one line, exit status 2.

    (argparse prints the whole usage block and a second line; the commands' contract is one
    line per error.) ``--help`` still prints the help and exits 0.
    """

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


#: Exit statuses shared by the commands: 1 is reserved for a command's own "negative" answer
#: (fs-deploy: the target disagrees with the reference), so no failure may use it.
EXIT_OK, EXIT_BAD_INPUT, EXIT_INTERNAL, EXIT_INTERRUPTED = 0, 2, 3, 130
DEBUG_ENV = "FS_HW_DEBUG"

_OS_HINTS = {
    errno.ENOSPC: "the disk is full: free some space or write elsewhere",
    errno.EDQUOT: "disk quota exceeded: free some space or write elsewhere",
    errno.EACCES: "check the permissions, or choose another path",
    errno.EPERM: "check the permissions, or choose another path",
    errno.EROFS: "read-only file system: choose another path",
    errno.EISDIR: "that is a folder: give a file path",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.ENAMETOOLONG: "shorten the path",
    errno.EPIPE: "the output was closed early",
}


def describe_os_error(exc: OSError) -> str:
    """One line for an OSError: the path, the problem and, for the usual causes, the fix."""
    where = f"{exc.filename}: " if exc.filename else ""
    hint = _OS_HINTS.get(exc.errno or -1)
    return f"{where}{exc.strerror or exc}" + (f" ({hint})" if hint else "")


def _one_line(text: str, limit: int = 500) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def run_command(prog: str, action: Callable[..., int], *args: Any) -> int:
    """Run a console command's body; turn every failure into one line and an exit code.

    ====  ==========================================================================
    2     bad input or environment: an :class:`FSHWError`, an ``OSError`` (names the
          path; a full disk says so) or ``MemoryError``
    3     an unexpected exception: a bug in fs-hw (one line asking to report it)
    130   Ctrl-C
    143   SIGTERM, turned into the same clean unwinding as Ctrl-C (temporaries and
          lock files are removed)
    ====  ==========================================================================

    ``MemoryError`` is exit 2, not 3: it means the inputs or the batch do not fit this
    machine, which the user fixes (fewer samples, a smaller batch), not a bug to report.
    Set ``FS_HW_DEBUG=1`` to print the traceback as well.
    """
    debug = os.environ.get(DEBUG_ENV, "") not in ("", "0")

    def fail(code: int, line: str) -> int:
        if debug:
            traceback.print_exc()
        print(f"{prog}: {line}", file=sys.stderr)
        return code

    with _sigterm_unwinds():
        try:
            return action(*args)
        except FSHWError as exc:
            # ValidationError("fs-deploy", ...) names the command as its object: say it once
            return fail(EXIT_BAD_INPUT, f"error: {_one_line(exc).removeprefix(f'{prog}: ')}")
        except OSError as exc:
            return fail(EXIT_BAD_INPUT, f"error: {_one_line(describe_os_error(exc))}")
        except MemoryError as exc:
            if str(exc):  # a step that knows why it ran out says so
                return fail(EXIT_BAD_INPUT, f"error: out of memory: {_one_line(exc)}")
            return fail(EXIT_BAD_INPUT, "error: out of memory; run fewer samples (--samples) "
                        "or a smaller [target] batch_size")
        except KeyboardInterrupt:
            print(f"{prog}: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        except _Terminated as exc:
            print(f"{prog}: terminated", file=sys.stderr)
            return exc.code
        except Exception as exc:  # anything else is a bug: say so, and never exit 1 ("disagrees")
            return fail(EXIT_INTERNAL, f"internal error: {type(exc).__name__}: {_one_line(exc, 300)} "
                        f"(this is a bug in fs-hw; please report it with the command line; "
                        f"set {DEBUG_ENV}=1 for the traceback)")


class _Terminated(SystemExit):
    """SIGTERM, raised where the command is, so that it unwinds like Ctrl-C (not an Exception:
    nothing that catches errors may swallow it)."""


@contextlib.contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """While a command runs, SIGTERM raises _Terminated(143) instead of killing the process on
    the spot, so ``finally`` blocks remove temporaries and lock files (SIGKILL cannot be
    handled; the atomic writes still leave no half-written file under a final name)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _terminate(signum: int, frame: object) -> None:
        raise _Terminated(128 + signum)

    try:
        previous = signal.signal(signal.SIGTERM, _terminate)
    except (ValueError, OSError):  # no signals here (an embedded interpreter)
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
