"""The `tag` stage. Autotag images (WD14 / e621 ONNX), prune implied tags, edit captions, report tag statistics and balance N_name folder repeats."""
