"""fs_hw.convert: torch networks into FS networks.

The central check: the converted network, run on the reference backend (fast mode),
predicts what the torch model predicts with every activation replaced by its FS code
(the "FS twin", built here independently of the converter: the unfolded float64 torch
model, traced with torch.fx, activation nodes swapped for modules that call
fs_hw.dynamics.simulate_fs with the code's tables, the input passed through the input
code).
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
import torch
import torch.nn.functional as F
from torch import nn

from fs_hw.codes import get_code, relu_code
from fs_hw.convert import AlphaPolicy, from_torch
from fs_hw.convert_cli import main as cli_main
from fs_hw.dynamics import simulate_fs
from fs_hw.errors import FSHWError, UnsupportedError, ValidationError
from fs_hw.ir import Conv2d, Dense, FSCode, load_network, save_network
from fs_hw.reference.simulator import run_reference

torch.set_num_threads(1)

ACT_MODULES = (nn.ReLU, nn.ReLU6, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.GELU)
ACT_FUNCTIONS = (F.relu, torch.relu, F.silu, torch.sigmoid, torch.tanh, F.gelu)


# ---------------------------------------------------------------------------------------
# the FS twin


class FSCodeModule(nn.Module):
    """y = FS(v + offset) with the code's tables, in float64, by simulate_fs; plus a shift."""

    def __init__(self, code, offset=0.0, shift=0.0):
        super().__init__()
        self.tables = [torch.tensor(getattr(code, k), dtype=torch.float64) for k in "Thd"]
        self.rule, self.offset, self.shift = code.rule, offset, shift

    def forward(self, v):
        T, h, d = self.tables
        return simulate_fs(v.double() + self.offset, T, h, d, self.rule).output + self.shift


def fs_twin(model, network):
    """The float64 torch model with its activations (and input) replaced by the network's FS codes."""
    conv = network.metadata["conversion"]
    layers = {entry["graph_node"]: entry for entry in conv["layers"]}
    gm = torch.fx.symbolic_trace(copy.deepcopy(model).double().eval())
    graph = gm.graph
    count = 0
    for node in list(graph.nodes):
        if node.op == "placeholder" and conv["input"]["code"] is not None:
            code = network.codes[conv["input"]["code"]]
            gm.add_submodule("fs_input", FSCodeModule(code, shift=conv["input"].get("shift", 0.0)))
            with graph.inserting_after(node):
                new = graph.call_module("fs_input", (node,))
            node.replace_all_uses_with(new, delete_user_cb=lambda user, new=new: user is not new)
            continue
        is_act = (node.op == "call_module" and isinstance(gm.get_submodule(node.target), ACT_MODULES)) or (
            node.op == "call_function" and node.target in ACT_FUNCTIONS)
        if not is_act:
            continue
        entry = layers[node.name]
        code = network.codes[entry["code"]]
        offset = entry["offset"] if entry["offset_in"] != "code thresholds" else 0.0
        count += 1
        gm.add_submodule(f"fs_act{count}", FSCodeModule(code, offset))
        with graph.inserting_after(node):
            new = graph.call_module(f"fs_act{count}", (node.args[0],))
        node.replace_all_uses_with(new)
        graph.erase_node(node)
    assert count == len(layers)
    gm.recompile()
    return gm


def twin_outputs(model, network, x):
    with torch.no_grad():
        return fs_twin(model, network)(torch.as_tensor(x, dtype=torch.float64)).numpy()


def check_against_twin(model, network, x, min_agreement=1.0):
    ref = run_reference(network, np.asarray(x, dtype=np.float64), mode="fast")
    twin = twin_outputs(model, network, x)
    agreement = float(np.mean(ref.predictions == twin.argmax(1)))
    assert agreement >= min_agreement, f"reference and FS twin agree on {agreement:.3f} of samples"
    return ref, twin


def randomize_bn(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) * 0.4 - 0.2)
            m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) * 0.4 - 0.2)
    return model


def images(n=96, seed=0, shape=(1, 16, 16)):
    g = torch.Generator().manual_seed(seed)
    return torch.rand((n, *shape), generator=g)


