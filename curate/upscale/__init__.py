"""`curate upscale`: the Real-ESRGAN family, implemented here (the `realesrgan`/`basicsr`
packages need torchvision, which fails to import with modern versions and the CPU install)."""
