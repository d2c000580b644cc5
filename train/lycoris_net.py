"""LoHa, LoKr, IA3, GLoRA and Diag-OFT: lycoris-lora's modules on our own targets (DyLoRA is our
own, in train/network.py).

lycoris-lora's network wrapper names modules from their paths in the model it is given, which
for SDXL gives diffusers names (kohya and the UIs expect SGM ones) and for transformers 5 text
encoders loses `text_model_` (docs/formats.md, "Training"). So only its per-module classes are used here, one
per target of `train.naming`: the keys are the same kohya names as our LoRA's (`lora_unet_…`,
`lora_te1_…`), followed by each algorithm's own tensors (`hada_w1_a`, `lokr_w1`, `oft_blocks`…),
which is what A1111 and ComfyUI read. Dropouts, the multiplier and max-norm are lycoris's own.
"""

from __future__ import annotations

import contextlib
import logging
import sys

import torch
from torch import nn

from lorakit.errors import UserError
from lorakit.train.naming import Target
from lorakit.train.network_kinds import ALGOS, ARGS, DYLORA_ARGS, KINDS, check_args, dylora_unit  # noqa: F401


def _classes() -> dict[str, type]:
    try:
        from lycoris.modules import DiagOFTModule, GLoRAModule, IA3Module, LohaModule, LokrModule
    except ImportError as error:  # a dependency of the project; missing only in a broken install
        raise UserError(f"network.module needs lycoris-lora ({error}): pip install lycoris-lora") from None
    # lycoris logs to stdout, which `--json` keeps for its result: hand its warnings to the
    # standard logging (stderr) instead
    lycoris_log = logging.getLogger("LyCORIS")
    for handler in list(lycoris_log.handlers):
        lycoris_log.removeHandler(handler)
    lycoris_log.propagate = True
    return {"loha": LohaModule, "lokr": LokrModule, "ia3": IA3Module, "glora": GLoRAModule,
            "diag-oft": DiagOFTModule}


# kept here for the modules that read them from this one
NO_DROPOUT = tuple(name for name, kind in KINDS.items() if kind.hidden_dropout)


class LycorisNetwork(nn.Module):
    """The same interface as `train.network.LoRANetwork`: `loras`, attach/detach, merge,
    scale_weight_norms, kohya_state_dict."""

    def __init__(self, algo: str, targets: list[Target], rank: int, alpha: float, conv_rank: int = 0,
                 conv_alpha: float = 1.0, dropout: float = 0.0, rank_dropout: float = 0.0,
                 module_dropout: float = 0.0, args: dict | None = None):
        super().__init__()
        check_args(algo, args or {}, rank, conv_rank, rank_dropout, dropout)
        kwargs = dict(args or {})
        if "dora_wd" in kwargs:  # kohya's spelling of weight decomposition (DoRA)
            kwargs["weight_decompose"] = kwargs.pop("dora_wd")
        use_tucker = bool(kwargs.pop("use_tucker", False))
        module_class = _classes()[algo]
        modules = []
        for target in targets:
            if target.is_conv3x3 and conv_rank <= 0:
                continue  # as with LoCon: 3x3 convolutions train only with a conv rank
            dim, a = (conv_rank, conv_alpha) if target.is_conv3x3 else (rank, alpha)
            try:
                with contextlib.redirect_stdout(sys.stderr):  # lycoris prints notices; stdout is the report's
                    module = module_class(target.name, target.module, 1.0, dim, a, dropout, rank_dropout,
                                          module_dropout, use_tucker, **kwargs)
            except (ValueError, AssertionError) as error:  # e.g. a layer type the algorithm lacks
                raise UserError(f"network.module = {algo!r} on {target.name}: {error}") from None
            modules.append(module)
        self.loras = nn.ModuleList(modules)
        self.algo = algo

    def attach(self) -> None:
        for module in self.loras:
            module.apply_to()

    def detach(self) -> None:
        for module in reversed(self.loras):
            module.restore()

    @torch.no_grad()
    def merge(self) -> None:
        for module in self.loras:
            module.merge_to(1.0)

    @torch.no_grad()
    def scale_weight_norms(self, max_norm: float) -> int:
        scaled = 0
        for module in self.loras:
            did, _ = module.apply_max_norm(max_norm, module.device)
            scaled += int(did or 0)
        return scaled

    def kohya_state_dict(self, dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
        out = {}
        for module in self.loras:
            for key, value in module.state_dict().items():
                # alpha stays float32, as kohya and the loaders expect; flags (IA3's on_input) as they are
                keep = torch.float32 if key == "alpha" else dtype if value.is_floating_point() else value.dtype
                out[f"{module.lora_name}.{key}"] = value.detach().to("cpu", keep).contiguous()
        return out