# ---------------------------------------------------------------------------------------
# small untrained models


class MLP(nn.Module):
    """Functional ReLU, Dropout, Identity, view-as-flatten, BatchNorm1d after a Linear."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(256, 64)
        self.bn = nn.BatchNorm1d(64)
        self.drop = nn.Dropout(0.3)
        self.fc2 = nn.Linear(64, 32)
        self.skip = nn.Identity()
        self.fc3 = nn.Linear(32, 10)

    def forward(self, x):
        x = x.view(x.size(0), -1)
        x = F.relu(self.bn(self.fc1(x)))
        x = self.drop(x)
        x = torch.relu(self.fc2(x))
        return self.fc3(self.skip(x))


def cnn_bn():
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Conv2d(16, 16, 3), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
    )


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return F.relu(out + self.shortcut(x))


class ResNetTiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.relu = nn.ReLU()
        self.block1 = Block(8, 8, 1)      # identity shortcut
        self.block2 = Block(8, 16, 2)     # 1x1 conv + BN shortcut
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.relu(self.block2(self.block1(self.relu(self.stem(x)))))  # one ReLU module, used twice
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def swish_net():
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.SiLU(), nn.AvgPool2d(2),
        nn.Flatten(), nn.Linear(8 * 8 * 8, 32), nn.Sigmoid(), nn.Linear(32, 10),
    )


# ---------------------------------------------------------------------------------------
# equivalence with the FS twin


def test_mlp_matches_twin():
    torch.manual_seed(0)
    model = randomize_bn(MLP()).eval()
    x = images()
    net = from_torch(model, x[:2], x, K=6)
    assert net.K == 6 and net.input.code == "input_k6"
    assert [n.kind for n in net.order].count("fs") == 2
    check_against_twin(model, net, x)


def test_cnn_with_batchnorm_matches_twin():
    torch.manual_seed(1)
    model = randomize_bn(cnn_bn()).eval()
    x = images(seed=1)
    net = from_torch(model, x[:2], x, K=5)
    kinds = [n.kind for n in net.order]
    assert "avgpool2d" in kinds and kinds.count("conv2d") == 3 and kinds.count("fs") == 3
    assert len(net.metadata["conversion"]["folded"]) == 2  # both BatchNorms folded, none left
    check_against_twin(model, net, x)


def test_residual_matches_twin():
    torch.manual_seed(2)
    model = randomize_bn(ResNetTiny()).eval()
    x = images(seed=2)
    net = from_torch(model, x[:2], x, K=6)
    adds = [n for n in net.order if n.kind == "add"]
    assert len(adds) == 2
    # the second block's shortcut is a 1x1 conv with its BN folded in
    assert any(isinstance(n, Conv2d) and n.weight.shape[2:] == (1, 1) for n in net.nodes)
    check_against_twin(model, net, x)
    layers = net.metadata["conversion"]["layers"]
    assert [e["node"] for e in layers if e["torch"] == "relu"] == ["relu", "relu#2"]
    # every ReLU's half step went into a bias (after an add: into the main branch's conv), except
    # the one right after another ReLU: into its thresholds
    assert [e["offset_in"] for e in layers][-2:] == ["bias of 'block2.conv2'", "code thresholds"]
    assert all(e["offset_in"].startswith("bias of") for e in layers[:-1])


def test_swish_sigmoid_matches_twin():
    torch.manual_seed(3)
    model = randomize_bn(swish_net()).eval()
    x = images(seed=3)
    # the published sigmoid code (K=12) padded with 4 silent steps: a K=16 code, given by the user
    sig = get_code("sigmoid_published_k12")
    pad = FSCode("sigmoid_pad16", np.r_[sig.T, [1e9] * 4], np.r_[sig.h, [0.0] * 4], np.r_[sig.d, [0.0] * 4],
                 sig.rule, sig.provenance)
    net = from_torch(model, x[:2], x, codes={"sigmoid": pad})
    assert net.K == 16  # the published swish code has K=16, the user's sigmoid code too
    # K chosen so that a code exists for both swish and sigmoid
    for entry in net.metadata["conversion"]["layers"]:
        code = net.codes[entry["code"]]
        assert code.provenance.function == entry["function"] and code.K == net.K
    check_against_twin(model, net, x)


def test_relu6_and_offset_in_thresholds_match_twin():
    torch.manual_seed(8)
    # the second ReLU reads a pooled FS layer: no bias before it, so its half step goes into the thresholds
    model = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.ReLU6(), nn.AvgPool2d(2), nn.ReLU(),
                          nn.Flatten(), nn.Linear(6 * 8 * 8, 10)).eval()
    with torch.no_grad():
        model[0].weight.mul_(20)  # pre-activations well above 6, so the clip matters
    x = images(seed=8)
    net = from_torch(model, x[:2], x, K=5)
    first, second = net.metadata["conversion"]["layers"]
    assert first["alpha"] == 6.0 and first["clip"] == 6.0 and first["offset_in"] == "bias of '0'"
    assert second["offset_in"] == "code thresholds"
    code = net.codes[second["code"]]
    np.testing.assert_allclose(code.T, relu_code(second["alpha"], 5).T - second["offset"])
    check_against_twin(model, net, x)
    spike = run_reference(net, x[:4].numpy().astype(np.float64), mode="spike")
    fast = run_reference(net, x[:4].numpy().astype(np.float64), mode="fast")
    assert all(np.array_equal(spike.spike_counts[k], fast.spike_counts[k]) for k in fast.spike_counts)


def test_signed_input_is_shifted_exactly():
    torch.manual_seed(4)
    model = nn.Sequential(nn.Conv2d(1, 6, 3), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 14 * 14, 10)).eval()
    x = (images(seed=4) - 0.3) / 0.4  # "normalised" input with negative values
    net = from_torch(model, x[:2], x, K=6)
    info = net.metadata["conversion"]["input"]
    assert info["mode"] == "round" and info["range"][0] < 0 and info["shift_folded_into"] == ["0"]
    check_against_twin(model, net, x)
    # the input code spans the range exactly: its lowest and highest levels decode to lo and hi
    code = net.codes[info["code"]]
    lo, hi = info["range"]
    out = code(np.array([lo, hi])).output + lo
    assert np.allclose(out, [lo, hi], atol=1e-12)


class Normalize(nn.Module):
    """torchvision-style input normalisation at the front of a model."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).reshape(-1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).reshape(-1, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


