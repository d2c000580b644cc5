"""Reading a training config: TOML (or a saved run's JSON) into the dataclass tree of
train/config.py. An unknown key is an error naming the closest valid key, a closed choice outside
its registry is refused with the choices, a value its field's marks refuse (a number out of its
Range, a path as a name) is refused naming the key, relative paths are taken from the config
file's folder, and `check` refuses combinations that could not do what they say, all before any
model loads."""

from __future__ import annotations

import difflib
import math
import types
import typing
from dataclasses import MISSING, fields, is_dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin, get_type_hints

import tomllib

from lorakit.train.caption_lines import recipe_problem
from lorakit.train.config import NAME, VERSION, Config, ConfigError
from lorakit.train.network_kinds import KINDS
from lorakit.train.optimizers import OPTIMIZERS


def _all_keys(cls: type, prefix: str = "") -> list[str]:
    keys = []
    for f in fields(cls):
        hint = get_type_hints(cls)[f.name]
        inner = get_args(hint)[0] if get_origin(hint) is list else hint
        if is_dataclass(inner):
            keys += _all_keys(inner, f"{prefix}{f.name}.")
        else:
            keys.append(prefix + f.name)
    return keys


# kohya dataset-config options lorakit does not have, and why: refused by name, not "unknown"
KOHYA_REFUSED = {
    "caption_separator": "captions are comma-separated tags here, as every lorakit stage writes them",
    "secondary_separator": "captions are comma-separated tags here; use keep_tokens_separator to fix a head",
    "face_crop_aug_range": "face detection is out of scope (crop with `curate crop` instead)",
    "token_warmup_min": "token warm-up is not implemented",
    "token_warmup_step": "token warm-up is not implemented",
    "custom_attributes": "kohya's free-form subset attributes have no reader here",
    "alpha_mask": "transparency is flattened by `curate flatten`; a masked loss is not implemented",
    "resize_interpolation": "images are resized with Lanczos (curate) and area-scaled into buckets",
    "metadata_file": "fine-tuning metadata JSON is not read: captions are the .txt files beside the images",
    "conditioning_data_dir": "ControlNet training is out of scope",
    "cache_info": "the image list is read from the folder at each run",
    "validation_seed": "held-out images are chosen by training.seed",
    "validation_split": "lorakit holds out a share of all training images: set data.validation_split",
    "network_multiplier": "a dataset's network multiplier is not implemented",
    "debug_dataset": "`train plan` shows the buckets, batches and captions without training",
}


# kohya keys that lorakit spells another way: the key to write instead
KOHYA_RENAMED = {
    "full_fp16": 'training.weights_dtype = "fp16" (with training.mixed_precision = "fp16")',
    "full_bf16": 'training.weights_dtype = "bf16"',
}


def _unknown(key: str, where: str, cls: type) -> ConfigError:
    """Name the closest key: first among the table's own keys, then anywhere in the config
    (a key put in the wrong table: `[training] learning_rate`)."""
    full = f"{where}{key}"
    if key in KOHYA_REFUSED and cls.__name__ in ("SubsetConfig", "DatasetConfig", "DataConfig"):
        return ConfigError(f"'{full}' (a kohya dataset option) is not supported: {KOHYA_REFUSED[key]}")
    if key in KOHYA_RENAMED:
        return ConfigError(f"unknown key '{full}': kohya's {key} is {KOHYA_RENAMED[key]} here")
    local = difflib.get_close_matches(key, [f.name for f in fields(cls)], n=1, cutoff=0.6)
    if local:
        return ConfigError(f"unknown key '{full}'; did you mean '{where}{local[0]}'?")
    elsewhere = [k for k in _all_keys(Config) if k.rsplit(".", 1)[-1] == key]
    if elsewhere:
        return ConfigError(f"unknown key '{full}'; '{key}' belongs in '{elsewhere[0]}'")
    return ConfigError(f"unknown key '{full}'")


class BadValue(ConfigError):
    """A value of the right type that its field's marks refuse: the error a union shows, not
    that the value is not one of its other types."""


