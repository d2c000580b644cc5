"""The training config: one tree of dataclasses, read from TOML by train/config_toml.py. Defaults
and valid values (`Annotated[int, Range(1)]`) live here and only here; an unknown key is an error
that names the closest valid key (a misspelt key silently ignored is how a run trains for hours
with the wrong settings), and a value out of its range is refused when the config loads.

Datasets come either from `N_name` folders under `data.image_root` (and `data.reg_root`), or as
kohya-style `[[datasets]]` tables with `[[datasets.subsets]]` (what `tag balance --toml` writes).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from pathlib import PurePosixPath, PureWindowsPath
from typing import Annotated, Any, Literal

from lorakit.errors import UserError
from lorakit.train.families import FAMILIES
from lorakit.train.loss import LOSSES
from lorakit.train.models import ATTENTION
from lorakit.train.network import MODULES
from lorakit.train.optimizers import OPTIMIZERS
from lorakit.train.precision import AMP, DTYPES
from lorakit.train.sampling import SAMPLERS
from lorakit.train.schedule import SCHEDULES, parse_piecewise

VERSION = 1


def _choice(registry) -> Any:
    """A closed choice, as the Literal of its registry's names: a config naming anything else is
    refused when it loads (and so by `train plan`), not hours into a run."""
    return Literal[tuple(registry)]


NetworkModule = _choice(MODULES)
FamilyName = Literal[("auto", *FAMILIES)]
OptimizerType = _choice(OPTIMIZERS)
SchedulerType = _choice(SCHEDULES)
LossType = _choice(LOSSES)
Attention = _choice(ATTENTION)
MixedPrecision = _choice(AMP)
SavePrecision = _choice(DTYPES)
Sampler = _choice(SAMPLERS)


class ConfigError(UserError):
    pass


# What a value may be, declared beside its field as `Annotated[type, mark]` and checked when the
# config loads (train/config_toml.py), so `train plan` refuses what `train run` could not use.
# Each mark's `problem(value)` says what is wrong, or None.


BOUNDS = (("min", "at least", operator.ge), ("above", "above", operator.gt), ("max", "at most", operator.le),
          ("below", "below", operator.lt))


@dataclass(frozen=True)
class Range:
    """A number's valid range: `Range(1)` at least 1, `Range(0, below=1)` a share short of all."""
    min: float | None = None
    max: float | None = None
    above: float | None = None
    below: float | None = None

    def problem(self, value: float) -> str | None:
        bounds = [(words, bound, holds) for name, words, holds in BOUNDS if (bound := getattr(self, name)) is not None]
        if all(holds(value, bound) for _, bound, holds in bounds):
            return None
        return "must be " + " and ".join(f"{words} {bound:g}" for words, bound, _ in bounds)


@dataclass(frozen=True)
class FileName:
    """A name that becomes a file name in a folder: never a path, which could write outside it."""

    def problem(self, value: str) -> str | None:
        if not value.strip():
            return "must be a file name, not empty"
        # its own last part on every system: no / or \, no drive, not . or ..
        last_part = all(kind(value).name == value for kind in (PurePosixPath, PureWindowsPath))
        if "\0" in value or value in (".", "..") or not last_part:
            return "must be a file name, not a path"
        if any(ord(c) < 32 or ord(c) == 127 for c in value):  # a newline or a tab in a file name
            return "must be a file name without control characters (newlines, tabs)"
        # 255 bytes is a file name's limit; the saves add "-step00001234.safetensors" and the like
        if len(value.encode("utf-8", "surrogateescape")) > 200:
            return "must be a file name of at most 200 bytes (the saves add their step and suffix)"
        return None


@dataclass(frozen=True)
class WidthHeight:
    """A resolution given as a list: exactly [width, height]."""

    def problem(self, value: list) -> str | None:
        return None if len(value) == 2 else "must be one number (a square) or [width, height]"


@dataclass(frozen=True)
class Piecewise:
    """A1111's learning-rate schedule "0.005:100, 1e-3:1000, 1e-5", each rate within `rates`."""
    rates: Range

    def problem(self, value: str) -> str | None:
        try:
            pieces = parse_piecewise(value)
        except UserError as exc:
            return str(exc)
        wrong = next((rate for rate, _ in pieces if self.rates.problem(rate)), None)
        return None if wrong is None else f"its rate {wrong:g} {self.rates.problem(wrong)}"