def test_signed_input_into_padded_conv_converts_exactly():
    # The round code delivers x - lo; zero padding then pads x with lo, not 0. The converter
    # states the shift's effect as a bias map, which differs at the border, so the converted
    # network is exactly the ANN with its input quantized (the twin), border pixels included.
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 256, 3)).eval()
    x = images() - 0.5
    net = from_torch(model, x[:2], x, K=10)
    conv = net.by_name["0"]
    assert conv.bias.shape == (4, 16, 16)
    assert not np.allclose(conv.bias[:, 0, 0], conv.bias[:, 8, 8])  # border and interior differ
    assert np.allclose(conv.bias[:, 8, 8], conv.bias[:, 5, 9], rtol=0, atol=1e-12)  # interior is constant
    ref, twin = check_against_twin(model, net, x)
    # float64 both; the folded bias map reorders a few additions (tolerance: 1e-9 of the logits' scale)
    assert np.allclose(ref.outputs, twin, rtol=0, atol=1e-9 * np.abs(twin).max())
    analog = from_torch(model, x[:2], x, input_code=None)  # analog input, asked for explicitly
    assert analog.input.code is None


def test_normalisation_module_in_front_of_a_padded_conv_is_folded_and_recorded():
    torch.manual_seed(4)
    model = nn.Sequential(Normalize([0.3], [0.35]), nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 256, 3)).eval()
    x = images()  # raw pixels in [0, 1]
    net = from_torch(model, x[:2], x, K=10)
    assert np.allclose(net.input.mean, [0.3]) and np.allclose(net.input.std, [0.35])
    assert net.metadata["conversion"]["input"]["shift"] == 0.0  # raw pixels are non-negative: no shift
    assert net.by_name["1"].bias.ndim == 3
    ref, twin = check_against_twin(model, net, x)
    assert np.allclose(ref.outputs, twin, rtol=0, atol=1e-9 * np.abs(twin).max())


