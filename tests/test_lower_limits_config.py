"""Limits as data and the shared settings parser (fs_hw.lower)."""

from dataclasses import dataclass

import pytest

from fs_hw.backend import BIT_EXACT, Exactness, Runner, choose_runner
from fs_hw.errors import FSHWError, ResourceError, TargetNotFoundError, ValidationError
from fs_hw.lower.config import config_docs, config_to_dict, parse_config, setting
from fs_hw.lower.limits import Limit, LimitTable, check_usage

TABLE = LimitTable((
    Limit("compartments", 1024, "compartments", "core"),
    Limit("synapse_bits", 2**20, "synapse memory bits", "core"),
    Limit("cores", 128, "cores", "chip"),
))


def test_refusal_names_layer_part_limit_and_numbers():
    with pytest.raises(ResourceError) as err:
        TABLE.check({"compartments": 1200, "synapse_bits": 10}, "conv3", "core 2 of 5")
    assert str(err.value) == ("layer 'conv3' (core 2 of 5): needs 1200 compartments per core, "
                              "above the limit 1024")


def test_within_limits_and_scopes():
    TABLE.check({"compartments": 1024, "synapse_bits": 2**20}, "fc")  # equal is allowed
    assert TABLE.violations({"compartments": 2000, "cores": 200}, "fc", scope="chip")[0].limit.name == "cores"
    assert [lim.name for lim in TABLE.scope("core")] == ["compartments", "synapse_bits"]


def test_unknown_usage_key_is_an_error():
    with pytest.raises(KeyError, match="compartmets"):
        TABLE.check({"compartmets": 1}, "fc")


def test_check_usage_with_hint_and_bad_tables():
    with pytest.raises(ResourceError, match="fan-in too large"):
        check_usage(list(TABLE), {"synapse_bits": 2**21}, "fc", hint="fan-in too large")
    with pytest.raises(ValueError, match="twice"):
        LimitTable((Limit("a", 1, "x", "core"), Limit("a", 2, "x", "core")))
    with pytest.raises(ValueError, match="scope"):
        Limit("a", 1, "x", "galaxy")


@dataclass(frozen=True)
class _Cfg:
    chips: int = setting(1, "chips", range=(1, 64))
    mode: str = setting("fast", "mode", choices=("fast", "slow"))
    K: int | None = setting(None, "steps", range=(1, 64))
    strict: bool = setting(True, "strictness")
    gain: float = setting(1.0, "gain", range=(0.0, 10.0))


@pytest.mark.parametrize("mapping, key, text", [
    ({"chip": 1}, "chip", "unknown key; known: ['K', 'chips', 'gain', 'mode', 'strict']"),
    ({"chips": 0}, "chips", "must be in [1, 64], got 0"),
    ({"chips": True}, "chips", "must be an integer, got True"),
    ({"chips": "2"}, "chips", "must be an integer, got '2'"),
    ({"mode": "medium"}, "mode", "must be one of ['fast', 'slow'], got 'medium'"),
    ({"K": 1.5}, "K", "must be an integer (or absent), got 1.5"),
    ({"strict": 1}, "strict", "must be true or false, got 1"),
    ({"gain": 11}, "gain", "must be in [0.0, 10.0], got 11.0"),
])
def test_parse_config_refuses_with_key_and_value(mapping, key, text):
    with pytest.raises(ValidationError) as err:
        parse_config(_Cfg, mapping, "chip config")
    assert err.value.obj == "chip config" and err.value.field == key
    assert err.value.problem == text


def test_parse_config_values_and_docs():
    cfg = parse_config(_Cfg, {"chips": 4, "K": 8, "gain": 2}, "chip config")
    assert config_to_dict(cfg) == {"chips": 4, "mode": "fast", "K": 8, "strict": True, "gain": 2.0}
    assert isinstance(cfg.gain, float)
    assert parse_config(_Cfg, cfg, "x") is cfg
    assert parse_config(_Cfg, None, "x") == _Cfg()
    docs = {row["name"]: row for row in config_docs(_Cfg)}
    assert docs["chips"]["range"] == (1, 64) and docs["mode"]["choices"] == ("fast", "slow")


def test_runners_and_exactness():
    hw = Runner("hardware", "the chip", lambda: False, "needs the SDK")
    emu = Runner("emulator", "software")
    assert choose_runner((hw, emu), None, "chip").name == "emulator"
    assert choose_runner((hw, emu), "emulator", "chip") is emu
    with pytest.raises(TargetNotFoundError, match="needs the SDK"):
        choose_runner((hw, emu), "hardware", "chip")
    with pytest.raises(FSHWError, match="its runners: hardware, emulator"):
        choose_runner((hw, emu), "board", "chip")
    assert BIT_EXACT.bit_exact and not Exactness("tolerance", 0.01, 0.5, "analog").bit_exact
    with pytest.raises(ValueError):
        Exactness("close")
