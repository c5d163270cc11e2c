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


def is_simple(unit: str, marker: str) -> bool:
    """A unit whose encoding holds exactly one token starting with `marker` (its first)."""
    return bool(unit) and " " not in unit and marker not in unit and not unit[0].isspace() and not unit[-1].isspace()


def _segments(text: str) -> tuple[np.ndarray, list[str]]:
    """`text.split(" ")` numbered: (the distinct segment at each position, the distinct segments).
    Arrow splits and numbers them in C, so only distinct segments become Python strings; a text
    Arrow cannot hold (a lone surrogate is not UTF-8) is split by Python."""
    import pyarrow as pa  # here, not at the top: the CLI imports curation.tokenize for loading only
    import pyarrow.compute as pc

    try:
        column = pa.array([text], type=pa.large_string())
    except UnicodeEncodeError:
        return _factorize(text.split(" "))
    encoded = pc.dictionary_encode(pc.split_pattern(column, pattern=" ").flatten())
    return encoded.indices.to_numpy(), encoded.dictionary.to_pylist()


def split_units(text: str, marker: str) -> Units:
    """The text cut at every space a `CutRule(drop_space=True, marker=marker)` allows (a single
    space with a non-space on both sides, the left one not `marker`), the spaces dropped.

    The text is split at every space and the segments numbered (`_segments`); whether a cut is
    allowed depends only on the ends of its two neighbouring segments, so it is decided once per
    distinct segment and gathered in numpy. The few runs of segments across a refused cut (runs
    of spaces, a space next to a line break) are joined back into units of their own."""
    codes, distinct = _segments(text)
    n = len(distinct)
    starts_ok = np.fromiter((bool(s) and not s[0].isspace() for s in distinct), dtype=bool, count=n)
    ends_ok = np.fromiter((bool(s) and not s[-1].isspace() and s[-1] != marker for s in distinct), dtype=bool, count=n)
    simple = starts_ok & ends_ok
    if marker in text:
        simple &= np.fromiter((marker not in s for s in distinct), dtype=bool, count=n)
    chars = np.fromiter(map(len, distinct), dtype=np.int64, count=n)
    allowed = ends_ok[codes[:-1]] & starts_ok[codes[1:]]
    if allowed.all():
        return Units(codes, distinct, simple, chars)
    # Units start after each allowed cut; a unit of several segments is a new distinct unit
    # (it holds a space, so it is never simple and never equal to a segment).
    starts = np.flatnonzero(np.concatenate(([True], allowed)))
    sizes = np.diff(np.append(starts, codes.size))
    unit_codes = codes[starts].astype(np.int64)
    joined: dict[str, int] = {}
    for k in np.flatnonzero(sizes > 1).tolist():
        a = int(starts[k])
        unit = " ".join([distinct[c] for c in codes[a : a + int(sizes[k])].tolist()])
        unit_codes[k] = joined.setdefault(unit, n + len(joined))
    return Units(
        unit_codes,
        distinct + list(joined),
        np.concatenate((simple, np.zeros(len(joined), dtype=bool))),
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
