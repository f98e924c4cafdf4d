"""One error hierarchy for the whole project.

Every error that fs-hw raises on bad input derives from :class:`FSHWError` and from the
builtin that fits (``ValueError``, ``KeyError``...), so callers can catch either. The
message names the object, the field, the problem and the numbers; the CLI prints it as
one line and exits non-zero.
"""

from __future__ import annotations


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


def run_command(prog: str, action, *args) -> int:
    """Run a console command's body; turn expected failures into one line and an exit code.

    Every fs-hw command shares this: an :class:`FSHWError` or an ``OSError`` prints
    ``"<prog>: error: <message>"`` on one line (no traceback) and returns 2; Ctrl-C returns 130.
    """
    import sys

    try:
        return action(*args)
    except FSHWError as exc:
        print(f"{prog}: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"{prog}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