NAME = FileName()
# a side of at least one 8x8 latent (the VAE's factor 8, then the UNet's downsamplings)
# 16384 px: four times SDXL's largest bucket; past it a bucket list (and the images) would not fit a GPU anyway
Pixels = Annotated[int, Range(64, 16384)]
Resolution = Pixels | Annotated[list[Pixels], WidthHeight()]
LearningRate = Annotated[float, Range(0)] | Annotated[str, Piecewise(Range(0))]


@dataclass
class ModelConfig:
    base: str = ""  # diffusers folder, hub repo id, or a single .safetensors file
    family: FamilyName = "auto"
    v_parameterization: bool | None = None  # v-prediction; None: as the model's scheduler says (false for a single file)
    vae: str | None = None  # a separate VAE
    allow_pickle: bool = False  # .ckpt files run code when loaded: opt in explicitly
    config: str | None = None  # a single file's diffusers-layout config folder (default: the shipped one)
    clip_skip: Annotated[int, Range(1, 12)] = 1  # A1111's range: SD1's text encoder has 12 layers


@dataclass
class NetworkConfig:
    module: NetworkModule = "lora"
    dim: Annotated[int, Range(1)] = 32
    alpha: Annotated[float, Range(above=0)] = 32.0  # 0 would scale every change to nothing
    conv_dim: Annotated[int, Range(0)] = 0  # LoCon and friends: rank of the 3x3 convolutions (0: not trained)
    conv_alpha: Annotated[float, Range(above=0)] = 1.0
    dropout: Annotated[float, Range(0, below=1)] = 0.0  # on the down projection's output (kohya network_dropout)
    rank_dropout: Annotated[float, Range(0, below=1)] = 0.0
    module_dropout: Annotated[float, Range(0, below=1)] = 0.0
    scale_weight_norms: Annotated[float, Range(above=0)] | None = None
    train_unet: bool = True
    train_text_encoder: bool = True
    unet_lr: LearningRate | None = None  # None: optimizer.learning_rate
    text_encoder_lr: LearningRate | None = None
    args: dict[str, Any] = field(default_factory=dict)  # passed to lycoris-lora
    weights: str | None = None  # continue from this LoRA / LoCon file (kohya network_weights)
    dim_from_weights: bool = False  # each module's rank and alpha from that file (kohya's option)


@dataclass
class RecipeTemplate:
    """One weighted template of data.caption_recipe over a caption's parts: {tags}, {sentence},
    {trigger} (train/caption_lines.py; the names are checked when the config loads)."""
    template: str
    weight: Annotated[float, Range(above=0)] = 1.0


@dataclass
class SubsetOptions:
    """What a [[datasets.subsets]] table, or its [[datasets]] table for all of its subsets, may
    set for itself (kohya's per-subset options); None: the next table's, then [data]'s."""
    caption_extension: str | None = None
    caption_prefix: str | None = None
    caption_suffix: str | None = None
    shuffle_caption: bool | None = None
    keep_tokens: Annotated[int, Range(0)] | None = None
    keep_tokens_separator: str | None = None
    caption_dropout_rate: Annotated[float, Range(0, 1)] | None = None
    caption_dropout_every_n_epochs: Annotated[int, Range(0)] | None = None
    caption_tag_dropout_rate: Annotated[float, Range(0, 1)] | None = None
    enable_wildcard: bool | None = None
    caption_recipe: list[RecipeTemplate] | None = None  # [] turns [data]'s recipe off for this folder
    flip_aug: bool | None = None
    color_aug: bool | None = None
    random_crop: bool | None = None


@dataclass
class SubsetConfig(SubsetOptions):
    image_dir: str = ""
    num_repeats: Annotated[int, Range(1)] = 1
    class_tokens: str | None = None
    is_reg: bool = False


@dataclass
class DatasetConfig(SubsetOptions):
    resolution: Resolution | None = None  # None: data.resolution
    batch_size: Annotated[int, Range(1)] | None = None
    enable_bucket: bool | None = None  # the bucket options: None, data's
    min_bucket_reso: Pixels | None = None
    max_bucket_reso: Pixels | None = None
    bucket_reso_steps: Annotated[int, Range(8)] | None = None
    bucket_no_upscale: bool | None = None
    subsets: list[SubsetConfig] = field(default_factory=list)


