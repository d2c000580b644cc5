# make setup   create .venv and install lorakit (make test adds the test tools)
# make test    run the test suite (sets up first when needed)
# make lint    ruff: pyflakes, import order, pycodestyle E4/E7/E9 (CI runs it before the tests)
# make demo    run the pipeline (examples/pipeline.mk) on the bundled sample into demo-out/
# make bench   print the curate benchmarks
# make bench-gpu  the trainer on a CUDA GPU (bench/gpu.py): ms/step, share of the compute floor, VRAM

VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
# onnxruntime for `tag auto`: the GPU build where an NVIDIA driver is, else the CPU one
RUNTIME := $(shell command -v nvidia-smi >/dev/null 2>&1 && echo gpu || echo cpu)

.PHONY: setup setup-test test lint demo bench bench-gpu clean

setup: $(STAMP)
setup-test: $(TEST_STAMP)

# Without an NVIDIA GPU, torch's CPU wheel goes in first: pip then finds torch satisfied and
# does not pull several GB of CUDA packages. torchvision is never installed (lorakit needs none,
# and its only build here is a CUDA one that breaks transformers' imports).
# setuptools' generic notice about editable installs says nothing to a lorakit user: filtered out.
# `make setup` (what `make demo` needs) installs lorakit alone; the test tools come with `make test`.
$(STAMP): pyproject.toml
	@echo "Setting up $(VENV) (first run only)."
	@test -x $(PY) || python3 -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip
	@if [ "$(RUNTIME)" = cpu ]; then $(PY) -m pip install -q torch==2.13.0; fi
	@PYTHONWARNINGS='ignore:Editable installation' $(PY) -m pip install -q -e '.[$(RUNTIME)]'
	@touch $(STAMP)

$(TEST_STAMP): $(STAMP)
	@echo "Installing the test tools (pytest, onnx, peft, tensorboard, ruff)."
	@PYTHONWARNINGS='ignore:Editable installation' $(PY) -m pip install -q -e '.[test,$(RUNTIME)]'
	@touch $(TEST_STAMP)

test: setup-test
	$(PY) -m pytest -q --durations=15

lint: setup-test
	$(VENV)/bin/ruff check .

# The pipeline Makefile shows each lorakit command it runs; the rest is lorakit's own output.
demo: setup
	@echo "The demo tags with lorakit's DEMO stand-in model (examples/demo-tagger): not a real tagger."
	@PATH="$(abspath $(VENV))/bin:$$PATH" $(MAKE) --no-print-directory -f examples/pipeline.mk \
		RAW=examples/sample/raw OUT=demo-out TAGGER_DIR=examples/demo-tagger/danbooru
	$(VENV)/bin/train plan demo-out/dataset.toml
	@echo "Training a few steps on lorakit's DEMO base model (random weights): it shows the trainer working."
	@test -d demo-out/demo-model || $(PY) examples/make_demo_model.py demo-out/demo-model
	$(VENV)/bin/train init --preset sd15 --image-root 5-clean --base demo-model > demo-out/lora.toml
	$(VENV)/bin/train run demo-out/lora.toml --set data.resolution=64 --set data.min_bucket_reso=64 \
		--set data.max_bucket_reso=128 --set training.max_steps=10 --set training.log_every_n_steps=5 \
		--set output.dir=lora --set output.name=kitchan \
		--set 'embeddings=[{placeholder = "kitchan", token_count = 2, init_text = "girl", stop_training_after = 6}]'
	@echo "The LoRA carries the 'kitchan' embedding (trained 6 steps, then frozen while the LoRA went on):"
	$(VENV)/bin/train embedding inspect demo-out/lora/kitchan.safetensors
	$(VENV)/bin/train export demo-out/lora/kitchan.safetensors --for diffusers

bench: setup-test
	$(PY) bench/curate.py
	$(PY) bench/clean.py
	$(PY) bench/tag.py
	$(PY) bench/train.py
	$(PY) bench/review.py

bench-gpu: setup
	$(PY) bench/gpu.py --json bench/gpu-results.json

clean:
	rm -rf demo-out
