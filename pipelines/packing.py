"""Segments -> packed rows -> shards, shared by the book, QA and video pipelines.

Rows are planned on segment references alone, and each segment's tokens move once, to their shard:

    refs  -> stage totals -> packing groups (stable hash of the document, as many as keep each group
             under `group_tokens`) -> best-fit-decreasing per group -> each segment's row and slot
             -> global row index (from the groups' row counts) -> its shard and row in the shard
    segments keyed by (stage, segment key) + those places -> CoGroupByKey -> grouped by shard -> write

Only references and counts meet in the side inputs, so the token arrays are never materialised
for one; they cross two shuffles (the join and the shard grouping) instead of four. Every step
is deterministic, so the shards are the same bytes on any runner and any number of workers.
"""

from __future__ import annotations

import logging

import apache_beam as beam
from apache_beam.metrics import Metrics

from curation.events import StageCount, max_event, stage_event
from curation.packing import (
    Placement,
    PositionMode,
    StageRef,
    assemble_rows,
    packing_group,
    packing_groups,
    placements,
    plan_rows,
    rows_per_shard,
)
from curation.progress import shard_line
from curation.shards import write_shard
from curation.stages import Stage
from pipelines.accounting import NAMESPACE

log = logging.getLogger("longctx")
GROUP_EVENTS = "group_events"
GROUP_ROWS = "group_rows"


class AssignGroup(beam.DoFn):
    def __init__(self, group_tokens: int):
        self.group_tokens = group_tokens

    def process(self, item: StageRef, stage_tokens):
        groups = packing_groups(stage_tokens[item.stage], self.group_tokens)
        yield (item.stage, packing_group(item.doc_uid, groups)), item


class PackGroup(beam.DoFn):
    """One packing group's segment references -> where each segment lands: ((stage, group),
    (row within the group, slot, token offset, segment key)); and the group's row count.

    A group holds references only (tens of bytes per segment, no tokens), so its memory does not
    grow with the group's tokens (`tests/test_packing_memory.py`)."""

    def __init__(self, stages: list[Stage], seed: int):
        self.lengths = {s.name: s.length for s in stages}
        self.seed = seed

    def process(self, keyed):
        (stage, group), items = keyed
        refs = [item.ref for item in items]
        if len({ref.key for ref in refs}) != len(refs):
            raise ValueError(f"segment keys must be unique within a packing group ({stage}, group {group})")
        rows = plan_rows(refs, self.lengths[stage], self.seed)
        for key, place in placements(rows).items():
            yield (stage, group), (place.row, place.index, place.offset, key)
        Metrics.counter(NAMESPACE, stage_event(stage, StageCount.ROWS)).inc(len(rows))
        yield beam.pvalue.TaggedOutput(GROUP_ROWS, ((stage, group), len(rows)))
        yield beam.pvalue.TaggedOutput(
            GROUP_EVENTS, {stage_event(stage, StageCount.PACKING_GROUPS): 1,
                           max_event(stage_event(stage, StageCount.GROUP_TOKENS)): sum(ref.length for ref in refs)}
        )


class RouteToShard(beam.DoFn):
    """A segment's row within its group -> its shard and place there. A row's global index (rows of
    lower groups first) decides its shard."""

    def __init__(self, stages: list[Stage], target_bytes: int):
        self.lengths = {s.name: s.length for s in stages}
        self.target_bytes = target_bytes

    def process(self, item, group_rows):
        (stage, group), (index, slot, offset, key) = item
        before = sum(n for (s, g), n in group_rows.items() if s == stage and g < group)
        total = sum(n for (s, _), n in group_rows.items() if s == stage)
        per_shard = rows_per_shard(self.lengths[stage], self.target_bytes)  # the same for every row of a stage
        shard, row_in_shard = divmod(before + index, per_shard)
        yield (stage, key), ((stage, shard, -(-total // per_shard)), Placement(row_in_shard, slot, offset))


def segment_to_shard(keyed):
    """A segment and its place (joined by (stage, segment key)) -> (shard key, (place, segment))."""
    (stage, key), joined = keyed
    segments, places = list(joined["segment"]), list(joined["place"])
    if len(segments) != 1 or len(places) != 1:
        raise ValueError(f"segment {key} of stage {stage}: {len(segments)} segment(s) and {len(places)} place(s); "
                         "segment keys must be unique within a stage")
    shard, place = places[0]
    yield shard, (place, segments[0])


class WriteShard(beam.DoFn):
    def __init__(self, output: str, stages: list[Stage], metadata: dict[str, dict], positions: PositionMode):
        self.output = output
        self.lengths = {s.name: s.length for s in stages}
        self.metadata = metadata
        self.positions = positions

    def process(self, keyed):
        (stage, shard, count), placed = keyed
        rows = assemble_rows(placed, self.lengths[stage], self.positions)
        info = write_shard(self.output, stage, shard, count, rows, self.metadata[stage])
        Metrics.counter(NAMESPACE, stage_event(stage, StageCount.SHARDS)).inc()
        log.info("%s", shard_line(shard, info))
        yield info


class PackAndWriteShards(beam.PTransform):
    """StageSegments -> {"shards": ShardInfos (one Arrow file per stage and shard index),
    "events": per-group packing counts for the manifest}."""

    def __init__(self, output: str, stages: list[Stage], metadata: dict[str, dict], positions: PositionMode,
                 target_bytes: int, seed: int = 0, group_tokens: int = 1 << 25):
        super().__init__()
        self.output = output
        self.stages = stages
        self.metadata = metadata
        self.positions = positions
        self.target_bytes = target_bytes
        self.seed = seed
        self.group_tokens = group_tokens

    def expand(self, segments):
        refs = segments | "Refs" >> beam.Map(lambda s: s.stage_ref)
        stage_tokens = (
            refs
            | "SegmentTokens" >> beam.Map(lambda r: (r.stage, r.ref.length))
            | "StageTokens" >> beam.CombinePerKey(sum)
        )
        packed = (
            refs
            | "AssignGroup" >> beam.ParDo(AssignGroup(self.group_tokens), stage_tokens=beam.pvalue.AsDict(stage_tokens))
            | "GroupSegments" >> beam.GroupByKey()
            | "Pack" >> beam.ParDo(PackGroup(self.stages, self.seed)).with_outputs(GROUP_ROWS, GROUP_EVENTS, main="slots")
        )
        places = packed.slots | "Route" >> beam.ParDo(
            RouteToShard(self.stages, self.target_bytes), group_rows=beam.pvalue.AsDict(packed[GROUP_ROWS])
        )
        shards = (
            {"segment": segments | "BySegment" >> beam.Map(lambda s: ((s.stage, s.ref.key), s)), "place": places}
            | "JoinPlaces" >> beam.CoGroupByKey()
            | "ToShard" >> beam.FlatMap(segment_to_shard)
            | "GroupByShard" >> beam.GroupByKey()
            | "Write" >> beam.ParDo(WriteShard(self.output, self.stages, self.metadata, self.positions))
        )
        return {"shards": shards, "events": packed[GROUP_EVENTS]}
