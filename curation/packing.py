"""Best-fit-decreasing packing of document windows into fixed-length rows, and the row arrays.

Packing is planned on lengths alone (a few bytes per window), so one worker can plan a whole
stage; the tokens meet their row only when a shard is assembled.
"""

from __future__ import annotations

import bisect
import hashlib
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

import numpy as np


@dataclass(frozen=True, order=True)
class SegmentRef:
    """A window of a document, by reference: `key` is unique in the job (uid@start)."""

    key: str
    doc_id: str
    start: int
    length: int


@dataclass(frozen=True)
class Placement:
    """Where a segment lands: row `row` of the stage, as segment number `index` (0-based) at
    token `offset` of that row."""

    row: int
    index: int
    offset: int


def best_fit_decreasing(segments: list[SegmentRef], length: int) -> list[list[SegmentRef]]:
    """Pack segments (each <= length) into bins of capacity `length`: longest first, each into the
    fullest bin it still fits. Deterministic: ties are broken by key."""
    bins: list[list[SegmentRef]] = []
    free: list[tuple[int, int]] = []  # (free tokens, bin index), sorted
    for seg in sorted(segments, key=lambda s: (-s.length, s.key)):
        if seg.length > length or seg.length <= 0:
            raise ValueError(f"segment {seg.key} has {seg.length} tokens; rows hold 1..{length}")
        i = bisect.bisect_left(free, (seg.length, -1))
        if i < len(free):
            room, b = free.pop(i)
        else:
            room, b = length, len(bins)
            bins.append([])
        bins[b].append(seg)
        if room - seg.length > 0:
            bisect.insort(free, (room - seg.length, b))
    return bins


def _row_order_key(row: list[SegmentRef], seed: int) -> bytes:
    return hashlib.sha256(f"{seed}:{row[0].key}".encode()).digest()


def plan_rows(segments: list[SegmentRef], length: int, seed: int = 0) -> list[list[SegmentRef]]:
    """All rows of a stage, in a deterministic pseudo-random order (so consecutive rows mix
    documents) that depends only on the segments and the seed, never on arrival order."""
    rows = best_fit_decreasing(segments, length)
    for row in rows:
        row.sort(key=lambda s: s.key)
    rows.sort(key=lambda r: _row_order_key(r, seed))
    return rows


def placements(rows: list[list[SegmentRef]]) -> dict[str, Placement]:
    out = {}
    for r, row in enumerate(rows):
        offset = 0
        for i, seg in enumerate(row):
            out[seg.key] = Placement(r, i, offset)
            offset += seg.length
    return out


def packing_efficiency(tokens: int, rows: int, length: int) -> float:
    return tokens / (rows * length) if rows else 0.0


class PositionMode(str, Enum):
    DOCUMENT = "document"  # positions restart at 0 for every packed segment
    ROW = "row"  # positions run 0..L-1 across the row


@dataclass
class RowArrays:
    """The columns of `rows` packed rows of length L, filled segment by segment."""

    input_ids: np.ndarray
    segment_ids: np.ndarray
    positions: np.ndarray
    loss_mask: np.ndarray
    doc_ids: list[list[str]]
    doc_starts: list[list[int]]
    vision_mask: np.ndarray | None = None

    @classmethod
    def empty(cls, rows: int, length: int, with_vision: bool = False) -> "RowArrays":
        return cls(
            input_ids=np.zeros((rows, length), np.int32),
            segment_ids=np.zeros((rows, length), np.int32),
            positions=np.zeros((rows, length), np.int32),
            loss_mask=np.zeros((rows, length), np.float32),
            doc_ids=[[] for _ in range(rows)],
            doc_starts=[[] for _ in range(rows)],
            vision_mask=np.zeros((rows, length), np.int32) if with_vision else None,
        )

    @classmethod
    def concat(cls, parts: list["RowArrays"]) -> "RowArrays":
        stack = lambda name: np.concatenate([getattr(p, name) for p in parts])  # noqa: E731
        with_vision = any(p.vision_mask is not None for p in parts)
        if with_vision and any(p.vision_mask is None for p in parts):
            raise ValueError("cannot mix rows with and without a vision mask")
        return cls(
            input_ids=stack("input_ids"),
            segment_ids=stack("segment_ids"),
            positions=stack("positions"),
            loss_mask=stack("loss_mask"),
            doc_ids=[ids for p in parts for ids in p.doc_ids],
            doc_starts=[starts for p in parts for starts in p.doc_starts],
            vision_mask=stack("vision_mask") if with_vision else None,
        )

    @property
    def num_rows(self) -> int:
        return int(self.input_ids.shape[0])

    def place(
        self,
        row: int,
        index: int,
        offset: int,
        tokens: np.ndarray,
        doc_id: str,
        doc_start: int,
        mode: PositionMode = PositionMode.DOCUMENT,
        loss_mask: np.ndarray | None = None,
        vision_mask: np.ndarray | None = None,
    ) -> None:
        """Write one segment. Segments of a row may arrive in any order; `index` fixes its slot."""
        end = offset + len(tokens)
        self.input_ids[row, offset:end] = tokens
        self.segment_ids[row, offset:end] = index + 1
        self.positions[row, offset:end] = (
            np.arange(len(tokens)) if mode is PositionMode.DOCUMENT else np.arange(offset, end)
        )
        self.loss_mask[row, offset:end] = 1.0 if loss_mask is None else loss_mask
        if self.vision_mask is not None and vision_mask is not None:
            self.vision_mask[row, offset:end] = vision_mask
        ids, starts = self.doc_ids[row], self.doc_starts[row]
        while len(ids) <= index:
            ids.append("")
            starts.append(-1)
        ids[index], starts[index] = doc_id, doc_start

    def finish(self, mode: PositionMode = PositionMode.DOCUMENT) -> "RowArrays":
        """Padding keeps segment id 0 and loss 0; in row mode its positions continue the count."""
        if mode is PositionMode.ROW:
            self.positions[:] = np.arange(self.positions.shape[1], dtype=np.int32)
        return self


