"""`train import kohya CONFIG [--dataset DATASET]`: a kohya sd-scripts training config (the TOML
of `--config_file`, its sections flattened as kohya does, or the JSON kohya_ss saves) as a
lorakit config, with a report of every key: where it went, or why it went nowhere.

Each kohya key is a row of KEYS (train/kohya_keys.py): the lorakit key it sets and how its value converts, or the
reason it has none (an option lorakit lacks is said, never dropped silently). Each row of the
report says where its key went, or that it is off (0, false, empty: nothing kohya would pass),
dropped (a value kohya would not use, with why) or not mapped (lorakit lacks it, or refuses the
value). The dataset config (`--dataset`, or the config's own `dataset_config`) is copied as it
is: lorakit reads kohya's dataset TOML, `[general]` included.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import tomli_w
import tomllib

from lorakit.errors import UserError
from lorakit.report import FAILED, WRITTEN, Outcome, Report, Section
from lorakit.train.kohya_args import command_line, optimizer_table, parse
from lorakit.train.kohya_gui import dropped_by_noise_type, family, off, zero, zero_rate
from lorakit.train.kohya_keys import KEYS, To
from lorakit.train.kohya_meaning import ESSENTIAL, meaning
from lorakit.train.kohya_network import GUI_FIELDS, drop, fit, network, put

# read together with others below, each with its own report rows
HANDLED = {"lr_warmup_steps", "lr_warmup", "network_module", "LoRA_type", "network_args", "optimizer_args"}
KINDS = ("off", "dropped", "not mapped")
# sd-scripts' caption options that are read since the multi-line captions (train/caption_lines.py),
# beside KEYS: the same rows, kept here until that table takes them in
def _switch(value) -> bool:
    """A kohya on/off value as sd-scripts would read it, or refused: kohya passes a config's value
    through as it is, so "on" or 2 turn wildcards on there; lorakit does not guess."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "false", "0", "no", ""):
        return text in ("true", "1", "yes")
    raise UserError(f"enable_wildcard = {value!r}: not true or false; set it to one of them and import again")


CAPTION_KEYS = {"enable_wildcard": To("data.enable_wildcard", _switch)}  # a row's "where" starts with one of these, or is where it went


def _flatten(data: dict) -> dict[str, Any]:
    """kohya's config sections ([model_arguments], [training_arguments]…) are only grouping."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and key not in ("network_args", "optimizer_args"):
            flat.update(value)
        else:
            flat[key] = value
    return flat


def _shown(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)  # default: TOML dates


def _optimizer(flat: dict, tree: dict, rows: list) -> None:
    from lorakit.train.config_toml import ConfigError

    if "optimizer_args" not in flat:
        return
    args, bad = parse(flat["optimizer_args"] or [])
    if not args and not bad:
        rows.append(["optimizer_args", _shown(flat["optimizer_args"]), "off: empty"])
    rows += [["optimizer_args", item, "not mapped: not key=value"] for item in bad]
    table = optimizer_table(args)
    for key, value in args.items():
        target = f"optimizer.{key}" if key in ("betas", "weight_decay") else f"optimizer.args.{key}"
        if value is None:
            rows.append([f"optimizer_args {key}", "None", "off: None is the optimizer's default"])
            continue
        try:
            put(tree, target, table[key] if key in table else value)
            rows.append([f"optimizer_args {key}", _shown(value), target])
        except (TypeError, ValueError, ConfigError) as exc:
            rows.append([f"optimizer_args {key}", _shown(value), f"not mapped: {exc}"])


def _number(value: Any) -> Any:
    """A number as additional_parameters gives it (text: "100"), else the value as it is."""
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return value
        return int(number) if number.is_integer() else number
    return value


def _warmup(flat: dict, tree: dict, rows: list) -> None:
    steps, percent = _number(flat.get("lr_warmup_steps")), _number(flat.get("lr_warmup"))
    if isinstance(steps, (int, float)) and steps:
        if steps < 1:  # kohya reads a fraction as a share of the steps
            put(tree, "scheduler.warmup_ratio", float(steps))
            rows.append(["lr_warmup_steps", str(steps), "scheduler.warmup_ratio (under 1: a ratio)"])
        else:
            put(tree, "scheduler.warmup_steps", int(steps))
            rows.append(["lr_warmup_steps", str(steps), "scheduler.warmup_steps"])
    elif "lr_warmup_steps" in flat:
        rows.append(["lr_warmup_steps", _shown(steps), "off: no warmup steps"])
    if percent not in (None, "", 0) and not (isinstance(steps, (int, float)) and steps):
        put(tree, "scheduler.warmup_ratio", float(percent) / 100)
        rows.append(["lr_warmup", str(percent), "scheduler.warmup_ratio (percent / 100)"])
    elif "lr_warmup" in flat:
        rows.append(["lr_warmup", _shown(percent), "off: no warmup" if not percent else
                     "dropped: lr_warmup_steps wins, as in kohya_ss"])


def _additional(flat: dict, rows: list) -> set[str]:
    """kohya_ss's additional_parameters, flag by flag, as keys of the config: on kohya's
    command line they come after --config_file, so each wins over the config's own value."""
    if "additional_parameters" not in flat:
        return set()
    text = flat.pop("additional_parameters")
    if not str(text or "").strip():
        rows.append(["additional_parameters", _shown(text), "off: empty"])
        return set()
    rows.append(["additional_parameters", str(text), "read flag by flag: the --flag rows"])
    given = set()
    for name, value in command_line(str(text)):
        if not name:
            rows.append(["additional_parameters", " ".join(value), "not mapped: words before any --flag"])
            continue
        if name in flat and name not in given:
            rows.append([name, _shown(flat[name]), f"off: additional_parameters --{name} sets it" if zero(flat[name])
                         else f"dropped: additional_parameters --{name} replaces it (kohya's command line wins "
                              "over its config)"])
        flat[name] = value
        given.add(name)
    return given


