"""The network part of `train import kohya`: the module, from sd-scripts' network_module and
network_args or from kohya_ss's LoRA_type, and each setting for that module, read only where
kohya would pass it. What lorakit refuses but kohya lets pass (a dropout the module ignores, a
leftover dim_from_weights) is dropped with the reason, so the imported config plans and runs."""

from __future__ import annotations

import json
from typing import Any

from lorakit.train.kohya_args import parse
from lorakit.train.kohya_keys import truthy
from lorakit.train.network_kinds import KINDS

MODULES = {"networks.lora": "lora", "networks.dylora": "dylora", "networks.loha": "loha", "networks.lokr": "lokr"}
LYCORIS_ALGOS = {"lora": "locon", "locon": "locon", "loha": "loha", "lokr": "lokr", "ia3": "ia3", "glora": "glora",
                 "diag-oft": "diag-oft"}
BLOCKWISE = ("down_lr_weight", "mid_lr_weight", "up_lr_weight", "block_lr_zero_threshold", "block_dims",
             "block_alphas", "conv_block_dims", "conv_block_alphas")
_DROPOUTS = ("rank_dropout", "module_dropout")
_LYCORIS = ("LyCORIS_preset", "conv_dim", "conv_alpha")
_LOCON_LIKE = _LYCORIS + ("use_tucker", "rank_dropout", "bypass_mode", "dora_wd", "module_dropout", "use_scalar",
                          "rank_dropout_scale", "train_norm")
# kohya_ss's LoRA_type: lorakit's module, whether it runs through lycoris.kohya, and the GUI's own
# fields it passes for that type (kohya_gui/lora_gui.py builds network_args from exactly these;
# every other field of the GUI's save is left out of the command line)
GUI_TYPES: dict[str, tuple[str, bool, tuple[str, ...]]] = {
    "standard": ("lora", False, BLOCKWISE + _DROPOUTS),
    "kohya locon": ("lora", False, BLOCKWISE + _DROPOUTS + ("conv_dim", "conv_alpha")),
    "kohya dylora": ("dylora", False, BLOCKWISE + _DROPOUTS + ("conv_dim", "conv_alpha", "unit")),
    "kohya loha": ("loha", False, ("conv_dim", "conv_alpha", "use_tucker") + _DROPOUTS),
    "kohya lokr": ("lokr", False, ("conv_dim", "conv_alpha", "use_tucker", "factor") + _DROPOUTS),
    "locon": ("locon", True, _LOCON_LIKE),  # the GUI reads an old "LoCon" as LyCORIS/LoCon
    "lycoris/locon": ("locon", True, _LOCON_LIKE),
    "lycoris/loha": ("loha", True, _LOCON_LIKE),
    "lycoris/lokr": ("lokr", True, _LOCON_LIKE + ("factor", "use_cp", "decompose_both")),
    "lycoris/ia3": ("ia3", True, _LYCORIS + ("train_on_input",)),
    "lycoris/glora": ("glora", True, _LYCORIS + ("use_tucker", "rank_dropout", "module_dropout",
                                                 "rank_dropout_scale", "train_norm")),
    "lycoris/diag-oft": ("diag-oft", True, _LYCORIS + ("module_dropout", "use_tucker", "rank_dropout",
                                                       "rank_dropout_scale", "constrain", "rescaled", "train_norm")),
}
SHOWN_TYPES = {"standard": "Standard", "kohya locon": "Kohya LoCon", "kohya dylora": "Kohya DyLoRA",
               "kohya loha": "Kohya LoHa", "kohya lokr": "Kohya LoKr", "locon": "LoCon", "lycoris/locon": "LyCORIS/LoCon",
               "lycoris/loha": "LyCORIS/LoHa", "lycoris/lokr": "LyCORIS/LoKr", "lycoris/ia3": "LyCORIS/iA3",
               "lycoris/glora": "LyCORIS/GLoRA", "lycoris/diag-oft": "LyCORIS/Diag-OFT"}
