"""Progress lines from inside a worker, at most one every few seconds (Beam has no progress bar)."""

from __future__ import annotations

import logging
import os
import time

log = logging.getLogger("longctx")


class Progress:
    def __init__(self, verb: str, unit: str, every_s: float = 5.0):
        self.verb = verb
        self.unit = unit
        self.every_s = every_s
        self.count = 0
        self.tokens = 0
        self.start = self.last = time.monotonic()

    def add(self, count: int, tokens: int = 0) -> None:
        self.count += count
        self.tokens += tokens
        now = time.monotonic()
        if now - self.last >= self.every_s:
            self.last = now
            rate = self.tokens / max(now - self.start, 1e-9)
            log.info("[pid %d] %s %d %s, %d tokens (%.0f tokens/s)", os.getpid(), self.verb, self.count, self.unit, self.tokens, rate)