def read_kohya(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    try:
        text = path.read_text(encoding="utf-8-sig")
        data = json.loads(text) if path.suffix.lower() == ".json" else tomllib.loads(text)
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except RecursionError:
        raise UserError(f"{path}: nested too deeply to be a config") from None
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise UserError(f"{path}: not valid {'JSON' if path.suffix.lower() == '.json' else 'TOML'} ({exc})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a table of options")
    return _flatten(data)


def convert(config: Path, dataset: Path | None = None) -> tuple[dict, dict | None, list[list[str]]]:
    """(lorakit config tree, the dataset tables, report rows [kohya key, value, where it went])."""
    from lorakit.train.config_toml import ConfigError

    flat = read_kohya(config)
    # kohya_ss's own save (not sd-scripts' options written as JSON): its LoRA_type, its defaults
    gui = config.suffix.lower() == ".json" and ("LoRA_type" in flat or "network_module" not in flat)
    rows: list[list[str]] = []
    given = _additional(flat, rows)
    found = family(flat, gui)
    if found:
        raise UserError(f"{config}: a {found[0]} config ({found[1]}); lorakit trains LoRAs for SD1.x, SD2.x and "
                        "SDXL only, so nothing was written")
    tree: dict = {}
    for key, value in flat.items():
        shown = _shown(value)
        if key in HANDLED or (gui and key in GUI_FIELDS):
            continue
        saved = gui and key not in given  # a flag of additional_parameters reaches sd-scripts as written, 0 or not
        why = off(key, value, saved) or dropped_by_noise_type(key, flat)
        rate = saved and key in ("text_encoder_lr", "unet_lr") and zero_rate(key, flat)
        if rate:
            put(tree, rate[0], rate[1])
            rows.append([key, shown, f"{rate[0]} = false: {rate[2]}"])
        elif key == "network_alpha" and zero(value) and value not in ("", None):
            _alpha(flat, tree, rows, saved)
        elif why:
            rows.append([key, shown, why])
        elif isinstance(rule := KEYS.get(key, CAPTION_KEYS.get(key)), To):
            try:  # a value its lorakit key refuses (a path as output.name, network.dim = 0) is reported
                put(tree, rule.key, rule.convert(value))
                rows.append([key, shown, rule.key])
            except (ValueError, TypeError, OverflowError, IndexError, ConfigError) as exc:  # inf, "x", ","
                rows.append([key, shown, f"not mapped: {exc}"])
        elif isinstance(rule, str):
            rows.append([key, shown, rule[2:]])
        else:
            rows.append([key, shown, "not mapped: lorakit has no such option"])
    _warmup(flat, tree, rows)
    training = tree.get("training", {})
    if "max_epochs" in training and "max_steps" in training:
        drop(tree, rows, "training.max_steps", "max_train_epochs wins, as in kohya")
    network(flat, tree, rows, gui)
    _optimizer(flat, tree, rows)
    meaning(flat, tree, rows, gui, put, Path.cwd())
    fit(tree, rows)
    for row in rows:  # the flags of additional_parameters, named as the user wrote them
        if row[0].split(" ")[0] in given and "additional_parameters --" not in row[2]:
            row[0] = f"additional_parameters --{row[0]}"
    source = dataset or (Path(flat["dataset_config"]) if flat.get("dataset_config") else None)
    tables = _dataset(source) if source else None
    return tree, tables, rows


def _alpha(flat: dict, tree: dict, rows: list, gui: bool) -> None:
    """network_alpha = 0: kohya_ss passes no 0, so sd-scripts' default 1 applies; sd-scripts
    itself reads an alpha of 0 as the rank."""
    shown = _shown(flat["network_alpha"])
    if gui:
        put(tree, "network.alpha", 1.0)
        rows.append(["network_alpha", shown, "network.alpha = 1: kohya_ss passes no 0, so sd-scripts' default 1 "
                                             "applies"])
    elif not off("network_dim", flat.get("network_dim"), gui) and flat.get("network_dim") is not None:
        dim = float(flat["network_dim"])
        put(tree, "network.alpha", dim)
        rows.append(["network_alpha", shown, f"network.alpha = {dim:g}: kohya reads alpha 0 as network_dim"])
    else:
        rows.append(["network_alpha", shown, "off: 0 is kohya's network_dim, which is not set"])


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
    """The lorakit config as TOML, written by tomli_w: its sections in the config's order, then
    the dataset tables ([general], then each [[datasets]] with its [[datasets.subsets]])."""
    from lorakit.train.config import Config

    name = "".join(c if c.isprintable() else "?" for c in source.name)
    header = f"# imported from {name} by `train import kohya`; `train plan` checks it\n"
    order = [f.name for f in Config.__dataclass_fields__.values()]
    main: dict[str, Any] = {"version": 1, **{section: tree[section] for section in sorted(tree, key=order.index)}}
    if tables and tables.get("general"):
        main["general"] = tables["general"]
    datasets = (tables or {}).get("datasets", [])
    parts = [header, tomli_w.dumps(main)]
    for table in datasets:
        parts.append("\n[[datasets]]\n" + tomli_w.dumps({k: v for k, v in table.items() if k != "subsets"}))
        parts += ["\n[[datasets.subsets]]\n" + tomli_w.dumps(subset) for subset in table.get("subsets", [])]
    text = "".join(parts)
    whole = {**main, **({"datasets": datasets} if datasets else {})}
    if tomllib.loads(text) != whole:  # a table nested in a dataset: the library lays the whole file out
        text = header + tomli_w.dumps(whole)
    return text


def _kind(row: list[str]) -> str:
    return next((kind for kind in KINDS if row[2].startswith(f"{kind}:")), "mapped")


def import_kohya(config: Path, out: Path, dataset: Path | None = None, force: bool = False) -> Report:
    """Write the lorakit config to `out` (never over a file unless `force`), checked by loading it."""
    if (out.exists() or out.is_symlink()) and not force:
        raise UserError(f"{out} exists: choose another --out, or pass --force to replace it")
    if out.exists() and not out.is_file():  # a folder, a device, a FIFO: never replaced by a config
        raise UserError(f"{out} is not a regular file: give a file name for the config")
    try:
        tree, tables, rows = convert(config, dataset)
    except (TypeError, ValueError, OverflowError, IndexError, AttributeError, KeyError, RecursionError) as exc:
        # a shape no kohya tool writes (a list where a table belongs, a number past any range…)
        raise UserError(f"{config}: cannot be imported: {type(exc).__name__}: {str(exc)[:200]}") from None
    return _write(config, out, tree, tables, rows, force)


def _write(config: Path, out: Path, tree: dict, tables: dict | None, rows: list, force: bool) -> Report:
    """The config (and kohya_ss's prompts beside it) checked by loading a scratch copy first: a
    file the user already had is replaced only by one that loads."""
    import tempfile

    from lorakit.fsio import write_text
    from lorakit.train.config_toml import load
    from lorakit.train.data import subsets
    from lorakit.train.validate import validate


    prompts = tree.get("sampling", {}).get("prompts")
    side = out.with_name(f"{out.stem}.prompts.txt")
    if config.suffix.lower() == ".json" and prompts and not Path(prompts).is_file():
        # kohya_ss's sample_prompts is the prompts' text, which it writes to a file for sd-scripts
        if (side.exists() or side.is_symlink()) and not force:
            raise UserError(f"{side} exists (for the config's sample prompts): pass --force to replace it")
        if side.exists() and not side.is_file():
            raise UserError(f"{side} is not a regular file: it would hold the config's sample prompts")
        tree["sampling"]["prompts"] = side.name
        for row in rows:
            if row[2] == "sampling.prompts":
                row[2] = f"sampling.prompts = {side.name!r}: kohya_ss's prompts are text; written to that file"
    else:
        side = None
    text = render(tree, tables, config)
    pickle = str(tree.get("model", {}).get("base", "")).lower().endswith(".ckpt")
    folder = out.parent if out.parent.is_dir() else Path(tempfile.gettempdir())
    with tempfile.TemporaryDirectory(dir=folder, prefix=".lorakit-import-") as scratch:
        trial = Path(scratch) / out.name  # relative paths in it read from the same folder as the real one
        trial.write_text(text, encoding="utf-8")
        if side:
            (Path(scratch) / side.name).write_text(prompts if prompts.endswith("\n") else prompts + "\n")
        try:  # a .ckpt base is refused until the user opts in; the rest must load now
            loaded = load(trial, ["model.allow_pickle=true"] if pickle else [])
        except UserError as exc:
            raise UserError("the imported config does not load, so nothing was written: "
                            f"{str(exc).replace(str(trial), str(out))}") from None
    if side:
        write_text(side, prompts if prompts.endswith("\n") else prompts + "\n")
    write_text(out, text)
    report = Report("import kohya", str(config), str(out))
    report.outcomes += [Outcome(out.name, WRITTEN)] + ([Outcome(side.name, WRITTEN)] if side else [])
    groups = {kind: [r for r in rows if _kind(r) == kind] for kind in ("mapped", *KINDS)}
    report.sections += [Section("mapped", ["kohya key", "value", "lorakit"], groups["mapped"]),
                        Section("dropped", ["kohya key", "value", "why"], groups["dropped"]),
                        Section("not mapped", ["kohya key", "value", "why"], groups["not mapped"])]
    report.data.update({kind.replace(" ", "_"): {r[0]: r[2] for r in group} for kind, group in groups.items()})
    report.data["datasets"] = len(tables.get("datasets", [])) if tables else 0
    counts = ", ".join(f"{len(group)} {kind}" for kind, group in groups.items())
    report.notes.append(f"{counts} (off: 0, false or empty in kohya, nothing to set; --json lists them); "
                        f"check it with `train plan {out}`")
    if pickle:
        report.notes.append("warning: model.base is a .ckpt file, a pickle that can run code when loaded: lorakit "
                            "refuses it until you set model.allow_pickle = true (only for a file you trust), or "
                            "use a .safetensors copy")
    try:
        found = subsets(loaded)
    except UserError:  # its images are on another machine: the checks that need them wait for train plan
        found = []
    try:  # train plan's own checks: a config it would refuse is not the run kohya would make
        validate(loaded, found)
    except UserError as exc:
        report.outcomes.append(Outcome(out.name, FAILED, f"`train plan` refuses it as imported: {exc}"))
    for row in groups["not mapped"]:  # the config is written, but it is not the run kohya would have made
        if row[0] in ESSENTIAL:
            report.outcomes.append(Outcome(row[0], FAILED, f"{row[1]} {row[2]}; the written config trains with "
                                                           "lorakit's default instead: set it before training"))
    return report
