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
from lorakit.train.blocks import BLOCK_ARGS
from lorakit.train.naming import Target


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


ALGOS = ("loha", "lokr", "ia3", "glora", "diag-oft")
# settings lycoris reads from network.args; anything else is a typo caught before a run starts
ARGS = {"use_tucker", "use_scalar", "decompose_both", "factor", "full_matrix", "unbalanced_factorization",
        "constraint", "rescaled", "train_on_input", "rank_dropout_scale", "weight_decompose",
        "dora_wd", "wd_on_out", "rs_lora"}
DYLORA_ARGS = {"unit", "block_size"}  # kohya's name and lycoris's for the same thing


def dylora_unit(args: dict) -> int:
    return int(args.get("unit", args.get("block_size", 1)))


# lycoris-lora's modules that take network.dropout and do nothing with it (LoHa and LoKr also print
# a notice on stdout): refused, not ignored
NO_DROPOUT = ("loha", "lokr", "ia3", "glora")
# lycoris-lora drops IA3's ranks nowhere, and GLoRA's only in its bypass mode, which lorakit does not
# use: rank_dropout would train exactly as 0 (measured: identical losses)
NO_RANK_DROPOUT = ("ia3", "glora")


def check_args(algo: str, args: dict, dim: int, conv_dim: int, rank_dropout: float = 0.0,
               dropout: float = 0.0) -> None:
    """What `train plan` can tell before a model loads."""
    instead = "module_dropout" if algo in NO_RANK_DROPOUT or algo == "lokr" else "rank_dropout or module_dropout"
    if algo in NO_DROPOUT and dropout:
        raise UserError(f"network.dropout = {dropout}: {algo} has no dropout on its hidden activations in "
                        f"lycoris-lora (it would be ignored); set network.dropout = 0, and use {instead} instead")
    if algo in NO_RANK_DROPOUT and rank_dropout:
        raise UserError(f"network.rank_dropout = {rank_dropout}: lycoris-lora's {algo} drops no ranks (it would be "
                        "ignored); set network.rank_dropout = 0, and use module_dropout instead")
    known = DYLORA_ARGS if algo == "dylora" else ARGS if algo in ALGOS else BLOCK_ARGS | {"dora_wd"}
    if algo in ("lora", "locon") and args.get("dora_wd") and (dropout or rank_dropout):
        raise UserError("network.dropout and rank_dropout act on LoRA's hidden ranks, which DoRA (dora_wd) folds "
                        "into the weight it rescales: set them to 0 (module_dropout works)")
    unknown = sorted(set(args) - known)
    if unknown:
        raise UserError(f"network.args: unknown setting(s) {', '.join(unknown)} for {algo}; known: "
                        + (", ".join(sorted(known)) or "none"))
    if algo == "dylora":
        unit = dylora_unit(args)
        if unit < 1 or dim % unit or conv_dim % unit:
            raise UserError(f"dylora trains ranks in blocks of network.args.unit = {unit}: network.dim "
                            f"({dim}) and network.conv_dim ({conv_dim}) must be multiples of it")
        if rank_dropout:
            raise UserError("network.rank_dropout does not combine with dylora, which picks the ranks itself")
    if algo == "lokr" and rank_dropout:
        # found by the placement check (train/placement.py): a GPU run would fail at its first step
        raise UserError("network.rank_dropout with lokr: lycoris-lora draws LoKr's rank mask on the CPU, which "
                        "fails against the weights on a GPU; use rank_dropout with loha or locon, or module_dropout")


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