def transit_ids(tokens: np.ndarray) -> np.ndarray:
    """Token ids as they travel between workers: uint16 when every id fits (vocabularies of up to
    65,536 entries, such as LLaMA-2's and Mistral's 32,000), else int32. Every shuffle and
    materialised PCollection then moves half the bytes (RESULTS section 1, run 7); shards store
    int32 either way, so the bytes written do not change."""
    tokens = np.asarray(tokens)
    if tokens.dtype == np.uint16:
        return tokens
    if tokens.size == 0 or (int(tokens.min()) >= 0 and int(tokens.max()) <= 0xFFFF):
        return tokens.astype(np.uint16)
    return tokens.astype(np.int32, copy=False)


@dataclass(frozen=True)
class StageRef:
    """A window on its way to a row of `stage`, by reference: what packing plans with."""

    stage: str
    ref: SegmentRef
    doc_uid: str


@dataclass(frozen=True)
class StageSegment:
    """A window's tokens on its way to a row of `stage`. Books carry tokens only; QA adds a loss
    mask (answers only), video a vision mask. `tokens` is held in its transit dtype (`transit_ids`)."""

    stage: str
    ref: SegmentRef
    doc_uid: str
    tokens: np.ndarray
    loss_mask: np.ndarray | None = None
    vision_mask: np.ndarray | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "tokens", transit_ids(self.tokens))

    @property
    def stage_ref(self) -> StageRef:
        return StageRef(self.stage, self.ref, self.doc_uid)


def assemble_rows(placed: Iterable[tuple[Placement, StageSegment]], length: int,
                  mode: PositionMode = PositionMode.DOCUMENT) -> RowArrays:
    """The full columns of rows 0..R-1 of `length` tokens from their segments, each with where it
    lands (`Placement`: row, slot, token offset), in any order. Every row must hold a segment."""
    placed = list(placed)
    rows = 1 + max((p.row for p, _ in placed), default=-1)
    out = RowArrays.empty(rows, length, any(seg.vision_mask is not None for _, seg in placed))
    filled = np.zeros(rows, dtype=bool)
    for p, seg in placed:
        n = seg.ref.length
        if len(seg.tokens) != n:
            raise ValueError(f"segment {seg.ref.key} has {len(seg.tokens)} tokens, its ref says {n}")
        if p.offset + n > length:
            raise ValueError(f"segment {seg.ref.key} ends at token {p.offset + n} of a {length}-token row")
        out.place(p.row, p.index, p.offset, seg.tokens, seg.ref.doc_id, seg.ref.start, mode, seg.loss_mask, seg.vision_mask)
        filled[p.row] = True
    if not filled.all():
        raise ValueError(f"rows {np.flatnonzero(~filled).tolist()} of {rows} got no segment")
    return out.finish(mode)


def pack_segments(segments: Iterable[StageSegment], length: int, seed: int = 0,
                  mode: PositionMode = PositionMode.DOCUMENT) -> RowArrays:
    """Segments packed into rows in one call (`plan_rows`, `placements`, `assemble_rows`): the rows
    the pipeline writes for a stage packed as one group, in the same order, for callers that hold
    every segment (tests, small examples)."""
    by_key: dict[str, StageSegment] = {}
    for seg in segments:
        if seg.ref.key in by_key:
            raise ValueError(f"segment key {seg.ref.key} is not unique")
        by_key[seg.ref.key] = seg
    where = placements(plan_rows([seg.ref for seg in by_key.values()], length, seed))
    return assemble_rows(((where[key], seg) for key, seg in by_key.items()), length, mode)


def rows_per_shard(length: int, target_bytes: int, with_vision: bool = False) -> int:
    """Rows of `length` tokens that make a shard of about `target_bytes` (4 or 5 int32/float32 columns)."""
    bytes_per_row = length * (4 * 4 + (4 if with_vision else 0))
    return max(1, target_bytes // bytes_per_row)


def packing_groups(stage_tokens: int, group_tokens: int) -> int:
    """How many packing groups a stage is split into so that none holds more than ~group_tokens."""
    return max(1, -(-stage_tokens // max(group_tokens, 1)))


def packing_group(doc_uid: str, groups: int) -> int:
    """A document's packing group: a stable hash, so all its windows land together on any runner."""
    return zlib.crc32(doc_uid.encode()) % groups
