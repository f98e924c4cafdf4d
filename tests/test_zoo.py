"""fs_hw.zoo: trained models load from npz, obey FS-conversion constraints, keep their accuracy."""

import json
import operator

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from fs_hw.errors import FormatError, MissingDependencyError, ValidationError  # noqa: E402
from fs_hw.zoo import ALLOWED_LEAF_TYPES, ZOO, build, check_architecture, load, metadata  # noqa: E402
from fs_hw.zoo.models import WEIGHTS_DIR, save  # noqa: E402

# what each trained model must at least reach on the full Fashion-MNIST test set (%)
MIN_TEST_ACC = {"mlp": 88.0, "sigmoid_mlp": 87.0, "lenet": 89.0, "swish_cnn": 90.0,
                "resnet8": 91.0, "resnet14": 91.5, "resnet20": 92.0}


@pytest.fixture(scope="module")
def test2000():
    from fs_hw.data import load_dataset
    try:
        x, y = load_dataset("fashion-mnist", "test")
    except MissingDependencyError as e:
        pytest.skip(str(e))
    return torch.from_numpy(x[:2000]), torch.from_numpy(y[:2000])


def test_zoo_names():
    assert set(ZOO) >= {"mlp", "lenet", "resnet8", "resnet14", "resnet20", "swish_cnn"}
    with pytest.raises(ValidationError):
        build("vgg16")


@pytest.mark.parametrize("name", ZOO)
def test_architecture(name):
    model = build(name)
    assert check_architecture(model) == []
    types = {type(m).__name__ for m in model.modules()}
    assert not types & {"MaxPool2d", "Dropout", "GELU", "Identity"}
    # no functional ops hidden in forward: the traced graph calls modules, plus `+` for residuals
    gm = torch.fx.symbolic_trace(model)
    for node in gm.graph.nodes:
        if node.op == "call_function":
            assert node.target in (operator.add,), f"{name}: functional op {node.target}"
        assert node.op != "call_method", f"{name}: method call {node.target}"
        if node.op == "call_module":
            assert type(gm.get_submodule(node.target)).__name__ in ALLOWED_LEAF_TYPES
    for m in model.modules():
        if isinstance(m, torch.nn.AdaptiveAvgPool2d):
            assert m.output_size in (1, (1, 1))
    out = model.eval()(torch.rand(2, 1, 28, 28))
    assert out.shape == (2, 10)
    if name.startswith("resnet"):
        n_blocks = sum(type(m).__name__ == "BasicBlock" for m in model.modules())
        assert 6 * (n_blocks // 3) + 2 == int(name[6:])
    # a separate activation instance per use
    acts = [m for m in model.modules() if isinstance(m, (torch.nn.ReLU, torch.nn.SiLU, torch.nn.Sigmoid))]
    assert len({id(m) for m in acts}) == len(acts)
    assert sum(1 for n in gm.graph.nodes if n.op == "call_module"
               and isinstance(gm.get_submodule(n.target), (torch.nn.ReLU, torch.nn.SiLU, torch.nn.Sigmoid))
               ) == len(acts)


@pytest.mark.slow  # runs every zoo model on 2000 test images
@pytest.mark.parametrize("name", ZOO)
def test_trained_model(name, test2000):
    meta = metadata(name)
    model = load(name)
    assert not model.training and all(not m.training for m in model.modules())
    assert check_architecture(model) == []
    for key in ("test_accuracy", "test2000_accuracy", "epochs", "seed", "train_time_s", "dataset"):
        assert key in meta, key
    assert meta["dataset"] == "fashion-mnist"
    assert meta["test_accuracy"] >= MIN_TEST_ACC[name]
    x, y = test2000
    with torch.no_grad():
        pred = torch.cat([model(x[i:i + 500]).argmax(1) for i in range(0, len(x), 500)])
    acc = 100.0 * (pred == y).float().mean().item()
    assert abs(acc - meta["test2000_accuracy"]) <= 1.0, (acc, meta["test2000_accuracy"])


def test_weights_are_plain_npz():
    for name in ZOO:
        npz = WEIGHTS_DIR / f"{name}.npz"
        if not npz.is_file():
            pytest.fail(f"{npz} missing: python scripts/train_zoo.py {name}")
        with np.load(npz, allow_pickle=False) as z:
            assert all(z[k].dtype != object for k in z.files)
        json.loads((WEIGHTS_DIR / f"{name}.json").read_text())


def test_load_rejects_bad_weights(tmp_path):
    model = build("mlp")
    save("mlp", model, {"dataset": "fashion-mnist"}, tmp_path)
    assert torch.equal(load("mlp", tmp_path)[1].weight, model[1].weight)
    (tmp_path / "lenet.npz").write_bytes((tmp_path / "mlp.npz").read_bytes())
    with pytest.raises(FormatError, match="keys"):
        load("lenet", tmp_path)
    arrays = dict(np.load(tmp_path / "mlp.npz"))
    arrays["1.weight"] = arrays["1.weight"][:, :100]
    np.savez(tmp_path / "mlp.npz", **arrays)
    with pytest.raises(FormatError, match="shape"):
        load("mlp", tmp_path)
    (tmp_path / "mlp.npz").write_bytes(b"not a zip")
    with pytest.raises(FormatError):
        load("mlp", tmp_path)
    with pytest.raises(MissingDependencyError, match="train_zoo.py resnet8"):
        load("resnet8", tmp_path)