def test_input_normalization_given_as_data_equals_the_model_with_it_in_front():
    torch.manual_seed(6)
    mean, std = [0.25], [0.375]  # exact in float32 too, so the module in front computes the very same
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 256, 3)).eval()
    x = images()
    net = from_torch(model, x[:2], x, K=10, input_normalization=(mean, std))
    assert net.metadata["conversion"]["input"]["normalization"]["given"] is True
    assert np.allclose(net.input.mean, mean) and np.allclose(net.input.std, std)
    # the same network as the model with the normalisation in front (checked against its twin)
    in_front = nn.Sequential(Normalize(mean, std), *model).eval()
    ref_front, twin = check_against_twin(in_front, from_torch(in_front, x[:2], x, K=10), x)
    ref = run_reference(net, np.asarray(x, dtype=np.float64), mode="fast")
    assert np.array_equal(ref.predictions, ref_front.predictions)
    assert np.allclose(ref.outputs, twin, rtol=0, atol=1e-9 * np.abs(twin).max())
    with pytest.raises(ValidationError,
                       match=r"input_normalization: needs finite means and stds > 0, got mean \[0.25\], std \[0.0\]"):
        from_torch(model, x[:2], x, input_normalization=(mean, [0.0]))
    with pytest.raises(ValidationError, match=r"input_normalization mean.*has 3 values; the input has 1 channels"):
        from_torch(model, x[:2], x, input_normalization=([0.1, 0.2, 0.3], std))


def test_pixel_input_code_is_exact_for_8_bit_images():
    model = nn.Sequential(nn.Flatten(), nn.Linear(256, 10)).eval()
    pixels = torch.arange(256, dtype=torch.float32).repeat(2).reshape(2, 1, 16, 16) / 255
    net = from_torch(model, pixels[:1], pixels, K=8)
    code = net.codes[net.input.code]
    decoded = code(pixels.numpy().astype(np.float64)).output
    assert np.allclose(decoded, pixels.numpy(), atol=1e-12)  # every 8-bit level is hit, 1.0 not clipped


def test_exported_program_converts_like_the_module(tmp_path):
    torch.manual_seed(5)
    model = randomize_bn(ResNetTiny()).eval()
    x = images(seed=5)
    path = tmp_path / "tiny.pt2"
    torch.export.save(torch.export.export(model, (x[:2],)), path)
    net_ep = from_torch(torch.export.load(path), None, x, K=6)
    net_fx = from_torch(model, x[:2], x, K=6)
    assert net_ep.metadata["conversion"]["frontend"] == "torch.export"
    assert sorted(n.kind for n in net_ep.nodes) == sorted(n.kind for n in net_fx.nodes)
    a = run_reference(net_ep, x.numpy().astype(np.float64)).predictions
    b = run_reference(net_fx, x.numpy().astype(np.float64)).predictions
    assert np.mean(a == b) >= 0.98


# ---------------------------------------------------------------------------------------
# BatchNorm folding


def test_batchnorm_folding_is_exact_in_float64():
    torch.manual_seed(6)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.BatchNorm2d(4),
        nn.Conv2d(4, 4, 3, groups=2, dilation=2),  nn.BatchNorm2d(4),  # expanded exactly
        nn.Flatten(), nn.Linear(4 * 4 * 4, 8), nn.BatchNorm1d(8), nn.Linear(8, 5),
    )
    model = randomize_bn(model).eval()
    x = images(8, seed=6)
    net = from_torch(model, x[:2], x, input_code=None)  # no activations, analog input: a pure linear map
    assert not any(n.kind == "fs" for n in net.nodes)
    out = run_reference(net, x.numpy().astype(np.float64)).outputs
    with torch.no_grad():
        expected = model.double()(x.double()).numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)


