"""fs_hw.deploy(...): the Python API behind fs-deploy (issue 14).

The CLI is a shell over it, so the central test runs both on the same network, target and
samples and compares the report field by field.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fs_hw
from fs_hw import deploy as deploy_api
from fs_hw.cli import main
from fs_hw.errors import FormatError, FSHWError, ValidationError
from fs_hw.ir import load_network

#: Fields that are wall-clock timings: they differ from one run to the next, so a report
#: made by deploy() and one made by fs-deploy can equal each other in everything else only.
TIMING_FIELDS = {"seconds"}
#: timings a backend puts in ``info`` (the nengo-loihi emulator's, the reference's)
TIMING_INFO_KEYS = {"seconds", "seconds_per_sample", "ms_per_step"}


def _without_timings(report: dict) -> dict:
    clean = {k: v for k, v in report.items() if k not in TIMING_FIELDS}
    clean["info"] = {k: v for k, v in report["info"].items() if k not in TIMING_INFO_KEYS}
    return clean


@pytest.mark.parametrize("target", ["reference", pytest.param("loihi", marks=pytest.mark.slow)])
def test_deploy_equals_what_fs_deploy_writes(tmp_path, monkeypatch, capsys, target):
    """Issue 14's criterion: fs_hw.deploy("mlp", T, samples=5) equals what
    ``fs-deploy mlp --target T --samples 5 --report`` writes, field by field (timings aside)."""
    pytest.importorskip("fs_hw_loihi") if target == "loihi" else None
    monkeypatch.chdir(tmp_path)  # both look the config up from the same folder (the shipped one)
    report = fs_hw.deploy("mlp", target, samples=5, progress=False)
    path = tmp_path / "r.json"
    assert main(["mlp", "--target", target, "--samples", "5", "--report", str(path)]) == 0
    written = json.loads(path.read_text())

    assert set(report.to_dict()) == set(written)
    assert _without_timings(report.to_dict()) == _without_timings(written)
    # and the typed attributes themselves, not only their JSON form (a float is written
    # with repr, which reads back as the same float: exact equality is right here)
    for key, value in written.items():
        if key in TIMING_FIELDS or key in ("info", deploy_api.REPORT_MARKER):
            continue
        assert json.loads(json.dumps(getattr(report, key))) == value, key
    assert written["report_version"] == deploy_api.REPORT_VERSION == report.report_version
    assert report.passed is True and report.spike_mismatches == 0 and report.target == target
    assert set(report.seconds) == set(written["seconds"]) == {"quantize", "lower", "run"}
    assert written["config"].endswith(str(Path("deploy_configs") / f"{target}.toml"))
    assert f"config: {written['config']}" in capsys.readouterr().out


def test_fs_deploy_prints_and_writes_what_deploy_returns(tmp_path, monkeypatch, capsys):
    # fs-deploy holds no workflow: hand it a finished report and it writes exactly that
    made = fs_hw.deploy(None, "reference", samples=3, progress=False)
    made.notes.append("a note only this report has")
    monkeypatch.setattr(deploy_api, "_execute", lambda plan, progress: made)
    path = tmp_path / "r.json"
    assert main(["--target", "reference", "--samples", "3", "--report", str(path)]) == 0
    assert path.read_text() == made.to_json()
    assert "note: a note only this report has" in capsys.readouterr().out


def test_report_carries_the_runs(tmp_path):
    report = fs_hw.deploy(None, "reference", samples=4, progress=False)
    assert report.target_run is not None and report.predicted_run is not None and report.reference_run is not None
    assert len(report.target_run.predictions) == 4
    assert report.target_run.spike_trains  # recorded: the raster has something to show
    assert report.spikes_run is report.target_run and not report.mapped_only
    # the JSON numbers are the runs' numbers
    assert report.spikes_per_neuron == pytest.approx(report.target_run.spikes_per_neuron(), rel=1e-12)


def test_array_inputs_with_labels_and_an_in_memory_network():
    from fs_hw.data import load_dataset

    net = load_network(deploy_api._example_path("fashion_mlp.fsnet"))
    images, labels = load_dataset("fashion-mnist", "test")
    x, y = images[:6], labels[:6]
    report = fs_hw.deploy(net, "reference", inputs=x, labels=y, progress=False)
    assert report.samples == 6 and report.inputs == "array of 6 samples"
    assert report.network.startswith("(in-memory network")
    assert report.accuracy == float(np.mean(report.target_run.predictions == y))
    # without labels there is no accuracy, but the comparison still runs
    unlabelled = fs_hw.deploy(net, "reference", inputs=x, progress=False)
    assert unlabelled.accuracy is None and unlabelled.spike_mismatches == 0


def test_inputs_by_data_set_name(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # "fashion-mnist" is no file here: it is the data set
    report = fs_hw.deploy("mlp", "reference", inputs="fashion-mnist", samples=3, progress=False)
    assert report.inputs == "fashion-mnist test split" and report.samples == 3


def test_config_as_a_mapping():
    report = fs_hw.deploy(None, "reference", config={"samples": 2}, progress=False)
    assert report.samples == 2 and report.config == "(mapping given to deploy())"
    assert fs_hw.deploy(None, "reference", config={}, samples=1, progress=False).config is None  # defaults
    # what load_config returns keeps naming its file
    loaded = deploy_api.load_config(None, "reference")
    assert fs_hw.deploy(None, "reference", config=loaded, samples=1, progress=False).config == loaded["_path"]
    with pytest.raises(ValidationError, match="bogus: unknown key"):
        fs_hw.deploy(None, "reference", config={"bogus": 1})


@pytest.mark.parametrize("kwargs,message", [
    ({"samples": 0}, "deploy(): samples: must be >= 1, got 0 (leave samples=None to run every input)"),
    ({"samples": 10**9}, "deploy(): samples: 1000000000 requested, the inputs hold"),
    ({"labels": [1, 2]}, "deploy(): labels: given only with array inputs"),
    ({"inputs": np.zeros((2, 1, 28, 28)), "labels": [1]}, "deploy(): labels: must be 2 integer class indices"),
    ({"inputs": np.zeros((0, 1, 28, 28))}, "deploy(): inputs: array of 0 samples holds no samples"),
    ({"inputs": np.zeros((2, 784))}, "inputs: array of 2 samples: samples of shape (784,); the network's "
                                     "input 'image' takes (1, 28, 28)"),
    ({"runner": "hardware"}, "target 'reference' has no runner 'hardware'"),
    ({"config": 3}, "config: must be a path, a mapping or None"),
])
def test_bad_arguments_name_the_argument(kwargs, message):
    with pytest.raises(FSHWError) as info:
        fs_hw.deploy(None, "reference", progress=False, **kwargs)
    assert message in str(info.value)


def test_bad_arguments_stop_before_anything_runs(monkeypatch):
    monkeypatch.setattr(deploy_api, "_execute", lambda *a: pytest.fail("ran although the input was bad"))
    with pytest.raises(FormatError, match="no such network file, and not a zoo name"):
        fs_hw.deploy("resnet99", "reference")


def test_a_backend_object_as_the_target_and_passed():
    from test_cli import _flipping_reference

    report = fs_hw.deploy(None, _flipping_reference(None), samples=10, progress=False)
    # one hidden spike flipped: a bit-exact target fails, and the report says where
    assert report.spike_mismatches == 1 and report.passed is False and report.first_mismatch
    tolerant = fs_hw.deploy(None, _flipping_reference({"spike_mismatch_fraction": 0.01}), samples=10,
                            progress=False)
    assert tolerant.spike_mismatches == 1 and tolerant.passed is True


def test_save_is_atomic_and_never_overwrites_a_user_file(tmp_path):
    report = fs_hw.deploy(None, "reference", samples=2, progress=False)
    path = report.save(tmp_path / "r.json")
    assert json.loads(path.read_text()) == report.to_dict()
    report.save(path)  # an earlier report of ours may be replaced
    mine = tmp_path / "mine.json"
    mine.write_text('{"precious": true}')
    with pytest.raises(FormatError, match="is not an fs-deploy report; refusing to overwrite"):
        report.save(mine)
    assert mine.read_text() == '{"precious": true}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.json", "r.json"]  # no temporaries, no locks


def test_export_writes_the_program_and_the_figure(tmp_path):
    report = fs_hw.deploy(None, "reference", samples=2, progress=False)
    out = tmp_path / "out"
    written = report.export(out)
    assert (out / "spikes_per_layer.png") in written and all(p.exists() for p in written)
    assert report.exported == [str(p) for p in written] and report.to_dict()["exported"] == report.exported
    with pytest.raises(FormatError, match="exists and is not empty; pass force=True"):
        report.export(out)
    assert report.export(out, force=True)


def test_plot_layers_and_raster(tmp_path):
    pytest.importorskip("matplotlib")
    report = fs_hw.deploy(None, "reference", samples=3, progress=False)
    fig = report.plot(tmp_path / "p.png", sample=2)
    assert len(fig.axes) == 3 and fig.axes[2].get_title() == "spike raster, sample 2"
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the raster's dots are the recorded spikes of that sample, input code included
    dots = sum(len(c.get_offsets()) for c in fig.axes[2].collections)
    assert dots == sum(int(t[2].sum()) for t in report.target_run.spike_trains.values())
    assert len(report.plot(raster=False).axes) == 2
    with pytest.raises(ValidationError, match="sample: must be in"):
        report.plot(sample=3)


def test_repr_for_notebooks():
    report = fs_hw.deploy(None, "reference", samples=2, progress=False)
    text = repr(report)
    assert text.startswith("DeployReport(reference, runner simulator, 2 samples, passed=True)")
    assert "spike mismatches" in text and "0 of" in text
    report.notes.append("a <b>note</b> & more")
    html = report._repr_html_()
    assert "<table>" in html and "accuracy (target)" in html
    assert "a &lt;b&gt;note&lt;/b&gt; &amp; more" in html  # text is escaped, never markup


def test_progress_false_prints_nothing(capsys):
    fs_hw.deploy(None, "reference", samples=2, progress=False)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_import_is_light_and_fs_hw_deploy_is_callable():
    # `import fs_hw` pulls in no numpy; fs_hw.deploy is callable whether or not the
    # submodule fs_hw.deploy was imported first (importing it makes it the attribute)
    code = ("import sys, fs_hw; assert 'numpy' not in sys.modules; "
            "import fs_hw.deploy as m; assert m is fs_hw.deploy and callable(fs_hw.deploy); "
            "from fs_hw import deploy; assert deploy is m; "
            "import inspect; print(inspect.signature(fs_hw.deploy))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("(network:") and "samples: 'int | None' = None" in proc.stdout


@pytest.mark.slow  # trains for seconds, then runs the Loihi emulator: about 25 s
def test_quickstart_example_runs(tmp_path):
    """docs/examples/quickstart.py: train, convert, deploy on two targets, plot."""
    for module in ("torch", "matplotlib", "fs_hw_loihi"):
        pytest.importorskip(module)
    script = Path(__file__).resolve().parents[1] / "docs" / "examples" / "quickstart.py"
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(script), str(out)], capture_output=True, text=True,
                          cwd=tmp_path, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["compare.png", "loihi.json", "loihi.png",
                                                     "reference.json", "reference.png"]
    for target in ("reference", "loihi"):
        written = json.loads((out / f"{target}.json").read_text())
        assert written["target"] == target and written["samples"] == 10
        # both targets must compute what the reference predicts for them, spike for spike
        assert written["spike_mismatches"] == 0 and written["agreement"] == 1.0
        assert (out / f"{target}.png").read_bytes()[:4] == b"\x89PNG"
    assert "loihi: accuracy" in proc.stdout and "passed True" in proc.stdout


def test_progress_lines_reach_stderr_only_while_enabled(capsys):
    import logging

    from fs_hw.deploy import PROGRESS_LOGGER, _progress_lines

    log = logging.getLogger(PROGRESS_LOGGER + ".testtarget")
    with _progress_lines(True):
        log.info("lowering layer %d of %d", 3, 7)
    with _progress_lines(False):
        log.info("not shown")
    log.info("not shown either")
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.endswith("s] lowering layer 3 of 7\n") and err.startswith("[")
    assert logging.getLogger(PROGRESS_LOGGER).handlers == []
