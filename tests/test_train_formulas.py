"""Formulas and spellings that must give kohya's numbers (its users compare runs step by step): the debiased
estimation weight, the warm-up, and where a caption's prefix and suffix go."""

import random

import pytest
import torch

from lorakit.train import loss as L
from lorakit.train.config import Config
from lorakit.train.schedule import curve
from lorakit.train.subset_options import CaptionOptions, caption_for_step, with_affixes


def sd_alphas_cumprod() -> torch.Tensor:
    """SD's scaled-linear schedule (beta 0.00085 to 0.012 over 1000 steps)."""
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0)


def test_debiased_estimation_weighs_v_prediction_by_one_over_snr_plus_one():
    snr = L.snr(sd_alphas_cumprod(), torch.tensor([900, 0]))
    eps, v = L.debiased_weight(snr, False), L.debiased_weight(snr, True)
    # kohya at t = 900: 1/sqrt(SNR) = 8.35 for epsilon, 1/(SNR + 1) = 0.99 for v-prediction
    assert float(eps[0]) == pytest.approx(8.35, abs=0.01) and float(v[0]) == pytest.approx(0.986, abs=0.001)
    # t = 0: SNR is over 1000, capped there as kohya caps it
    assert float(eps[1]) == pytest.approx(1000 ** -0.5) and float(v[1]) == pytest.approx(1 / 1001)


def test_warm_up_starts_from_zero_as_kohyas_schedulers():
    config = Config()
    config.scheduler.warmup_steps = 3
    factor = curve(config, 10)
    assert [factor(s) for s in range(4)] == [0, 1 / 3, 2 / 3, 1]


def test_caption_prefix_and_suffix_are_joined_by_a_space_before_shuffling():
    assert with_affixes("1girl, smile", "kitchan,", "masterpiece") == "kitchan, 1girl, smile masterpiece"
    assert with_affixes("1girl", "", "") == "1girl"
    options = CaptionOptions(prefix="kitchan", suffix="", shuffle=False)
    assert caption_for_step("1girl", options, random.Random(0), 0) == "kitchan 1girl"


@pytest.mark.parametrize("algo", ["ia3", "glora"])
def test_rank_dropout_that_would_do_nothing_is_refused(algo):
    from lorakit.errors import UserError
    from lorakit.train.lycoris_net import check_args

    with pytest.raises(UserError, match="drops no ranks.*module_dropout"):
        check_args(algo, {}, 4, 0, rank_dropout=0.1)
    with pytest.raises(UserError) as refused:  # and the dropout refusal does not send the user there
        check_args(algo, {}, 4, 0, dropout=0.1)
    assert "rank_dropout" not in str(refused.value) and "module_dropout" in str(refused.value)
    check_args("loha", {}, 4, 0, rank_dropout=0.1)  # LoHa does drop ranks


def test_kohyas_spellings_are_read_or_pointed_at(tmp_path):
    from lorakit.train.blocks import settings
    from lorakit.train.config_toml import ConfigError, load

    config = tmp_path / "lora.toml"
    config.write_text("[network]\nargs = {mid_lr_weight = 0.5}\n")  # a TOML number, as kohya's "0.5"
    weights = settings(load(config).network.args, False, 4, 1).lr_weight
    assert weights[12] == 0.5 and weights[1] == 1.0  # the mid block; the others as they were
    config.write_text("[training]\nfull_fp16 = true\n")
    with pytest.raises(ConfigError, match='full_fp16 is training.weights_dtype = "fp16"'):
        load(config)


@pytest.mark.parametrize("key,kind", [("hada_w1_a", "LoHa"), ("lokr_w1", "LoKr")])
def test_a_lycoris_file_is_named_where_a_lora_is_needed(tmp_path, key, kind):
    from safetensors.torch import save_file

    from lorakit.errors import UserError
    from lorakit.train.lora_files import modules

    name = "lora_unet_down_blocks_0_attentions_0_proj_in"
    tensors = {f"{name}.alpha": torch.tensor(4.0), f"{name}.{key}": torch.zeros(4, 4)}  # alpha comes first
    save_file(tensors, tmp_path / "x.safetensors")
    with pytest.raises(UserError, match=f"a {kind} file; {kind} files are not supported here"):
        modules(tensors, tmp_path / "x.safetensors")