def test_constant_scale_shift_and_subtraction_fold():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Linear(256, 8), nn.Linear(256, 8), nn.Linear(8, 3)

        def forward(self, x):
            x = x.flatten(1)
            return self.c(torch.relu(self.a(x) * 0.5 - self.b(x)) + 0.25)

    model = M().eval()
    x = images(8)
    net = from_torch(model, x[:2], x, alpha_policy=2.0, input_code=None, half_step=False)
    dense = {n.name: n for n in net.nodes if isinstance(n, Dense)}
    w = {k: getattr(model, k).weight.detach().double().numpy() for k in "abc"}
    b = {k: getattr(model, k).bias.detach().double().numpy() for k in "abc"}
    np.testing.assert_allclose(dense["a"].weight, w["a"] * 0.5)
    np.testing.assert_allclose(dense["b"].weight, -w["b"])
    # the shift after the ReLU is folded into the next layer's bias (input side)
    np.testing.assert_allclose(dense["c"].bias, b["c"] + 0.25 * w["c"].sum(axis=1))


def test_batchnorm_before_an_unpadded_conv_folds_into_it():
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 3),
                          nn.Flatten(), nn.Linear(4 * 14 * 14, 3))
    model = randomize_bn(model).eval()
    x = images(8)
    net = from_torch(model, x[:2], x, K=8)
    assert "(input side)" in net.metadata["conversion"]["folded"][0]
    check_against_twin(model, net, x)
    # before a zero-padded conv its shift becomes a bias map (the padding is 0, not the shift)
    padded = randomize_bn(nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.BatchNorm2d(4),
                                        nn.Conv2d(4, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 14 * 14, 3))).eval()
    net = from_torch(padded, x[:2], x, K=8)
    assert net.by_name["3"].bias.shape == (4, 14, 14)
    check_against_twin(padded, net, x)


# ---------------------------------------------------------------------------------------
# refusals: the layer, its place, and what to use instead


class WithMaxPool(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.relu1 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(4 * 7 * 7, 3)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.relu1(self.conv(x))), 1))


class Gated(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.fc = nn.Linear(256, 8), nn.Linear(256, 8), nn.Linear(8, 3)

    def forward(self, x):
        x = x.flatten(1)
        return self.fc(torch.relu(self.a(x)) * torch.sigmoid(self.b(x)))


class Concat(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.fc = nn.Linear(256, 8), nn.Linear(256, 8), nn.Linear(16, 3)

    def forward(self, x):
        x = x.flatten(1)
        return self.fc(torch.cat([F.relu(self.a(x)), F.relu(self.b(x))], dim=1))


@pytest.mark.parametrize("export", [False, True])
def test_maxpool_is_refused(export):
    model = WithMaxPool().eval()
    x = images(4)
    source = torch.export.export(model, (x,)) if export else model
    with pytest.raises(UnsupportedError) as info:
        from_torch(source, x, x)
    msg = str(info.value)
    assert "MaxPool2d 'pool'" in msg and "node 3 of 5" in msg and "after 'relu1'" in msg and "AvgPool2d" in msg
    assert "\n" not in msg


@pytest.mark.parametrize("model, layer, position, instead", [
    (Gated(), "operator.mul 'mul'", "node 6 of 7, after 'relu' and 'sigmoid'", "nn.SiLU"),
    (Concat(), "torch.cat 'cat'", "node 6 of 7", "residual add"),
    (nn.Sequential(nn.Flatten(), nn.Linear(256, 8), nn.LeakyReLU(), nn.Linear(8, 3)),
     "LeakyReLU '2'", "node 3 of 4, after '1'", "ReLU"),
    (nn.Sequential(nn.Flatten(), nn.Linear(256, 8), nn.ReLU(), nn.Linear(8, 3), nn.Softmax(dim=1)),
     "Softmax '4'", "node 5 of 5, after '3'", "remove it"),
    (nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 196, 3)),
     "BatchNorm2d '2'", "node 3 of 5, after '1'", "directly after a Conv2d"),
    (nn.Sequential(nn.Conv2d(1, 4, 3), nn.LayerNorm([4, 14, 14]), nn.Flatten(), nn.Linear(4 * 196, 3)),
     "LayerNorm '1'", "node 2 of 4, after '0'", "BatchNorm"),
])
def test_unsupported_layers_are_refused(model, layer, position, instead):
    x = images(4)
    with pytest.raises(UnsupportedError) as info:
        from_torch(model.eval(), x, x)
    msg = str(info.value)
    assert layer in msg and position in msg and instead in msg, msg


