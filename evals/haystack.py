"""Book text for the haystacks: whitespace-separated words of real books (default: the repo's
sample novels), read from a seeded offset and cycling, as RULER reads its essays word by word."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

SAMPLE_BOOKS = Path(__file__).resolve().parents[1] / "data" / "sample" / "books.jsonl.gz"
# A sentence ends at . ! or ? (and any closing quotes or brackets) before whitespace.
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"'\u201d\u2019)\]]*\s+")


@dataclass(frozen=True)
class BookWords:
    """Book text as one list of words."""

    words: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.words:
            raise ValueError("the book haystack has no words")

    @classmethod
    def from_texts(cls, texts: list[str] | tuple[str, ...], max_words: int | None = None) -> BookWords:
        words: list[str] = []
        for text in texts:
            words.extend(text.split())
            if max_words is not None and len(words) >= max_words:
                break
        return cls(tuple(words))

    @classmethod
    def load(cls, source: str | Path = SAMPLE_BOOKS, max_words: int | None = None) -> BookWords:
        """Books as `longctx books` reads them (JSONL / Parquet / txt files, folders, globs)."""
        from evals.niah import read_texts

        words: list[str] = []
        for text in read_texts(str(source)):
            words.extend(text.split())
            if max_words is not None and len(words) >= max_words:
                break
        return cls(tuple(words))

    def window(self, offset: int, n: int) -> list[str]:
        """n words from `offset`, wrapping to the start as often as needed."""
        size = len(self.words)
        return [self.words[(offset + i) % size] for i in range(n)]


def split_sentences(text: str) -> list[str]:
    """Sentences of running text (good enough for placing needles at sentence ends)."""
    return [s for s in _SENTENCE_END.split(text.strip()) if s]
