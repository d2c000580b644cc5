"""kohya LoRA key names on the real SD1.5, SD2.1 and SDXL architectures, instantiated without
weights (meta device): module counts from docs/formats.md, "Training" and the names the UIs look for."""

import torch
from diffusers import UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from lorakit.train.naming import text_encoder_targets, unet_targets

SDXL_UNET = dict(
    sample_size=128, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(320, 640, 1280), transformer_layers_per_block=(1, 2, 10),
    attention_head_dim=(5, 10, 20), cross_attention_dim=2048, use_linear_projection=True,
    addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816)
SD21_UNET = dict(attention_head_dim=(5, 10, 20, 20), cross_attention_dim=1024, use_linear_projection=True)


def meta(factory, *args, **kwargs):
    with torch.device("meta"):
        return factory(*args, **kwargs)


def names(targets):
    out = [t.name for t in targets]
    assert len(out) == len(set(out))  # every key unique
    return set(out)


def test_sd15():
    unet = meta(UNet2DConditionModel, cross_attention_dim=768)
    te = meta(CLIPTextModel, CLIPTextConfig(hidden_size=768, num_hidden_layers=12))
    assert len(unet_targets(unet)) == 192
    assert len(unet_targets(unet, locon=True)) == 278
    assert len(text_encoder_targets(te)) == 72
    assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q" in names(unet_targets(unet))
    assert "lora_unet_down_blocks_0_attentions_0_proj_in" in names(unet_targets(unet))  # a 1x1 conv in SD1
    te_names = names(text_encoder_targets(te))
    assert "lora_te_text_model_encoder_layers_0_self_attn_q_proj" in te_names  # despite transformers 5
    assert "lora_te_text_model_encoder_layers_11_mlp_fc2" in te_names


def test_sd21():
    unet = meta(UNet2DConditionModel, **SD21_UNET)
    te = meta(CLIPTextModel, CLIPTextConfig(hidden_size=1024, num_hidden_layers=23, num_attention_heads=16,
                                            intermediate_size=4096))
    assert len(unet_targets(unet)) == 192
    assert len(text_encoder_targets(te)) == 138


def test_sdxl_uses_sgm_names():
    unet = meta(UNet2DConditionModel, **SDXL_UNET)
    te1 = meta(CLIPTextModel, CLIPTextConfig(hidden_size=768, num_hidden_layers=12))
    te2 = meta(CLIPTextModelWithProjection, CLIPTextConfig(hidden_size=1280, num_hidden_layers=32,
                                                           num_attention_heads=20, intermediate_size=5120,
                                                           projection_dim=1280))
    lora, locon = unet_targets(unet, sgm=True), unet_targets(unet, locon=True, sgm=True)
    assert len(lora) == 722 and len(locon) == 788
    assert len(text_encoder_targets(te1, "lora_te1")) == 72
    assert len(text_encoder_targets(te2, "lora_te2")) == 192
    unet_names = names(locon)
    for expected in ("lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q",
                     "lora_unet_middle_block_1_transformer_blocks_0_attn1_to_q",
                     "lora_unet_output_blocks_0_1_transformer_blocks_0_attn1_to_q",
                     "lora_unet_input_blocks_3_0_op", "lora_unet_output_blocks_2_2_conv",
                     "lora_unet_input_blocks_1_0_emb_layers_1", "lora_unet_input_blocks_4_0_skip_connection",
                     "lora_unet_middle_block_2_out_layers_3", "lora_unet_output_blocks_8_0_in_layers_2"):
        assert expected in unet_names, expected
    assert not any("down_blocks" in n or "up_blocks" in n or "mid_block" in n for n in unet_names)
    assert "lora_te2_text_model_encoder_layers_31_mlp_fc2" in names(text_encoder_targets(te2, "lora_te2"))
