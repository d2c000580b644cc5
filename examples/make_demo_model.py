"""lorakit's DEMO base model: a tiny SD1.5-shaped pipeline with random weights (docs/formats.md,
"Testing without weights"), for `make demo` and the tests: a 2-level UNet, a 2-layer CLIP text encoder of width 32, a
2-block VAE, and a CLIP tokenizer whose vocabulary is written here. It generates noise-like
images; it exists so training runs end to end offline in seconds.

    python examples/make_demo_model.py demo-out/demo-model
"""

from __future__ import annotations

import json
from pathlib import Path

import torch


def tokenizer(folder: Path):
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    chars = [chr(c) for c in range(33, 127)]
    vocab = {}
    for c in chars:
        vocab.setdefault(c, len(vocab))
    for c in chars:
        vocab.setdefault(c + "</w>", len(vocab))
    merges = ["k i", "ki t", "kit c", "kitc h", "kitch a", "kitcha n</w>", "r e", "re d</w>"]
    for merge in merges:
        vocab.setdefault(merge.replace(" ", ""), len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77)


def pipeline(folder: Path, seed: int = 0):
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8, block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8,
        cross_attention_dim=32, attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
    tok = tokenizer(folder / "tokenizer")
    text_encoder = CLIPTextModel(CLIPTextConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
        vocab_size=len(tok), max_position_embeddings=77, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id))
    vae = AutoencoderKL(block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=8)
    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tok, unet=unet,
                                   scheduler=EulerDiscreteScheduler(steps_offset=1), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)


def pipeline_sd2(folder: Path, seed: int = 0):
    """The same, SD2-shaped: linear projections in the UNet's transformer blocks, an OpenCLIP-like
    text encoder (gelu) whose tokenizer pads with "!", as SD2's does."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    pipe = pipeline(folder, seed)
    config = CLIPTextConfig(**{**pipe.text_encoder.config.to_dict(), "hidden_act": "gelu"})
    pipe.tokenizer.pad_token = "!"
    pipe.register_modules(text_encoder=CLIPTextModel(config), unet=UNet2DConditionModel(
        sample_size=8, block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8, cross_attention_dim=32,
        attention_head_dim=(2, 4), use_linear_projection=True,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")))
    return pipe


def pipeline_xl(folder: Path, seed: int = 0):
    """The same, SDXL-shaped: two text encoders (the second with a projection), size and text
    conditioning (`text_time`), SDXL's block layout (2 layers per block, attention from the
    second level on)."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    tok = tokenizer(folder / "tokenizer")
    common = dict(num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, vocab_size=len(tok),
                  max_position_embeddings=77, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                  pad_token_id=tok.pad_token_id)
    text_encoder = CLIPTextModel(CLIPTextConfig(hidden_size=32, **common))
    text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(hidden_size=32, projection_dim=32, **common))
    unet = UNet2DConditionModel(
        sample_size=8, block_out_channels=(32, 64), layers_per_block=2, norm_num_groups=8,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=64, attention_head_dim=(2, 4), transformer_layers_per_block=(1, 2),
        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=32 + 6 * 8)
    vae = AutoencoderKL(block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=8)
    return StableDiffusionXLPipeline(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                     tokenizer=tok, tokenizer_2=tok, unet=unet, scheduler=EulerDiscreteScheduler(steps_offset=1))


def sample(pipe, prompt: str = "kitchan, red", seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    return pipe(prompt, num_inference_steps=2, height=64, width=64, generator=generator,
                output_type="np").images[0]


if __name__ == "__main__":
    import sys

    from lorakit import quiet

    quiet.install()

    target = Path(sys.argv[1] if len(sys.argv) > 1 else "demo-out/demo-model")
    pipeline(target.parent / ".demo-model-build").save_pretrained(target)
    print(f"{target}: DEMO base model (random weights, not for real training)")
