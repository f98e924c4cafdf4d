"""fs-deploy: the command users run."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fs_hw import conformance
from fs_hw.cli import main
from fs_hw.ir import save_network

ROOT_EXAMPLE = Path(__file__).resolve().parents[1] / "fs_hw" / "examples" / "fashion_mlp.fsnet"

def test_reference_report_is_exact(tmp_path, capsys):
    report = tmp_path / "r.json"
    assert main(["--target", "reference", "--samples", "60", "--report", str(report)]) == 0
    data = json.loads(report.read_text())
    assert data["target"] == "reference" and data["samples"] == 60
    assert data["agreement"] == 1.0 and data["spike_mismatches"] == 0
    # hidden + output spikes the target produced (100 neurons x 8 steps x 60 samples),
    # the 784 host-encoded input neurons counted apart
    assert data["spikes_compared"] == 60 * 100 * 8
    assert data["input_spikes_compared"] == 60 * 784 * 8
    assert 0.7 < data["accuracy"] <= 1.0 and data["accuracy"] == data["reference_accuracy"]
    assert data["time_steps"] == 16 and data["K"] == 8
    assert 0 < data["spikes_per_neuron"] < 8
    out = capsys.readouterr().out
    assert "spike mismatches" in out and "0 of" in out
    # running again replaces our own report
    assert main(["--target", "reference", "--samples", "10", "--report", str(report)]) == 0
    assert json.loads(report.read_text())["samples"] == 10


def test_report_never_overwrites_a_user_file(tmp_path, capsys):
    precious = tmp_path / "notes.json"
    precious.write_text('{"mine": 1}')
    assert main(["--target", "reference", "--samples", "5", "--report", str(precious)]) == 2
    assert "not an fs-deploy report; refusing to overwrite" in capsys.readouterr().err
    assert precious.read_text() == '{"mine": 1}'


def test_list_targets(capsys):
    assert main(["--list-targets"]) == 0
    out = capsys.readouterr().out
    assert "reference" in out and "installed" in out
    assert "spinnaker" in out


def test_unknown_target_lists_available(capsys, monkeypatch):
    assert main(["--target", "tpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fs-deploy: error: target 'tpu' is not installed") and "reference" in err
    # a target the project knows of but this environment lacks: the message says how to install it
    from fs_hw import backend

    monkeypatch.setitem(backend.KNOWN_TARGETS, "akida", "pip install -e backends/akida")
    assert main(["--target", "akida"]) == 2
    assert "pip install -e backends/akida" in capsys.readouterr().err


def test_bad_config_names_the_key(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text("samples = 3\nspeed = 'fast'\n")
    assert main(["--target", "reference", "--config", str(cfg)]) == 2
    assert "speed: unknown key" in capsys.readouterr().err
    cfg.write_text("[target]\nmode = 'quantum'\n")
    assert main(["--target", "reference", "--config", str(cfg)]) == 2
    assert "[target] mode: must be one of ['fast', 'spike'], got 'quantum'" in capsys.readouterr().err
    cfg.write_text("samples = [")
    assert main(["--target", "reference", "--config", str(cfg)]) == 2
    assert "not valid TOML" in capsys.readouterr().err


def test_too_many_samples(capsys):
    assert main(["--target", "reference", "--samples", "5000"]) == 2
    assert "5000 requested, the inputs hold 1000" in capsys.readouterr().err


def test_out_folder_export_and_non_empty_refusal(tmp_path, capsys):
    out = tmp_path / "export"
    assert main(["--target", "reference", "--samples", "5", "--out", str(out)]) == 0
    assert (out / "network.fsnet").is_file()
    assert (out / "spikes_per_layer.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["--target", "reference", "--samples", "5", "--out", str(out)]) == 2
    assert "not empty; pass --force" in capsys.readouterr().err


def test_malformed_network_exits_2_without_traceback(tmp_path):
    bad = tmp_path / "bad.fsnet"
    bad.write_bytes(b"PK\x03\x04 this is not a zip")
    proc = subprocess.run([sys.executable, "-m", "fs_hw.cli", str(bad), "--target", "reference"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "bad.fsnet: not a readable fs-hw network file" in lines[0]


def test_own_network_with_inputs_file(tmp_path, capsys):
    import numpy as np

    net, x = conformance.scenario("residual", samples=6)
    path = save_network(net, tmp_path / "res.fsnet")
    inputs = tmp_path / "in.npz"
    np.savez(inputs, images=x, labels=np.arange(6) % 3)
    report = tmp_path / "r.json"
    assert main([str(path), "--target", "reference", "--inputs", str(inputs), "--report", str(report)]) == 0
    data = json.loads(report.read_text())
    assert data["spike_mismatches"] == 0 and data["samples"] == 6 and data["time_steps"] == 4 * net.K
    # without --inputs the tool says what to pass
    assert main([str(path), "--target", "reference"]) == 2
    assert "pass --inputs FILE.npz" in capsys.readouterr().err


def test_network_from_dataset_metadata_uses_its_test_split(tmp_path, capsys):
    pytest.importorskip("torch")
    from fs_hw.data import load_dataset

    try:
        load_dataset("fashion-mnist", "test")
    except Exception as exc:  # data package missing: the loader's own error is tested elsewhere
        pytest.skip(str(exc))
    from fs_hw.ir import load_network

    net = load_network(__import__("fs_hw.deploy", fromlist=["_example_path"])._example_path("fashion_mlp.fsnet"))
    renamed = net.replace(metadata={**net.metadata, "name": "my_mlp"})
    path = save_network(renamed, tmp_path / "mine.fsnet")
    report = tmp_path / "r.json"
    assert main([str(path), "--target", "reference", "--samples", "50", "--report", str(report)]) == 0
    data = json.loads(report.read_text())
    assert data["inputs"] == "fashion-mnist test split" and data["spike_mismatches"] == 0
    assert data["accuracy"] is not None


def test_unknown_zoo_or_file_name(capsys):
    assert main(["resnet99", "--target", "reference"]) == 2
    err = capsys.readouterr().err
    assert "resnet99: no such network file, and not a zoo name (zoo: mlp" in err


def test_runner_choice(capsys):
    assert main(["--target", "reference", "--runner", "emulator", "--samples", "1"]) == 2
    err = capsys.readouterr().err
    assert "target 'reference' has no runner 'emulator'; its runners: simulator" in err
    assert len(err.strip().splitlines()) == 1
    assert main(["--target", "reference", "--runner", "simulator", "--samples", "2"]) == 0
    assert main(["--list-targets"]) == 0
    assert "reference      installed; runners: simulator; bit-exact" in capsys.readouterr().out


def _flipping_reference(exactness):
    """The reference target, one hidden spike flipped per run, declaring ``exactness``."""
    from fs_hw.backend import Exactness
    from fs_hw.reference.backend import ReferenceBackend

    class Flipping(ReferenceBackend):
        def run(self, artifact, inputs, record_spikes=False, runner=None):
            res = super().run(artifact, inputs, record_spikes=record_spikes, runner=runner)
            if res.spike_trains:
                hidden = [k for k in res.spike_trains if k != artifact.network.input.name][0]
                res.spike_trains[hidden][0, 0].reshape(-1)[0] ^= 1
            return res

    Flipping.exactness = Exactness("tolerance", **exactness, why="test") if exactness else Exactness()
    return Flipping()


@pytest.mark.parametrize("exactness,code", [(None, 1), ({"spike_mismatch_fraction": 0.01}, 0),
                                            ({"spike_mismatch_fraction": 0.0}, 1)])
def test_exit_status_follows_the_declared_exactness(monkeypatch, tmp_path, capsys, exactness, code):
    import fs_hw.deploy as deploy_api

    monkeypatch.setattr(deploy_api, "get_backend", lambda name: _flipping_reference(exactness))
    report = tmp_path / "r.json"
    assert main(["--target", "reference", "--samples", "10", "--report", str(report)]) == code
    assert json.loads(report.read_text())["spike_mismatches"] == 1


def test_ann_accuracy_from_fs_convert_evaluation():
    from fs_hw.deploy import _ann_accuracy

    # the zoo's whole-test-set figure wins; fs-convert --evaluate's block is the fallback
    assert _ann_accuracy({"ann_test_accuracy": 0.91, "evaluation": {"ann_accuracy": 0.5}}) == 0.91
    assert _ann_accuracy({"evaluation": {"ann_accuracy": 0.875, "samples": 200}}) == 0.875
    assert _ann_accuracy({"evaluation": "not a block"}) is None and _ann_accuracy({}) is None


def test_config_found_next_to_the_package_and_named(tmp_path, monkeypatch, capsys):
    # run from a folder without deploy_configs/: the shipped config is used, and the report says which
    monkeypatch.chdir(tmp_path)
    report = tmp_path / "r.json"
    assert main(["--target", "reference", "--samples", "2", "--report", str(report)]) == 0
    r = json.loads(report.read_text())
    assert r["config"] is not None and r["config"].endswith(str(Path("deploy_configs") / "reference.toml"))
    assert "reference.toml" in capsys.readouterr().out


def test_spikes_per_neuron_excludes_the_input_code_by_default():
    from fs_hw.ir.io import load_network
    from fs_hw.reference.simulator import run_reference

    net = load_network(ROOT_EXAMPLE)
    x = np.load(ROOT_EXAMPLE.parent / "fashion_test.npz")["images"][:20] / 255.0
    r = run_reference(net, x, "fast")
    own = r.spikes_per_neuron()
    assert own == r.spikes_per_neuron(input_name=net.input.name)  # the input node is recorded
    # the input code fires more than the hidden layer: including it must change the figure
    assert r.spikes_per_neuron(include_input=True) != own
    hidden = [n for n in r.neurons if n != net.input.name]
    expected = sum(float(r.spike_counts[n].sum()) for n in hidden) / sum(r.neurons[n] for n in hidden) / len(x)
    assert abs(own - expected) < 1e-12  # float sums of integer counts: exact up to the last bit
