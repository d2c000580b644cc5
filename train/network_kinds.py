"""network.module: one record per kind of network, with everything lorakit knows of it (which
code builds it, what it trains, which settings act on it and why the others are refused, how its
files name it), as LyCORIS and OneTrainer keep such facts on the class. Adding a kind is one
entry here; nothing else compares module names."""

from __future__ import annotations

from dataclasses import dataclass

from lorakit.errors import UserError
from lorakit.train.blocks import BLOCK_ARGS

# settings lycoris reads from network.args; anything else is a typo caught before a run starts
ARGS = frozenset({"use_tucker", "use_scalar", "decompose_both", "factor", "full_matrix", "unbalanced_factorization",
                  "constraint", "rescaled", "train_on_input", "rank_dropout_scale", "weight_decompose",
                  "dora_wd", "wd_on_out", "rs_lora"})
DYLORA_ARGS = frozenset({"unit", "block_size"})  # kohya's name and lycoris's for the same thing
LORA_ARGS = frozenset(BLOCK_ARGS | {"dora_wd"})
SWITCHES = frozenset({"dora_wd", "use_tucker", "use_scalar", "decompose_both", "full_matrix", "unbalanced_factorization",
                      "rescaled", "train_on_input", "rank_dropout_scale", "weight_decompose", "wd_on_out", "rs_lora"})

# lycoris-lora's modules that take network.dropout and do nothing with it (LoHa and LoKr also print a notice on stdout)
NO_HIDDEN_DROPOUT = "has no dropout on its hidden activations in lycoris-lora (it would be ignored)"


@dataclass(frozen=True)
class NetworkKind:
    builder: str | None  # "ours" (train/network.py), "lycoris" (train/lycoris_net.py), None: no network
    convolutions: bool  # trains the 3x3 convolutions too (LoCon's targets)
    args: frozenset[str]  # the network.args it reads
    file_module: str  # the ss_network_module its files carry (kohya's name for it)
    continues: bool = False  # network.weights can continue a file of this layout
    hidden_dropout: str = ""  # why network.dropout is refused ("": it acts)
    rank_dropout: str = ""  # why network.rank_dropout is refused ("": it acts)
    rank_blocks: bool = False  # ranks trained in blocks of network.args.unit (DyLoRA)
    dora: bool = False  # network.args.dora_wd: DoRA on our LoRA modules


KINDS: dict[str, NetworkKind] = {
    "lora": NetworkKind("ours", False, LORA_ARGS, "networks.lora", continues=True, dora=True),
    "locon": NetworkKind("ours", True, LORA_ARGS, "networks.lora", continues=True, dora=True),
    "dylora": NetworkKind("ours", True, DYLORA_ARGS, "networks.dylora", continues=True, rank_blocks=True,
                          rank_dropout="dylora picks the ranks itself; rank_dropout does not combine with it"),
    "loha": NetworkKind("lycoris", True, ARGS, "lycoris.kohya", hidden_dropout=NO_HIDDEN_DROPOUT),
    # found by the placement check (train/placement.py): a GPU run would fail at its first step
    "lokr": NetworkKind("lycoris", True, ARGS, "lycoris.kohya", hidden_dropout=NO_HIDDEN_DROPOUT,
                        rank_dropout="lycoris-lora draws LoKr's rank mask on the CPU, which fails against the weights "
                                     "on a GPU; use rank_dropout with loha or locon, or module_dropout"),
    # lycoris-lora drops IA3's ranks nowhere, and GLoRA's only in its bypass mode, which lorakit does
    # not use: rank_dropout would train exactly as 0 (measured: identical losses)
    "ia3": NetworkKind("lycoris", True, ARGS, "lycoris.kohya", hidden_dropout=NO_HIDDEN_DROPOUT,
                       rank_dropout="lycoris-lora's ia3 drops no ranks (it would be ignored); set "
                                    "network.rank_dropout = 0, and use module_dropout instead"),
    "glora": NetworkKind("lycoris", True, ARGS, "lycoris.kohya", hidden_dropout=NO_HIDDEN_DROPOUT,
                         rank_dropout="lycoris-lora's glora drops no ranks (it would be ignored); set "
                                      "network.rank_dropout = 0, and use module_dropout instead"),
    "diag-oft": NetworkKind("lycoris", True, ARGS, "lycoris.kohya"),
    "none": NetworkKind(None, False, frozenset(), "networks.lora"),  # embeddings alone
}
ALGOS = tuple(name for name, kind in KINDS.items() if kind.builder == "lycoris")


def dylora_unit(args: dict) -> int:
    return int(args.get("unit", args.get("block_size", 1)))


def check_args(module: str, args: dict, dim: int, conv_dim: int, rank_dropout: float = 0.0,
               dropout: float = 0.0) -> None:
    """What `train plan` can tell of the network's settings before a model loads."""
    kind = KINDS[module]
    if kind.hidden_dropout and dropout:
        instead = "module_dropout" if kind.rank_dropout else "rank_dropout or module_dropout"
        raise UserError(f"network.dropout = {dropout}: {module} {kind.hidden_dropout}; set network.dropout = 0, "
                        f"and use {instead} instead")
    if kind.rank_dropout and rank_dropout and not kind.rank_blocks:
        raise UserError(f"network.rank_dropout = {rank_dropout}: {kind.rank_dropout}")
    if kind.dora and args.get("dora_wd") and (dropout or rank_dropout):
        raise UserError("network.dropout and rank_dropout act on LoRA's hidden ranks, which DoRA (dora_wd) folds "
                        "into the weight it rescales: set them to 0 (module_dropout works)")
    for key in sorted(set(args) & SWITCHES):  # "false" as text would read as true
        if not isinstance(args[key], bool):
            raise UserError(f"network.args.{key} = {args[key]!r}: true or false, not text or a number")
    unknown = sorted(set(args) - kind.args)
    if unknown:
        raise UserError(f"network.args: unknown setting(s) {', '.join(unknown)} for {module}; known: "
                        + (", ".join(sorted(kind.args)) or "none"))
    if kind.rank_blocks:
        unit = dylora_unit(args)
        if unit < 1 or dim % unit or conv_dim % unit:
            raise UserError(f"dylora trains ranks in blocks of network.args.unit = {unit}: network.dim "
                            f"({dim}) and network.conv_dim ({conv_dim}) must be multiples of it")
        if rank_dropout:
            raise UserError(f"network.rank_dropout = {rank_dropout}: {kind.rank_dropout}")
