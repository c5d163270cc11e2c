"""A bounded per-worker memo of a pure function of a word, read for many words at once.

Books share most of their vocabulary, so after the first few documents a worker computes a
word's value (its hash, its kind) only for words it has not met; the memo is cleared when it
would pass `max_words`, so its memory stays bounded. What it holds never changes a result.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

V = TypeVar("V")


class WordMemo(Generic[V]):
    def __init__(self, compute: Callable[[str], V], max_words: int):
        self.compute = compute
        self.max_words = max_words
        self.values: dict[str, V] = {}

    def __call__(self, words: Sequence[str]) -> list[V]:
        """The value of each word: one C-level `map` of lookups, `compute` only for the misses."""
        if len(self.values) + len(words) > self.max_words:
            self.values.clear()
        found = list(map(self.values.get, words))
        if None in found:
            for i, value in enumerate(found):
                if value is None:
                    found[i] = self.values[words[i]] = self.compute(words[i])
        return found  # type: ignore[return-value]