def _coerce(value: Any, hint: Any, where: str) -> Any:
    origin = get_origin(hint)
    if hint is Any:
        return value
    if origin is Annotated:  # a field's marks (train/config.py): Range, FileName, ...
        kind, *marks = get_args(hint)
        value = _coerce(value, kind, where)
        for mark in marks:
            problem = mark.problem(value)
            if problem:
                raise BadValue(f"{where} = {value!r}: {problem}")
        return value
    if origin in (typing.Union, types.UnionType):
        options = get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, where)
            except ConfigError as exc:
                errors.append(exc)
        bad = [exc for exc in errors if isinstance(exc, BadValue)]
        raise (bad or errors or [ConfigError(f"'{where}': bad value {value!r}")])[0]
    if origin is Literal:
        if value not in get_args(hint):
            allowed = ", ".join(repr(a) for a in get_args(hint))
            raise ConfigError(f"'{where}' is {value!r}; use one of {allowed}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"'{where}' must be a list, not {value!r}")
        inner = get_args(hint)[0]
        return [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"'{where}' must be a table")
        return dict(value)
    if is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(f"'{where}' must be a table")
        return from_dict(hint, value, f"{where}.")
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, float) and not math.isfinite(value):
        raise BadValue(f"{where} = {value!r}: must be a finite number")
    if hint in (int, float, str, bool) and not (isinstance(value, hint) and
                                                 not (hint is int and isinstance(value, bool))):
        raise ConfigError(f"'{where}' must be {hint.__name__}, not {value!r}")
    return value


def from_dict(cls: type, data: dict, where: str = "") -> Any:
    hints = get_type_hints(cls, include_extras=True)
    names = {f.name for f in fields(cls)}
    for key in data:
        if key not in names:
            raise _unknown(key, where, cls)
    kwargs = {}
    for f in fields(cls):
        if f.name in data:
            kwargs[f.name] = _coerce(data[f.name], hints[f.name], where + f.name)
        elif f.default is MISSING and f.default_factory is MISSING:
            raise ConfigError(f"'{where}{f.name}' is required")
    return cls(**kwargs)


def check(config: Config) -> None:
    """What a config says that cannot work, refused when it loads (so by `train plan` too), before
    any model is read: options that would do nothing, or could not do what they say."""
    d = config.data
    extensions = [d.caption_extension] + [t.caption_extension for ds in config.datasets for t in (ds, *ds.subsets)
                                          if t.caption_extension]
    for extension in extensions:
        if not extension.startswith(".") or len(extension) < 2 or NAME.problem(extension):
            raise ConfigError(f"caption_extension {extension!r}: a suffix with its dot, e.g. \".txt\"")
    tables = [("data", d)] + [(f"datasets[{i}]", ds) for i, ds in enumerate(config.datasets)] + \
        [(f"datasets[{i}].subsets[{j}]", s) for i, ds in enumerate(config.datasets) for j, s in enumerate(ds.subsets)]
    for where, table in tables:
        problem = recipe_problem(table.caption_recipe or [])
        if problem:
            raise ConfigError(f"{where}.caption_recipe{problem}")
    n = config.network
    if n.weights and not KINDS[n.module].continues:
        raise ConfigError(f"network.weights continues a LoRA, LoCon or DyLoRA file; network.module = {n.module!r} "
                          "keeps its weights in another layout")
    if n.dim_from_weights and not n.weights:
        raise ConfigError("network.dim_from_weights reads the ranks of network.weights, which is not set")
    for where, table in [("data", d)] + [(f"datasets[{i}]", ds) for i, ds in enumerate(config.datasets)]:
        low = table.min_bucket_reso or d.min_bucket_reso
        high = table.max_bucket_reso or d.max_bucket_reso
        if high < low:
            raise ConfigError(f"{where}.max_bucket_reso = {high} is below min_bucket_reso = {low}: no bucket fits")
    if config.model.base.endswith(".ckpt") and not config.model.allow_pickle:
        raise ConfigError(f"model.base {config.model.base}: a .ckpt file is a pickle, and loading one can run "
                          "code hidden in it. Prefer a .safetensors copy; to load this one anyway set "
                          "model.allow_pickle = true")
    if not d.persistent_workers:
        raise ConfigError("data.persistent_workers = false: lorakit's decode threads cost nothing to keep and "
                          "live for the whole run, so there is nothing to restart each epoch; remove the key")
    t = config.training
    if t.weights_dtype != "fp32" and t.mixed_precision != t.weights_dtype:
        raise ConfigError(f'training.weights_dtype = "{t.weights_dtype}" needs training.mixed_precision = '
                          f'"{t.weights_dtype}" (half-precision weights train under autocast in their own dtype, '
                          f'as kohya\'s full_{t.weights_dtype} needs mixed_precision {t.weights_dtype})')
    if len(config.optimizer.betas) != 2:  # every optimizer here takes two: a third fails at the first step
        raise ConfigError(f"optimizer.betas = {config.optimizer.betas}: two numbers, e.g. [0.9, 0.999]")
    eps = config.optimizer.args.get("eps", 1e-8)
    numeric = isinstance(eps, (int, float)) and not isinstance(eps, bool)  # 0 as an int is 0 too
    if t.weights_dtype == "fp16" and OPTIMIZERS[config.optimizer.type].eps and numeric and eps < 1e-6:
        raise ConfigError(f"training.weights_dtype = \"fp16\" with {config.optimizer.type}: its eps {eps:g} is 0 in "
                          "fp16, and a zero gradient (every LoRA's down weights at the first step) then divides 0 by 0 "
                          "into NaN; set optimizer.args = {eps = 1e-6} or more, or use bf16")
    if config.loss.adaptive_noise_scale is not None and not config.loss.noise_offset:
        raise ConfigError("loss.adaptive_noise_scale adds to loss.noise_offset, which is 0: set noise_offset too")
    if KINDS[config.network.module].builder is None and not any(e.train for e in config.embeddings):
        raise ConfigError("nothing to train: network.module = \"none\" needs at least one [[embeddings]] table "
                          "with train = true")


