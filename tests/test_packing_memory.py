"""The packing step's memory is bounded per key group: `PackGroup` holds one group's tokens once
(plus a row), whatever the number of groups before it. Measured with tracemalloc (numpy reports
its buffers to it) while groups are fed one after another, as a runner feeds a DoFn; the controls
show that the same measurement fails a packer that keeps groups, or all of a group's rows."""

from __future__ import annotations

import tracemalloc

import numpy as np

from curation.packing import SegmentRef, StageSegment, pack_segments
from curation.stages import Stage
from pipelines.packing import GROUP_EVENTS, PackGroup

L = 32_768
GROUP_TOKENS = 1 << 21  # 2M tokens: 4 MiB per group, as segments carry them (uint16: `transit_ids`)
GROUP_BYTES = GROUP_TOKENS * 2
SLACK = 4 * L * 4  # a few rows' worth: the row being built, its masks, the planner's lists


def _group_values(group: int):
    """One group's segments, made one by one as the runner decodes a group's values: windows of
    L/8..L tokens, GROUP_TOKENS in all."""
    rng = np.random.default_rng(group)
    made = i = 0
    while made < GROUP_TOKENS:
        n = int(min(rng.integers(L // 8, L + 1), GROUP_TOKENS - made))
        doc = f"g{group}-d{i}"
        yield StageSegment("s", SegmentRef(f"{doc}@0", doc, 0, n), doc, np.full(n, 7, np.int32))
        made += n
        i += 1


def _peaks(process, groups: int) -> list[int]:
    """Feed `groups` groups in turn to `process`, dropping every output; for each group, the
    traced peak above what was allocated before the first group."""
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        peaks = []
        rows = 0
        for g in range(groups):
            tracemalloc.reset_peak()
            for out in process((("s", g), _group_values(g))):
                rows += not hasattr(out, "tag")
            peaks.append(tracemalloc.get_traced_memory()[1] - start)
    finally:
        tracemalloc.stop()
    assert rows >= groups * GROUP_TOKENS // L  # every group was really packed
    return peaks


def _pack_group():
    return PackGroup([Stage("s", L)], seed=0).process


def test_packing_holds_one_group_once_whatever_the_number_of_groups():
    small, large = _peaks(_pack_group(), 2), _peaks(_pack_group(), 8)
    # One group's tokens once (not twice: segments plus all their rows), plus a few rows.
    assert max(small + large) <= 1.5 * GROUP_BYTES + SLACK, [p / GROUP_BYTES for p in small + large]
    assert max(small + large) >= GROUP_BYTES  # the measurement sees the group's tokens at all
    # Four times the groups before it: the same peak.
    assert max(large) <= max(small) + SLACK, (small, large)


def test_the_measurement_fails_a_packer_that_keeps_groups():
    held = []

    def keeps_groups(keyed):
        key, values = keyed
        values = list(values)
        held.append(values)
        yield from _pack_group()((key, values))

    peaks = _peaks(keeps_groups, 4)
    assert peaks[-1] > 3.5 * GROUP_BYTES  # would fail both checks above


def test_the_measurement_fails_a_packer_that_builds_all_rows_first():
    def all_rows_first(keyed):
        (stage, group), values = keyed
        rows = pack_segments(list(values), L)
        for index, row in enumerate(rows):
            yield (stage, group, index), row

    peaks = _peaks(all_rows_first, 2)
    assert max(peaks) > 1.5 * GROUP_BYTES + SLACK  # the group's tokens twice: fails the bound above


def test_group_event_counts_the_group_tokens():
    outs = list(_pack_group()((("s", 3), _group_values(3))))
    [event] = [o.value for o in outs if getattr(o, "tag", None) == GROUP_EVENTS]
    assert event == {"stage.s.packing_groups": 1, "max.stage.s.group_tokens": GROUP_TOKENS}
    rows = [o for o in outs if not hasattr(o, "tag")]
    assert [key for key, _ in rows] == [("s", 3, i) for i in range(len(rows))]
    assert sum(row.num_tokens for _, row in rows) == GROUP_TOKENS
