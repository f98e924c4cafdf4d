"""Safe output files: every file fs-hw writes for a user goes through here.

Three promises, whatever happens to the process (an error, Ctrl-C, SIGKILL, a full disk):

* a file under its final name is either the old one or the complete new one, never half
  written: data goes to a fresh temporary in the destination folder (created with
  ``O_CREAT | O_EXCL``, so it is never a file or symlink that was already there) and is
  renamed into place; on an error or Ctrl-C the temporary is removed;
* no file or symlink of the user's is touched unless it is the destination itself (the
  temporaries have random names; a symlink at the destination is replaced, never followed);
* two commands writing the same destination do not both run: :class:`DestinationLock`
  takes a lock file next to it with ``O_EXCL`` and holds the owner's pid.

Input side: :func:`read_regular_file` reads a (small) regular file with a size bound, and
refuses devices, pipes and folders, which would hang or exhaust memory.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from fs_hw.errors import FormatError

#: A report is small; a file at the destination larger than this is not one of ours.
REPORT_READ_LIMIT = 16 * 2**20
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)  # opening a FIFO for reading must not hang


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISFIFO(mode):
        return "a pipe"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def _lstat(path: Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def check_file_destination(path: str | os.PathLike, what: str = "output file") -> Path:
    """Refuse a destination that cannot become a regular file by rename: a folder, a device,
    a pipe, a symlink (writing "through" it would write wherever it points), or a path whose
    folder is a file. Returns the path; an absent destination is fine."""
    path = Path(path)
    st = _lstat(path)
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise FormatError(
            f"{path}: the {what} destination is {_kind(st.st_mode)}; give the path of a regular file "
            "(fs-hw never writes through a link or into a device)"
        )
    if path.parent.exists() and not path.parent.is_dir():  # a symlink to a folder is a folder here
        raise FormatError(f"{path}: its folder {path.parent} is not a folder")
    return path


def _wrap_os_error(exc: OSError, path: Path) -> OSError:
    """The same error, naming the final path (a write to a temporary has no filename, so a full
    disk would otherwise be reported without saying where)."""
    if exc.filename is None or str(exc.filename).startswith(str(path.parent / f".{path.name}.")):
        return OSError(exc.errno, exc.strerror or str(exc), str(path))
    return exc


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, mode: str = "wb", *, encoding: str | None = None,
                  fsync: bool = True) -> Iterator[IO[Any]]:
    """A file object for writing ``path`` atomically: the data goes to a new temporary
    ``.<name>.<random>.tmp`` in the same folder and is renamed over ``path`` when the block
    ends without an exception. On any exception (Ctrl-C included) the temporary is removed
    and ``path`` is left as it was. For writers that want a file object (matplotlib's
    ``savefig``, ``zipfile``, ``np.save``).

    The new file gets the usual permissions (``0o666`` less the umask), not mkstemp's 0600.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_output: mode must be 'wb' or 'w', got {mode!r}")
    path = check_file_destination(path)
    # mkstemp opens with O_CREAT | O_EXCL (| O_NOFOLLOW): it never reuses an existing name.
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise _wrap_os_error(exc, path) from None
    try:
        with os.fdopen(fd, mode, encoding=encoding if "b" not in mode else None) as fh:
            yield fh
            fh.flush()
            if fsync:  # the rename must not reach the disk before the data does
                os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        check_file_destination(path)  # a folder or device put there meanwhile is not replaced
        os.replace(tmp, path)
    except OSError as exc:
        _remove_quietly(tmp)
        raise _wrap_os_error(exc, path) from None
    except BaseException:
        _remove_quietly(tmp)
        raise
    if fsync:
        _fsync_dir(path.parent)


