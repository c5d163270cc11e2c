"""Progress lines from inside a worker, at most one every few seconds (Beam has no progress bar).

With a known total, a line gives done/total, the rate and an ETA (`generated 40/228 chunks,
0.11 chunks/s, ETA 28m`); the last item is always reported. On Dataflow, where a worker's log
is not the user's terminal, the job's counters (Beam Metrics) carry the same counts.
"""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING

from curation.units import duration  # 45s, 12m05s, 3h07m

if TYPE_CHECKING:  # a type only: this module stays importable without pyarrow
    from curation.shards import ShardInfo

log = logging.getLogger("longctx")


def progress_line(verb: str, unit: str, done: int, total: int | None, elapsed_s: float) -> str:
    """`generated 40/228 chunks (17%), 0.11 chunks/s, ETA 28m07s, elapsed 6m00s` (no ETA before a rate exists)."""
    rate = done / elapsed_s if elapsed_s > 0 else 0.0
    if total is None:
        return f"{verb} {done} {unit}, {rate:.2f} {unit}/s, elapsed {duration(elapsed_s)}"
    share = f" ({100 * done // total}%)" if total else ""
    eta = duration((total - done) / rate) if rate > 0 else "unknown"
    return f"{verb} {done}/{total} {unit}{share}, {rate:.2f} {unit}/s, ETA {eta}, elapsed {duration(elapsed_s)}"


def shard_line(index: int, info: ShardInfo) -> str:
    """`wrote shard 3 of stage 32k: 12 rows, 393,216 tokens (32k/train-00003-of-00010.arrow)`:
    one per shard written (the file name carries the stage's shard count)."""
    return f"wrote shard {index} of stage {info.stage}: {info.rows:,} rows, {info.tokens:,} tokens ({info.path})"


class Progress:
    """Counts items (and optionally tokens) and logs a line at most every `every_s` seconds.

    `total` (optional) is the number of items this process expects; with it, lines carry
    done/total and an ETA, and reaching the total is always logged."""

    def __init__(self, verb: str, unit: str, every_s: float = 5.0, total: int | None = None, start: float | None = None):
        self.verb = verb
        self.unit = unit
        self.every_s = every_s
        self.total = total
        self.count = 0
        self.tokens = 0
        self.logged = 0  # the count at the last line (flush() skips a repeat)
        # `start` (a time.monotonic() value): when the work began, if before this object existed
        self.start = self.last = time.monotonic() if start is None else start

    def add(self, count: int, tokens: int = 0) -> None:
        self.count += count
        self.tokens += tokens
        now = time.monotonic()
        finished = self.total is not None and self.count >= self.total
        if now - self.last < self.every_s and not finished:
            return
        self._log(now)

    def flush(self) -> None:
        """Log the count now, whatever the time since the last line (a worker's bundle is done:
        with no known total, its last item is reported here); nothing if no item came since."""
        if self.count != self.logged:
            self._log(time.monotonic())

    def _log(self, now: float) -> None:
        self.last = now
        self.logged = self.count
        if self.total is not None:
            log.info("[pid %d] %s", os.getpid(), progress_line(self.verb, self.unit, self.count, self.total, now - self.start))
            return
        rate = self.tokens / max(now - self.start, 1e-9)
        log.info("[pid %d] %s %d %s, %d tokens (%.0f tokens/s)", os.getpid(), self.verb, self.count, self.unit, self.tokens, rate)
