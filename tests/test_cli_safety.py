"""fs-deploy on bad input and bad luck: one line, the right exit code, no user file touched.

Exit statuses: 0 agree, 1 disagree (only that), 2 bad input or environment, 3 internal error
(a bug), 130 Ctrl-C. Output files are written to a fresh temporary and renamed into place;
destinations are checked and locked before the run.
"""

import errno
import json
import os
import signal
import struct
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest

from fs_hw import cli, outputs
from fs_hw import deploy as deploy_api  # the workflow fs-deploy calls: what a test patches
from fs_hw.cli import main
from fs_hw.errors import FormatError

QUICK = ["--target", "reference", "--samples", "3"]


def one_error_line(capsys) -> str:
    """The single stderr line of a failed command (asserts there is exactly one)."""
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fs_hw.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=120, check=False)


def leftovers(folder: Path) -> list[str]:
    """Temporaries and lock files fs-deploy might leave behind."""
    return sorted(p.name for p in folder.iterdir() if p.name.endswith((".tmp", ".lock")))


def strict_json(path: Path):
    def refuse(name):
        raise AssertionError(f"{path} holds {name}")

    return json.loads(path.read_text(), parse_constant=refuse)


# --- inputs npz files -------------------------------------------------------------------

def _npz(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


def _encrypted_npz(path: Path) -> Path:
    """An npz whose 'images' member has the zip "encrypted" flag set (zipfile cannot write one)."""
    _npz(path, images=np.zeros((2, 784)))
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("images.npy")
    data[info.header_offset + 6] |= 0x1  # local header: general purpose flags
    central = data.rfind(b"PK\x01\x02")
    data[central + 8] |= 0x1  # central directory entry: general purpose flags
    path.write_bytes(bytes(data))
    return path


def _giant_header_npz(path: Path) -> Path:
    """An npz whose .npy member claims a 2 GiB header (format 2.0 has a 4-byte length)."""
    member = b"\x93NUMPY\x02\x00" + struct.pack("<I", 2**31) + b"{'descr': '<f8', " + b" " * 64
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("images.npy", member)
    return path


def _padded_header_npz(path: Path) -> Path:
    """An npz whose .npy member really has a 1 MB header (numpy's readers stop at 10 kB)."""
    header = "{'descr': '<f8', 'fortran_order': False, 'shape': (1, 784), }" + " " * 1_000_000 + "\n"
    member = b"\x93NUMPY\x02\x00" + struct.pack("<I", len(header)) + header.encode() + bytes(8 * 784)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("images.npy", member)
    return path


@pytest.mark.parametrize("make", [
    pytest.param(lambda p: _npz(p, images=np.zeros((3, 784)), scale=np.ones(3)), id="scale-array"),
    pytest.param(lambda p: _npz(p, images=np.zeros((3, 784)), labels=np.zeros((3, 2), int)), id="2d-labels"),
    pytest.param(_encrypted_npz, id="encrypted-member"),
    pytest.param(_giant_header_npz, id="giant-header-claimed"),
    pytest.param(_padded_header_npz, id="giant-header-real"),
])
def test_bad_inputs_npz_is_one_line(tmp_path, capsys, make):
    bad = make(tmp_path / "in.npz")
    assert main([*QUICK, "--inputs", str(bad)]) == 2
    assert "in.npz" in one_error_line(capsys)


def test_bad_inputs_npz_no_traceback_at_process_level(tmp_path):
    bad = _encrypted_npz(tmp_path / "in.npz")
    proc = run_cli(*QUICK, "--inputs", str(bad))
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_inputs_folder(tmp_path, capsys):
    assert main([*QUICK, "--inputs", str(tmp_path)]) == 2
    assert "is a folder" in one_error_line(capsys)


# --- config -----------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["0", "-1", "true", "2.5"])
def test_bad_batch_size_refused_before_running(tmp_path, capsys, monkeypatch, value):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"[target]\nbatch_size = {value}\n")
    monkeypatch.setattr(cli, "_run_and_write", _must_not_run)
    assert main([*QUICK, "--config", str(cfg)]) == 2
    line = one_error_line(capsys)
    assert "batch_size: must be" in line and str(cfg) in line


