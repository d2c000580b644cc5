"""Vision-language captioners by short name, and how each family of them is prompted.

A captioner writes sentences where the tagger writes tags (`tag caption`, tagging/caption.py).
Its registry entry carries its facts: the hub repo, the family (which transformers class loads
it and how a batch is put to it), its prompt and its generation defaults (each model card's).
Families that take an instruction (JoyCaption, Qwen2.5-VL) are given the image's tags and
trigger as context, so the sentence agrees with them; Florence-2 takes only a task token and
BLIP only a text to continue, so they are not (docs/formats.md, "Sentences").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

# The prompt of the instructed captioners. A line whose placeholder has no value for an image
# (no tags, no trigger) is left out of that image's prompt.
INSTRUCTION = """Write one paragraph describing this image in plain English sentences, as a caption for training an image model. Describe the subject, their appearance, clothing, pose and expression, the setting, the composition and the art style. No lists, no preamble.
These tags are true of the image: {tags}. Agree with them and never contradict them.
The main character is called {trigger}: name them by that name."""
PLACEHOLDERS = ("tags", "trigger", "folder")


@dataclass(frozen=True)
class Family:
    model_class: str  # the transformers class that loads it
    inputs: Callable[..., dict]  # (parts, images, prompts, system) -> the model's keyword inputs
    instructed: bool  # reads a written instruction (and so the tags as context)
    prompt_in_output: bool  # a decoder-only model's output starts with its prompt: cut it
    processor: bool = True  # AutoProcessor loads its inputs' parts (else tokenizer + image processor)
    tasks: tuple[str, ...] = ()  # a model that only takes task tokens: these


@dataclass(frozen=True)
class CaptionerSpec:
    repo: str
    family: str
    prompt: str = INSTRUCTION
    system: str = ""
    generation: dict[str, Any] = field(default_factory=dict)
    max_side: int = 1536  # images are scaled down to this first: the processors resize below it anyway


def _messages(system: str, prompt: str) -> list[dict]:
    head = [{"role": "system", "content": system}] if system else []
    return head + [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]


def _template_owner(parts):
    return parts.processor if parts.processor is not None and getattr(parts.processor, "chat_template", None) \
        else parts.tokenizer


def chat_inputs(parts, images, prompts, system) -> dict:
    """LLaVA layout (JoyCaption): the chat template places the image token; the processor
    expands it to the vision tower's patches."""
    owner = _template_owner(parts)
    texts = [owner.apply_chat_template(_messages(system, p), add_generation_prompt=True, tokenize=False)
             for p in prompts]
    return dict(parts.processor(text=texts, images=images, return_tensors="pt", padding=True))


QWEN_IMAGE = "<|image_pad|>"


def qwen_inputs(parts, images, prompts, system) -> dict:
    """Qwen2.5-VL, put together here rather than by its processor: that one also builds a video
    processor, which needs torchvision (not a dependency of lorakit). Each image's placeholder
    becomes one token per merged patch group of that image, as the processor does."""
    texts = [parts.tokenizer.apply_chat_template(_messages(system, p), add_generation_prompt=True, tokenize=False)
             for p in prompts]
    pixels = parts.image_processor(images=images, return_tensors="pt")
    group = parts.image_processor.merge_size ** 2
    texts = [t.replace(QWEN_IMAGE, QWEN_IMAGE * (int(grid.prod()) // group), 1)
             for t, grid in zip(texts, pixels["image_grid_thw"])]
    return {**parts.tokenizer(texts, return_tensors="pt", padding=True), **pixels}


def task_inputs(parts, images, prompts, system) -> dict:
    """Florence-2 (a task token) and BLIP (a text to continue, or none)."""
    text = {"text": list(prompts)} if any(prompts) else {}
    return dict(parts.processor(images=images, return_tensors="pt", padding=True, **text))


FLORENCE_TASKS = ("<CAPTION>", "<DETAILED_CAPTION>", "<MORE_DETAILED_CAPTION>")

FAMILIES = {  # by the model_type of its config.json
    "llava": Family("LlavaForConditionalGeneration", chat_inputs, instructed=True, prompt_in_output=True),
    "qwen2_5_vl": Family("Qwen2_5_VLForConditionalGeneration", qwen_inputs, instructed=True,
                         prompt_in_output=True, processor=False),
    "florence2": Family("Florence2ForConditionalGeneration", task_inputs, instructed=False,
                        prompt_in_output=False, tasks=FLORENCE_TASKS),
    "blip": Family("BlipForConditionalGeneration", task_inputs, instructed=False, prompt_in_output=False),
}

CAPTIONERS = {
    "joycaption-beta-one": CaptionerSpec(
        "fancyfeast/llama-joycaption-beta-one-hf-llava", "llava", system="You are a helpful image captioner.",
        generation={"max_new_tokens": 300, "do_sample": True, "temperature": 0.6, "top_p": 0.9}),
    "qwen2.5-vl-3b": CaptionerSpec("Qwen/Qwen2.5-VL-3B-Instruct", "qwen2_5_vl",
                                   generation={"max_new_tokens": 256, "do_sample": False}),
    "qwen2.5-vl-7b": CaptionerSpec("Qwen/Qwen2.5-VL-7B-Instruct", "qwen2_5_vl",
                                   generation={"max_new_tokens": 256, "do_sample": False}),
    "florence-2-large": CaptionerSpec("florence-community/Florence-2-large", "florence2",
                                      prompt="<MORE_DETAILED_CAPTION>",
                                      generation={"max_new_tokens": 1024, "num_beams": 3, "do_sample": False}),
    "florence-2-base": CaptionerSpec("florence-community/Florence-2-base", "florence2",
                                     prompt="<MORE_DETAILED_CAPTION>",
                                     generation={"max_new_tokens": 1024, "num_beams": 3, "do_sample": False}),
    # the guide's and A1111's captioner; kohya's make_captions uses beam search, 75 tokens at most
    "blip-large": CaptionerSpec("Salesforce/blip-image-captioning-large", "blip", prompt="",
                                generation={"max_new_tokens": 75, "num_beams": 3, "min_length": 5,
                                            "do_sample": False}),
}
DEFAULT_CAPTIONER = "joycaption-beta-one"
