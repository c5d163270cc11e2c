"""Encoding a long text one distinct word at a time, with exactly the whole text's ids.

For the families whose `CutRule` drops the space at a cut (SentencePiece BPE with its dummy
prefix; the LLaMA-2 `Prepend("▁")` layout), a text may be cut at *every* allowed space, not only
every ~32K characters: the ids of the whole text are the concatenation of the ids of its "units",
the stretches between allowed cuts, each encoded alone (see `sentencepiece_plan`). A book of
200,000 words has only ~25,000 distinct units, so each is encoded once and the ids are gathered
back in text order; that is what a BPE word cache does, with the units the cut rule proves safe.

Distinct units are not encoded one call each (a call per short string costs more than its
tokens): the "simple" ones (no space or space mark inside, no whitespace at either end) are
joined by single spaces into texts of about `piece_chars` characters, encoded in one parallel
batch, and split back where a token starts with the space mark: each simple unit holds exactly
one mark (the one its dropped space becomes), and no vocabulary token holds the mark after
another character, so exactly one token of each unit starts with it, its first. A joined text
whose count of such tokens differs from its count of units (never seen; a guard) is encoded unit
by unit instead. The few other units (a run of spaces, a literal mark, the text's edges) are
encoded one each.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

# Characters per block of a text: distinct units are found per block, which bounds the memory of
# the unit arrays (8 bytes of code per position, the distinct units' UTF-8) for any text length.
BLOCK_CHARS = 1 << 21

EncodeBatch = Callable[[list[str]], list[list[int]]]


def _spans(lengths: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Indices of the elements of spans (`starts[i]`, `lengths[i]` long), the spans end to end."""
    total = int(lengths.sum())
    ends = np.cumsum(lengths)
    return np.repeat(starts - (ends - lengths), lengths) + np.arange(total, dtype=np.int64)


@dataclass(frozen=True)
class Units:
    """A text as its units: `codes[i]` is the distinct unit at position i. The distinct units are
    UTF-8 bytes end to end (`data`, unit c at `offsets[c]:offsets[c + 1]`), so no Python string is
    made per unit; some are used nowhere (segments that only occur joined into a longer unit).
    Per distinct unit: `simple` (see `encode_distinct`) and `chars` (its length in characters)."""

    codes: np.ndarray
    data: np.ndarray
    offsets: np.ndarray
    simple: np.ndarray
    chars: np.ndarray

    def __len__(self) -> int:
        return self.simple.size

    def text(self, c: int) -> str:
        return self.data[self.offsets[c] : self.offsets[c + 1]].tobytes().decode("utf-8")

    def joined(self, units: np.ndarray) -> str:
        """The units' texts joined by single spaces, gathered from `data` in one pass."""
        lengths = self.offsets[units + 1] - self.offsets[units]
        index = _spans(lengths + 1, self.offsets[units])
        # Each unit's span runs one byte past it (clipped at the end): that byte becomes the space.
        out = self.data[np.minimum(index, max(self.data.size - 1, 0))] if self.data.size else np.zeros(index.size, np.uint8)
        out[np.cumsum(lengths + 1) - 1] = 32
        return out[:-1].tobytes().decode("utf-8")


# `str.isspace` of every code point up to U+3000, the last whitespace one (none above is).
_WHITESPACE = np.array([chr(cp).isspace() for cp in range(0x3001)], dtype=bool)


def _code_points(data: np.ndarray, at: np.ndarray) -> np.ndarray:
    """The code point of the UTF-8 character starting at each index `at` of valid UTF-8 `data`."""
    padded = np.concatenate((data, np.zeros(3, dtype=np.uint8))).astype(np.uint32)
    b0, b1, b2, b3 = (padded[at + k] for k in range(4))
    return np.select(
        [b0 < 0x80, b0 < 0xE0, b0 < 0xF0],
        [b0, (b0 & 0x1F) << 6 | (b1 & 0x3F), (b0 & 0x0F) << 12 | (b1 & 0x3F) << 6 | (b2 & 0x3F)],
        (b0 & 0x07) << 18 | (b1 & 0x3F) << 12 | (b2 & 0x3F) << 6 | (b3 & 0x3F),
    )


def _is_space(code_points: np.ndarray) -> np.ndarray:
    return (code_points <= 0x3000) & _WHITESPACE[np.minimum(code_points, 0x3000)]


