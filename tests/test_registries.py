"""Each choice a config makes is one registry entry carrying its own facts (train/optimizers.py,
train/network_kinds.py): every entry has all of them, and the code reads them from the entry, so
adding one is one entry."""

import typing

import pytest

from lorakit.train.config import Config, NetworkModule, OptimizerType
from lorakit.train.network_kinds import KINDS, check_args
from lorakit.train.optimizers import OPTIMIZERS


def test_the_config_offers_exactly_the_registered_entries():
    assert set(typing.get_args(OptimizerType)) == set(OPTIMIZERS)
    assert set(typing.get_args(NetworkModule)) == set(KINDS)


def test_the_memory_estimate_reads_an_optimizers_own_state_size(monkeypatch):
    from dataclasses import replace

    from lorakit.train import memory

    config = Config()
    config.model.base, config.model.family = "model.safetensors", "sd1"  # a single file: the shipped configs
    before = memory.estimate(config, "sd1")
    if before is None:
        pytest.skip("the SD1 configs are not readable here")
    monkeypatch.setitem(OPTIMIZERS, "adamw", replace(OPTIMIZERS["adamw"], state_bytes=800))
    after = memory.estimate(config, "sd1")
    assert after["total"] > before["total"]  # no table elsewhere held a copy of the number


@pytest.mark.parametrize("module", sorted(KINDS))
def test_every_network_kind_takes_its_own_settings_and_refuses_what_it_ignores(module):
    kind = KINDS[module]
    check_args(module, {}, 4, 4)
    if kind.hidden_dropout:
        with pytest.raises(Exception, match="network.dropout"):
            check_args(module, {}, 4, 4, dropout=0.1)
    if kind.rank_dropout:
        with pytest.raises(Exception, match="network.rank_dropout"):
            check_args(module, {}, 4, 4, rank_dropout=0.1)
    with pytest.raises(Exception, match="unknown setting"):
        check_args(module, {"no_such_setting": 1}, 4, 4)


def test_every_model_family_is_one_record_the_config_offers():
    from lorakit.train.config import ModelConfig
    from lorakit.train.families import FAMILIES
    from lorakit.train.metadata import base_model_version

    offered = typing.get_args(typing.get_type_hints(ModelConfig)["family"])
    assert set(offered) == {"auto", *FAMILIES}
    # kohya's names in a file's metadata, from the record
    assert [base_model_version(f, v) for f in ("sd1", "sd2", "sdxl") for v in (False, True)] == \
        ["sd_v1", "sd_v1_v", "sd_v2", "sd_v2_v", "sdxl_base_v1-0", "sdxl_base_v1-0"]
    assert FAMILIES["sdxl"].encoders == ("lora_te1", "lora_te2") and FAMILIES["sd2"].modelspec(True).endswith("768-v")
