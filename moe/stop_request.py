"""Graceful stop of a training run on SIGINT/SIGTERM (the trainer saves a checkpoint and returns)."""

from __future__ import annotations

import signal
from typing import Any


class StopRequest:
    """Turns the first SIGINT/SIGTERM into a flag the loop checks; a second one interrupts at once."""

    def __init__(self):
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. a notebook worker): keep default handling
                pass
        return self

    def _handle(self, signum, frame):
        self.signal_name = signal.Signals(signum).name
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