def coerce_key(dotted: str, value: Any) -> Any:
    """`value` as the key `dotted` (network.dim) takes it, checked by its field's marks: for
    `train import kohya`, which refuses a value key by key."""
    *tables, key = dotted.split(".")
    cls = Config
    for table in tables:
        cls = get_type_hints(cls)[table]
    return _coerce(value, get_type_hints(cls, include_extras=True)[key], dotted)


def parse_override(item: str) -> tuple[list[str], Any]:
    """`--set training.max_steps=100`: the value is read as TOML (strings need no quotes)."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: write key=value")
    key, raw = item.split("=", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.strip().split("."), value


def load(path: Path, overrides: list[str] = ()) -> Config:
    if path.exists() and not path.is_file():  # a folder, or /dev/zero (read forever)
        raise ConfigError(f"{path} is not a file: give the config's TOML file")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path} does not exist; `train init > {path}` writes one") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    for item in overrides:
        keys, value = parse_override(item)
        node = data
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    for section in ("optimizer", "network"):  # kohya's "decouple=True betas=0.9,0.99", pasted from a guide
        table = data.get(section)
        if isinstance(table, dict) and isinstance(table.get("args"), str):
            from lorakit.train.kohya_args import string_args_error

            raise ConfigError(f"{path}: {string_args_error(section, table['args'])}")
    if "general" in data:  # kohya dataset configs: [general] holds dataset-wide defaults = [data]
        data["data"] = {**data.pop("general"), **data.get("data", {})}
    version = data.get("version", VERSION)
    if version != VERSION:
        raise ConfigError(f"{path}: config version {version}; this lorakit reads version {VERSION}")
    try:
        config = from_dict(Config, data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    base = path.parent  # every relative path in a config is relative to the config file
    for section, attr in (("data", "image_root"), ("data", "reg_root"), ("output", "dir"),
                          ("model", "base"), ("model", "vae")):
        value = getattr(getattr(config, section), attr)
        if value and not Path(value).is_absolute():
            local = (base / value).resolve()
            if section != "model" or local.exists():  # a model may also be a hub repo id
                setattr(getattr(config, section), attr, str(local))
    weights = config.network.weights
    if weights and not Path(weights).is_absolute():
        config.network.weights = str((base / weights).resolve())
    for emb in config.embeddings:
        if emb.base_embedding and not Path(emb.base_embedding).is_absolute():
            emb.base_embedding = str((base / emb.base_embedding).resolve())
    for section, attr in (("data", "template"), ("sampling", "prompts"), ("output", "log_dir")):
        value = getattr(getattr(config, section), attr)
        if value and not Path(value).is_absolute() and (section != "data" or (base / value).exists()):
            setattr(getattr(config, section), attr, str((base / value).resolve()))
    for dataset in config.datasets:
        for subset in dataset.subsets:
            if subset.image_dir and not Path(subset.image_dir).is_absolute():
                subset.image_dir = str((base / subset.image_dir).resolve())
    try:
        check(config)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return config
