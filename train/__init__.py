"""The `train` stage. Train LoRA / LyCORIS networks and embeddings for SD1.x, SD2.x and SDXL from a TOML config."""
