"""`train import kohya CONFIG [--dataset DATASET]`: a kohya sd-scripts training config (the TOML
of `--config_file`, its sections flattened as kohya does, or the JSON kohya_ss saves) as a
lorakit config, with a report of every key: where it went, or why it went nowhere.

Each kohya key is a row of KEYS (train/kohya_keys.py): the lorakit key it sets and how its value converts, or the
reason it has none (an option lorakit lacks is said, never dropped silently). The dataset config
(`--dataset`, or the config's own `dataset_config`) is copied as it is: lorakit reads kohya's
dataset TOML, `[general]` included.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import tomllib

from lorakit.errors import UserError
from lorakit.report import WRITTEN, Outcome, Report, Section
from lorakit.train.kohya_keys import KEYS, To, truthy

# read together with others below, each with its own report rows
HANDLED = {"lr_warmup_steps", "lr_warmup", "network_module", "LoRA_type", "network_args", "optimizer_args"}


def _flatten(data: dict) -> dict[str, Any]:
    """kohya's config sections ([model_arguments], [training_arguments]…) are only grouping."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and key not in ("network_args", "optimizer_args"):
            flat.update(value)
        else:
            flat[key] = value
    return flat


def _args(value: Any) -> dict[str, Any]:
    """kohya's `key=value` list (or kohya_ss's one space-separated string) into a dict."""
    items = value if isinstance(value, list) else str(value).split()
    out = {}
    for item in items:
        if "=" not in str(item):
            continue
        key, raw = str(item).split("=", 1)
        try:
            parsed: Any = json.loads(raw.lower() if raw.lower() in ("true", "false") else raw)
        except json.JSONDecodeError:
            parsed = raw.strip("\"'")
        out[key.strip()] = parsed
    return out


def _set(tree: dict, dotted: str, value: Any) -> None:
    *path, last = dotted.split(".")
    node = tree
    for part in path:
        node = node.setdefault(part, {})
    node[last] = value


MODULES = {"networks.lora": "lora", "networks.dylora": "dylora"}
LORA_TYPES = {"standard": "lora", "locon": "locon", "kohya locon": "locon", "lycoris/locon": "locon",
              "lycoris/loha": "loha", "lycoris/lokr": "lokr", "lycoris/ia3": "ia3", "lycoris/glora": "glora",
              "lycoris/diag-oft": "diag-oft", "kohya dylora": "dylora"}
LYCORIS_ALGOS = {"lora": "locon", "locon": "locon", "loha": "loha", "lokr": "lokr", "ia3": "ia3", "glora": "glora",
                 "diag-oft": "diag-oft"}
NETWORK_ARGS = {"conv_dim": ("network.conv_dim", int), "conv_alpha": ("network.conv_alpha", float),
                "rank_dropout": ("network.rank_dropout", float), "module_dropout": ("network.module_dropout", float),
                "dropout": ("network.dropout", float), "unit": ("network.args.unit", int)}
BLOCKWISE = ("down_lr_weight", "mid_lr_weight", "up_lr_weight", "block_lr_zero_threshold", "block_dims",
             "block_alphas", "conv_block_dims", "conv_block_alphas")


