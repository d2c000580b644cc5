"""The `curate` stage: everything done to raw images before tagging."""