def test_config_samples_zero(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text("samples = 0\n")
    assert main(["--target", "reference", "--config", str(cfg)]) == 2
    assert "samples: must be >= 1, got 0" in one_error_line(capsys)


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/null"])
def test_config_symlink_to_device(tmp_path, capsys, device):
    if not os.path.exists(device):
        pytest.skip(f"no {device}")
    link = tmp_path / "c.toml"
    link.symlink_to(device)
    assert main([*QUICK, "--config", str(link)]) == 2
    line = one_error_line(capsys)
    assert "a device, not a regular file" in line and "c.toml" in line


def test_config_fifo_does_not_hang(tmp_path, capsys):
    fifo = tmp_path / "c.toml"
    os.mkfifo(fifo)
    assert main([*QUICK, "--config", str(fifo)]) == 2
    assert "a pipe, not a regular file" in one_error_line(capsys)


def test_config_too_big(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text("# " + "x" * deploy_api.CONFIG_READ_LIMIT + "\n")
    assert main([*QUICK, "--config", str(cfg)]) == 2
    assert "at most" in one_error_line(capsys)


def test_config_is_a_folder(tmp_path, capsys):
    assert main([*QUICK, "--config", str(tmp_path)]) == 2
    assert "is a folder" in one_error_line(capsys)


# --- arguments --------------------------------------------------------------------------

@pytest.mark.parametrize("args", [["--samples", "x"], ["--colour"], ["--samples"]])
def test_usage_error_is_one_line(capsys, args):
    assert main(["--target", "reference", *args]) == 2
    line = one_error_line(capsys)
    assert line.startswith("fs-deploy: error: ") and line.endswith("(see fs-deploy --help)")


def test_usage_error_one_line_at_process_level():
    proc = run_cli("--target", "reference", "--samples", "many")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "fs-deploy: error: argument --samples: invalid int value: 'many' (see fs-deploy --help)"]


def test_help_still_exits_0(capsys):
    assert main(["--help"]) == 0
    assert "--report" in capsys.readouterr().out


@pytest.mark.parametrize("n", ["0", "-1"])
def test_samples_zero_or_negative_is_an_error(capsys, n):
    assert main(["--target", "reference", "--samples", n]) == 2
    assert f"--samples: must be >= 1, got {n}" in one_error_line(capsys)


def test_network_folder_says_so(tmp_path, capsys):
    (tmp_path / "net.fsnet").write_bytes(b"")
    assert main([str(tmp_path), "--target", "reference"]) == 2
    line = one_error_line(capsys)
    assert "is a folder" in line and "net.fsnet" in line


# --- internal errors --------------------------------------------------------------------

def _must_not_run(*args, **kwargs):
    raise AssertionError("the run started although a check should have stopped it")


def test_internal_error_exits_3_not_1(tmp_path, capsys, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("compare exploded\nsecond line")

    monkeypatch.setattr(deploy_api, "compare_runs", boom)
    report = tmp_path / "r.json"
    assert main([*QUICK, "--report", str(report)]) == 3
    line = one_error_line(capsys)
    assert line.startswith("fs-deploy: internal error: RuntimeError: compare exploded second line")
    assert "bug in fs-hw" in line and "FS_HW_DEBUG=1" in line
    assert not report.exists() and leftovers(tmp_path) == []


def test_internal_error_at_process_level(tmp_path):
    # a zoo name whose converted file is unreadable would be exit 2; a crash inside is 3
    script = textwrap.dedent("""
        import sys
        from fs_hw import cli
        from fs_hw import deploy as deploy_api
        deploy_api.compare_runs = lambda *a, **k: 1 / 0
        sys.exit(cli.main(sys.argv[1:]))
    """)
    proc = subprocess.run([sys.executable, "-c", script, *QUICK], capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 3
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines() if "internal error" in ln]
    assert len(lines) == 1 and "ZeroDivisionError" in lines[0]


def test_memory_error_is_one_line(capsys, monkeypatch):
    def oom(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(deploy_api, "run_reference", oom)
    assert main(QUICK) == 2
    assert "out of memory; run fewer samples" in one_error_line(capsys)


def test_memory_error_while_lowering_names_the_step(capsys, monkeypatch):
    from fs_hw.reference.backend import ReferenceBackend

    def oom(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(ReferenceBackend, "lower", oom)
    assert main(QUICK) == 2
    line = one_error_line(capsys)
    assert "out of memory: lowering" in line and "for reference needs more memory than this machine has" in line
    assert "run fewer samples" not in line


def test_full_disk_names_the_path(tmp_path, capsys, monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(outputs.os, "fsync", full)
    report = tmp_path / "r.json"
    assert main([*QUICK, "--report", str(report)]) == 2
    line = one_error_line(capsys)
    assert f"{report}: No space left on device" in line and "disk is full" in line
    assert not report.exists() and leftovers(tmp_path) == []


# --- the report destination -------------------------------------------------------------

def test_user_file_named_like_the_old_temporary_is_untouched(tmp_path):
    mine = tmp_path / ".r.json.tmp"
    mine.write_text("my notes")
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    link = tmp_path / ".r.json.0.tmp"
    link.symlink_to(victim)
    report = tmp_path / "r.json"
    assert main([*QUICK, "--report", str(report)]) == 0
    assert mine.read_text() == "my notes" and victim.read_text() == "precious"
    assert link.is_symlink() and os.readlink(link) == str(victim)
    assert strict_json(report)["samples"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == [".r.json.0.tmp", ".r.json.tmp", "r.json",
                                                          "victim.txt"]


def test_report_symlink_to_dev_null_is_refused(tmp_path, capsys, monkeypatch):
    link = tmp_path / "r.json"
    link.symlink_to("/dev/null")
    monkeypatch.setattr(cli, "_run_and_write", _must_not_run)
    assert main([*QUICK, "--report", str(link)]) == 2
    assert "symbolic link" in one_error_line(capsys)
    assert link.is_symlink() and os.readlink(link) == "/dev/null"


def test_report_symlink_to_own_report_is_refused(tmp_path, capsys):
    real = tmp_path / "real.json"
    real.write_text(json.dumps({deploy_api.REPORT_MARKER: True}))
    link = tmp_path / "r.json"
    link.symlink_to(real)
    assert main([*QUICK, "--report", str(link)]) == 2
    assert "symbolic link" in one_error_line(capsys)


def test_report_device_or_folder_is_refused(tmp_path, capsys):
    assert main([*QUICK, "--report", "/dev/null"]) == 2
    assert "is a device" in one_error_line(capsys)
    assert main([*QUICK, "--report", str(tmp_path)]) == 2
    assert "is a folder" in one_error_line(capsys)


def test_report_same_as_out(tmp_path, capsys):
    assert main([*QUICK, "--report", str(tmp_path / "x"), "--out", str(tmp_path / "x")]) == 2
    assert "is also the --out folder" in one_error_line(capsys)


def test_destination_checks_happen_before_the_run(tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    monkeypatch.setattr(cli, "_run_and_write", _must_not_run)
    assert main([*QUICK, "--out", str(out)]) == 2
    assert "not empty; pass --force" in one_error_line(capsys)
    notes = tmp_path / "notes.json"
    notes.write_text("{}")
    assert main([*QUICK, "--report", str(notes)]) == 2
    assert "not an fs-deploy report" in one_error_line(capsys)
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert main([*QUICK, "--out", str(afile)]) == 2
    assert "is not a folder" in one_error_line(capsys)


# --- locks --------------------------------------------------------------------------------

def test_lock_held_makes_a_second_run_exit_2(tmp_path, capsys, monkeypatch):
    report = tmp_path / "r.json"
    lock = outputs.lock_path(report)
    lock.write_text(f"{os.getpid()}\nfs-deploy ...\n")
    monkeypatch.setattr(cli, "_run_and_write", _must_not_run)
    assert main([*QUICK, "--report", str(report)]) == 2
    line = one_error_line(capsys)
    assert "another fs-deploy is writing there" in line and f"process {os.getpid()}" in line
    assert str(lock) in line
    assert lock.read_text().startswith(str(os.getpid()))  # someone else's lock is left alone


def test_stale_lock_is_named_as_stale(tmp_path, capsys):
    out = tmp_path / "out"
    lock = outputs.lock_path(out)
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                           text=True, check=True)
    lock.write_text(child.stdout)  # a pid that has exited
    assert main([*QUICK, "--out", str(out)]) == 2
    line = one_error_line(capsys)
    assert "probably stale" in line and f"remove the stale lock file {lock}" in line


def test_locks_are_removed_after_success_and_failure(tmp_path, capsys, monkeypatch):
    out, report = tmp_path / "out", tmp_path / "r.json"
    assert main([*QUICK, "--out", str(out), "--report", str(report)]) == 0
    assert leftovers(tmp_path) == [] and leftovers(out) == []
    exported = sorted(p.name for p in out.iterdir())
    assert exported == ["network.fsnet", "reference.json", "spikes_per_layer.png"]
    strict_json(out / "reference.json")
    monkeypatch.setattr(deploy_api, "compare_runs", lambda *a, **k: 1 / 0)
    assert main([*QUICK, "--out", str(out), "--force", "--report", str(report)]) == 3
    capsys.readouterr()
    assert leftovers(tmp_path) == [] and leftovers(out) == []


def test_destination_lock_is_exclusive(tmp_path):
    dest = tmp_path / "sub" / "r.json"
    with outputs.DestinationLock(dest) as held:
        assert held.path.is_file() and held.path.parent == dest.parent
        with pytest.raises(FormatError, match="another fs-deploy is writing there"):
            outputs.DestinationLock(dest).acquire()
    assert not held.path.exists()


# --- interruption -------------------------------------------------------------------------

def test_ctrl_c_during_the_report_write_leaves_nothing(tmp_path, capsys, monkeypatch):
    def interrupt(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(outputs.os, "replace", interrupt)
    report = tmp_path / "r.json"
    assert main([*QUICK, "--report", str(report)]) == 130
    assert "interrupted" in capsys.readouterr().err
    assert not report.exists() and list(tmp_path.iterdir()) == []


def test_atomic_output_interrupted_mid_write_keeps_the_old_file(tmp_path):
    dest = tmp_path / "big.bin"
    dest.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt), outputs.atomic_output(dest) as fh:
        fh.write(b"x" * 100_000)
        raise KeyboardInterrupt
    assert dest.read_bytes() == b"old" and leftovers(tmp_path) == []


def test_atomic_output_refuses_a_symlink_and_never_follows_it(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious")
    dest = tmp_path / "out.json"
    dest.symlink_to(victim)
    with pytest.raises(FormatError, match="symbolic link"):
        outputs.atomic_write_text(dest, "new")
    assert victim.read_text() == "precious"


def test_atomic_output_mode_is_not_0600(tmp_path):
    path = outputs.atomic_write_bytes(tmp_path / "f", b"1")
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


_WRITER = textwrap.dedent("""
    import sys, time
    from fs_hw.errors import run_command
    from fs_hw.outputs import atomic_output

    def body():
        with atomic_output(sys.argv[1]) as fh:
            fh.write(b"x" * 4_000_000)
            fh.flush()
            print("writing", flush=True)
            time.sleep(60)
        return 0

    sys.exit(run_command("writer", body))
""")


def _start_writer(dest: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(dest)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    return proc


def test_sigkill_mid_write_leaves_no_file_under_the_final_name(tmp_path):
    dest = tmp_path / "r.json"
    proc = _start_writer(dest)
    assert len(leftovers(tmp_path)) == 1  # the data is in a temporary meanwhile
    proc.kill()
    proc.communicate(timeout=30)
    assert not dest.exists()


def test_sigterm_mid_write_removes_the_temporary(tmp_path):
    dest = tmp_path / "r.json"
    proc = _start_writer(dest)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert list(tmp_path.iterdir()) == []


# --- the report's content -----------------------------------------------------------------

def test_report_has_no_bare_nan(tmp_path, monkeypatch):
    from fs_hw.reference.backend import ReferenceBackend

    original = ReferenceBackend.run

    def run(self, artifact, inputs, record_spikes=False, runner=None):
        result = original(self, artifact, inputs, record_spikes, runner)
        result.info.update(ratio=float("nan"), peak=np.float64("inf"), count=np.int64(7), obj=object())
        return result

    monkeypatch.setattr(ReferenceBackend, "run", run)
    report = tmp_path / "r.json"
    assert main([*QUICK, "--report", str(report)]) == 0
    data = strict_json(report)
    assert data["info"]["ratio"] is None and data["info"]["peak"] is None and data["info"]["count"] == 7
    assert "obj" not in data["info"]
    assert any("info.ratio was nan, written as null" in n for n in data["notes"])


def test_layer_with_zero_neurons_does_not_divide_by_zero():
    class Result:
        neurons = {"empty": 0, "full": 4}
        spike_counts = {"empty": np.zeros(2), "full": np.array([2.0, 6.0])}

    notes: list[str] = []
    layers = deploy_api._layer_stats(Result(), notes)
    assert layers["empty"] == {"neurons": 0, "spikes_per_neuron": None}
    assert layers["full"]["spikes_per_neuron"] == pytest.approx(1.0)
    assert notes and "'empty' has no neurons" in notes[0]