GUI_FIELDS = {field for _, _, fields in GUI_TYPES.values() for field in fields}
# the GUI's name -> the network_args name kohya_ss writes for it
GUI_NAMES = {"LyCORIS_preset": "preset", "constrain": "constraint"}
# values that change nothing: lycoris's defaults (and kohya_ss's, which it passes anyway)
NEUTRAL: dict[str, Any] = {"factor": -1, "unit": 1, "preset": "full", "constraint": 0, "use_tucker": False,
                           "use_cp": False, "use_scalar": False, "rank_dropout_scale": False, "dora_wd": False,
                           "rescaled": False, "decompose_both": False, "train_norm": False, "bypass_mode": False}
LACKED = {"train_norm": "training the normalisation layers", "bypass_mode": "LyCORIS's bypass mode",
          "preset": "LyCORIS's presets: it trains LoCon's set of layers, the 3x3 convolutions with conv_dim",
          "loraplus_lr_ratio": "LoRA+", "loraplus_unet_lr_ratio": "LoRA+", "loraplus_text_encoder_lr_ratio": "LoRA+"}
TOP = {"conv_dim": ("network.conv_dim", int), "conv_alpha": ("network.conv_alpha", float),
       "dropout": ("network.dropout", float), "rank_dropout": ("network.rank_dropout", float),
       "module_dropout": ("network.module_dropout", float)}
# lycoris presets that leave the convolutions alone, so a missing conv_dim trains none
NO_CONV_PRESETS = ("attn-mlp", "attn-only", "unet-transformer-only", "ia3")


def _same(value: Any, neutral: Any) -> bool:
    if isinstance(neutral, bool):
        return truthy(value) == neutral
    try:
        return float(value) == float(neutral)
    except (TypeError, ValueError):
        return str(value).lower() == str(neutral).lower()


def _off(value: Any) -> bool:
    if value in ("", None, []) or value is False:
        return True
    try:
        return float(value) == 0
    except (TypeError, ValueError):
        return str(value).lower() in ("false", "none")


def put(tree: dict, dotted: str, value: Any) -> None:
    """Set `dotted` (network.dim) in the tree, as its key takes it: a value its field refuses
    raises (ValueError, ConfigError) for the caller's row. network.args is lycoris's own."""
    from lorakit.train.config_toml import coerce_key

    if not dotted.startswith(("network.args.", "optimizer.args.")):
        value = coerce_key(dotted, value)
    *path, last = dotted.split(".")
    node = tree
    for part in path:
        node = node.setdefault(part, {})
    node[last] = value


def _arg(module: str, key: str, value: Any) -> tuple[str, Any] | str:
    """(lorakit key, value) for one network setting, or why it has none."""
    if key == "use_cp":  # lycoris reads kohya_ss's use_cp as use_tucker
        key = "use_tucker"
    if key in NEUTRAL and _same(value, NEUTRAL[key]):
        return "off: lycoris's default"
    if key == "train_on_input":
        return "dropped: lycoris.kohya does not read train_on_input (kohya's IA3 trains on the output)"
    if key in TOP:
        target, convert = TOP[key]
        return target, convert(value)
    if key in LACKED:
        return f"not mapped: lorakit lacks {key} ({LACKED[key]})"
    known = KINDS[module].args if module in KINDS else frozenset()
    if key in known:
        if key in BLOCKWISE:
            return f"network.args.{key}", value
        if key in ("factor", "unit", "block_size"):
            return f"network.args.{key}", int(value)
        if key == "constraint":
            return f"network.args.{key}", float(value)
        return f"network.args.{key}", truthy(value) if isinstance(value, (bool, str)) else value
    if key in BLOCKWISE:
        return f"not mapped: block-wise settings are for LoRA and LoCon, not {module}"
    return f"not mapped: lorakit's {module} has no {key}"


