"""Book text for the haystacks, read from a seeded offset and cycling: whitespace-separated words
of real books (default: the repo's sample novels) for RULER, which reads its essays word by word
(`BookWords`), and one token stream for NIAH, which places needles at exact token positions
(`Haystack`, from book files or a stage folder of shards). Both read books as `longctx books`
does (`read_texts`)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from curation.tokenize import encode_long

if TYPE_CHECKING:
    from evals.generators import NiahTokenizer

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


# ----------------------------------------------------------------------------------------------
# NIAH's haystack: book text (or a stage's shards) as one token stream
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Haystack:
    """Book text as one token stream, read cyclically."""

    tokens: np.ndarray

    def __post_init__(self) -> None:
        if len(self.tokens) == 0:
            raise ValueError("the haystack has no tokens")

    @classmethod
    def from_texts(cls, texts: Iterable[str], tokenizer: NiahTokenizer, max_tokens: int | None = None) -> Haystack:
        """Texts tokenized once, in order (a blank line between them), stopping at `max_tokens`."""
        parts, total = [], 0
        separator = np.asarray(tokenizer.encode("\n\n"), np.int32)
        for text in texts:
            ids = encode_long(tokenizer.tok, text)
            parts += [ids, separator]
            total += len(ids) + len(separator)
            if max_tokens is not None and total >= max_tokens:
                break
        return cls(np.concatenate(parts) if parts else np.zeros(0, np.int32))

    def window(self, offset: int, n: int) -> np.ndarray:
        """n tokens from `offset`, wrapping around to the start as often as needed."""
        index = (offset + np.arange(n)) % len(self.tokens)
        return self.tokens[index]


def read_texts(source: str) -> Iterator[str]:
    """Book texts of a JSONL / Parquet / txt file, folder or glob (compressed or not), as
    `longctx books` reads them; unreadable records are skipped."""
    from curation.documents import Document
    from curation.sources import SourceConfig, expand_pattern, iter_file_records

    urls = expand_pattern(source)
    if not urls:
        raise FileNotFoundError(f"no haystack files match {source!r}")
    for url in urls:
        for record in iter_file_records(url, SourceConfig()):
            if isinstance(record, Document) and record.text:
                yield record.text


def haystack_from_shards(stage: str, tokenizer: NiahTokenizer, max_tokens: int | None = None) -> Haystack:
    """The documents of a stage's shards (`OUT/books/32k`), BOS/EOS dropped, in row order. The shards
    must come from the same tokenizer as the model's."""
    from training.data import StageData

    data = StageData.open(stage)
    made_with = data.info.tokenizer or {}
    if made_with.get("sha256") not in (None, tokenizer.sha256):
        raise ValueError(f"shards under {stage} were tokenized with {made_with.get('name')!r}, not {tokenizer.name!r}: "
                         "pass that --tokenizer or a books file as --haystack")
    drop = [t for t in (tokenizer.bos_id, *tokenizer.eos_ids) if t is not None]
    parts, total = [], 0
    for shard in data.shards:
        for lo in range(0, shard.num_rows, 16):  # a few rows at a time: a gs:// haystack stops at max_tokens
            block = shard.read(np.arange(lo, min(lo + 16, shard.num_rows)), names=["input_ids", "segment_ids"])
            for ids, seg in zip(block["input_ids"], block["segment_ids"]):
                tokens = ids[(seg > 0) & ~np.isin(ids, drop)]
                parts.append(tokens)
                total += len(tokens)
                if max_tokens is not None and total >= max_tokens:
                    return Haystack(np.concatenate(parts))
    return Haystack(np.concatenate(parts) if parts else np.zeros(0, np.int32))


def load_haystack(source: str, tokenizer: NiahTokenizer, max_tokens: int | None = None) -> Haystack:
    """A stage folder of shards, or book files (see `read_texts`)."""
    from curation.shards import stage_shard_urls

    if Path(source).is_dir() and stage_shard_urls(source):
        return haystack_from_shards(source, tokenizer, max_tokens)
    return Haystack.from_texts(read_texts(source), tokenizer, max_tokens)
