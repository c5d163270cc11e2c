"""Cutting a book's token array into ~1,000-token chunks, one QA pair each (MISSION.md).

Chunks are measured and cut with the TRAINING tokenizer, so the chunk tokens can later be used
as the example's context verbatim (no re-encoding, no drift between what the generator read and
what the trained model sees). Boundaries prefer a paragraph end, then a sentence end, so the
generator gets whole passages; concatenating the chunks always gives back the input exactly.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass, field

import numpy as np

# A piece that ends a sentence: . ! ? (possibly several, "?!" or "...") then closing quotes/brackets.
_SENTENCE_END = re.compile(r"[.!?]+[\"'\u201d\u2019)\]]*\s*$")
# A piece made only of closing quotes/brackets: it closes a sentence when the previous piece ended one.
_CLOSER_ONLY = re.compile(r"^\s*[\"'\u201d\u2019)\]]+\s*$")

# Boundary tiers, best first.
TIER_PARAGRAPH = 0  # newline right after a sentence end or another newline (a blank line)
TIER_NEWLINE = 1  # any newline (hard-wrapped texts put one at every line end)
TIER_SENTENCE = 2
TIER_NONE = 3


@dataclass(frozen=True)
class BoundaryTable:
    """Per-vocabulary flags (index = token id), computed once per tokenizer: classifying a
    book's tokens is then a vectorised lookup instead of a Python call per token."""

    newline: np.ndarray
    sentence_end: np.ndarray
    closer: np.ndarray

    @classmethod
    def from_tokenizer(cls, tok) -> BoundaryTable:
        size = tok.get_vocab_size(with_added_tokens=True)
        texts = tok.decode_batch([[i] for i in range(size)], skip_special_tokens=True)
        pieces = [tok.id_to_token(i) or "" for i in range(size)]
        newline = np.array(["\n" in t or "\n" in p or "<0x0A>" in p for t, p in zip(texts, pieces)], bool)
        sentence = np.array([bool(_SENTENCE_END.search(t)) for t in texts], bool)
        closer = np.array([bool(_CLOSER_ONLY.match(t)) for t in texts], bool)
        return cls(newline, sentence, closer)

    def lookup(self, flags: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        """flags[tokens], with ids outside the vocabulary counted as no boundary."""
        out = np.zeros(len(tokens), bool)
        valid = (tokens >= 0) & (tokens < len(flags))
        out[valid] = flags[tokens[valid]]
        return out


# Keeps the tokenizer object alive next to its table, so an id() is never reused for another one.
_TABLES: dict[int, tuple[object, BoundaryTable]] = {}
_MAX_TABLES = 4


def boundary_table(tok) -> BoundaryTable:
    """The cached BoundaryTable of a tokenizers.Tokenizer (or a table passed straight through)."""
    if isinstance(tok, BoundaryTable):
        return tok
    cached = _TABLES.get(id(tok))
    if cached is None or cached[0] is not tok:
        if len(_TABLES) >= _MAX_TABLES:  # a worker reloading its tokenizer must not grow this forever
            _TABLES.pop(next(iter(_TABLES)))
        cached = (tok, BoundaryTable.from_tokenizer(tok))
        _TABLES[id(tok)] = cached
    return cached[1]


def boundary_tiers(tokens: np.ndarray, tok) -> np.ndarray:
    """For each position i, the tier of a cut placed right after token i (TIER_* values)."""
    table = boundary_table(tok)
    tokens = np.asarray(tokens, dtype=np.int64)
    nl = table.lookup(table.newline, tokens)
    se = table.lookup(table.sentence_end, tokens)
    closer = table.lookup(table.closer, tokens)
    prev = lambda a: np.concatenate([[False], a[:-1]])
    nxt = lambda a: np.concatenate([a[1:], [False]])
    # A sentence end followed by its closing quote ends after the quote, not before it.
    sentence = (se & ~nxt(closer)) | (closer & prev(se))
    tiers = np.full(len(tokens), TIER_NONE, np.int8)
    tiers[sentence & ~nl] = TIER_SENTENCE
    tiers[nl] = TIER_NEWLINE
    # The last newline of a blank line, or a line that closes a sentence: a real paragraph end.
    tiers[nl & ~nxt(nl) & (prev(nl) | prev(sentence))] = TIER_PARAGRAPH
    return tiers


def _pick_end(tiers: np.ndarray, start: int, lo: int, hi: int, target: int) -> int:
    """The end (exclusive) of the chunk starting at `start`: a cut after a token of the best
    tier whose end lies in [lo, hi], closest to start+target; `hi` when there is none. Any newline
    outranks a sentence end; among newlines, real paragraph ends outrank hard line wraps."""
    window = tiers[lo - 1 : hi]  # cut after token j gives end j+1
    best = window.min() if len(window) else TIER_NONE
    if best >= TIER_NONE:
        return hi
    ends = np.flatnonzero(window == best) + lo
    return int(ends[np.argmin(np.abs(ends - (start + target)))])


def chunk_tokens(
    tokens: np.ndarray, tok, target: int = 1000, min_tokens: int = 500, max_tokens: int = 1500
) -> list[tuple[int, int]]:
    """Split `tokens` into consecutive (start, end) chunks of about `target` tokens.

    Each cut lies after a paragraph end (a newline piece) if one falls in [min, max] tokens from
    the chunk start, else after a sentence end, else exactly at max. Every chunk but the last has
    min..max tokens; when the remainder allows it, cuts also leave the last chunk >= min tokens.
    """
    if not 0 < min_tokens <= target <= max_tokens:
        raise ValueError(f"need 0 < min_tokens <= target <= max_tokens, got {min_tokens}, {target}, {max_tokens}")
    tokens = np.asarray(tokens)
    n = len(tokens)
    tiers = boundary_tiers(tokens, tok) if n else np.zeros(0, np.int8)
    chunks: list[tuple[int, int]] = []
    start = 0
    while n - start > max_tokens:
        lo, hi = start + min_tokens, start + max_tokens
        if n - hi < min_tokens and n - min_tokens >= lo:
            hi = n - min_tokens  # keep the tail chunk at least min_tokens long
        end = _pick_end(tiers, start, lo, hi, target)
        chunks.append((start, end))
        start = end
    if start < n:
        chunks.append((start, n))
    return chunks


@dataclass(frozen=True)
class Chunk:
    """One chunk of a book: `tokens` = book_tokens[start:start+len(tokens)] (positions in the
    array given to make_chunks, BOS included), `text` = their decode, for the generator."""

    book_id: str
    book_uid: str
    index: int
    start: int
    tokens: np.ndarray = field(repr=False)
    text: str = field(repr=False)

    @property
    def end(self) -> int:
        return self.start + len(self.tokens)

    @property
    def key(self) -> str:
        return f"{self.book_uid}#{self.index}"


def _strip_specials(tokens: np.ndarray, strip_ids: Collection[int]) -> tuple[int, int]:
    """(lo, hi) of tokens without the special ids at either end (a BOS/EOS from encode_long)."""
    lo, hi = 0, len(tokens)
    while lo < hi and int(tokens[lo]) in strip_ids:
        lo += 1
    while hi > lo and int(tokens[hi - 1]) in strip_ids:
        hi -= 1
    return lo, hi


def make_chunks(
    book_id: str,
    book_uid: str,
    tokens: np.ndarray,
    tok,
    target: int = 1000,
    min_tokens: int = 500,
    max_tokens: int = 1500,
    strip_ids: Collection[int] = (),
) -> list[Chunk]:
    """Chunks of one book with their decoded text. Ids in `strip_ids` (BOS/EOS) at the ends of
    the book are left out of every chunk, so a chunk never carries a document marker."""
    tokens = np.asarray(tokens, dtype=np.int32)
    lo, hi = _strip_specials(tokens, set(strip_ids))
    body = tokens[lo:hi]
    spans = chunk_tokens(body, tok, target, min_tokens, max_tokens)
    texts = tok.decode_batch([body[s:e].tolist() for s, e in spans]) if spans else []
    return [
        Chunk(book_id, book_uid, i, lo + s, body[s:e].copy(), text)
        for i, ((s, e), text) in enumerate(zip(spans, texts))
    ]