@dataclass
class DataConfig:
    image_root: str | None = None  # folders named N_name below it (kohya's layout)
    reg_root: str | None = None
    resolution: Resolution = 512
    batch_size: Annotated[int, Range(1)] = 1
    caption_extension: str = ".txt"
    caption_prefix: str = ""
    caption_suffix: str = ""
    shuffle_caption: bool = True
    keep_tokens: Annotated[int, Range(0)] = 1  # the trigger stays first when captions are shuffled
    keep_tokens_separator: str = ""  # e.g. "|||": everything before it is kept in place
    caption_dropout_rate: Annotated[float, Range(0, 1)] = 0.0
    caption_dropout_every_n_epochs: Annotated[int, Range(0)] = 0  # 0: never
    caption_tag_dropout_rate: Annotated[float, Range(0, 1)] = 0.0
    # kohya's: a caption file's non-blank lines each train, one per image per epoch; {a|b} picks one
    enable_wildcard: bool = False
    # weighted templates over a caption's parts, one chosen per image per epoch (docs/formats.md)
    caption_recipe: list[RecipeTemplate] = field(default_factory=list)
    max_token_length: Literal[75, 150, 225] = 75
    enable_bucket: bool = True
    min_bucket_reso: Pixels = 256
    max_bucket_reso: Pixels = 1024  # at least min_bucket_reso
    bucket_reso_steps: Annotated[int, Range(8)] = 64  # at least the VAE's factor
    bucket_no_upscale: bool = False
    flip_aug: bool = False
    color_aug: bool = False
    random_crop: bool = False
    cache_latents: bool = True
    cache_latents_to_disk: bool = False  # kept between runs, keyed by image, bucket, flip and VAE
    latent_cache_dir: str | None = None  # None: lorakit's user cache (~/.cache/lorakit/latents)
    cache_text_encoder_outputs: bool = False
    prior_loss_weight: Annotated[float, Range(0)] = 1.0
    num_workers: Annotated[int, Range(0)] = 2  # threads decoding images ahead of the VAE (0: in the training thread)
    persistent_workers: bool = True  # the decode threads live for the whole run; false is refused
    # images held out for a validation loss at fixed noise and timesteps
    validation_split: Annotated[float, Range(0, below=1)] = 0.0
    # Textual inversion's prompt templates (A1111): "subject", "style" or a file of lines with
    # [name] and [filewords]. None: the captions are the prompts.
    template: str | None = None
    filewords_regex: str | None = None  # words taken from a file name when it has no caption
    filewords_join: str = " "


@dataclass
class OptimizerConfig:
    type: OptimizerType = "adamw"
    learning_rate: LearningRate = 1e-4  # or A1111's schedule: "0.005:100, 1e-3:1000, 1e-5"
    weight_decay: Annotated[float, Range(0)] = 0.1
    betas: list[Annotated[float, Range(0, below=1)]] = field(default_factory=lambda: [0.9, 0.99])
    args: dict[str, Any] = field(default_factory=dict)


@dataclass
class SchedulerConfig:
    type: SchedulerType = "cosine"
    warmup_steps: Annotated[int, Range(0)] | None = None  # or:
    warmup_ratio: Annotated[float, Range(0, 1)] = 0.0
    cycles: Annotated[int, Range(1)] = 1  # cosine_with_restarts
    power: Annotated[float, Range(0)] = 1.0  # polynomial


@dataclass
class LossConfig:
    type: LossType = "l2"
    huber_c: Annotated[float, Range(above=0)] = 0.1
    min_snr_gamma: Annotated[float, Range(above=0)] | None = None
    debiased_estimation: bool = False
    noise_offset: Annotated[float, Range(0)] = 0.0
    adaptive_noise_scale: float | None = None  # any sign: the offset it adds to is clamped at 0 (kohya)
    multires_noise_iterations: Annotated[int, Range(0)] = 0
    multires_noise_discount: Annotated[float, Range(0, 1)] = 0.3
    ip_noise_gamma: Annotated[float, Range(0)] = 0.0
    zero_terminal_snr: bool = False
    max_grad_norm: Annotated[float, Range(0)] = 1.0  # 0: no clipping (kohya's meaning)


