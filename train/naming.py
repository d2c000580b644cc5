"""Which modules a kohya-format LoRA trains, and the names A1111, ComfyUI and diffusers look for
(docs/formats.md, "kohya's LoRA file").

- UNet: every Linear/Conv2d inside the Transformer2DModel blocks; LoCon adds the ResNet blocks and
  the down/up-samplers. Key = `lora_unet_` + module path with "." -> "_". SD1.x/SD2.x use the
  diffusers path; SDXL uses the original SGM path (`input_blocks_4_1_...`), mapped here from the
  diffusers layout the way kohya's `sdxl_model_util.make_unet_conversion_map` does.
- Text encoders: q/k/v/out projections and the two MLP layers of every CLIP encoder layer, named
  `lora_te[12]_text_model_encoder_layers_N_...` from the layer index, not from the module path:
  transformers 5 no longer nests a `text_model` module, and names derived from paths would lose
  `text_model_`, which no UI then maps.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

UNET_BLOCKS = ("Transformer2DModel",)
LOCON_BLOCKS = UNET_BLOCKS + ("ResnetBlock2D", "Downsample2D", "Upsample2D")
TE_LAYER_PARTS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj",
                  "mlp.fc1", "mlp.fc2")


@dataclass(frozen=True)
class Target:
    name: str  # the key prefix: NAME.lora_down.weight, NAME.lora_up.weight, NAME.alpha
    module: nn.Module  # an nn.Linear or nn.Conv2d
    path: str  # the module's path in its model

    @property
    def is_conv3x3(self) -> bool:
        return isinstance(self.module, nn.Conv2d) and self.module.kernel_size != (1, 1)


# --- SDXL: diffusers paths -> SGM paths ----------------------------------------------------------

_RESNET_PARTS = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
                 "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}


def sgm_path(path: str, up_has_attention: dict[int, bool]) -> str:
    """A diffusers SDXL UNet module path in the original (SGM) layout. Down block i, layer j is
    input block 3i+j+1; its downsampler input block 3(i+1); up block i, layer j output block 3i+j;
    the mid block's resnets are middle_block.0 and .2 around its attention (.1)."""
    m = re.match(r"(down|up)_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", path)
    if m:
        side, i, kind, j, rest = m[1], int(m[2]), m[3], int(m[4]), m[5]
        # input blocks start after conv_in (block 0); output blocks start at 0
        block = f"input_blocks.{3 * i + j + 1}" if side == "down" else f"output_blocks.{3 * i + j}"
        return f"{block}.{0 if kind == 'resnets' else 1}.{_resnet(rest, kind)}"
    m = re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv(.*)", path)
    if m:
        return f"input_blocks.{3 * (int(m[1]) + 1)}.0.op{m[2]}"
    m = re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.(.*)", path)
    if m:
        i = int(m[1])
        return f"output_blocks.{3 * i + 2}.{2 if up_has_attention[i] else 1}.{m[2]}"
    m = re.match(r"mid_block\.(resnets|attentions)\.(\d+)\.(.*)", path)
    if m:
        index = 1 if m[1] == "attentions" else 2 * int(m[2])
        return f"middle_block.{index}.{_resnet(m[3], m[1])}"
    return path


def _resnet(rest: str, kind: str) -> str:
    if kind != "resnets":
        return rest
    head, _, tail = rest.partition(".")
    return _RESNET_PARTS.get(head, head) + ("." + tail if tail else "")


# --- the targets ---------------------------------------------------------------------------------


def unet_targets(unet: nn.Module, locon: bool = False, sgm: bool = False) -> list[Target]:
    """The UNet modules a LoRA (or LoCon) trains, with their kohya names."""
    blocks = LOCON_BLOCKS if locon else UNET_BLOCKS
    up_has_attention = {i: hasattr(b, "attentions") for i, b in enumerate(getattr(unet, "up_blocks", []))}
    targets = []
    for path, block in unet.named_modules():
        if type(block).__name__ not in blocks:
            continue
        for child_path, child in block.named_modules():
            if isinstance(child, (nn.Linear, nn.Conv2d)):
                full = f"{path}.{child_path}"
                name = sgm_path(full, up_has_attention) if sgm else full
                targets.append(Target("lora_unet_" + name.replace(".", "_"), child, full))
    return targets


def text_encoder_layers(text_encoder: nn.Module) -> nn.ModuleList:
    for path in ("text_model.encoder.layers", "encoder.layers"):  # transformers 4.x / 5.x
        module = text_encoder
        try:
            for part in path.split("."):
                module = getattr(module, part)
            return module
        except AttributeError:
            continue
    raise ValueError(f"{type(text_encoder).__name__} has no CLIP encoder layers")


def text_encoder_targets(text_encoder: nn.Module, prefix: str = "lora_te") -> list[Target]:
    targets = []
    for i, layer in enumerate(text_encoder_layers(text_encoder)):
        for part in TE_LAYER_PARTS:
            module = layer.get_submodule(part)
            targets.append(Target(f"{prefix}_text_model_encoder_layers_{i}_{part.replace('.', '_')}",
                                  module, f"encoder.layers.{i}.{part}"))
    return targets
