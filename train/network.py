"""LoRA and LoCon as their own small module (docs/architecture.md allows it where simpler than
lycoris-lora), saved in kohya's format (docs/formats.md, "Training"):

    y = W x + up(down(x)) * multiplier * alpha / rank

down is kaiming-uniform (a = sqrt 5), up starts at zero, so training starts from the base model.
Linear: down [r, in], up [out, r]; Conv2d: down [r, in, k, k], up [out, r, 1, 1]. Alpha is stored
as a float32 scalar. The base model's modules are left in place; their forward is wrapped.
"""

from __future__ import annotations

import hashlib
import io
import math

import torch
from safetensors.torch import save as save_bytes
from torch import nn

from lorakit.errors import UserError
from lorakit.fsio import atomic_path
from lorakit.train.naming import Target
from lorakit.train.network_kinds import KINDS

# network.module: what trains on the targets: our LoRA module (lora: linear layers and 1x1
# convolutions; locon: 3x3 convolutions too; dylora: ranks in blocks), one of lycoris-lora's
# algorithms (train/lycoris_net.py), or no network (embeddings alone)
MODULES = {name: kind.builder for name, kind in KINDS.items()}  # train/network_kinds.py: the facts of each


def compose(up: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
    """up·down as one weight of the adapted layer's shape (linear, 1x1 or k x k convolution: a
    k x k down followed by a 1 x 1 up is one k x k kernel, the same product over its flattened
    input and kernel positions)."""
    return (up.flatten(1) @ down.flatten(1)).reshape(up.shape[0], *down.shape[1:])


class LoRAModule(nn.Module):
    def __init__(self, target: Target, rank: int, alpha: float, dropout: float = 0.0, rank_dropout: float = 0.0,
                 module_dropout: float = 0.0):
        super().__init__()
        self.lora_name = target.name
        base = target.module
        if isinstance(base, nn.Conv2d):
            self.lora_down = nn.Conv2d(base.in_channels, rank, base.kernel_size, base.stride, base.padding,
                                       bias=False)
            self.lora_up = nn.Conv2d(rank, base.out_channels, 1, 1, bias=False)
        else:
            self.lora_down = nn.Linear(base.in_features, rank, bias=False)
            self.lora_up = nn.Linear(rank, base.out_features, bias=False)
        nn.init.kaiming_uniform_(self.lora_down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_up.weight)
        self.register_buffer("alpha", torch.tensor(float(alpha), dtype=torch.float32))  # saved in the file
        self._alpha = float(alpha)  # what forward reads: reading the buffer would wait for the GPU in every module
        self.rank = rank
        self.dropout = dropout  # kohya's network_dropout: on the down projection's output
        self.rank_dropout = rank_dropout  # whole ranks, per sample, rescaled by 1 / (1 - p)
        self.module_dropout = module_dropout  # the whole module, for a step
        self.multiplier = 1.0
        self._base = [base]  # a list, so the base module is not registered (and not trained) here
        self._base_forward = None

    @property
    def scale(self) -> float:
        return self._alpha / self.rank

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if prefix + "alpha" in state_dict:
            self._alpha = float(state_dict[prefix + "alpha"])

    def attach(self) -> None:
        base = self._base[0]
        self._base_forward = base.forward
        base.forward = self.forward

    def detach(self) -> None:
        if self._base_forward is not None:
            self._base[0].forward = self._base_forward
            self._base_forward = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self._base_forward(x)
        if self.module_dropout and self.training and float(torch.rand(1)) < self.module_dropout:
            return out
        hidden = self.lora_down(x.to(self.lora_down.weight.dtype))
        if self.dropout and self.training:
            hidden = nn.functional.dropout(hidden, self.dropout)
        scale = self.scale
        if self.rank_dropout and self.training:
            keep = torch.rand(hidden.shape[0], self.rank, device=hidden.device) > self.rank_dropout
            # ranks sit last for linear layers ([B, r] or [B, L, r]), second for convolutions
            shape = (hidden.shape[0], self.rank, 1, 1) if hidden.dim() == 4 else \
                (hidden.shape[0],) + (1,) * (hidden.dim() - 2) + (self.rank,)
            hidden = hidden * keep.view(shape).to(hidden.dtype)
            scale = scale / (1.0 - self.rank_dropout)
        return out + (self.lora_up(hidden) * (self.multiplier * scale)).to(out.dtype)

    def delta_weight(self) -> torch.Tensor:
        """The change this module makes to the base weight, with its scale applied."""
        return compose(self.lora_up.weight.float(), self.lora_down.weight.float()) * self.scale * self.multiplier


class DyLoRAModule(LoRAModule):
    """DyLoRA (Valipour et al. 2022): each training forward draws a block b and uses the first
    (b + 1) · unit ranks, training only block b (the ranks before it are detached), so every
    prefix of the ranks is itself a usable LoRA. The file is a plain LoRA at full rank, read by
    every loader; in eval (sampling, merging) all ranks apply. lycoris-lora's DyLoRA is not used:
    its forward draws a random rank in eval too and its scale differs from what the file says."""

    def __init__(self, target: Target, rank: int, alpha: float, unit: int, dropout: float = 0.0,
                 module_dropout: float = 0.0):
        super().__init__(target, rank, alpha, dropout, 0.0, module_dropout)
        self.unit = unit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        out = self._base_forward(x)
        if self.module_dropout and float(torch.rand(1)) < self.module_dropout:
            return out
        block = int(torch.randint(self.rank // self.unit, (1,)))
        frozen, used = block * self.unit, (block + 1) * self.unit
        down_w, up_w = self.lora_down.weight, self.lora_up.weight
        down = torch.cat([down_w[:frozen].detach(), down_w[frozen:used]])
        up = torch.cat([up_w[:, :frozen].detach(), up_w[:, frozen:used]], dim=1)
        x = x.to(down.dtype)
        if isinstance(self.lora_down, nn.Conv2d):
            hidden = nn.functional.conv2d(x, down, None, self.lora_down.stride, self.lora_down.padding)
        else:
            hidden = nn.functional.linear(x, down)
        if self.dropout:
            hidden = nn.functional.dropout(hidden, self.dropout)
        delta = nn.functional.conv2d(hidden, up) if up.dim() == 4 else nn.functional.linear(hidden, up)
        return out + (delta * (self.multiplier * self.scale)).to(out.dtype)


def column_norm(weight: torch.Tensor) -> torch.Tensor:
    """The norm of each input column of a weight, over the outputs (and kernel): LyCORIS's DoRA
    layout, [1, in] for a linear weight, [1, in, 1, 1] for a convolution."""
    w = weight.transpose(0, 1)
    norm = w.reshape(w.shape[0], -1).norm(dim=1, keepdim=True)
    return norm.reshape(w.shape[0], *[1] * (weight.dim() - 1)).transpose(0, 1)


class DoRAModule(LoRAModule):
    """DoRA (Liu et al. 2024) on a LoRA / LoCon module, as LyCORIS's `dora_wd` does it: the
    adapted weight W' = W + up·down·scale is rescaled column by column to a trained magnitude,
    W_dora = W' · dora_scale / ||W'||. dora_scale starts at ||W||, so training starts from the
    base model. It is saved as `NAME.dora_scale` ([1, in], [1, in, 1, 1]), the layout A1111 and
    ComfyUI apply. The norm is taken without gradient, as the paper advises (less memory, the
    same result in its experiments)."""

    def __init__(self, target: Target, rank: int, alpha: float, module_dropout: float = 0.0):
        super().__init__(target, rank, alpha, 0.0, 0.0, module_dropout)
        self.dora_scale = nn.Parameter(column_norm(target.module.weight.detach().float()))

    def merged_weight(self) -> torch.Tensor:
        base = self._base[0].weight
        merged = base.float() + self.delta_weight()
        return merged * (self.dora_scale / column_norm(merged).detach())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.module_dropout and self.training and float(torch.rand(1)) < self.module_dropout:
            return self._base_forward(x)
        base = self._base[0]
        weight = self.merged_weight().to(base.weight.dtype)
        if isinstance(base, nn.Conv2d):
            return nn.functional.conv2d(x, weight, base.bias, base.stride, base.padding, base.dilation, base.groups)
        return nn.functional.linear(x, weight, base.bias)


class LoRANetwork(nn.Module):
    """LoRA, LoCon (conv_rank > 0) and, with `unit`, DyLoRA: kohya's plain LoRA file either way."""

    def __init__(self, targets: list[Target], rank: int, alpha: float, conv_rank: int = 0,
                 conv_alpha: float = 1.0, dropout: float = 0.0, rank_dropout: float = 0.0,
                 module_dropout: float = 0.0, unit: int | None = None,
                 ranks: dict[str, tuple[int, float]] | None = None, dora: bool = False):
        """`ranks`: {module name: (rank, alpha)} from a file (kohya's dim_from_weights): exactly
        the modules it has, each at its own rank and alpha."""
        super().__init__()
        modules = []
        for target in targets:
            if ranks is not None:
                if target.name not in ranks:
                    continue
                r, a = ranks[target.name]
            elif target.is_conv3x3 and conv_rank <= 0:
                continue
            else:
                r, a = (conv_rank, conv_alpha) if target.is_conv3x3 else (rank, alpha)
            if dora:
                modules.append(DoRAModule(target, r, a, module_dropout))
            else:
                modules.append(DyLoRAModule(target, r, a, unit, dropout, module_dropout) if unit else
                               LoRAModule(target, r, a, dropout, rank_dropout, module_dropout))
        self.loras = nn.ModuleList(modules)

    @torch.no_grad()
    def scale_weight_norms(self, max_norm: float) -> int:
        """kohya's max-norm regularisation: where a module's change ||up·down·alpha/r||_F exceeds
        max_norm, scale up and down by sqrt(max_norm / norm). Returns how many were scaled."""
        scaled = 0
        for lora in self.loras:
            norm = float(lora.delta_weight().norm()) / abs(lora.multiplier or 1.0)
            if norm > max_norm:
                ratio = (max_norm / norm) ** 0.5
                lora.lora_up.weight.mul_(ratio)
                lora.lora_down.weight.mul_(ratio)
                scaled += 1
        return scaled

    def attach(self) -> None:
        for lora in self.loras:
            lora.attach()

    def detach(self) -> None:
        for lora in self.loras:
            lora.detach()

    @torch.no_grad()
    def merge(self) -> None:
        """Add every module's change into its base weight (then the network can be detached)."""
        for lora in self.loras:
            base = lora._base[0]
            if isinstance(lora, DoRAModule):
                base.weight.copy_(lora.merged_weight().to(base.weight.dtype))
            else:
                base.weight += lora.delta_weight().to(base.weight.dtype)

    @torch.no_grad()
    def load_kohya(self, modules: dict, where: str) -> list[str]:
        """Weights and alphas from a kohya-format file's modules (train/lora_files.Module), into
        the modules of the same name; returns the file's modules this network has no place for."""
        mine = {lora.lora_name: lora for lora in self.loras}
        for name, found in modules.items():
            lora = mine.get(name)
            if lora is None:
                continue
            if lora.lora_down.weight.shape != found.down.shape or lora.lora_up.weight.shape != found.up.shape:
                raise UserError(f"{where}: {name} has rank {found.rank} in the file and {lora.rank} here; set "
                                "network.dim_from_weights = true to take the file's ranks")
            if (found.dora_scale is not None) != isinstance(lora, DoRAModule):
                raise UserError(f"{where}: {name} is {'a DoRA' if found.dora_scale is not None else 'a plain'} "
                                "module in the file; set network.args.dora_wd to match")
            lora.lora_down.weight.copy_(found.down)
            lora.lora_up.weight.copy_(found.up)
            if found.dora_scale is not None:
                lora.dora_scale.copy_(found.dora_scale)
            lora.alpha.fill_(found.alpha)
            lora._alpha = float(found.alpha)
        if not set(modules) & set(mine):
            raise UserError(f"{where}: none of its modules is one this network trains (another model family?)")
        return sorted(set(modules) - set(mine))

    def kohya_state_dict(self, dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
        out = {}
        for lora in self.loras:
            out[f"{lora.lora_name}.lora_down.weight"] = lora.lora_down.weight.detach().to("cpu", dtype).contiguous()
            out[f"{lora.lora_name}.lora_up.weight"] = lora.lora_up.weight.detach().to("cpu", dtype).contiguous()
            out[f"{lora.lora_name}.alpha"] = lora.alpha.detach().to("cpu", torch.float32)
            if isinstance(lora, DoRAModule):
                out[f"{lora.lora_name}.dora_scale"] = lora.dora_scale.detach().to("cpu", dtype).contiguous()
        return out


def model_hashes(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> dict[str, str]:
    """`sshs_model_hash`: sha256 of the tensor bytes after the safetensors header;
    `sshs_legacy_hash`: the first 8 hex digits of sha256 of 64 KiB at offset 1 MiB. Both over the
    file as written with only the `ss_*` metadata, as kohya and the UIs compute them."""
    data = save_bytes(tensors, {k: v for k, v in metadata.items() if k.startswith("ss_")})
    header = int.from_bytes(data[:8], "little")
    legacy = io.BytesIO(data)
    legacy.seek(0x100000)
    return {"sshs_model_hash": hashlib.sha256(data[8 + header:]).hexdigest(),
            "sshs_legacy_hash": hashlib.sha256(legacy.read(0x10000)).hexdigest()[:8]}


def save(network: LoRANetwork, path, metadata: dict[str, str], dtype: torch.dtype = torch.float16,
         extra: dict[str, torch.Tensor] | None = None) -> None:
    """`extra`: tensors stored as they are (bundled embeddings)."""
    tensors = {**network.kohya_state_dict(dtype), **(extra or {})}
    metadata = {**metadata, **model_hashes(tensors, metadata)}
    with atomic_path(path) as tmp:
        tmp.write_bytes(save_bytes(tensors, metadata))