def _network(flat: dict, tree: dict, rows: list) -> None:
    args = _args(flat.get("network_args") or [])
    module = MODULES.get(str(flat.get("network_module", "networks.lora")))
    if flat.get("LoRA_type"):
        module = LORA_TYPES.get(str(flat["LoRA_type"]).lower())
    if flat.get("network_module") == "lycoris.kohya" or "algo" in args:
        module = LYCORIS_ALGOS.get(str(args.pop("algo", "lora")).lower())
    if module is None:
        rows.append(["network_module", str(flat.get("network_module") or flat.get("LoRA_type")),
                     "not mapped: lorakit trains LoRA, LoCon, DyLoRA and lycoris's LoHa, LoKr, IA3, GLoRA, Diag-OFT"])
        return
    conv = args.get("conv_dim", flat.get("conv_dim"))
    if module == "lora" and conv not in (None, "", 0, "0"):
        module = "locon"  # kohya's LoRA with conv_dim in its args is what lorakit calls LoCon
    _set(tree, "network.module", module)
    rows.append(["network_module", str(flat.get("LoRA_type") or flat.get("network_module") or "networks.lora"),
                 f'network.module = "{module}"'])
    for key, value in args.items():
        if key in NETWORK_ARGS:
            target, convert = NETWORK_ARGS[key]
            _set(tree, target, convert(value))
            rows.append([f"network_args {key}", str(value), target])
        elif key in BLOCKWISE and module in ("lora", "locon"):
            _set(tree, f"network.args.{key}", value)
            rows.append([f"network_args {key}", str(value), f"network.args.{key} (kohya's block indexing)"])
        elif key in BLOCKWISE:
            rows.append([f"network_args {key}", str(value), f"not mapped: block-wise settings are for LoRA and LoCon, "
                                                            f"not {module}"])
        elif key == "dora_wd" and module in ("lora", "locon"):
            _set(tree, "network.args.dora_wd", truthy(value))
            rows.append([f"network_args {key}", str(value), "network.args.dora_wd (DoRA)"])
        elif module not in ("lora", "locon", "dylora"):
            _set(tree, f"network.args.{key}", value)
            rows.append([f"network_args {key}", str(value), f"network.args.{key} (for lycoris)"])
        else:
            rows.append([f"network_args {key}", str(value), "not mapped: no such LoRA option in lorakit"])


def _optimizer(flat: dict, tree: dict, rows: list) -> None:
    for key, value in _args(flat.get("optimizer_args") or []).items():
        if key == "betas":
            betas = [float(b) for b in (value if isinstance(value, list) else str(value).strip("()[]").split(","))]
            _set(tree, "optimizer.betas", betas)
            rows.append(["optimizer_args betas", str(value), "optimizer.betas"])
        elif key == "weight_decay":
            _set(tree, "optimizer.weight_decay", float(value))
            rows.append(["optimizer_args weight_decay", str(value), "optimizer.weight_decay"])
        else:
            _set(tree, f"optimizer.args.{key}", value)
            rows.append([f"optimizer_args {key}", str(value), f"optimizer.args.{key}"])


def _warmup(flat: dict, tree: dict, rows: list) -> None:
    steps, percent = flat.get("lr_warmup_steps"), flat.get("lr_warmup")
    if isinstance(steps, (int, float)) and steps:
        if steps < 1:  # kohya reads a fraction as a share of the steps
            _set(tree, "scheduler.warmup_ratio", float(steps))
            rows.append(["lr_warmup_steps", str(steps), "scheduler.warmup_ratio (under 1: a ratio)"])
        else:
            _set(tree, "scheduler.warmup_steps", int(steps))
            rows.append(["lr_warmup_steps", str(steps), "scheduler.warmup_steps"])
    if percent not in (None, "", 0) and not (isinstance(steps, (int, float)) and steps):
        _set(tree, "scheduler.warmup_ratio", float(percent) / 100)
        rows.append(["lr_warmup", str(percent), "scheduler.warmup_ratio (percent / 100)"])


