"""Build lorakit's DEMO tagger: a few-hundred-byte ONNX model shaped exactly like SmilingWolf's
WD taggers (input `input_1:0` [N, 448, 448, 3] float32 BGR 0..255, output
`predictions_sigmoid` [N, tags]), whose outputs depend on where and which colour the pixels
are. It is NOT a real tagger: it lets `make demo` and the tests run `tag auto` offline, and its
tags make preprocessing mistakes visible:

- red_hair / blue_hair compare red and blue in the top-left quadrant (a BGR/RGB swap flips them);
- white_background / black_background read a 16 px strip at the left edge: padding for tall
  images, transparent pixels for wide RGBA ones (the wrong padding or alpha colour flips them);
- very_long_hair always comes with long_hair, which Danbooru's relations imply (pruning shows);
- the character tag needs a green top-left quadrant.

The model carries the metadata `lorakit_demo = "1"`, and `tag auto` says so in its output.

    python examples/make_demo_tagger.py examples/demo-tagger
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

SIZE = 448
# (danbooru name, e621 name, category, weights over [full B,G,R, top-left B,G,R, left strip B,G,R] / 255, bias)
TAGS = [
    ("general", "safe", 9, [0] * 9, 4.0),
    ("sensitive", "questionable_rating", 9, [0] * 9, 0.0),
    ("questionable", "suggestive", 9, [0] * 9, -2.0),
    ("explicit", "explicit", 9, [0] * 9, -4.0),
    ("red_hair", "red_body", 0, [0, 0, 0, -12, 0, 12, 0, 0, 0], -1.0),
    ("blue_hair", "blue_body", 0, [0, 0, 0, 12, 0, -12, 0, 0, 0], -1.0),
    ("white_background", "white_background", 0, [0] * 6 + [20 / 3] * 3, -18.0),
    ("black_background", "black_background", 0, [0] * 6 + [-20 / 3] * 3, 2.0),
    ("very_long_hair", "red_fox", 0, [0, 10, 0] + [0] * 6, -3.0),
    ("long_hair", "fox", 0, [0, 10, 0] + [0] * 6, -2.0),
    ("kitchan_(lorakit)", "kitchan_(lorakit)", 4, [0, 0, 0, 0, 15, -15, 0, 0, 0], -5.0),
]
E621_CATEGORY = {"red_fox": 5, "fox": 5}


def build_model(vocab: str = "danbooru", fixed_batch: int | None = None) -> bytes:
    import onnx
    from onnx import TensorProto, helper

    def const(name, values, dtype=TensorProto.INT64):
        arr = np.asarray(values)
        return helper.make_tensor(name, dtype, arr.shape, arr.flatten().tolist())

    weights = np.array([t[3] for t in TAGS], np.float32).T / 255.0  # [9, T]
    bias = np.array([t[4] for t in TAGS], np.float32)
    nodes = [
        helper.make_node("ReduceMean", ["x"], ["full"], axes=[1, 2], keepdims=0),
        helper.make_node("Slice", ["x", "tl_start", "tl_end", "axes12"], ["tl_px"]),
        helper.make_node("ReduceMean", ["tl_px"], ["tl"], axes=[1, 2], keepdims=0),
        helper.make_node("Slice", ["x", "strip_start", "strip_end", "axes2"], ["strip_px"]),
        helper.make_node("ReduceMean", ["strip_px"], ["strip"], axes=[1, 2], keepdims=0),
        helper.make_node("Concat", ["full", "tl", "strip"], ["features"], axis=1),
        helper.make_node("MatMul", ["features", "W"], ["scores"]),
        helper.make_node("Add", ["scores", "b"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["predictions_sigmoid"]),
    ]
    nodes[0].input[0] = "input_1:0"
    nodes[1].input[0] = "input_1:0"
    nodes[3].input[0] = "input_1:0"
    init = [const("tl_start", [0, 0]), const("tl_end", [SIZE // 2, SIZE // 2]), const("axes12", [1, 2]),
            const("strip_start", [0]), const("strip_end", [16]), const("axes2", [2]),
            const("W", weights, TensorProto.FLOAT), const("b", bias, TensorProto.FLOAT)]
    batch = fixed_batch if fixed_batch else "batch"
    graph = helper.make_graph(
        nodes, "lorakit-demo-tagger",
        [helper.make_tensor_value_info("input_1:0", TensorProto.FLOAT, [batch, SIZE, SIZE, 3])],
        [helper.make_tensor_value_info("predictions_sigmoid", TensorProto.FLOAT, [batch, len(TAGS)])],
        init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)],
                              producer_name="lorakit demo tagger (not a real model)")
    model.ir_version = 8
    helper.set_model_props(model, {"lorakit_demo": "1"})
    onnx.checker.check_model(model)
    return model.SerializeToString()


def write_tagger(folder: Path, vocab: str = "danbooru", fixed_batch: int | None = None) -> Path:
    """model.onnx plus the tag list in the layout of the real models of that vocabulary:
    `selected_tags.csv` (tag_id,name,category,count) or `tags-selected.csv` (name,category)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.onnx").write_bytes(build_model(vocab, fixed_batch))
    if vocab == "danbooru":
        rows = ["tag_id,name,category,count"] + [f"{i},{t[0]},{t[2]},0" for i, t in enumerate(TAGS)]
        (folder / "selected_tags.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    else:
        rows = ["name,category"] + [f"{t[1]},{E621_CATEGORY.get(t[1], t[2])}" for t in TAGS]
        (folder / "tags-selected.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return folder


if __name__ == "__main__":
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "examples/demo-tagger")
    for vocab in ("danbooru", "e621"):
        path = write_tagger(root / vocab, vocab)
        print(path, sum(f.stat().st_size for f in path.iterdir()), "bytes")
