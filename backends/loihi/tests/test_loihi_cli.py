"""fs-deploy --target loihi end to end (emulator)."""

import json
from pathlib import Path

import pytest

pytest.importorskip("nengo_loihi")

from fs_hw.backend import available_targets
from fs_hw.cli import main

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_entry_point_registered():
    assert "loihi" in available_targets()


@pytest.mark.slow  # fs-deploy end to end on nengo-loihi's emulator
def test_fs_deploy_residual_cnn(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FS_HW_PROGRESS", "1")  # progress lines although stderr is no terminal
    report = tmp_path / "r.json"
    rc = main([str(EXAMPLES / "residual_cnn.fsnet"), "--target", "loihi", "--emulator",
               "--inputs", str(EXAMPLES / "residual_cnn_inputs.npz"), "--samples", "12",
               "--config", str(ROOT / "deploy_configs" / "loihi.toml"), "--report", str(report),
               "--out", str(tmp_path / "out")])
    assert rc == 0
    r = json.loads(report.read_text())
    assert r["agreement"] == 1.0 and r["spike_mismatches"] == 0
    assert r["resources"]["cores"] >= 5 and r["info"]["runner"] == "emulator"
    assert (tmp_path / "out" / "loihi.json").is_file()
    # the lowering said what it was doing, layer by layer, on stderr
    err = capsys.readouterr().err
    assert "quantizing for loihi" in err and "lowering for loihi" in err
    assert "lowering layer 1 of " in err and " s] " in err


@pytest.mark.slow  # fs-deploy end to end on nengo-loihi's emulator
def test_fs_deploy_bundled_example(tmp_path):
    report = tmp_path / "r.json"
    rc = main(["--target", "loihi", "--emulator", "--samples", "3",
               "--config", str(ROOT / "deploy_configs" / "loihi.toml"), "--report", str(report)])
    assert rc == 0
    r = json.loads(report.read_text())
    assert r["agreement"] == 1.0 and r["spike_mismatches"] == 0
    assert r["predicted_accuracy"] is not None and r["reference_accuracy"] is not None
    # every rounding is stated: per-step weights list the mantissa bits each step keeps
    assert any("weights rounded" in n or "per-step weights" in n for n in r["notes"])


def test_fs_deploy_bad_config_key(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[target]\nchipz = 2\n")
    rc = main(["--target", "loihi", "--config", str(cfg), "--samples", "1"])
    assert rc == 2
    assert "chipz" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["0", "-1"])
def test_fs_deploy_bad_batch_size_is_one_line(tmp_path, capsys, value):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"[target]\nbatch_size = {value}\n")
    assert main(["--target", "loihi", "--emulator", "--config", str(cfg), "--samples", "1"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "[target] batch_size: must be in [1, " in lines[0]


@pytest.mark.slow  # fs-deploy end to end on nengo-loihi's emulator
def test_export_leaves_no_temporaries(tmp_path):
    out = tmp_path / "out"
    rc = main([str(EXAMPLES / "residual_cnn.fsnet"), "--target", "loihi", "--emulator",
               "--inputs", str(EXAMPLES / "residual_cnn_inputs.npz"), "--samples", "2", "--out", str(out)])
    assert rc == 0
    exported = sorted(p.name for p in out.iterdir())
    assert exported == ["loihi.json", "loihi_profile.fsnet", "spikes_per_layer.png"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # the lock file is gone
    json.loads((out / "loihi.json").read_text(), parse_constant=lambda name: pytest.fail(f"NaN-like {name}"))
