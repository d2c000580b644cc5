"""Output is lorakit's own. The libraries the stages use (transformers, diffusers, huggingface_hub,
torch, lycoris) print notices, deprecation warnings and progress bars meant for their own
developers; in a lorakit command they would be mixed with lorakit's lines, tables and `--json`.

`install()`, called by each command-line entry point before those libraries load:
- their logging is kept to errors and their progress bars are off (environment variables they
  read when imported);
- warnings addressed to developers (FutureWarning, DeprecationWarning from a library; a few
  known messages about lorakit's own internals) are dropped;
- every other warning is one `warning: …` line on stderr, naming where it came from.
"""

from __future__ import annotations

import os
import sys
import warnings

LIBRARIES = r"(diffusers|transformers|huggingface_hub|accelerate|torch|lycoris|onnxruntime|tensorboard|google)(\.|$)"
ENVIRONMENT = {
    "TRANSFORMERS_VERBOSITY": "error",  # e.g. its notices that torchvision is not installed (lorakit needs none)
    "DIFFUSERS_VERBOSITY": "error",
    "HF_HUB_VERBOSITY": "error",  # its "Retrying in 8s" lines
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # "Loading weights", "Writing model shards"
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "TF_CPP_MIN_LOG_LEVEL": "3",  # tensorboard's TensorFlow stub
}
# messages about how lorakit drives a library, not about the user's run
INTERNAL = [
    r"Detected call of `lr_scheduler.step\(\)` before `optimizer.step\(\)`",  # an fp16 step skipped on overflow
    r"None of the inputs have requires_grad=True",  # gradient checkpointing of a frozen model
    r"torch.utils.checkpoint: the use_reentrant parameter",
]


def _one_line(message, category, filename, lineno, file=None, line=None) -> None:
    text = str(message).strip().splitlines()[0] if str(message).strip() else category.__name__
    print(f"warning: {text} ({category.__name__}, {os.path.basename(filename)}:{lineno})", file=sys.stderr)


def install() -> None:
    for name, value in ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    warnings.showwarning = _one_line
    for category in (FutureWarning, DeprecationWarning, PendingDeprecationWarning):
        warnings.filterwarnings("ignore", category=category, module=LIBRARIES)
    for message in INTERNAL:
        warnings.filterwarnings("ignore", message=message)
