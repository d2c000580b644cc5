"""Loading a vision-language captioner and running batches through it (transformers).

`--model NAME` downloads the registry's repo through the Hugging Face cache, failing at once
when offline and the files are not cached (as `tag auto` does); `--model-dir` reads a local
folder saved by `save_pretrained`, its family found from its config.json.
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorakit.errors import UserError
from lorakit.fsio import read_regular
from lorakit.hub import unreachable
from lorakit.shards import local_device_index
from lorakit.tagging.captioners import CAPTIONERS, DEFAULT_CAPTIONER, FAMILIES, INSTRUCTION, CaptionerSpec, Family

PRECISIONS = ("fp32", "bf16", "fp16", "int8")
_FAMILY_PROMPT = {"florence2": "<MORE_DETAILED_CAPTION>", "blip": ""}  # a folder of no registry entry
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


@dataclass
class Parts:
    processor: Any
    tokenizer: Any
    image_processor: Any


@dataclass
class Captioner:
    name: str
    spec: CaptionerSpec
    family: Family
    model: Any
    parts: Parts
    device: Any
    precision: str


def model_files(name: str | None, model_dir: Path | None) -> tuple[str, Path, CaptionerSpec]:
    """The captioner's name, its folder and its registry entry (for a folder, the entry of the
    name given with it, else its family's defaults)."""
    if name is not None and name not in CAPTIONERS:
        raise UserError(f"unknown captioner {name!r}: use one of {', '.join(CAPTIONERS)}, or --model-dir")
    if model_dir is not None:
        family = family_of(model_dir)
        if name is not None:
            spec = CAPTIONERS[name]
            if spec.family != family:
                raise UserError(f"{model_dir} holds a {family} model, not {name} ({spec.family})")
            return name, model_dir, spec
        prompt = INSTRUCTION if FAMILIES[family].instructed else _FAMILY_PROMPT[family]
        return model_dir.name, model_dir, CaptionerSpec("", family, prompt=prompt,
                                                        generation={"max_new_tokens": 256, "do_sample": False})
    name = name or DEFAULT_CAPTIONER
    spec = CAPTIONERS[name]
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    offline = unreachable()
    try:
        folder = Path(snapshot_download(spec.repo, local_files_only=bool(offline),
                                        allow_patterns=["*.json", "*.jinja", "*.safetensors", "*.txt", "*.model"]))
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as exc:
        why = f"offline: {offline}" if offline else f"the download failed: {type(exc).__name__}"
        raise UserError(f"{name}: {spec.repo} is not in the Hugging Face cache ({why}). Download it where there "
                        f"is a network with `hf download {spec.repo}` (into the cache: then run this again), or "
                        f"`hf download {spec.repo} --local-dir FOLDER` and pass --model-dir FOLDER") from None
    family_of(folder)
    return name, folder, spec


def family_of(folder: Path) -> str:
    try:
        config = json.loads(read_regular(folder / "config.json", 16 << 20, follow=True))
    except (OSError, ValueError) as exc:
        raise UserError(f"{folder}: no readable config.json ({getattr(exc, 'strerror', None) or exc}); "
                        "pass a folder saved by transformers' save_pretrained") from None
    kind = config.get("model_type") if isinstance(config, dict) else None
    if kind not in FAMILIES:
        raise UserError(f"{folder}: a {kind!r} model; tag caption reads {', '.join(FAMILIES)}")
    return kind


def choose_device(precision: str | None):
    """This process's GPU (LOCAL_RANK under a launcher) or the CPU, and the precision: bf16 on a
    GPU that has it, else fp16; fp32 on the CPU."""
    import torch

    if torch.cuda.is_available():
        device = torch.device("cuda", local_device_index())
        chosen = precision or ("bf16" if torch.cuda.is_bf16_supported() else "fp16")
    else:
        device = torch.device("cpu")
        chosen = precision or "fp32"
        if chosen == "fp16":
            raise UserError("--precision fp16 needs a GPU (half-precision generation on the CPU is not "
                            "supported by every layer); use bf16 or fp32")
    if chosen not in PRECISIONS:
        raise UserError(f"--precision {chosen}: use one of {', '.join(PRECISIONS)}")
    return device, chosen


