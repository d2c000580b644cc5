# The lorakit pipeline as a Makefile: each stage's output folder is a target, built from the
# folder before it. Copy this file next to your dataset and run
#
#     make -f pipeline.mk RAW=path/to/raw OUT=path/to/work
#
# A stage runs again only when the folder it reads has changed (a listing of names, sizes and
# modification times is compared), and then lorakit itself redoes only the files that changed.
# Every stage writes a new folder: RAW is never modified.

RAW ?= raw
OUT ?= work
# Set UPSCALER to a model name or .pth/.safetensors path to enlarge small images, e.g.
# UPSCALER=RealESRGAN_x4plus_anime_6B (downloaded on first use) or UPSCALER=~/models/4x-UltraSharp.pth
UPSCALER ?=
MIN_SIDE ?= 512
MAX_SIDE ?= 3000
BACKGROUNDS ?= white,black,blue,green,red
CURATE ?= curate
TAG ?= tag
# Tagging: VOCAB danbooru (WD14, default model wd-swinv2-v3) or e621 (z3d-e621-convnext); the
# model downloads on first use. TAGGER_DIR uses a local model.onnx + tags CSV instead.
VOCAB ?= danbooru
TAGGER_DIR ?=
TAG_OPTIONS ?=
tagger = $(if $(strip $(TAGGER_DIR)),--model-dir "$(TAGGER_DIR)",)

# A listing that changes only when a file in the folder changes: the stamp of "this input".
listing = find "$(1)" -type f -not -name '.*' -printf '%P %s %T@\n' | sort > "$(2).tmp"; \
	cmp -s "$(2).tmp" "$(2)" || mv "$(2).tmp" "$(2)"; rm -f "$(2).tmp"

FINAL := $(OUT)/5-clean

.PHONY: all inspect FORCE
all: $(OUT)/dataset.toml
	@echo "dataset ready: $(FINAL) (captions beside the images; kohya config: $(OUT)/dataset.toml)"

$(OUT)/.raw.list: FORCE
	@mkdir -p "$(OUT)"
	@$(call listing,$(RAW),$@)

inspect:
	$(CURATE) inspect "$(RAW)" --min-side $(MIN_SIDE) --max-side $(MAX_SIDE)

# 1. every format to png; EXIF rotation, 16-bit and CMYK handled; first frame of animations
$(OUT)/1-png/.done: $(OUT)/.raw.list
	$(CURATE) convert "$(RAW)" "$(OUT)/1-png"
	@touch $@

# 2. transparency onto solid backgrounds, taking turns, each tagged in the caption
$(OUT)/2-flat/.done: $(OUT)/1-png/.done
	$(CURATE) flatten "$(OUT)/1-png" "$(OUT)/2-flat" --background cycle --colors $(BACKGROUNDS) --tag-background
	@touch $@

# 3. huge images down to MAX_SIDE; small ones listed
$(OUT)/3-resize/.done: $(OUT)/2-flat/.done
	$(CURATE) resize "$(OUT)/2-flat" "$(OUT)/3-resize" --max-side $(MAX_SIDE) --min-side $(MIN_SIDE)
	@touch $@

# 4. small images enlarged (only when UPSCALER is set; otherwise passed through)
$(OUT)/4-upscale/.done: $(OUT)/3-resize/.done
ifneq ($(strip $(UPSCALER)),)
	$(CURATE) upscale "$(OUT)/3-resize" "$(OUT)/4-upscale" --model "$(UPSCALER)" --only-below $(MIN_SIDE)
else
	@echo "UPSCALER not set: small images are kept as they are (see curate upscale --help)"
	rm -rf "$(OUT)/4-upscale" && cp -rp "$(OUT)/3-resize" "$(OUT)/4-upscale"
endif
	@touch $@

# 5. images that scan as poisoned are cleaned; the rest pass through unchanged
$(OUT)/5-clean/.done: $(OUT)/4-upscale/.done
	$(CURATE) scan "$(OUT)/4-upscale"
	$(CURATE) clean "$(OUT)/4-upscale" "$(OUT)/5-clean" --only-flagged
	@touch $@

# 6. captions: autotag, implied tags pruned, the N_name folder's token first; never overwrites a
#    caption you wrote (merge keeps your tags). `tag undo` reverts the last caption change.
$(OUT)/.tagged: $(FINAL)/.done
	$(TAG) auto "$(FINAL)" --vocab $(VOCAB) $(tagger) --mode merge $(TAG_OPTIONS)
	$(TAG) stats "$(FINAL)" --vocab $(VOCAB) --top 10
	@touch $@

# 7. balanced repeats for every concept folder, as a kohya dataset config
$(OUT)/dataset.toml: $(OUT)/.tagged
	$(TAG) balance "$(FINAL)" --toml "$@"