def test_missing_fitted_code_names_the_available_K():
    model = nn.Sequential(nn.Flatten(), nn.Linear(256, 8), nn.SiLU(), nn.Linear(8, 3)).eval()
    x = images(4)
    with pytest.raises(UnsupportedError, match=r"SiLU '2' \(node 3 of 4, after '1'\): no FS code for swish with K=3"):
        from_torch(model, x, x, K=3)


def test_missing_tanh_code_is_refused_with_the_available_K():
    from fs_hw.codes import published_codes, shipped_codes

    have = sorted({c.K for c in {**published_codes(), **shipped_codes()}.values()
                   if c.provenance and c.provenance.function == "tanh"})
    K = next(k for k in range(3, 28) if k not in have)
    model = nn.Sequential(nn.Flatten(), nn.Linear(256, 8), nn.Tanh(), nn.Linear(8, 3)).eval()
    x = images(4)
    with pytest.raises(UnsupportedError) as info:
        from_torch(model, x, x, K=K)
    msg = str(info.value)
    assert f"Tanh '2' (node 3 of 4, after '1'): no FS code for tanh with K={K}" in msg and "fit_code" in msg
    assert (f"K in {have}" in msg) if have else ("no code for tanh is shipped" in msg)


def test_model_in_training_mode_and_bad_arguments():
    model = nn.Sequential(nn.Flatten(), nn.Linear(256, 3))
    x = images(4)
    with pytest.raises(ValidationError, match="training mode"):
        from_torch(model.train(), x, x)
    model.eval()
    with pytest.raises(ValidationError, match="K"):
        from_torch(model, x, x, K=0)
    with pytest.raises(ValidationError, match="alpha_policy"):
        from_torch(model, x, x, alpha_policy="median")
    with pytest.raises(ValidationError, match="calibration_data"):
        from_torch(model, x, images(4, shape=(1, 8, 8)))


# ---------------------------------------------------------------------------------------
# calibration


def test_alpha_policies():
    torch.manual_seed(7)
    model = nn.Sequential(nn.Flatten(), nn.Linear(256, 32), nn.ReLU(), nn.Linear(32, 3)).eval()
    x = images(200, seed=7)
    with torch.no_grad():
        pre = model[1](x.flatten(1)).numpy().astype(np.float64)
    pos = pre[pre > 0]

    def alpha(policy, **kw):
        net = from_torch(model, x[:2], x, alpha_policy=policy, **kw)
        return net.metadata["conversion"]["layers"][0]["alpha"], net

    a, net = alpha("max")
    assert a == float(np.float32(pos.max()))
    a, _ = alpha("percentile:99")
    assert a == float(np.float32(np.percentile(pos, 99)))
    a, _ = alpha(2.5)
    assert a == 2.5
    a, _ = alpha({"2": "max", "*": 1.0})
    assert a == float(np.float32(pos.max()))
    assert AlphaPolicy.parse("p99.9") == AlphaPolicy("percentile", 99.9)
    # alpha is float32-representable and the code is the exact ReLU code (reference closed form)
    entry = net.metadata["conversion"]["layers"][0]
    assert net.codes[entry["code"]] == relu_code(entry["alpha"], net.K, ">=", name=entry["code"])


def test_half_step_offset_goes_into_the_bias():
    model = nn.Sequential(nn.Flatten(), nn.Linear(256, 32), nn.ReLU(), nn.Linear(32, 3)).eval()
    x = images(50)
    on = from_torch(model, x[:2], x, K=4, alpha_policy=2.0)
    off = from_torch(model, x[:2], x, K=4, alpha_policy=2.0, half_step=False)
    b_on, b_off = on.by_name["1"].bias, off.by_name["1"].bias
    np.testing.assert_allclose(b_on - b_off, 2.0 * 2.0**-4 / 2)
    assert off.metadata["conversion"]["layers"][0]["offset"] == 0.0


