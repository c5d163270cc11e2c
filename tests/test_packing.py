"""Packing invariants on arbitrary inputs (hypothesis) and the row arrays built from a plan."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from curation.packing import (
    Placement,
    PositionMode,
    RowArrays,
    SegmentRef,
    StageSegment,
    best_fit_decreasing,
    assemble_rows,
    pack_segments,
    packing_efficiency,
    packing_group,
    packing_groups,
    placements,
    plan_rows,
    rows_per_shard,
    transit_ids,
)
from curation.stages import cut_windows


def _refs(lengths: list[int]) -> list[SegmentRef]:
    return [SegmentRef(key=f"doc{i}@0", doc_id=f"doc{i}", start=0, length=n) for i, n in enumerate(lengths)]


def _build(rows: list[list[SegmentRef]], length: int, tokens: dict[str, np.ndarray], mode=PositionMode.DOCUMENT) -> RowArrays:
    arrays = RowArrays.empty(len(rows), length)
    for key, p in placements(rows).items():
        seg = next(s for s in rows[p.row] if s.key == key)
        arrays.place(p.row, p.index, p.offset, tokens[key], seg.doc_id, seg.start, mode)
    return arrays.finish(mode)


@settings(max_examples=200, deadline=None)
@given(length=st.integers(1, 300), data=st.data())
def test_every_segment_lands_exactly_once_in_order(length, data):
    lengths = data.draw(st.lists(st.integers(1, length), min_size=0, max_size=60))
    refs = _refs(lengths)
    rng = np.random.default_rng(len(lengths))
    tokens = {r.key: rng.integers(3, 30000, r.length, dtype=np.int32) for r in refs}
    rows = plan_rows(refs, length, seed=7)
    arrays = _build(rows, length, tokens)

    assert arrays.input_ids.shape == (len(rows), length)  # every row exactly L tokens
    seen = []
    for r in range(len(rows)):
        seg = arrays.segment_ids[r]
        used = seg > 0
        # Segments are contiguous, numbered 1..k from the left, and padding only follows them.
        k = int(seg.max())
        assert list(np.unique(seg[used])) == list(range(1, k + 1))
        assert np.all(np.diff(seg[used]) >= 0)
        assert used[: used.sum()].all()
        for s in range(1, k + 1):
            span = seg == s
            doc_id = arrays.doc_ids[r][s - 1]
            key = f"{doc_id}@0"
            # Each document's tokens appear in order, with positions restarting at 0.
            assert np.array_equal(arrays.input_ids[r][span], tokens[key])
            assert np.array_equal(arrays.positions[r][span], np.arange(span.sum()))
            seen.append(key)
        assert np.all(arrays.loss_mask[r][~used] == 0) and np.all(arrays.loss_mask[r][used] == 1)
    assert sorted(seen) == sorted(tokens)  # exactly once
    # The efficiency reported equals the one measured on the arrays.
    measured = float((arrays.segment_ids > 0).sum()) / arrays.segment_ids.size if rows else 0.0
    assert abs(packing_efficiency(sum(lengths), len(rows), length) - measured) < 1e-12


@settings(max_examples=200, deadline=None)
@given(length=st.integers(1, 500), lengths=st.lists(st.integers(1, 500), max_size=80))
def test_no_two_rows_could_be_merged(length, lengths):
    lengths = [min(n, length) for n in lengths]
    bins = best_fit_decreasing(_refs(lengths), length)
    fills = sorted(sum(s.length for s in b) for b in bins)
    assert all(f <= length for f in fills)
    # A row is opened only when the segment fits no open row, so any two rows overfill one.
    assert len(fills) < 2 or fills[0] + fills[1] > length


def test_order_of_arrival_does_not_change_the_plan():
    refs = _refs([700, 300, 1000, 5, 999, 1, 512, 512, 333])
    a = plan_rows(refs, 1024, seed=3)
    b = plan_rows(list(reversed(refs)), 1024, seed=3)
    assert a == b
    assert plan_rows(refs, 1024, seed=4) != a or len(a) < 2


def test_row_positions_mode_runs_across_the_row():
    refs = _refs([3, 4])
    tokens = {r.key: np.full(r.length, 9, np.int32) for r in refs}
    arrays = _build(plan_rows(refs, 10), 10, tokens, PositionMode.ROW)
    assert arrays.positions.tolist() == [list(range(10))]
    assert arrays.segment_ids.tolist() == [[1, 1, 1, 2, 2, 2, 2, 0, 0, 0]]


def test_pack_segments_builds_rows_with_masks():
    segs = [
        StageSegment("s", SegmentRef(f"d{i}@0", f"d{i}", 0, n), f"d{i}", np.full(n, i + 3, np.int32),
                     loss_mask=np.linspace(0, 1, n, dtype=np.float32), vision_mask=np.ones(n, np.int32) * (i % 2))
        for i, n in enumerate([5, 3, 8, 2])
    ]
    merged = pack_segments(segs, 8, seed=0)
    assert merged.num_rows == 3 and merged.input_ids.shape == (3, 8) and merged.vision_mask is not None
    assert sorted(int((merged.segment_ids[r] > 0).sum()) for r in range(3)) == [2, 8, 8]
    for r in range(3):
        for k, doc in enumerate(merged.doc_ids[r], start=1):
            i = int(doc[1:])
            span = merged.segment_ids[r] == k
            assert np.all(merged.input_ids[r][span] == i + 3)
            np.testing.assert_allclose(merged.loss_mask[r][span], segs[i].loss_mask)
            assert np.all(merged.vision_mask[r][span] == i % 2)
    assert rows_per_shard(100, 100 * 16 * 4) == 4 and rows_per_shard(100, 10) == 1
    assert rows_per_shard(100, 100 * 20 * 4, with_vision=True) == 4


def test_assemble_rows_takes_segments_in_any_order_and_refuses_gaps():
    segs = [StageSegment("s", SegmentRef(f"d{i}@0", f"d{i}", 0, n), f"d{i}", np.arange(n) + 10 * i)
            for i, n in enumerate([4, 3, 5])]
    where = placements(plan_rows([s.ref for s in segs], 8, seed=1))
    placed = [(where[s.ref.key], s) for s in segs]
    first = assemble_rows(placed, 8)
    again = assemble_rows(list(reversed(placed)), 8)
    for name in ("input_ids", "segment_ids", "positions", "loss_mask"):
        np.testing.assert_array_equal(getattr(first, name), getattr(again, name))
    assert first.doc_ids == again.doc_ids and first.doc_starts == again.doc_starts
    lone = [(Placement(1, 0, 0), segs[0])]  # row 0 would be all padding: a routing bug, not a row
    with pytest.raises(ValueError, match="got no segment"):
        assemble_rows(lone, 8)
    with pytest.raises(ValueError, match="ends at token"):
        assemble_rows([(Placement(0, 0, 6), segs[0])], 8)


def test_packing_groups_are_stable_and_bounded():
    assert packing_groups(0, 100) == 1 and packing_groups(100, 100) == 1 and packing_groups(101, 100) == 2
    counts = np.bincount([packing_group(f"file#{i}", 8) for i in range(4000)], minlength=8)
    assert counts.min() > 350  # spread evenly
    assert packing_group("gs://b/x.jsonl#17", 8) == packing_group("gs://b/x.jsonl#17", 8)


@given(n=st.integers(1, 10_000), length=st.integers(1, 2000), min_tail=st.integers(0, 2000))
def test_cut_windows_covers_the_document(n, length, min_tail):
    windows, dropped = cut_windows(n, length, min_tail)
    assert sum(w.length for w in windows) + dropped == n
    assert all(0 < w.length <= length for w in windows)
    assert [w.start for w in windows] == [i * length for i in range(len(windows))]
    assert dropped == 0 or dropped < max(min_tail, 1)


def test_rows_without_masks_get_full_loss_and_no_vision_column():
    segs = [StageSegment("s", SegmentRef(f"d{i}@0", f"d{i}", 0, n), f"d{i}", np.arange(n, dtype=np.int32) + 1)
            for i, n in enumerate([6, 3])]
    full = pack_segments(segs, 10, mode=PositionMode.DOCUMENT)
    assert full.segment_ids.tolist() == [[1, 1, 1, 1, 1, 1, 2, 2, 2, 0]]
    assert full.positions.tolist() == [[0, 1, 2, 3, 4, 5, 0, 1, 2, 0]]
    assert full.loss_mask.tolist() == [[1.0] * 9 + [0.0]] and full.vision_mask is None


def test_segments_travel_as_uint16_when_every_id_fits_and_rows_come_out_int32():
    small = StageSegment("s", SegmentRef("a@0", "a", 0, 3), "a", np.array([0, 31999, 65535], np.int32))
    large = StageSegment("s", SegmentRef("b@0", "b", 0, 2), "b", np.array([5, 65536], np.int64))
    assert small.tokens.dtype == np.uint16 and small.tokens.tolist() == [0, 31999, 65535]
    assert large.tokens.dtype == np.int32 and large.tokens.tolist() == [5, 65536]
    assert transit_ids(np.array([], np.int32)).dtype == np.uint16
    negative = transit_ids(np.array([-1, 2], np.int32))  # not narrowed, so not wrapped around
    assert negative.dtype == np.int32 and negative.tolist() == [-1, 2]
    rows = pack_segments([small, large], 8)
    assert rows.input_ids.dtype == np.int32
    assert sorted(rows.input_ids[0][rows.segment_ids[0] > 0].tolist()) == [0, 5, 31999, 65535, 65536]