def split_units(text: str, marker: str) -> Units:
    """The text cut at every space a `CutRule(drop_space=True, marker=marker)` allows (a single
    space with a non-space on both sides, the left one not `marker`), the spaces dropped.

    Arrow splits the text at every space and numbers the segments in C; whether a cut is allowed
    depends only on the first and last characters of its two neighbouring segments, read from the
    distinct segments' UTF-8 bytes in numpy and gathered per position. The few runs of segments
    across a refused cut (runs of spaces, a space next to a line break) are joined back into units
    of their own. Raises UnicodeEncodeError for a text that is not UTF-8 (a lone surrogate)."""
    import pyarrow as pa  # here, not at the top: the CLI imports curation.tokenize for loading only
    import pyarrow.compute as pc

    column = pa.array([text], type=pa.large_string())
    encoded = pc.dictionary_encode(pc.split_pattern(column, pattern=" ").flatten())
    codes = encoded.indices.to_numpy().astype(np.int64)
    segments = encoded.dictionary
    n = len(segments)
    offsets = np.frombuffer(segments.buffers()[1], dtype=np.int64)[segments.offset : segments.offset + n + 1]
    body = segments.buffers()[2]
    data = np.frombuffer(body, dtype=np.uint8)[offsets[0] : offsets[-1]] if body is not None else np.zeros(0, np.uint8)
    offsets = offsets - offsets[0]
    nonempty = offsets[1:] > offsets[:-1]
    if data.size:
        first_at = np.where(nonempty, offsets[:-1], 0)
        last_at = np.where(nonempty, offsets[1:] - 1, 0)
        for _ in range(3):  # back from a unit's last byte over continuation bytes to its last character
            last_at = np.where(nonempty & (data[last_at] & 0xC0 == 0x80), last_at - 1, last_at)
        first, last = _code_points(data, first_at), _code_points(data, last_at)
    else:
        first = last = np.zeros(n, dtype=np.uint32)
    starts_ok = nonempty & ~_is_space(first)
    ends_ok = nonempty & ~_is_space(last) & (last != ord(marker))
    simple = starts_ok & ends_ok
    if marker in text:
        simple &= ~pc.match_substring(segments, marker).to_numpy(zero_copy_only=False)
    chars = pc.utf8_length(segments).to_numpy().astype(np.int64)
    units = Units(codes, data, offsets, simple, chars)
    allowed = ends_ok[codes[:-1]] & starts_ok[codes[1:]]
    if allowed.all():
        return units
    # Units start after each allowed cut; a unit of several segments is a new distinct unit
    # (it holds a space, so it is never simple and never equal to a segment).
    starts = np.flatnonzero(np.concatenate(([True], allowed)))
    sizes = np.diff(np.append(starts, codes.size))
    unit_codes = codes[starts]
    joined: dict[bytes, int] = {}
    raw, bounds = data.tobytes(), offsets.tolist()
    for k in np.flatnonzero(sizes > 1).tolist():
        a = int(starts[k])
        unit = b" ".join([raw[bounds[c] : bounds[c + 1]] for c in codes[a : a + int(sizes[k])].tolist()])
        unit_codes[k] = joined.setdefault(unit, n + len(joined))
    extra = np.cumsum([0, *map(len, joined)], dtype=np.int64)
    return Units(
        unit_codes,
        np.concatenate((data, np.frombuffer(b"".join(joined), dtype=np.uint8))),
        np.concatenate((offsets, offsets[-1] + extra[1:])),
        np.concatenate((simple, np.zeros(len(joined), dtype=bool))),
        np.concatenate((chars, np.fromiter((len(u.decode("utf-8")) for u in joined), dtype=np.int64, count=len(joined)))),
    )


def _joined_batches(lengths: np.ndarray, piece_chars: int) -> list[tuple[int, int]]:
    """(start, stop) ranges of units of these `lengths` whose space-joined texts are about
    `piece_chars` characters long."""
    ends = np.cumsum(lengths + 1)
    ranges, start = [], 0
    while start < lengths.size:
        stop = int(np.searchsorted(ends, (ends[start - 1] if start else 0) + piece_chars, side="left")) + 1
        stop = min(max(stop, start + 1), lengths.size)
        ranges.append((start, stop))
        start = stop
    return ranges


@dataclass(frozen=True)
class UnitIds:
    """Ids of distinct units: unit c's are `flat[offsets[c] : offsets[c] + lengths[c]]`."""

    flat: np.ndarray
    offsets: np.ndarray
    lengths: np.ndarray


def encode_distinct(units: Units, mark_starts: np.ndarray, encode: EncodeBatch, piece_chars: int) -> UnitIds:
    """The ids of each used unit encoded alone (int32), as `encode([unit])` gives them, in few
    calls: simple units joined into texts of ~`piece_chars` characters and split back at the
    tokens that start with the space mark (`mark_starts[id]`), every other unit encoded alone."""
    n = len(units)
    used = np.bincount(units.codes, minlength=n) > 0
    simple = np.flatnonzero(used & units.simple)
    alone = np.flatnonzero(used & ~units.simple).tolist()
    ranges = _joined_batches(units.chars[simple], piece_chars)
    texts = [units.joined(simple[a:b]) for a, b in ranges]
    offsets = np.zeros(n, dtype=np.int64)
    lengths = np.zeros(n, dtype=np.int64)
    parts: list[np.ndarray] = []
    base = 0
    for (a, b), ids in zip(ranges, encode(texts) if texts else []):
        ids = np.asarray(ids, dtype=np.int32)
        starts = np.flatnonzero(mark_starts[ids])
        if starts.size != b - a or (starts.size and starts[0] != 0):
            alone.extend(simple[a:b].tolist())  # the guard: never expected (see the module docstring)
            continue
        offsets[simple[a:b]] = base + starts
        lengths[simple[a:b]] = np.diff(np.append(starts, ids.size))
        parts.append(ids)
        base += ids.size
    alone.sort()
    for c, ids in zip(alone, encode([units.text(c) for c in alone]) if alone else []):
        offsets[c], lengths[c] = base, len(ids)
        parts.append(np.asarray(ids, dtype=np.int32))
        base += len(ids)
    flat = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)
    return UnitIds(flat, offsets, lengths)


def gather(codes: np.ndarray, encoded: UnitIds) -> np.ndarray:
    """The ids of the units at `codes`, concatenated in order (int32)."""
    return encoded.flat[_spans(encoded.lengths[codes], encoded.offsets[codes])]


def encode_by_units(text: str, marker: str, mark_starts: np.ndarray, encode: EncodeBatch, piece_chars: int) -> np.ndarray:
    """The ids of one unit-cut stretch of text (a block), each distinct unit encoded once."""
    units = split_units(text, marker)
    return gather(units.codes, encode_distinct(units, mark_starts, encode, piece_chars))