def test_metadata_round_trips_through_the_file(tmp_path):
    model = randomize_bn(cnn_bn()).eval()
    x = images(16)
    net = from_torch(model, x[:2], x, K=4, name="tiny", metadata={"dataset": "random"})
    path = save_network(net, tmp_path / "tiny.fsnet")
    back = load_network(path)
    assert back == net
    meta = back.metadata
    assert meta["name"] == "tiny" and meta["dataset"] == "random" and meta["conversion"]["K"] == 4
    json.dumps(meta)


# ---------------------------------------------------------------------------------------
# the zoo (skipped until its weights and the data set are there)


def _zoo_or_skip(name):
    from fs_hw.zoo import load
    from fs_hw.zoo.models import weights_paths

    if not weights_paths(name)[0].is_file():
        pytest.skip(f"zoo weights for {name} not trained yet")
    return load(name)


def _data_or_skip():
    from fs_hw.data import load_dataset

    try:
        return load_dataset("fashion-mnist", "test")
    except FSHWError as exc:
        pytest.skip(str(exc))


@pytest.mark.slow  # converts every zoo model and runs its twin
@pytest.mark.parametrize("name, n", [("mlp", 300), ("lenet", 300), ("sigmoid_mlp", 300), ("swish_cnn", 100),
                                     ("resnet8", 100), ("resnet20", 40)])
def test_zoo_models_match_twin(name, n):
    model = _zoo_or_skip(name)
    x, y = _data_or_skip()
    x, y = x[:n], y[:n]
    net = from_torch(model, x[:2], x)
    ref, _ = check_against_twin(model, net, x, min_agreement=0.99)
    with torch.no_grad():
        ann = model(torch.from_numpy(x)).argmax(1).numpy()
    assert np.mean(ref.predictions == ann) >= 0.9  # FS stays close to the ANN


# ---------------------------------------------------------------------------------------
# the CLI


def _export_file(tmp_path):
    model = nn.Sequential(nn.Conv2d(1, 4, 3, stride=2), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 13 * 13, 10)).eval()
    path = tmp_path / "small.pt2"
    torch.export.save(torch.export.export(model, (torch.rand(2, 1, 28, 28),)), path)
    return path


def test_cli_converts_an_exported_file_and_refuses_to_overwrite(tmp_path, capsys, monkeypatch):
    import fs_hw.convert_cli as cli

    data = np.random.default_rng(0).random((64, 1, 28, 28)).astype(np.float32)
    monkeypatch.setattr(cli, "load_dataset", lambda name, split: (data, np.zeros(64, np.int64)))
    src = _export_file(tmp_path)
    out = tmp_path / "small.fsnet"
    assert cli_main([str(src), "--out", str(out), "--calibration", "32", "--K", "5",
                     "--alpha-policy", "percentile:99.9"]) == 0
    net = load_network(out)
    meta = net.metadata
    assert net.K == 5 and meta["model"] == "small.pt2" and meta["dataset"] == "fashion-mnist"
    assert meta["conversion"]["alpha_policy"] == "percentile:99.9" and meta["conversion"]["calibration_samples"] == 32
    assert cli_main([str(src), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fs-convert: error:") and "--force" in err and "Traceback" not in err
    assert cli_main([str(src), "--out", str(out), "--force", "--K", "4", "--calibration", "16"]) == 0
    assert load_network(out).K == 4


def test_cli_errors_are_one_line(tmp_path, capsys):
    bad = tmp_path / "not_a_model.pt2"
    bad.write_text("hello")
    for args in (["no_such_zoo_model", "--out", str(tmp_path / "b.fsnet")],
                 ["mlp", "--out", str(tmp_path / "c.fsnet"), "--alpha-policy", "median"],
                 ["mlp", "--out", str(tmp_path / "d.fsnet"), "--calibration", "0"]):
        assert cli_main(args) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("fs-convert: error:"), lines
    # in a real process too: nothing else (no torch log, no traceback) reaches stderr
    proc = subprocess.run([sys.executable, "-m", "fs_hw.convert_cli", str(bad), "--out", str(tmp_path / "a.fsnet")],
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1], timeout=120,
                          check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fs-convert: error:") and "not a torch.export file" in lines[0]
