"""Segments -> packed rows -> shards, shared by the book, QA and video pipelines.

A stage is split into packing groups by a stable hash of the document, as many as keep each
group under `group_tokens` tokens (so no worker ever holds a whole stage); each group is packed
best-fit-decreasing into rows; rows get global indices from the groups' row counts and are
grouped into shards of ~`target_bytes`. Every step is deterministic, so the shards are the same
bytes on any runner and any number of workers.
"""

from __future__ import annotations

import logging

import apache_beam as beam
from apache_beam.metrics import Metrics

from curation.events import StageCount, max_event, stage_event
from curation.packing import PositionMode, StageSegment, iter_packed_rows, packing_group, packing_groups, rows_per_shard, unpack_rows
from curation.progress import shard_line
from curation.shards import write_shard
from curation.stages import Stage
from pipelines.accounting import NAMESPACE

log = logging.getLogger("longctx")
GROUP_EVENTS = "group_events"


class AssignGroup(beam.DoFn):
    def __init__(self, group_tokens: int):
        self.group_tokens = group_tokens

    def process(self, seg: StageSegment, stage_tokens):
        groups = packing_groups(stage_tokens[seg.stage], self.group_tokens)
        yield (seg.stage, packing_group(seg.doc_uid, groups)), seg


class PackGroup(beam.DoFn):
    """One packing group -> its rows, numbered within the group.

    The group's values are read once and each row is yielded as soon as it is built, so a worker
    holds one group's tokens once (plus one row), whatever the size of the corpus or the number
    of groups (measured per group: `benchmarks/scaling.py --packing-memory-only`)."""

    def __init__(self, stages: list[Stage], seed: int):
        self.lengths = {s.name: s.length for s in stages}
        self.seed = seed

    def process(self, keyed):
        (stage, group), segments = keyed
        rows = group_tokens = 0
        for index, row in enumerate(iter_packed_rows(segments, self.lengths[stage], self.seed)):
            rows += 1
            group_tokens += row.num_tokens
            yield (stage, group, index), row
        Metrics.counter(NAMESPACE, stage_event(stage, StageCount.ROWS)).inc(rows)
        # What one worker held for this group: the evidence that packing memory is bounded.
        yield beam.pvalue.TaggedOutput(
            GROUP_EVENTS, {stage_event(stage, StageCount.PACKING_GROUPS): 1, max_event(stage_event(stage, StageCount.GROUP_TOKENS)): group_tokens}
        )


class RouteToShard(beam.DoFn):
    """A row's global index (rows of lower groups first) decides its shard."""

    def __init__(self, stages: list[Stage], target_bytes: int):
        self.lengths = {s.name: s.length for s in stages}
        self.target_bytes = target_bytes

    def process(self, item, group_rows):
        (stage, group, index), row = item
        offset = sum(n for (s, g), n in group_rows.items() if s == stage and g < group)
        total = sum(n for (s, _), n in group_rows.items() if s == stage)
        per_shard = rows_per_shard(self.lengths[stage], self.target_bytes)  # the same for every row of a stage
        shard, row_in_shard = divmod(offset + index, per_shard)
        yield (stage, shard, -(-total // per_shard)), (row_in_shard, row)


class WriteShard(beam.DoFn):
    def __init__(self, output: str, stages: list[Stage], metadata: dict[str, dict], positions: PositionMode):
        self.output = output
        self.lengths = {s.name: s.length for s in stages}
        self.metadata = metadata
        self.positions = positions

    def process(self, keyed):
        (stage, shard, count), rows = keyed
        rows = unpack_rows([row for _, row in sorted(rows, key=lambda r: r[0])], self.lengths[stage], self.positions)
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
        stage_tokens = (
            segments
            | "SegmentTokens" >> beam.Map(lambda s: (s.stage, s.ref.length))
            | "StageTokens" >> beam.CombinePerKey(sum)
        )
        packed = (
            segments
            | "AssignGroup" >> beam.ParDo(AssignGroup(self.group_tokens), stage_tokens=beam.pvalue.AsDict(stage_tokens))
            | "GroupSegments" >> beam.GroupByKey()
            | "Pack" >> beam.ParDo(PackGroup(self.stages, self.seed)).with_outputs(GROUP_EVENTS, main="rows")
        )
        rows = packed.rows
        group_rows = (
            rows
            | "RowGroup" >> beam.Map(lambda item: ((item[0][0], item[0][1]), 1))
            | "GroupRowCounts" >> beam.CombinePerKey(sum)
        )
        shards = (
            rows
            | "Route" >> beam.ParDo(RouteToShard(self.stages, self.target_bytes), group_rows=beam.pvalue.AsDict(group_rows))
            | "GroupByShard" >> beam.GroupByKey()
            | "Write" >> beam.ParDo(WriteShard(self.output, self.stages, self.metadata, self.positions))
        )
        return {"shards": shards, "events": packed[GROUP_EVENTS]}
