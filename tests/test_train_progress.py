"""What a run shows and keeps: log.jsonl, a rich display on a terminal (JSON lines elsewhere),
TensorBoard scalars."""

import io
import json

import pytest
from conftest import train_config, train_json
from rich.console import Console

from lorakit.train.progress import RunLog


def test_terminal_display_shows_step_loss_lr_rate_and_eta(tmp_path):
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=200, color_system=None)
    run_log = RunLog(tmp_path / "out", tmp_path / "tb", tensorboard=False, console=console)
    run_log.step(1, 20, 1, 2)
    run_log(json.dumps({"warning": "3 prompts are past data.max_token_length = 75 tokens"}))
    for step in range(2, 11):
        run_log.step(step, 20, 1, 2 * step)
    run_log(json.dumps({"step": 10, "epoch": 1, "loss": 0.123456, "lr": 1e-4, "time": 1.0}))
    run_log(json.dumps({"step": 10, "epoch": 1, "val_loss": 0.25}))
    run_log.step(11, 20, 2, 22)
    run_log.progress.refresh()
    run_log.close()
    shown = screen.getvalue()
    assert "11/20" in shown and "epoch 2" in shown and "loss 0.1235" in shown and "lr 1.00e-04" in shown
    assert "img/s" in shown and "eta" in shown
    assert "warning: 3 prompts are past" in shown and "step 10: validation loss 0.2500" in shown
    assert '{"step"' not in shown  # no JSON on a terminal: it is in log.jsonl
    lines = [json.loads(line) for line in (tmp_path / "out" / "log.jsonl").read_text().splitlines()]
    assert [sorted(line) for line in lines] == [["warning"], ["epoch", "loss", "lr", "step", "time"],
                                                ["epoch", "step", "val_loss"]]


def test_tensorboard_scalars_match_the_log(tmp_path, base):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = train_config(tmp_path, base, "tb")
    result = train_json("run", cfg, "--set", "output.tensorboard=true", "--set", "training.max_steps=4",
                        "--set", "network.text_encoder_lr=1e-4")
    events = EventAccumulator(str(tmp_path / "tb" / "out" / "tensorboard"))
    events.Reload()
    losses = [e.value for e in events.Scalars("train/loss")]
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4]
    assert losses == pytest.approx(result["losses"], rel=1e-6)
    assert {"lr/group0", "lr/group1"} <= set(events.Tags()["scalars"])  # UNet and text-encoder rates