def read_kohya(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    text = path.read_text(encoding="utf-8-sig")
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise UserError(f"{path}: not valid {'JSON' if path.suffix.lower() == '.json' else 'TOML'} ({exc})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a table of options")
    return _flatten(data)


def convert(config: Path, dataset: Path | None = None) -> tuple[dict, dict | None, list[list[str]]]:
    """(lorakit config tree, the dataset tables, report rows [kohya key, value, where it went])."""
    from lorakit.train.config_toml import ConfigError, coerce_key

    flat = read_kohya(config)
    tree: dict = {}
    rows: list[list[str]] = []
    for key, value in flat.items():
        shown = json.dumps(value) if not isinstance(value, str) else value
        if key in HANDLED:
            continue
        if value in ("", None, []):
            rows.append([key, shown, "empty: skipped"])
            continue
        rule = KEYS.get(key)
        if isinstance(rule, To):
            try:  # a value its lorakit key refuses (a path as output.name, network.dim = 0) is reported
                _set(tree, rule.key, coerce_key(rule.key, rule.convert(value)))
                rows.append([key, shown, rule.key])
            except (ValueError, TypeError, ConfigError) as exc:
                rows.append([key, shown, f"not mapped: {exc}"])
        elif isinstance(rule, str):
            rows.append([key, shown, rule[2:]])
        else:
            rows.append([key, shown, "not mapped: lorakit has no such option"])
    _warmup(flat, tree, rows)
    training = tree.get("training", {})
    if "max_epochs" in training and "max_steps" in training:
        training.pop("max_steps")  # kohya: max_train_epochs wins
        rows.append(["max_train_steps", str(flat.get("max_train_steps")), "dropped: max_train_epochs wins, as in kohya"])
    _network(flat, tree, rows)
    _optimizer(flat, tree, rows)
    source = dataset or (Path(flat["dataset_config"]) if flat.get("dataset_config") else None)
    tables = _dataset(source) if source else None
    return tree, tables, rows


def _dataset(path: Path) -> dict:
    """kohya's dataset TOML, its relative image_dir made absolute (relative to that file)."""
    if not path.is_file():
        raise UserError(f"{path}: no such dataset config")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8-sig"))
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path}: not valid TOML ({exc})") from None
    for table in data.get("datasets", []):
        for subset in table.get("subsets", []):
            if subset.get("image_dir") and not Path(subset["image_dir"]).is_absolute():
                subset["image_dir"] = str((path.parent / subset["image_dir"]).resolve())
    return data


def render(tree: dict, tables: dict | None, source: Path) -> str:
    """The lorakit config as TOML: its sections in the config's order, then the dataset tables."""
    from lorakit.train.config import Config
    from lorakit.train.presets import _toml_value

    lines = [f"# imported from {source.name} by `train import kohya`; `train plan` checks it", "", "version = 1"]
    order = [f.name for f in Config.__dataclass_fields__.values()]

    def table(name: str, values: dict) -> None:
        lines.extend(["", f"[{name}]"])
        nested = {k: v for k, v in values.items() if isinstance(v, dict) and k not in ("args",)}
        for key, value in values.items():
            if key not in nested:
                lines.append(f"{key} = {_toml_value(value)}")
        for key, value in nested.items():
            table(f"{name}.{key}", value)

    for section in sorted(tree, key=order.index):
        table(section, tree[section])
    if tables:
        if tables.get("general"):
            table("general", tables["general"])
        for dataset in tables.get("datasets", []):
            lines.extend(["", "[[datasets]]"])
            lines += [f"{k} = {_toml_value(v)}" for k, v in dataset.items() if k != "subsets"]
            for subset in dataset.get("subsets", []):
                lines.extend(["", "  [[datasets.subsets]]"])
                lines += [f"  {k} = {_toml_value(v)}" for k, v in subset.items()]
    return "\n".join(lines) + "\n"


def import_kohya(config: Path, out: Path, dataset: Path | None = None, force: bool = False) -> Report:
    """Write the lorakit config to `out` (never over a file unless `force`), checked by loading it."""
    from lorakit.fsio import write_text
    from lorakit.train.config_toml import load

    if out.exists() and not force:
        raise UserError(f"{out} exists: choose another --out, or pass --force to replace it")
    tree, tables, rows = convert(config, dataset)
    text = render(tree, tables, config)
    write_text(out, text)
    try:
        load(out)
    except UserError as exc:
        out.unlink()
        raise UserError(f"the imported config does not load, so it was not kept: {exc}") from None
    report = Report("import kohya", str(config), str(out))
    report.outcomes.append(Outcome(out.name, WRITTEN))
    mapped = [r for r in rows if not r[2].startswith(("not mapped", "empty"))]
    unmapped = [r for r in rows if r[2].startswith("not mapped")]
    report.sections += [Section("mapped", ["kohya key", "value", "lorakit"], mapped),
                        Section("not mapped", ["kohya key", "value", "why"], unmapped)]
    report.data.update({"mapped": {r[0]: r[2] for r in mapped}, "not_mapped": {r[0]: r[2] for r in unmapped},
                        "datasets": len(tables.get("datasets", [])) if tables else 0})
    report.notes.append(f"{len(mapped)} keys mapped, {len(unmapped)} not; check it with `train plan {out}`")
    return report
