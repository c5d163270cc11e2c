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
# the unit lists (~8 bytes of codes and one string object per distinct unit) for any text length.
BLOCK_CHARS = 1 << 21

EncodeBatch = Callable[[list[str]], list[list[int]]]


@dataclass(frozen=True)
class Units:
    """A text as its units: `codes[i]` is the distinct unit at position i; `distinct` the units
    (some may be used nowhere: segments that only occur joined into a longer unit); per distinct
    unit, `simple` (see `encode_distinct`) and `chars` (its length)."""

    codes: np.ndarray
    distinct: list[str]
    simple: np.ndarray
    chars: np.ndarray


def _factorize(items: list[str]) -> tuple[np.ndarray, list[str]]:
    import pandas as pd  # here, not at the top: the CLI imports curation.tokenize for loading only

    codes, distinct = pd.factorize(np.asarray(items, dtype=object), sort=False)
    return codes, list(distinct)


# Code point -> `str.isspace` (the whitespace `CutRule.allows` means), for every code point up to
# the last whitespace one (U+3000); none above it is whitespace.
_WHITESPACE = np.array([chr(cp).isspace() for cp in range(0x3001)], dtype=bool)


def _is_space(code_points: np.ndarray) -> np.ndarray:
    return _WHITESPACE[np.minimum(code_points, 0x3000)] & (code_points <= 0x3000)


def is_simple(unit: str, marker: str) -> bool:
    """A unit whose encoding holds exactly one token starting with `marker` (its first)."""
    return bool(unit) and " " not in unit and marker not in unit and not unit[0].isspace() and not unit[-1].isspace()


def split_units(text: str, marker: str) -> Units:
    """The text cut at every space a `CutRule(drop_space=True, marker=marker)` allows (a single
    space with a non-space on both sides, the left one not `marker`), the spaces dropped.

    `str.split(" ")` cuts at every space and the segments are numbered in C; whether a cut is
    allowed depends on the characters around its space, read from the text's code points in
    numpy. The few runs of segments across a refused cut (runs of spaces, a space next to a line
    break) are joined back into units of their own."""
    segments = text.split(" ")
    if len(segments) == 1:
        return Units(np.zeros(1, dtype=np.intp), segments, np.array([is_simple(text, marker)]), np.array([len(text)]))
    points = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    spaces = np.flatnonzero(points == 32)
    seg_start = np.concatenate(([0], spaces + 1))
    seg_end = np.concatenate((spaces, [points.size]))
    nonempty = seg_end > seg_start
    first = points[np.minimum(seg_start, points.size - 1)]
    last = points[np.maximum(seg_end - 1, 0)]
    starts_ok = nonempty & ~_is_space(first)
    ends_ok = nonempty & ~_is_space(last) & (last != ord(marker))
    simple = starts_ok & ends_ok
    if marker in text:
        marks = np.flatnonzero(points == ord(marker))
        simple[np.searchsorted(spaces, marks)] = False  # the segment holding each mark
    codes, distinct = _factorize(segments)
    n = len(distinct)
    simple_distinct = np.zeros(n, dtype=bool)
    simple_distinct[codes] = simple  # a distinct segment has one string, so one value
    chars = np.zeros(n, dtype=np.int64)
    chars[codes] = seg_end - seg_start
    allowed = ends_ok[:-1] & starts_ok[1:]
    if allowed.all():
        return Units(codes, distinct, simple_distinct, chars)
    # Units start after each allowed cut; a unit of several segments is a new distinct unit
    # (it holds a space, so it is never simple and never equal to a segment).
    starts = np.flatnonzero(np.concatenate(([True], allowed)))
    sizes = np.diff(np.append(starts, len(segments)))
    unit_codes = codes[starts]
    joined: dict[str, int] = {}
    for k in np.flatnonzero(sizes > 1).tolist():
        a = int(starts[k])
        unit = " ".join(segments[a : a + int(sizes[k])])
        unit_codes[k] = joined.setdefault(unit, n + len(joined))
    return Units(
        unit_codes,
        distinct + list(joined),
        np.concatenate((simple_distinct, np.zeros(len(joined), dtype=bool))),
        np.concatenate((chars, np.fromiter(map(len, joined), dtype=np.int64, count=len(joined)))),
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
    n = len(units.distinct)
    used = np.bincount(units.codes, minlength=n) > 0
    simple = np.flatnonzero(used & units.simple)
    alone = np.flatnonzero(used & ~units.simple).tolist()
    ranges = _joined_batches(units.chars[simple], piece_chars)
    texts = [" ".join([units.distinct[c] for c in simple[a:b].tolist()]) for a, b in ranges]
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
    for c, ids in zip(alone, encode([units.distinct[c] for c in alone]) if alone else []):
        offsets[c], lengths[c] = base, len(ids)
        parts.append(np.asarray(ids, dtype=np.int32))
        base += len(ids)
    flat = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)
    return UnitIds(flat, offsets, lengths)


def gather(codes: np.ndarray, encoded: UnitIds) -> np.ndarray:
    """The ids of the units at `codes`, concatenated in order (int32)."""
    per_position = encoded.lengths[codes]
    total = int(per_position.sum())
    out_offsets = np.zeros(codes.size, dtype=np.int64)
    np.cumsum(per_position[:-1], out=out_offsets[1:])
    index = np.repeat(encoded.offsets[codes] - out_offsets, per_position) + np.arange(total, dtype=np.int64)
    return encoded.flat[index]


def encode_by_units(text: str, marker: str, mark_starts: np.ndarray, encode: EncodeBatch, piece_chars: int) -> np.ndarray:
    """The ids of one unit-cut stretch of text (a block), each distinct unit encoded once."""
    units = split_units(text, marker)
    return gather(units.codes, encode_distinct(units, mark_starts, encode, piece_chars))