def _gui(flat: dict, lora_type: str, rows: list) -> tuple[str | None, bool, dict]:
    """The module of kohya_ss's LoRA_type, whether lycoris.kohya runs it, and the GUI's fields
    the type passes (as network_args names); a row for each field it leaves out."""
    module, lycoris, passed = GUI_TYPES.get(lora_type.lower(), (None, False, GUI_FIELDS))
    args = {}
    for field in sorted(GUI_FIELDS & set(flat), key=list(flat).index):
        value, name = flat[field], GUI_NAMES.get(field, field)
        if field in passed:
            args[name] = value
        elif _off(value) or (name in NEUTRAL and _same(value, NEUTRAL[name])) or field == "train_on_input":
            # (train_on_input: the GUI's default is true, and it is IA3's alone)
            rows.append([field, _shown(value), f"off: kohya_ss passes it only for other LoRA types, not {lora_type}"])
        else:
            rows.append([field, _shown(value), f"dropped: kohya_ss passes {field} only for "
                                               f"{_types_with(field)}, not {lora_type}"])
    return module, lycoris, args


def _types_with(field: str) -> str:
    """The LoRA types kohya_ss passes `field` for, as its menu names them."""
    found = [SHOWN_TYPES[t] for t, (_, _, fields) in GUI_TYPES.items() if field in fields and t != "locon"]
    lycoris = [t for t in found if t.startswith("LyCORIS/")]
    kohya = [t for t in found if not t.startswith("LyCORIS/")]
    return ", ".join(kohya + (["LyCORIS types"] if len(lycoris) > 3 else lycoris))


