"""tag caption against a plain transformers generate loop, side by side in one run (issue 23).

    python bench/caption.py [--images 16] [--tokens 24]

- A stand-in captioner of realistic shape with random weights: LLaVA layout (SigLIP-shaped vision
  tower at 224 px, 196 image tokens; an 8-layer, 512-wide Llama-shaped language model), saved
  as a transformers folder in ~/.cache/lorakit/bench. Real JoyCaption is ~8B parameters; the
  stand-in keeps the per-image work of the same kind (prefill of image + prompt, then token by
  token) at a size a CPU finishes in minutes.
- 1-2 MP JPEGs (smooth colour fields with grain: a random model sees no difference from photos,
  and the decode costs what a photo's does), one sentence of exactly
  --tokens tokens each (min = max new tokens), greedy, the same fixed prompt for both.
- Compared, each as a whole process from launch to exit: the `tag caption` command (discovery,
  caption reads, decode ahead, backup, atomic writes, journal) and a plain loop a user would
  write (open, processor, generate, decode, write the .txt). Target: overhead ≤ 10%.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[0] = str(ROOT / "bench")
BIN = Path(sys.executable).parent
CACHE = Path(os.environ.get("LORAKIT_CACHE") or Path.home() / ".cache" / "lorakit") / "bench"
PROMPT = "Write one paragraph describing this image."


def stand_in(folder: Path) -> Path:
    if (folder / "config.json").is_file():
        return folder
    sys.path.insert(0, str(ROOT / "tests"))
    import torch
    import transformers as T
    from vlm_models import LLAMA_CHAT, _tokenizer

    tok = _tokenizer(["<image>", "<|start_header_id|>", "<|end_header_id|>"], bos_token="<|begin_of_text|>",
                     eos_token="<|eot_id|>", pad_token="<|pad|>")
    vision = T.SiglipVisionConfig(hidden_size=384, intermediate_size=1536, num_hidden_layers=6,
                                  num_attention_heads=6, image_size=224, patch_size=16)
    text = T.LlamaConfig(vocab_size=len(tok), hidden_size=512, intermediate_size=1536, num_hidden_layers=8,
                         num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=2048,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    config = T.LlavaConfig(vision_config=vision, text_config=text, image_token_index=tok.convert_tokens_to_ids("<image>"),
                           vision_feature_layer=-2, vision_feature_select_strategy="full")
    torch.manual_seed(0)
    tmp = folder.with_name(folder.name + ".tmp")
    T.LlavaForConditionalGeneration(config).save_pretrained(tmp)
    T.LlavaProcessor(image_processor=T.SiglipImageProcessor(size={"height": 224, "width": 224}), tokenizer=tok,
                     chat_template=LLAMA_CHAT, patch_size=16, vision_feature_select_strategy="full",
                     image_token="<image>", num_additional_image_tokens=0).save_pretrained(tmp)
    os.replace(tmp, folder)
    return folder


def photos(folder: Path, count: int) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for i in range(count):
        w, h = int(rng.integers(1100, 1700)), int(rng.integers(900, 1300))
        y, x = np.mgrid[0:h, 0:w]
        field = np.stack([(x * (c + 1) / w + y / h) * 90 for c in range(3)], axis=-1)
        grain = rng.normal(0, 12, (h, w, 3))
        Image.fromarray(np.clip(field + grain, 0, 255).astype(np.uint8)).save(folder / f"{i:03d}.jpg", quality=92)


PLAIN = '''
import sys, torch
from pathlib import Path
from PIL import Image
from transformers import AutoProcessor, LlavaForConditionalGeneration
model_dir, folder, tokens, prompt = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
processor = AutoProcessor.from_pretrained(model_dir)
model = LlavaForConditionalGeneration.from_pretrained(model_dir).eval()
for path in sorted(folder.glob("*/*.jpg")):
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[text], images=[Image.open(path).convert("RGB")], return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
    sentence = processor.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0]
    path.with_suffix(".txt").write_text(" ".join(sentence.split()) + "\\n")
'''


def timed(args: list[str], env: dict) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(args, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(proc.stdout[-2000:] + proc.stderr[-2000:])
    return seconds, proc.stdout


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=2, help="runs of each, alternating; the fastest counts")
    args = parser.parse_args()
    model = stand_in(CACHE / "captioner-llava-stand-in")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "photos"
        photos(source / "5_subject", args.images)
        prompt_file = Path(tmp) / "prompt.txt"
        prompt_file.write_text(PROMPT)
        # generation settings equal to the plain loop's: greedy, exactly --tokens tokens
        config = json.loads((model / "generation_config.json").read_text())
        (model / "generation_config.json").write_text(json.dumps({**config, "min_new_tokens": args.tokens}))
        plain_times, ours_times = [], []
        try:
            for run in range(args.repeats):  # alternating, so a slow spell of the machine hits both
                plain_dir, ours_dir = Path(tmp) / f"plain{run}", Path(tmp) / f"ours{run}"
                subprocess.run(["cp", "-r", str(source), str(plain_dir)], check=True)
                subprocess.run(["cp", "-r", str(source), str(ours_dir)], check=True)
                plain_times.append(timed([sys.executable, "-c", PLAIN, str(model), str(plain_dir), str(args.tokens),
                                          PROMPT], env)[0])
                seconds, out = timed([str(BIN / "tag"), "caption", str(ours_dir), "--model-dir", str(model),
                                      "--prompt", str(prompt_file), "--no-with-tags", "--max-new-tokens",
                                      str(args.tokens), "--batch-size", "1", "--json"], env)
                ours_times.append(seconds)
        finally:
            (model / "generation_config.json").write_text(json.dumps(config))
        report = json.loads(out)
        written = sum(1 for i in report["items"] if i["status"] in ("created", "changed"))
        plain_s, ours_s = min(plain_times), min(ours_times)
    n = args.images
    print(f"bench/caption.py · {platform.node() or 'this machine'} · {os.cpu_count()} CPUs · "
          f"{n} photos, {args.tokens} new tokens each, LLaVA-shaped stand-in, fp32, batch 1; fastest of "
          f"{args.repeats} (tag caption: {', '.join(f'{t:.1f}' for t in ours_times)} s; plain: "
          f"{', '.join(f'{t:.1f}' for t in plain_times)} s)")
    print("| measure | tag caption | plain generate loop | ratio | target |\n|---|---|---|---|---|")
    print(f"| whole process, {n} images | {ours_s:.1f} s ({n / ours_s:.2f} img/s) | {plain_s:.1f} s "
          f"({n / plain_s:.2f} img/s) | {ours_s / plain_s:.3f}x time (overhead {100 * (ours_s / plain_s - 1):+.1f}%) "
          f"| ≤ 1.10x |")
    print(f"| generation alone, as the command reports it | {report['images_per_second']:.2f} img/s | | | |")
    print(f"sentences written by tag caption: {written}/{n}")


if __name__ == "__main__":
    main()
