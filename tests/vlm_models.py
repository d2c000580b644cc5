"""Tiny random-weight vision-language models, one per captioner family, saved as transformers
folders (`tag caption --model-dir`). Their tokenizers are byte-level BPE with no merges: every
text tokenizes, with no vocabulary file to download. The sentences they write are noise; the
tests check where text goes and what the model was given, not what it says."""

from __future__ import annotations

import json
from pathlib import Path

LLAMA_CHAT = ("{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
              "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
              "{% if c['type'] == 'image' %}<image>{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}"
              "<|eot_id|>{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>"
              "\n\n{% endif %}")
QWEN_CHAT = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['content'] is string %}"
             "{{ m['content'] }}{% else %}{% for c in m['content'] %}{% if c['type'] == 'image' %}"
             "<|vision_start|><|image_pad|><|vision_end|>{% else %}{{ c['text'] }}{% endif %}{% endfor %}"
             "{% endif %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def _tokenizer(specials: list[str], wrap: tuple[str, str] | None = None, **named):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **named)
    fast.add_special_tokens({"additional_special_tokens": specials})
    if wrap:  # BERT's [CLS] text [SEP], which BLIP's generate expects around its prompt
        first, last = wrap
        fast.backend_tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{first} $A {last}", special_tokens=[(t, fast.convert_tokens_to_ids(t)) for t in wrap])
    return fast


def _llava(folder: Path) -> None:
    import transformers as T

    tok = _tokenizer(["<image>", "<|start_header_id|>", "<|end_header_id|>"], bos_token="<|begin_of_text|>",
                     eos_token="<|eot_id|>", pad_token="<|pad|>")
    vision = T.SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                  image_size=32, patch_size=8)
    text = T.LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=1024,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    config = T.LlavaConfig(vision_config=vision, text_config=text, image_token_index=tok.convert_tokens_to_ids("<image>"),
                           vision_feature_layer=-2, vision_feature_select_strategy="full")
    T.LlavaForConditionalGeneration(config).save_pretrained(folder)
    T.LlavaProcessor(image_processor=T.SiglipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tok,
                     chat_template=LLAMA_CHAT, patch_size=8, vision_feature_select_strategy="full",
                     image_token="<image>", num_additional_image_tokens=0).save_pretrained(folder)


def _qwen(folder: Path) -> None:
    import transformers as T

    tok = _tokenizer(["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
                      "<|video_pad|>"], eos_token="<|im_end|>", pad_token="<|endoftext|>")
    ids = {t: tok.convert_tokens_to_ids(t) for t in ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")}
    config = T.Qwen2_5_VLConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=2048,
                         rope_scaling={"type": "mrope", "mrope_section": [2, 2, 4]}, bos_token_id=None,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=32,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=56,
                           fullatt_block_indexes=[1]),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    T.Qwen2_5_VLForConditionalGeneration(config).save_pretrained(folder)
    tok.chat_template = QWEN_CHAT
    tok.save_pretrained(folder)
    T.Qwen2VLImageProcessor(min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 16).save_pretrained(folder)


def _florence(folder: Path) -> None:
    import torch
    import transformers as T

    tok = _tokenizer(["<image>"], bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>")
    text = dict(vocab_size=len(tok), d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=256,
                pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                decoder_start_token_id=tok.eos_token_id, forced_eos_token_id=tok.eos_token_id)
    vision = dict(depths=[1, 1], patch_size=[7, 3], patch_stride=[4, 2], patch_padding=[3, 1],
                  patch_prenorm=[False, True], embed_dim=[16, 32], num_heads=[2, 2], num_groups=[2, 2],
                  window_size=2, projection_dim=32, max_position_embeddings=16, max_temporal_embeddings=4)
    model = T.Florence2ForConditionalGeneration(T.Florence2Config(
        text_config=text, vision_config=vision, image_token_id=tok.convert_tokens_to_ids("<image>")))
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    extra = config.get("extra_special_tokens")
    config["extra_special_tokens"] = {**(extra if isinstance(extra, dict) else {}), "image_token": "<image>"}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    images = T.CLIPImageProcessor(size={"height": 32, "width": 32}, crop_size={"height": 32, "width": 32},
                                  do_center_crop=False)
    with torch.no_grad():
        features = model.get_image_features(pixel_values=torch.zeros(1, 3, 32, 32))
    images.image_seq_length = getattr(features, "pooler_output", features).shape[1]
    T.Florence2Processor(image_processor=images, tokenizer=T.AutoTokenizer.from_pretrained(folder)).save_pretrained(folder)


def _blip(folder: Path) -> None:
    import transformers as T

    tok = _tokenizer([], wrap=("[CLS]", "[SEP]"), bos_token="[DEC]", eos_token="[SEP]", pad_token="[PAD]",
                     unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]")
    text = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                max_position_embeddings=256, encoder_hidden_size=32, pad_token_id=tok.pad_token_id,
                bos_token_id=tok.bos_token_id, sep_token_id=tok.sep_token_id, eos_token_id=tok.sep_token_id)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32,
                  patch_size=8)
    T.BlipForConditionalGeneration(T.BlipConfig(text_config=text, vision_config=vision)).save_pretrained(folder)
    T.BlipProcessor(image_processor=T.BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tok
                    ).save_pretrained(folder)


BUILDERS = {"llava": _llava, "qwen2_5_vl": _qwen, "florence2": _florence, "blip": _blip}


def build(family: str, folder: Path, seed: int = 0) -> Path:
    import torch
    from transformers import AutoTokenizer

    from lorakit import quiet

    quiet.install()  # the libraries' notices stay out of the test's output, as in the commands
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    BUILDERS[family](folder)
    # random weights often end at once or write special tokens and control bytes (decoded to
    # nothing): the tests need a sentence, so the end comes after a few tokens and only letters,
    # digits and spaces are written
    config = json.loads((folder / "generation_config.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(folder)
    plain = {i for i in range(len(tokenizer)) if (t := tokenizer.decode([i])).isascii() and (t.isalnum() or t == " ")}
    config.update(min_new_tokens=3, suppress_tokens=sorted(set(range(len(tokenizer))) - plain - {tokenizer.eos_token_id}))
    (folder / "generation_config.json").write_text(json.dumps(config))
    return folder