def _shown(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def network(flat: dict, tree: dict, rows: list, gui: bool) -> None:
    """The [network] settings: module, conv and dropouts, network.args."""
    from lorakit.train.config_toml import ConfigError

    lora_type = flat.get("LoRA_type") or ("Standard" if gui else None)  # the GUI's default type
    if "network_args" in flat and _off(flat["network_args"]):
        rows.append(["network_args", _shown(flat["network_args"]), "off: empty"])
    if lora_type:  # kohya_ss: the type decides the module and which of its fields apply
        module, lycoris, args = _gui(flat, str(lora_type), rows)
        source, origin = str(lora_type), "LoRA_type"
        names = {v: k for k, v in GUI_NAMES.items()}
        # not a field of the GUI, but written into a JSON it can only mean sd-scripts' network_args
        written, bad = parse(flat.get("network_args") or [], literals=False)
        rows += [["network_args", item, "not mapped: not key=value"] for item in bad]
        args.update(written)

        def name(key: str) -> str:
            return f"network_args {key}" if key in written else names.get(key, key)
    else:
        args, bad = parse(flat.get("network_args") or [], literals=False)
        rows += [["network_args", item, "not mapped: not key=value"] for item in bad]
        module = MODULES.get(str(flat.get("network_module", "networks.lora")))
        lycoris = flat.get("network_module") == "lycoris.kohya"
        if lycoris or "algo" in args:
            module = LYCORIS_ALGOS.get(str(args.pop("algo", "lora")).lower())
        source, origin = str(flat.get("network_module") or "networks.lora"), "network_module"

        def name(key: str) -> str:
            return f"network_args {key}"
    if module is None:
        rows.append([origin, source, "not mapped: lorakit trains LoRA, LoCon, DyLoRA and lycoris's LoHa, LoKr, "
                                     "IA3, GLoRA, Diag-OFT"])
        rows += [[name(key), _shown(value), "off: its default" if _off(value) or _same(value, NEUTRAL.get(key, 0))
                  else f"not mapped: a setting of {source}"] for key, value in args.items()]
        return
    preset = str(args.get("preset", "full")).lower()
    if lycoris and preset in NO_CONV_PRESETS:
        for key in ("conv_dim", "conv_alpha"):
            if key in args:
                value = args.pop(key)
                rows.append([name(key), _shown(value), "off: empty" if _off(value) else
                             f"dropped: LyCORIS's preset {preset} trains no convolutions"])
    elif lycoris:  # lycoris.kohya reads a conv_dim (conv_alpha) of 0, or none, as network_dim (network_alpha)
        for key, main_key, convert in (("conv_dim", "network_dim", int), ("conv_alpha", "network_alpha", float)):
            main = flat.get(main_key)
            if _off(args.get(key)) and not _off(main):
                shown = _shown(args.pop(key)) if key in args else "(unset)"
                put(tree, f"network.{key}", convert(main))
                rows.append([name(key), shown, f"network.{key} = {convert(main):g}: lycoris.kohya reads 0 or none "
                                               f"as {main_key}"])
    elif not _off(args.get("conv_dim")) and _off(args.get("conv_alpha", 1)):
        args["conv_alpha"] = args["conv_dim"]  # sd-scripts' LoRA: an alpha of 0 is the rank
    if module in KINDS and not KINDS[module].convolutions and KINDS[module].builder == "ours" \
            and not _off(args.get("conv_dim")):
        module = "locon"  # kohya's LoRA with conv_dim is what lorakit calls LoCon
    put(tree, "network.module", module)
    rows.append([origin, source, f'network.module = "{module}"'])
    for key, value in args.items():
        label, shown = name(key), _shown(value)
        if gui and _off(value) and not (key in NEUTRAL and _same(value, NEUTRAL[key])):
            rows.append([label, shown, "off: kohya_ss passes no 0 or false"])
            continue
        try:
            where = _arg(module, key, value)
            if not isinstance(where, str):
                put(tree, *where)
                where = where[0]
        except (TypeError, ValueError, ConfigError) as exc:
            where = f"not mapped: {exc}"
        rows.append([label, shown, where])


def drop(tree: dict, rows: list, target: str, why: str, kind: str = "dropped") -> None:
    """Take `target` out of the tree; the rows that set it say why."""
    *path, last = target.split(".")
    node = tree
    for part in path:
        node = node.get(part, {})
    node.pop(last, None)
    for row in rows:
        if row[2] == target or row[2].startswith((f"{target} ", f"{target}:")):
            row[2] = f"{kind}: {why}"


def fit(tree: dict, rows: list) -> None:
    """What lorakit refuses and kohya lets pass, dropped with the reason: the imported config
    must plan and run as kohya's did."""
    n = tree.get("network", {})
    module, args = n.get("module", "lora"), n.get("args", {})
    kind = KINDS.get(module)
    if kind is None:
        return
    # the network kind's own record says what lorakit refuses (train/network_kinds.py)
    if kind.hidden_dropout and n.get("dropout"):
        drop(tree, rows, "network.dropout", f"lycoris's {module} {kind.hidden_dropout}: kohya passes "
                                            "network_dropout to it and nothing happens")
    if kind.dora and truthy(args.get("dora_wd", False)):
        if n.get("dropout"):
            drop(tree, rows, "network.dropout", "with DoRA (dora_wd) LyCORIS ignores network_dropout")
        if n.get("rank_dropout"):
            drop(tree, rows, "network.rank_dropout", "lorakit's DoRA lacks rank dropout: it folds the ranks into "
                                                     "the weight it rescales (module_dropout works)", "not mapped")
    if kind.rank_dropout and n.get("rank_dropout"):
        drop(tree, rows, "network.rank_dropout", kind.rank_dropout)
    if n.get("weights") and not kind.continues:
        drop(tree, rows, "network.weights", f"lorakit continues LoRA, LoCon and DyLoRA files, not {module}",
             "not mapped")
    if n.get("dim_from_weights") and not n.get("weights"):
        drop(tree, rows, "network.dim_from_weights", "it reads the ranks of network_weights, which is not set")
