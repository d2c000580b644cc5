"""What a kohya config means beyond its own keys, for `train import kohya`: the values kohya
trains with where the config is silent (the optimizer class's own defaults, which differ from
lorakit's), the warm-up kohya_ss ignores with a constant schedule, the family its v2 / sdxl
flags say, close equivalents of optimizers lorakit lacks, and relative paths, which kohya reads
from where it runs and lorakit from the config's folder. Each adds a report row saying so."""

from __future__ import annotations

from pathlib import Path

from lorakit.train.kohya_keys import truthy
from lorakit.train.optimizers import OPTIMIZERS

# kohya optimizers lorakit lacks, with the one that makes the same updates (and why it differs)
EQUIVALENTS = {"lion8bit": ("lion", "lorakit has no 8-bit Lion: the same updates, in more memory"),
               "pagedlion8bit": ("lion", "lorakit has no paged 8-bit Lion: the same updates, in more memory"),
               "pagedadamw8bit": ("adamw8bit", "paging only moves the state out of VRAM under pressure"),
               "pagedadamw": ("adamw", "paging only moves the state out of VRAM under pressure"),
               "pagedadamw32bit": ("adamw", "paging only moves the state out of VRAM under pressure")}
# keys whose loss changes what trains: a run with lorakit's default instead is not the user's run
ESSENTIAL = ("optimizer_type", "optimizer", "LoRA_type", "network_module", "lr_scheduler", "loss_type")
PATHS = ("data.image_root", "data.reg_root", "output.dir", "model.base", "model.vae", "network.weights",
         "sampling.prompts")


def meaning(flat: dict, tree: dict, rows: list, gui: bool, put, where: Path) -> None:
    _equivalent_optimizer(flat, tree, rows, put)
    _optimizer_defaults(tree, rows, put)
    _constant_warmup(flat, tree, rows)
    _family(flat, tree, rows, gui, put)
    _paths(tree, rows, where)


def _equivalent_optimizer(flat: dict, tree: dict, rows: list, put) -> None:
    for key in ("optimizer_type", "optimizer"):
        name = str(flat.get(key, "")).lower().replace("_", "")
        if name in EQUIVALENTS and "type" not in tree.get("optimizer", {}):
            target, why = EQUIVALENTS[name]
            put(tree, "optimizer.type", target)
            for row in rows:
                if row[0] == key:
                    row[2] = f'optimizer.type = "{target}": {why}'


def _optimizer_defaults(tree: dict, rows: list, put) -> None:
    kind = tree.get("optimizer", {}).get("type", "adamw")
    for key, value in OPTIMIZERS[kind].class_defaults.items():
        if key not in tree.get("optimizer", {}):
            put(tree, f"optimizer.{key}", value)
            rows.append([f"({kind}'s {key})", "unset", f"optimizer.{key} = {value}: the optimizer's own default, "
                                                        "which kohya trains with (lorakit's default is the guide's)"])


def _constant_warmup(flat: dict, tree: dict, rows: list) -> None:
    """kohya_ss logs 'Can't use LR warmup with LR Scheduler constant... ignoring' and passes none."""
    scheduler = tree.get("scheduler", {})
    if str(flat.get("lr_scheduler", "")).lower() != "constant":
        return
    for key in ("warmup_steps", "warmup_ratio"):
        if key in scheduler:
            scheduler.pop(key)
            for row in rows:
                if row[2].startswith(f"scheduler.{key}"):
                    row[2] = "dropped: kohya_ss ignores a warm-up with the constant scheduler (use " \
                             "constant_with_warmup for one)"


def _family(flat: dict, tree: dict, rows: list, gui: bool, put) -> None:
    """kohya_ss saves both flags: neither set is SD1.x (plan's advice by family then applies)."""
    if gui and "v2" in flat and "sdxl" in flat and not truthy(flat["v2"]) and not truthy(flat["sdxl"]) \
            and tree.get("model", {}).get("family", "auto") == "auto":
        put(tree, "model.family", "sd1")
        rows.append(["(v2 and sdxl)", "false, false", 'model.family = "sd1": kohya_ss trains SD1.x without either'])


def _paths(tree: dict, rows: list, where: Path) -> None:
    """Relative paths made absolute from `where` (the folder kohya would run in)."""
    for dotted in PATHS:
        section, key = dotted.split(".")
        value = tree.get(section, {}).get(key)
        if not isinstance(value, str) or not value or Path(value).is_absolute():
            continue
        local = (where / value).resolve()
        if dotted in ("model.base", "sampling.prompts") and not local.exists():
            continue  # a hub repo id; kohya_ss's prompts as text: not paths
        tree[section][key] = str(local)
        rows.append([f"({dotted})", value, f"{dotted} = {str(local)!r}: kohya reads a relative path from where "
                                           "it runs; lorakit from the config's folder"])
