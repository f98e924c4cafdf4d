import pytest

pytest.importorskip("nengo_loihi")

from fs_hw_loihi.backend import LoihiBackend
from fs_hw_loihi.config import LoihiConfig

from fs_hw import conformance
from fs_hw.errors import ValidationError


@pytest.mark.parametrize(
    "config, key, text",
    [
        ({"chip": 1}, "chip", "unknown key"),
        ({"chips": 0}, "chips", "must be in"),
        ({"chips": "2"}, "chips", "must be an integer"),
        ({"cores_per_chip": 129}, "cores_per_chip", "must be in"),
        ({"emulator": True}, "emulator", "unknown key"),  # the runner is chosen by --runner
        ({"batch_size": True}, "batch_size", "must be an integer"),
        ({"d_digits": 0}, "d_digits", "must be in"),
    ],
)
def test_config_errors_name_the_key(config, key, text):
    with pytest.raises(ValidationError) as err:
        LoihiConfig.from_mapping(config)
    assert err.value.field == key
    assert text in str(err.value)


def test_K_mismatch_refused():
    net, _ = conformance.scenario("mlp_relu_ge")
    with pytest.raises(ValidationError) as err:
        LoihiBackend().lower(net, {"K": 8})
    assert err.value.field == "K" and "K=6" in str(err.value)


def test_defaults():
    cfg = LoihiConfig.from_mapping({})
    assert (cfg.chips, cfg.cores_per_chip, cfg.K) == (1, 128, None)
