"""The packing steps' memory is bounded, whatever the corpus: `PackGroup` plans a group on segment
references alone (no tokens), and `WriteShard` holds one shard's segments once next to the shard's
own columns. Measured with tracemalloc (numpy reports its buffers to it) while groups and shards
are fed one after another, as a runner feeds a DoFn; the controls show that the same measurement
fails a step that keeps what it was given."""

from __future__ import annotations

import tracemalloc

import numpy as np

from curation.packing import Placement, PositionMode, SegmentRef, StageRef, StageSegment
from curation.stages import Stage
from pipelines.packing import GROUP_EVENTS, GROUP_ROWS, PackGroup, WriteShard

L = 32_768
GROUP_TOKENS = 1 << 21  # 2M tokens per packing group: 4 MiB as uint16 transit ids, if it held them
ROWS_PER_SHARD = 16
SHARD_COLUMN_BYTES = ROWS_PER_SHARD * L * 16  # input_ids, segment_ids, positions (int32), loss_mask (float32)
SLACK = 1 << 20


def _group_refs(group: int):
    """One group's references, made one by one as the runner decodes a group's values: windows of
    L/8..L tokens, GROUP_TOKENS in all."""
    rng = np.random.default_rng(group)
    made = i = 0
    while made < GROUP_TOKENS:
        n = int(min(rng.integers(L // 8, L + 1), GROUP_TOKENS - made))
        doc = f"g{group}-d{i}"
        yield StageRef("s", SegmentRef(f"{doc}@0", doc, 0, n), doc)
        made += n
        i += 1


def _shard_values(shard: int):
    """One shard's (place, segment) values: ROWS_PER_SHARD full rows of two segments each."""
    for row in range(ROWS_PER_SHARD):
        for slot, (offset, n) in enumerate([(0, L // 4), (L // 4, L - L // 4)]):
            doc = f"sh{shard}-r{row}-{slot}"
            yield Placement(row, slot, offset), StageSegment("s", SegmentRef(f"{doc}@0", doc, 0, n), doc, np.full(n, 7, np.int32))


def _peaks(process, keyed_inputs) -> tuple[list[int], int]:
    """Feed each keyed input in turn to `process`, dropping every output; per input, the traced
    peak above what was allocated before the first. Also returns how many outputs there were."""
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        peaks, outputs = [], 0
        for keyed in keyed_inputs:
            tracemalloc.reset_peak()
            for _ in process(keyed):
                outputs += 1
            peaks.append(tracemalloc.get_traced_memory()[1] - start)
    finally:
        tracemalloc.stop()
    return peaks, outputs


def _pack_group():
    return PackGroup([Stage("s", L)], seed=0).process


def _groups(count: int):
    return ((("s", g), _group_refs(g)) for g in range(count))


def test_planning_a_group_holds_no_tokens():
    small, planned = _peaks(_pack_group(), _groups(2))
    large, _ = _peaks(_pack_group(), _groups(8))
    assert planned >= 2 * GROUP_TOKENS // L  # every group was really planned: a place per segment
    # ~100 references of a few hundred bytes each: far below the group's tokens even as uint16.
    assert max(small + large) < GROUP_TOKENS // 16, [p / GROUP_TOKENS for p in small + large]
    assert max(large) <= 1.25 * max(small) + 4096, (small, large)  # flat in the number of groups


def test_the_measurement_fails_a_planner_that_keeps_groups():
    held = []

    def keeps_groups(keyed):
        key, values = keyed
        values = list(values)
        held.append(values)
        yield from _pack_group()((key, values))

    small, _ = _peaks(keeps_groups, _groups(2))
    large, _ = _peaks(keeps_groups, _groups(8))
    assert max(large) > 2 * max(small)  # what the bound above refuses


def _write_shard(tmp_path):
    return WriteShard(str(tmp_path), [Stage("s", L)], {"s": {"longctx.stage": "s"}}, PositionMode.DOCUMENT).process


def _shards(count: int):
    return ((("s", k, count), _shard_values(k)) for k in range(count))


def test_writing_holds_one_shard_whatever_the_number_of_shards(tmp_path):
    small, written = _peaks(_write_shard(tmp_path / "a"), _shards(2))
    large, _ = _peaks(_write_shard(tmp_path / "b"), _shards(6))
    assert written == 2 and len(list((tmp_path / "b" / "s").iterdir())) == 6
    # The shard's columns, its IPC stream (the same bytes again) and its segments once (uint16).
    bound = 2 * SHARD_COLUMN_BYTES + ROWS_PER_SHARD * L * 2 + SLACK
    assert max(small + large) <= bound, [p / SHARD_COLUMN_BYTES for p in small + large]
    assert max(small + large) >= SHARD_COLUMN_BYTES  # the measurement sees the shard at all
    assert max(large) <= max(small) + SLACK, (small, large)


def test_the_measurement_fails_a_writer_that_keeps_shards(tmp_path):
    held = []
    write = _write_shard(tmp_path)

    def keeps_shards(keyed):
        key, values = keyed
        values = list(values)
        held.append(values)
        yield from write((key, values))

    peaks, _ = _peaks(keeps_shards, _shards(6))
    assert peaks[-1] > peaks[0] + 4 * ROWS_PER_SHARD * L * 2  # would fail the bound above


def test_group_outputs_place_every_segment_and_count_the_group():
    outs = list(_pack_group()((("s", 3), _group_refs(3))))
    [event] = [o.value for o in outs if getattr(o, "tag", None) == GROUP_EVENTS]
    assert event == {"stage.s.packing_groups": 1, "max.stage.s.group_tokens": GROUP_TOKENS}
    [(key, rows)] = [o.value for o in outs if getattr(o, "tag", None) == GROUP_ROWS]
    places = [o for o in outs if not hasattr(o, "tag")]
    assert key == ("s", 3) and {k for k, _ in places} == {("s", 3)}
    assert len({place[3] for _, place in places}) == len(places) == len(list(_group_refs(3)))
    assert {place[0] for _, place in places} == set(range(rows))  # rows 0..rows-1, each holding a segment