def load(name: str | None, model_dir: Path | None, precision: str | None) -> Captioner:
    import torch
    import transformers

    transformers.utils.logging.disable_progress_bar()  # its "Loading weights" bar is not ours to show
    label, folder, spec = model_files(name, model_dir)
    family = FAMILIES[spec.family]
    device, chosen = choose_device(precision)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(chosen, torch.float32)
    extra: dict[str, Any] = {}
    if chosen == "int8" and device.type == "cuda":
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise UserError("--precision int8 on a GPU needs bitsandbytes (pip install bitsandbytes)") from None
        extra = {"quantization_config": transformers.BitsAndBytesConfig(load_in_8bit=True),
                 "device_map": {"": device.index or 0}}
        dtype = torch.float16
    try:
        model, info = getattr(transformers, family.model_class).from_pretrained(
            folder, dtype=dtype, output_loading_info=True, **extra)
        parts = _parts(folder, family)
    except Exception as exc:  # noqa: BLE001  (a folder of mismatched files fails in many ways inside transformers)
        raise UserError(f"{folder}: transformers cannot load it as {family.model_class} ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else 'no detail'})") from None
    missing = info.get("missing_keys") or []
    if len(missing) > 0.1 * max(1, len(model.state_dict())):  # its weights are another model's: noise
        raise UserError(f"{folder}: {len(missing)} of the {family.model_class} weights are not in the files "
                        f"(e.g. {sorted(missing)[0]}): its config.json names another model than its weights")
    if chosen == "int8" and device.type == "cpu":  # dynamic int8 weights for every linear layer
        with warnings.catch_warnings():  # torch's notices that this API moves to torchao: not the user's
            warnings.simplefilter("ignore")
            model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    elif "device_map" not in extra:
        model.to(device)
    model.eval()
    return Captioner(label, spec, family, model, parts, device, chosen)


def _parts(folder: Path, family: Family) -> Parts:
    from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer

    if family.processor:
        processor = AutoProcessor.from_pretrained(folder)
        tokenizer, images = processor.tokenizer, getattr(processor, "image_processor", None)
    else:
        processor, tokenizer, images = None, AutoTokenizer.from_pretrained(folder), AutoImageProcessor.from_pretrained(folder)
        if not getattr(tokenizer, "chat_template", None):
            tokenizer.chat_template = _chat_template(folder)
    if family.prompt_in_output:
        tokenizer.padding_side = "left"  # the prompt ends where generation starts, for every row
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return Parts(processor, tokenizer, images)


def _chat_template(folder: Path) -> str:
    """A repo's chat template saved beside the processor rather than in the tokenizer's config."""
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    try:
        return json.loads((folder / "chat_template.json").read_text(encoding="utf-8"))["chat_template"]
    except (OSError, ValueError, KeyError, TypeError):
        raise UserError(f"{folder}: no chat template (tokenizer_config.json, chat_template.jinja or "
                        "chat_template.json)") from None


def generate(captioner: Captioner, images: list, prompts: list[str], generation: dict) -> list[str]:
    """One sentence per image: the batch put to the model, its new tokens decoded and made one
    line (a caption's line is one sentence line; control characters and runs of spaces go)."""
    import torch

    c = captioner
    inputs = c.family.inputs(c.parts, images, prompts, c.spec.system)
    dtype = next((p.dtype for p in c.model.parameters() if p.is_floating_point()), torch.float32)
    inputs = {k: (v.to(c.device, dtype) if v.is_floating_point() else v.to(c.device)) if hasattr(v, "to") else v
              for k, v in inputs.items()}
    settings = dict(generation)
    if c.family.prompt_in_output:  # BLIP and Florence-2 set their own padding
        settings.setdefault("pad_token_id", c.parts.tokenizer.pad_token_id)
    with torch.inference_mode():
        out = c.model.generate(**inputs, **settings)
    if c.family.prompt_in_output:
        out = out[:, inputs["input_ids"].shape[1]:]
    texts = c.parts.tokenizer.batch_decode(out, skip_special_tokens=True)
    return [as_sentence(t) for t in texts]


def as_sentence(text: str) -> str:
    """One line, starting and ending as a sentence does: BLIP writes "a girl sitting on a bench",
    which the trainer would read as a tag (train/caption_lines.is_sentence) and shuffle."""
    line = " ".join(_CONTROL.sub(" ", text).split())
    if not line:
        return line
    line = line[0].upper() + line[1:]  # "a girl..." -> "A girl...": a sentence, not a tag line
    return line + "." if line[-1] not in ".!?…\"')" else line
