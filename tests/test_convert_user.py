"""A user's path: a model trained on normalised data, fs-convert with --input-mean/--input-std,
spike input and --search, then fs-deploy; the operating-point search; the code-error warning."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from fs_hw.cli import main as deploy_main
from fs_hw.convert import SearchSpace, convert
from fs_hw.convert import calibrate as cal
from fs_hw.convert_cli import main as convert_main
from fs_hw.errors import ValidationError
from fs_hw.ir import load_network


def _swish_mlp():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.SiLU(), nn.Linear(32, 10)).eval()
    with torch.no_grad():
        model[1].weight.mul_(3)  # pre-activations far into the code's range, logits close together
    return model


def test_fitted_code_error_above_the_logit_margins_is_warned_with_the_numbers():
    x = torch.rand(600, 1, 8, 8) * 2 - 1
    result = convert(_swish_mlp(), x, K=8)
    (warning,) = result.warnings
    assert "swish_k8 up to" in warning and "median top-2 margin" in warning
    assert "changes" in warning and "% of the ANN's predictions on 512 calibration samples" in warning
    # the advice is either a shipped K that brings the flips under 1 %, or how to fit one
    assert "--K " in warning or "fit_code" in warning


def test_relu_model_has_no_code_warning_and_is_calibrated_once(monkeypatch):
    calls = []
    real = cal.collect

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(cal, "collect", counting)
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 64, 5)).eval()
    x = torch.rand(400, 1, 8, 8)
    y = model((x - 0.5) / 0.25).argmax(1).numpy()  # labels the ANN gets right: its accuracy is 100 %
    result = convert(model, x[:200], input_normalization=(0.5, 0.25), search=SearchSpace(Ks=(4, 6), scales=(1.0,)),
                     validation=(x[200:].numpy(), y[200:]), loss_budget=0.5)
    assert result.warnings == []
    assert len(calls) == 1  # four candidates and the conversion share one calibration pass
    search = result.search
    assert len(search.points) == 4 and search.ann_val_accuracy == 1.0
    chosen = search.chosen
    ok = [p for p in search.points if p["val_loss"] <= 0.5]
    if ok:  # the rule: fewest spikes among the points within the budget
        assert chosen["spikes_per_neuron"] == min(p["spikes_per_neuron"] for p in ok)
    net = result.network
    assert net.K == chosen["K"] and net.metadata["search"]["chosen"]["K"] == chosen["K"]
    assert net.input.code is not None and net.by_name["0"].bias.ndim == 3  # spike input, bias map at the border
    with pytest.raises(ValidationError, match="validation: is required with search"):
        convert(model, x[:200], search=SearchSpace())


def _train_normalised_cnn(x, y, mean, std, epochs=3):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AvgPool2d(2),
                          nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.AvgPool2d(2),
                          nn.Flatten(), nn.Linear(16 * 7 * 7, 10))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    xn = (torch.from_numpy(x) - mean) / std
    yt = torch.from_numpy(y)
    for _ in range(epochs):
        perm = torch.randperm(len(xn))
        for i in range(0, len(xn), 128):
            idx = perm[i:i + 128]
            opt.zero_grad()
            nn.functional.cross_entropy(model(xn[idx]), yt[idx]).backward()
            opt.step()
    return model.eval()


@pytest.mark.slow
def test_user_model_on_normalised_data_through_fs_convert_search_and_fs_deploy(tmp_path):
    from fs_hw.data import load_dataset

    mean, std = 0.2860, 0.3530
    x, y = load_dataset("fashion-mnist", "train")
    model = _train_normalised_cnn(x[:6000], y[:6000], mean, std)
    pt2 = tmp_path / "user.pt2"
    torch.export.save(torch.export.export(model, (torch.rand(2, 1, 28, 28),)), pt2)
    out, budget = tmp_path / "user.fsnet", 0.5
    assert convert_main([str(pt2), "--out", str(out), "--input-mean", str(mean), "--input-std", str(std),
                         "--search", "--search-K", "4,6", "--search-scales", "1,2", "--loss-budget", str(budget),
                         "--calibration", "500", "--validation", "1000", "--evaluate", "1000"]) == 0
    net = load_network(out)
    assert np.allclose(net.input.mean, [mean]) and np.allclose(net.input.std, [std])
    assert net.input.code is not None  # spike-coded input, into a zero-padded first conv
    search = net.metadata["search"]
    assert search["chosen"]["val_loss"] <= budget, "a point within the budget exists for this model"
    assert (tmp_path / "user.fsnet.search.png").stat().st_size > 1000
    report = tmp_path / "report.json"
    assert deploy_main([str(out), "--target", "reference", "--samples", "1000", "--report", str(report)]) == 0
    data = json.loads(report.read_text())
    evaluation = net.metadata["evaluation"]
    # fs-deploy feeds raw test pixels and reproduces fs-convert's own evaluation on the same 1000 images
    assert data["accuracy"] == pytest.approx(evaluation["fs_accuracy"], abs=1e-12)
    # chosen on validation images; on 1000 test images one image is 0.1 points, so the test
    # loss is allowed one point above the budget for sampling noise
    assert 100 * (evaluation["ann_accuracy"] - evaluation["fs_accuracy"]) <= budget + 1.0


def test_signed_input_no_layer_can_absorb_is_refused_before_calibration(monkeypatch):
    from fs_hw.convert import from_torch
    from fs_hw.errors import UnsupportedError

    class ReluFirst(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3, padding=1)

        def forward(self, x):
            return self.conv(torch.relu(x)).flatten(1)

    def no_calibration(*args, **kwargs):
        raise AssertionError("calibrated before refusing")

    monkeypatch.setattr(cal, "collect", no_calibration)
    x = torch.rand(50, 1, 8, 8) - 0.5
    with pytest.raises(UnsupportedError, match=r"torch.relu 'relu' \(node 1 of 3, after the input 'x'\): the input "
                                               r"range starts at -0.49\d+ < 0 and this layer reads the input directly"):
        from_torch(ReluFirst().eval(), x[:2], x)


def test_fs_hw_convert_is_callable_like_fs_hw_deploy():
    import fs_hw

    torch.manual_seed(2)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 4)).eval()
    x = torch.rand(64, 1, 4, 4)
    result = fs_hw.convert(model, x, K=6)
    assert result.network.K == 6 and result.warnings == [] and callable(fs_hw.deploy)


def test_fs_deploy_says_when_a_normalised_network_is_fed_normalised_samples():
    import fs_hw

    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 16, 3)).eval()
    raw = torch.rand(40, 1, 4, 4)
    net = fs_hw.convert(model, raw, K=6, input_normalization=(0.5, 0.1)).network
    right = fs_hw.deploy(net, "reference", inputs=raw.numpy(), progress=False)
    assert not any("RAW samples" in n for n in right.notes)
    wrong = fs_hw.deploy(net, "reference", inputs=((raw - 0.5) / 0.1).numpy(), progress=False)
    assert any(n.startswith("inputs span [-4.99, 5], far outside the input code's range [0, 1]") and
               "takes RAW samples (its normalisation (x - [0.5]) / [0.1] is folded" in n for n in wrong.notes)
