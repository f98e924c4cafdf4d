"""`fs-convert` must not run code from a user's .pt2 file unless told to trust it.

Each malicious archive here is a real ``torch.export.save`` file with one part swapped for a
payload whose unpickling (or execution) creates a marker file. The tests show that by default
the marker never appears, and that with ``--trust-archive`` it does: the payload is real, and
the safe loader is what stopped it.
"""

from __future__ import annotations

import io
import json
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
import torch
from torch import nn

import fs_hw.convert.pt2 as pt2
import fs_hw.convert_cli as cli
from fs_hw.errors import FormatError

ROOT = Path(__file__).resolve().parents[1]


class _Payload:
    """Unpickling this creates ``path`` (builtins.open in write mode): a visible side effect."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _evil(marker: Path) -> bytes:
    return pickle.dumps(_Payload(marker), protocol=2)  # torch's own protocol: no warning from its unpickler


def _clean(tmp_path: Path, name: str = "clean") -> Path:
    # BatchNorm brings buffers of two dtypes (running stats, int64 num_batches_tracked)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, stride=2), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 13 * 13, 10)).eval()
    path = tmp_path / f"{name}.pt2"
    torch.export.save(torch.export.export(model, (torch.rand(2, 1, 28, 28),)), path)
    return path


def _rewrite(src: Path, dst: Path, edit, compression=zipfile.ZIP_STORED) -> Path:
    """Copy ``src`` to ``dst``; ``edit(members)`` changes the dict {name below the root: bytes}."""
    with zipfile.ZipFile(src) as zin:
        root = zin.namelist()[0].split("/", 1)[0]
        members = {n.split("/", 1)[1]: zin.read(n) for n in zin.namelist()}
    edit(members)
    with zipfile.ZipFile(dst, "w", compression=compression) as zout:
        for rel, data in members.items():
            zout.writestr(f"{root}/{rel}", data)
    return dst


def _pickled_weight(marker: Path):
    """Weight '0.weight' stored as a pickle (use_pickle: true): torch.load(weights_only=False)."""
    def edit(m):
        config = json.loads(m["data/weights/model_weights_config.json"])
        config["config"]["0.weight"]["use_pickle"] = True
        m["data/weights/model_weights_config.json"] = json.dumps(config).encode()
        m["data/weights/weight_0"] = _evil(marker)
    return edit


def _pickled_inputs(marker: Path):
    """Example inputs as a raw pickle: torch tries weights_only=True, fails, retries weights_only=False."""
    def edit(m):
        m["data/sample_inputs/model.pt"] = _evil(marker)
    return edit


def _opaque_constant(marker: Path):
    """A constant stored as an opaque object: pickle.loads, whatever use_pickle says."""
    def edit(m):
        config = json.loads(m["data/constants/model_constants_config.json"])
        config["config"]["evil"] = {"path_name": "opaque_obj_0", "is_param": False, "use_pickle": True,
                                    "tensor_meta": None}
        m["data/constants/model_constants_config.json"] = json.dumps(config).encode()
        m["data/constants/opaque_obj_0"] = _evil(marker)
    return edit


def _guards_code(marker: Path):
    """Python source in models/model.json that torch exec()s when the program is unlifted."""
    def edit(m):
        program = json.loads(m["models/model.json"])
        program["guards_code"] = [f"open({str(marker)!r}, 'w') is not None"]
        m["models/model.json"] = json.dumps(program).encode()
    return edit


def _legacy(src: Path, dst: Path, marker: Path) -> Path:
    """The torch < 2.8 layout: torch.export.load falls back to it and torch.loads its .pt members."""
    with zipfile.ZipFile(src) as zin:
        program = next(zin.read(n) for n in zin.namelist() if n.endswith("models/model.json"))
    evil = _evil(marker)
    with zipfile.ZipFile(dst, "w") as zout:
        zout.writestr("version", "8.20")
        zout.writestr("serialized_exported_program.json", program)
        for name in ("serialized_state_dict.pt", "serialized_constants.pt", "serialized_example_inputs.pt"):
            zout.writestr(name, evil)
    return dst


ATTACKS = {  # name -> (how to build it, the member the refusal must name)
    "pickled_weight": (_pickled_weight, "model_weights_config.json"),
    "pickled_inputs": (_pickled_inputs, "data/sample_inputs/model.pt"),
    "opaque_constant": (_opaque_constant, "opaque_obj_0"),
    "guards_code": (_guards_code, "models/model.json"),
}


def _attack(tmp_path: Path, kind: str) -> tuple[Path, Path]:
    marker = tmp_path / f"marker_{kind}"
    clean = _clean(tmp_path)
    if kind == "legacy":
        return _legacy(clean, tmp_path / "legacy.pt2", marker), marker
    return _rewrite(clean, tmp_path / f"{kind}.pt2", ATTACKS[kind][0](marker)), marker


def _fake_data(monkeypatch):
    data = np.random.default_rng(0).random((64, 1, 28, 28)).astype(np.float32)
    monkeypatch.setattr(cli, "load_dataset", lambda name, split: (data, np.zeros(64, np.int64)))


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("fs-convert: error:") and "Traceback" not in err
    return lines[0]


# ---------------------------------------------------------------------------------------
# the CLI refuses by default


@pytest.mark.parametrize("kind", [*ATTACKS, "legacy"])
def test_cli_refuses_a_crafted_archive_and_runs_nothing(tmp_path, capsys, kind):
    src, marker = _attack(tmp_path, kind)
    assert cli.main([str(src), "--out", str(tmp_path / "x.fsnet")]) == 2
    line = _one_line(capsys.readouterr().err)
    member = ATTACKS[kind][1] if kind in ATTACKS else "serialized_"
    assert member in line and "--trust-archive" in line, line
    assert not marker.exists()
    assert not (tmp_path / "x.fsnet").exists()


def test_cli_refuses_in_a_real_process(tmp_path):
    src, marker = _attack(tmp_path, "pickled_weight")
    proc = subprocess.run([sys.executable, "-m", "fs_hw.convert_cli", str(src), "--out", str(tmp_path / "x.fsnet")],
                          capture_output=True, text=True, cwd=ROOT, timeout=300, check=False)
    assert proc.returncode == 2, proc.stderr
    line = _one_line(proc.stderr)
    assert "0.weight" in line and "use_pickle" in line and "model_weights_config.json" in line
    assert not marker.exists()


@pytest.mark.parametrize("kind", [*ATTACKS, "legacy"])
def test_trust_archive_lifts_the_refusal(tmp_path, capsys, monkeypatch, kind):
    _fake_data(monkeypatch)
    src, marker = _attack(tmp_path, kind)
    # runs the payload: proof that it is real and that the safe loader is what stops it by default
    cli.main([str(src), "--out", str(tmp_path / "x.fsnet"), "--calibration", "16", "--trust-archive"])
    capsys.readouterr()
    assert marker.exists(), f"the {kind} payload did not run even with --trust-archive"


def test_trust_archive_help_says_it_can_run_code():
    text = " ".join(cli.build_parser().format_help().split())
    assert "--trust-archive" in text and "RUN ARBITRARY CODE" in text


def test_clean_archive_converts_by_default(tmp_path, monkeypatch):
    _fake_data(monkeypatch)
    src = _clean(tmp_path)
    out = tmp_path / "clean.fsnet"
    assert cli.main([str(src), "--out", str(out), "--calibration", "32", "--K", "5"]) == 0
    assert out.exists()


def test_safe_load_matches_torch_export_load(tmp_path):
    src = _clean(tmp_path)
    safe, plain = pt2.load_exported(src), torch.export.load(src)
    x = torch.rand(2, 1, 28, 28)  # the static export checks the batch size
    assert torch.equal(safe.module()(x), plain.module()(x))
    assert safe.state_dict["1.num_batches_tracked"].dtype == torch.int64


def test_dynamic_batch_export_loads(tmp_path):
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10)).eval()
    batch = torch.export.Dim("batch", min=2, max=64)
    ep = torch.export.export(model, (torch.rand(4, 1, 28, 28),), dynamic_shapes=({0: batch},))
    path = tmp_path / "dyn.pt2"
    torch.export.save(ep, path)
    assert pt2.load_exported(path).module()(torch.rand(5, 1, 28, 28)).shape == (5, 10)


# ---------------------------------------------------------------------------------------
# layer 2 alone: the scan bypassed, the patched unpicklers refuse


@pytest.mark.parametrize("kind", ["pickled_weight", "pickled_inputs", "opaque_constant", "legacy"])
def test_unpicklers_refuse_without_the_scan(tmp_path, monkeypatch, kind):
    src, marker = _attack(tmp_path, kind)
    monkeypatch.setattr(pt2, "scan_archive", lambda path: None)
    with pytest.raises(FormatError, match="torch tried to .*refused"):
        pt2.load_exported(src)
    assert not marker.exists()


def test_guards_code_refused_after_load_without_the_scan(tmp_path, monkeypatch):
    src, marker = _attack(tmp_path, "guards_code")
    monkeypatch.setattr(pt2, "scan_archive", lambda path: None)
    with pytest.raises(FormatError, match="guards_code"):
        pt2.load_exported(src)
    assert not marker.exists()


def test_refuse_unpickling_patches_and_restores(tmp_path):
    marker = tmp_path / "marker"
    evil = _evil(marker)
    before = (pickle.loads, pickle.load, pickle.Unpickler, torch.load, torch._C._pickle_load_obj)
    buf = io.BytesIO()
    torch.save({"w": torch.arange(3)}, buf)
    with pt2.refuse_unpickling(tmp_path / "x.pt2") as guard:
        for attempt in (lambda: pickle.loads(evil), lambda: pickle.load(io.BytesIO(evil)),
                        lambda: pickle.Unpickler(io.BytesIO(evil)).load(),
                        lambda: torch.load(io.BytesIO(evil), weights_only=False),
                        lambda: torch._C._pickle_load_obj(evil)):
            with pytest.raises(FormatError, match="refused"):
                attempt()
        with pytest.raises(pickle.UnpicklingError):  # the default becomes torch's restricted unpickler
            torch.load(io.BytesIO(evil))
        assert torch.equal(torch.load(io.BytesIO(buf.getvalue()))["w"], torch.arange(3))  # tensors still load
    assert len(guard.refused) == 5
    assert not marker.exists()
    assert (pickle.loads, pickle.load, pickle.Unpickler, torch.load, torch._C._pickle_load_obj) == before


# ---------------------------------------------------------------------------------------
# the scan: layout, sizes, pickles, program JSON


def test_scan_refuses_unknown_and_dangerous_members(tmp_path):
    src = _clean(tmp_path)
    cases = {
        "data/aotinductor/model/model.so": "AOTInductor",
        "data/weights/model.pt": "legacy pickled weights",
        "models/other.json": "other than 'model'",
        "data/notes.bin": "not a member torch.export.save writes",
    }
    for i, (rel, why) in enumerate(cases.items()):
        bad = _rewrite(src, tmp_path / f"bad{i}.pt2", lambda m, rel=rel: m.__setitem__(rel, b"x"))
        with pytest.raises(FormatError, match=why) as err:
            pt2.scan_archive(bad)
        assert rel in str(err.value)


def test_scan_refuses_an_unknown_archive_version(tmp_path):
    bad = _rewrite(_clean(tmp_path), tmp_path / "v1.pt2", lambda m: m.__setitem__("archive_version", b"1"))
    with pytest.raises(FormatError, match="archive_version.*unknown archive format version"):
        pt2.scan_archive(bad)


def test_scan_refuses_duplicate_members(tmp_path):
    src = _clean(tmp_path)
    dup = tmp_path / "dup.pt2"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dup, "w") as zout:
        for name in zin.namelist():
            zout.writestr(name, zin.read(name))
        with pytest.warns(UserWarning, match="Duplicate name"):
            zout.writestr(next(n for n in zin.namelist() if n.endswith("weight_0")), b"\0" * 16)
    with pytest.raises(FormatError, match="weight_0' appears twice"):
        pt2.scan_archive(dup)


def test_scan_refuses_a_zip_bomb(tmp_path, monkeypatch):
    src = _clean(tmp_path)
    bomb = _rewrite(src, tmp_path / "bomb.pt2", lambda m: m.__setitem__("extra/big.txt", b"0" * 20_000_000),
                    compression=zipfile.ZIP_DEFLATED)
    with pytest.raises(FormatError, match=r"extra/big.txt' inflates from \d+ to 20000000 bytes"):
        pt2.scan_archive(bomb)
    # the total cap, with the sizes in the message
    monkeypatch.setattr(pt2, "MAX_INFLATED_BYTES", 10_000)
    with pytest.raises(FormatError, match=r"inflated size to \d+ bytes \(archive \d+ bytes\), over the 10000"):
        pt2.scan_archive(src)


def test_deflated_clean_archive_passes(tmp_path):
    src = _clean(tmp_path)
    deflated = _rewrite(src, tmp_path / "deflated.pt2", lambda m: None, compression=zipfile.ZIP_DEFLATED)
    pt2.load_exported(deflated)


def test_scan_refuses_a_torch_save_with_foreign_globals(tmp_path):
    marker = tmp_path / "marker"

    def edit(m):
        buf = io.BytesIO()
        torch.save(((torch.zeros(1), _Payload(marker)), {}), buf)
        m["data/sample_inputs/model.pt"] = buf.getvalue()

    bad = _rewrite(_clean(tmp_path), tmp_path / "inputs.pt2", edit)
    with pytest.raises(FormatError, match=r"sample_inputs/model.pt' its pickle calls .*open"):
        pt2.scan_archive(bad)
    assert not marker.exists()


def test_scan_refuses_non_operator_targets_and_unsafe_expressions(tmp_path):
    src = _clean(tmp_path)

    def target(m):
        program = json.loads(m["models/model.json"])
        program["graph_module"]["graph"]["nodes"][0]["target"] = "torch.os.system"
        m["models/model.json"] = json.dumps(program).encode()

    def expression(m):
        program = json.loads(m["models/model.json"])
        program["graph_module"]["graph"]["sym_int_values"] = {"x": {"as_expr": {
            "expr_str": "__import__('os').getcwd()", "hint": None}}}
        m["models/model.json"] = json.dumps(program).encode()

    with pytest.raises(FormatError, match="calls 'torch.os.system'.*ATen and prims operators only"):
        pt2.scan_archive(_rewrite(src, tmp_path / "t.pt2", target))
    with pytest.raises(FormatError, match="shape expression .*__import__.*sympify"):
        pt2.scan_archive(_rewrite(src, tmp_path / "e.pt2", expression))


@pytest.mark.parametrize("expr, ok", [
    ("s0", True), ("2*s0 + FloorDiv(s1, 4)", True), ("Eq(s0, 3)", True), ("s0 >= 2", True),
    ("Symbol('s31', positive=True, integer=True)", True), ("1.5e3 ** s2", True),
    ("__import__('os')", False), ("s0.__class__", False), ("eval(s0)", False), ("open(s0)", False),
    ("Symbol('x'); import os", False), ("s1.real", False), ("lambda: 0", False), ("s0[0]", False),
])
def test_safe_expression(expr, ok):
    assert pt2.safe_expression(expr) is ok