def _remove_quietly(tmp: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on a folder; the rename is done anyway
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_output`); returns the path."""
    with atomic_output(path, "wb") as fh:
        fh.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_output`); returns the path."""
    return atomic_write_bytes(path, text.encode(encoding))


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 1) -> Path:
    """Write ``obj`` as strict JSON (no NaN or infinity, which JSON does not have)."""
    return atomic_write_text(path, json.dumps(obj, indent=indent, allow_nan=False) + "\n")


def read_regular_file(path: str | os.PathLike, what: str, limit: int) -> bytes:
    """The bytes of ``path``, which must be a regular file of at most ``limit`` bytes.

    A device (``/dev/zero``), a pipe or a folder is refused by its type before anything is
    read, so a config can never hang the command or fill memory. A symlink to a regular file
    is fine for reading."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | _NONBLOCK)
    except FileNotFoundError:
        raise FormatError(f"{path}: no such {what}") from None
    except IsADirectoryError:
        raise FormatError(f"{path}: is a folder; give the path of a {what}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise FormatError(
                f"{path}: is {_kind(st.st_mode)}, not a regular file; give the path of a {what}"
            )
        if st.st_size > limit:
            raise FormatError(f"{path}: {st.st_size} bytes; a {what} is at most {limit} bytes")
        chunks, size = [], 0
        while size <= limit:
            chunk = os.read(fd, min(1 << 20, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:  # it grew while being read
            raise FormatError(f"{path}: more than {limit} bytes; a {what} is at most {limit} bytes")
        return b"".join(chunks)
    finally:
        os.close(fd)


def check_report_destination(path: str | os.PathLike, marker: str) -> Path:
    """Refuse a report destination that is not absent or an earlier report of ours (a JSON
    object with ``marker: true``): a user's file is never overwritten, and a symlink, folder
    or device is refused by its type (never followed, never read)."""
    path = check_file_destination(path, "report")
    st = _lstat(path)
    if st is None:
        return path
    try:
        fd = os.open(path, os.O_RDONLY | _NOFOLLOW | _NONBLOCK)
    except OSError as exc:
        raise FormatError(
            f"{path}: exists and cannot be read ({exc.strerror}); refusing to overwrite it"
        ) from None
    try:
        fst = os.fstat(fd)
        ours = False
        if stat.S_ISREG(fst.st_mode) and fst.st_size <= REPORT_READ_LIMIT:
            with os.fdopen(os.dup(fd), "rb") as fh:
                raw = fh.read(REPORT_READ_LIMIT + 1)
            try:
                old = json.loads(raw)
                ours = isinstance(old, dict) and old.get(marker) is True
            except (ValueError, RecursionError):
                ours = False
    finally:
        os.close(fd)
    if not ours:
        raise FormatError(f"{path}: exists and is not an fs-deploy report; refusing to overwrite it "
                          "(give another --report path, or move the file away)")
    return path


def lock_path(destination: str | os.PathLike, prog: str = "fs-deploy") -> Path:
    """The lock file of ``destination``: ``.<name>.<prog>.lock`` in the same folder."""
    destination = Path(destination)
    return destination.parent / f".{destination.name}.{prog}.lock"


class DestinationLock:
    """An exclusive claim on a destination (a file or a folder) for one command run.

    ``with DestinationLock(path):`` creates ``.<name>.fs-deploy.lock`` next to ``path`` with
    ``O_CREAT | O_EXCL`` (atomic, also on NFS v3+) holding the pid, and removes it at the end.
    A second run finds it and stops with a :class:`FormatError` saying who holds it and which
    file to delete if that process is gone (a SIGKILL cannot remove it). Creating the lock
    creates the destination's folder if needed.
    """

    def __init__(self, destination: str | os.PathLike, prog: str = "fs-deploy"):
        self.destination = Path(destination)
        self.prog = prog
        self.path = lock_path(self.destination, prog)
        self._held: tuple[int, int] | None = None

    def acquire(self) -> DestinationLock:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            raise FormatError(f"{self.destination}: its folder {self.path.parent} is not a folder") from None
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o644)
        except FileExistsError:
            raise FormatError(self._held_message()) from None
        except OSError as exc:  # name what the user gave, and the lock file that could not be made
            raise OSError(exc.errno, f"cannot create the lock file {self.path} ({exc.strerror})",
                          str(self.destination)) from None
        try:
            os.write(fd, f"{os.getpid()}\n{' '.join(sys.argv)}\n".encode(errors="replace"))
            st = os.fstat(fd)
            self._held = (st.st_dev, st.st_ino)
        finally:
            os.close(fd)
        return self

    def _held_message(self) -> str:
        holder = "another process"
        try:
            text = read_regular_file(self.path, "lock file", 4096).decode(errors="replace")
            pid = int(text.split()[0])
        except (FormatError, OSError, ValueError, IndexError):
            pid = None
        if pid is not None:
            holder = f"process {pid}"
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                holder += " (not running on this machine: the lock is probably stale)"
            except PermissionError:
                pass
        return (f"{self.destination}: another {self.prog} is writing there (lock held by {holder}); "
                f"wait for it, or if none is running remove the stale lock file {self.path}")

    def release(self) -> None:
        if self._held is None:
            return
        held, self._held = self._held, None
        st = _lstat(self.path)
        # only remove the file we created (someone may have removed a stale-looking lock and taken it)
        if st is not None and (st.st_dev, st.st_ino) == held:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)

    def __enter__(self) -> DestinationLock:
        return self.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self.release()
