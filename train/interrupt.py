"""Ctrl-C and SIGTERM during a run (DESIGN "Safety rules"): the optimizer step under way
finishes, then the run saves a checkpoint and the state a resume needs and exits 128 + the
signal (130, 143: the shell's convention), telling the user to run `train resume`.

A second signal while that is written is noted and changes nothing: the save finishes (killing it
would cost the very files a resume needs; each is written atomically, so even `kill -9` leaves the
previous ones whole). The handlers write with os.write: a handler runs between two bytecodes of the
main thread, which may be in the middle of a print to the same stream.
"""

from __future__ import annotations

import os
import signal
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupt:
    """`with Interrupt() as interrupt:` the loop asks `interrupt.signum` after every step."""

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict = {}

    def __enter__(self) -> Interrupt:
        if threading.current_thread() is threading.main_thread():  # only there can Python handle signals
            self._previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    def _handle(self, signum: int, frame) -> None:
        name = signal.Signals(signum).name
        if self.signum is None:
            self.signum = signum
            message = f"{name}: finishing this step, then saving a checkpoint and the state to resume from"
        else:
            message = f"{name}: already stopping; the step under way and the save will finish (files are written whole)"
        os.write(2, f"lorakit: {message}\n".encode())