@dataclass
class TrainingConfig:
    max_epochs: Annotated[int, Range(1)] = 10
    max_steps: Annotated[int, Range(1)] | None = None  # wins over max_epochs when set
    gradient_accumulation_steps: Annotated[int, Range(1)] = 1
    gradient_checkpointing: bool = False
    mixed_precision: MixedPrecision = "bf16"
    # the network's own weights (kohya full_fp16 / full_bf16): fp16 needs mixed_precision "fp16",
    # bf16 needs "bf16"; less memory, less stable (docs/formats.md, "Precision and memory")
    weights_dtype: SavePrecision = "fp32"
    no_half_vae: bool = True  # false: the VAE in the mixed-precision dtype (fp16 may give NaN)
    attention: Attention = "sdpa"
    seed: Annotated[int, Range(0)] = 42
    log_every_n_steps: Annotated[int, Range(1)] = 10
    validate_every_n_epochs: Annotated[int, Range(0)] | None = 1  # with data.validation_split; 0: never
    validate_every_n_steps: Annotated[int, Range(0)] | None = None


@dataclass
class SavingConfig:
    every_n_epochs: Annotated[int, Range(0)] | None = 1  # 0 or None: never
    every_n_steps: Annotated[int, Range(0)] | None = None
    keep_last_n: Annotated[int, Range(0)] | None = None  # 0 or None: keep every save (kohya_ss's 0)
    precision: SavePrecision = "fp16"
    save_state: bool = False
    private_metadata: bool = False  # keep only what loaders need in the file's metadata
    bundle_embeddings: bool = True  # embeddings inside the LoRA file (bundle_emb.*), else beside it
    embedding_format: Literal["safetensors", "pt"] = "safetensors"  # pt: A1111's string_to_param
    embedding_in_png: bool = False  # output.log_dir: also a sample PNG carrying the embedding


@dataclass
class SamplingConfig:
    every_n_epochs: Annotated[int, Range(0)] | None = None  # 0 or None: never
    every_n_steps: Annotated[int, Range(0)] | None = None
    prompts: str | None = None  # a prompts file: one prompt per line, --w --h --s --l --d options
    sampler: Sampler = "euler_a"


@dataclass
class EmbeddingConfig:
    """One additional embedding (OneTrainer) / textual inversion (A1111): new tokens whose
    vectors train while the vocabulary stays as it is."""
    placeholder: str = ""  # the trigger word in the captions (several words allowed)
    name: Annotated[str, NAME] | None = None  # file / bundle name; None: the placeholder made safe
    token_count: Annotated[int, Range(1)] | None = None  # vectors; None: 1, or as many as base_embedding holds
    init_text: str = "*"  # shorter than the count: padded with "*"; longer: truncated
    base_embedding: str | None = None  # continue training this embedding file
    train: bool = True
    stop_training_after: Annotated[int, Range(1)] | None = None  # then frozen (the pivot)
    stop_training_after_unit: Literal["steps", "epochs"] = "steps"
    learning_rate: LearningRate | None = None  # None: optimizer.learning_rate
    # SDXL trains a vector set per encoder; each may have its own rate (None: learning_rate)
    clip_l_learning_rate: LearningRate | None = None
    clip_g_learning_rate: LearningRate | None = None
    preserve_norm: bool = False  # rescale to the median norm of the vocabulary after each step


@dataclass
class ModelCardConfig:
    """What kohya's GUI asks before a run (the guide fills it in), written into the file as the
    SAI model spec's `modelspec.*` keys, which A1111's, ComfyUI's and Civitai's panels show."""
    title: str | None = None  # None: output.name
    author: str = ""
    description: str = ""
    license: str = ""  # e.g. "CreativeML Open RAIL-M"
    tags: list[str] = field(default_factory=list)
    trigger_words: list[str] = field(default_factory=list)  # modelspec.trigger_phrase
    usage_hint: str = ""  # e.g. "weight 0.7-0.9, with 'smile'"


@dataclass
class OutputConfig:
    dir: str = "output"
    name: Annotated[str, NAME] = "lora"  # the files' name in dir: a name, never a path
    comment: str = ""  # ss_training_comment
    log_dir: str | None = None
    tensorboard: bool | None = None  # None: when the tensorboard package is installed
    metadata: ModelCardConfig = field(default_factory=ModelCardConfig)


@dataclass
class Config:
    version: int = VERSION
    model: ModelConfig = field(default_factory=ModelConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    data: DataConfig = field(default_factory=DataConfig)
    datasets: list[DatasetConfig] = field(default_factory=list)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    saving: SavingConfig = field(default_factory=SavingConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    embeddings: list[EmbeddingConfig] = field(default_factory=list)
