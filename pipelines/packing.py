"""Segments -> packed rows -> shards, shared by the book, QA and video pipelines.

Planning needs only segment lengths, so a stage's plan fits one worker even at Books3 scale
(tens of bytes per window); tokens travel once, grouped by their destination shard, so no worker
ever holds more than one shard's worth of tokens.
"""

from __future__ import annotations

import logging

import apache_beam as beam
from apache_beam.metrics import Metrics

from curation.packing import PositionMode, RowArrays, StageSegment, plan_shards
from curation.shards import write_shard
from curation.stages import Stage
from pipelines.accounting import NAMESPACE

log = logging.getLogger("longctx")


class PlanStage(beam.DoFn):
    def __init__(self, stages: list[Stage], target_bytes: int, seed: int, with_vision: bool):
        self.lengths = {s.name: s.length for s in stages}
        self.target_bytes = target_bytes
        self.seed = seed
        self.with_vision = with_vision

    def process(self, keyed):
        stage, refs = keyed
        slots, rows = plan_shards(list(refs), self.lengths[stage], self.target_bytes, self.seed, self.with_vision)
        Metrics.counter(NAMESPACE, f"stage.{stage}.rows").inc(rows)
        log.info("planned stage %s: %d segments in %d rows", stage, len(slots), rows)
        for key, slot in slots.items():
            yield (stage, key), slot


class RouteToShard(beam.DoFn):
    def process(self, seg: StageSegment, plan):
        slot = plan[(seg.stage, seg.ref.key)]
        yield (seg.stage, slot.shard), (slot, seg)


class WriteShard(beam.DoFn):
    def __init__(self, output: str, stages: list[Stage], metadata: dict[str, dict], positions: PositionMode, with_vision: bool):
        self.output = output
        self.lengths = {s.name: s.length for s in stages}
        self.metadata = metadata
        self.positions = positions
        self.with_vision = with_vision

    def process(self, keyed):
        (stage, shard), placed = keyed
        placed = list(placed)
        first = placed[0][0]
        rows = RowArrays.empty(first.shard_rows, self.lengths[stage])
        vision = rows.segment_ids.copy() if self.with_vision else None
        for slot, seg in placed:
            rows.place(slot.row, slot.index, slot.offset, seg.tokens, seg.ref.doc_id, seg.ref.start, self.positions, seg.loss_mask)
            if vision is not None and seg.vision_mask is not None:
                vision[slot.row, slot.offset : slot.offset + len(seg.tokens)] = seg.vision_mask
        rows.finish(self.positions)
        info = write_shard(self.output, stage, shard, first.shards, rows, self.metadata[stage], vision)
        Metrics.counter(NAMESPACE, f"stage.{stage}.shards").inc()
        log.info("wrote %s (%d rows)", info.path, info.rows)
        yield info


class PackAndWriteShards(beam.PTransform):
    """StageSegments -> ShardInfos, one Arrow shard file per (stage, shard index)."""

    def __init__(self, output: str, stages: list[Stage], metadata: dict[str, dict], positions: PositionMode,
                 target_bytes: int, seed: int = 0, with_vision: bool = False):
        super().__init__()
        self.output = output
        self.stages = stages
        self.metadata = metadata
        self.positions = positions
        self.target_bytes = target_bytes
        self.seed = seed
        self.with_vision = with_vision

    def expand(self, segments):
        plan = (
            segments
            | "Lengths" >> beam.Map(lambda s: (s.stage, s.ref))
            | "GroupByStage" >> beam.GroupByKey()
            | "Plan" >> beam.ParDo(PlanStage(self.stages, self.target_bytes, self.seed, self.with_vision))
        )
        return (
            segments
            | "Route" >> beam.ParDo(RouteToShard(), plan=beam.pvalue.AsDict(plan))
            | "GroupByShard" >> beam.GroupByKey()
            | "Write" >> beam.ParDo(WriteShard(self.output, self.stages, self.metadata, self.positions, self.with_vision))
        )
