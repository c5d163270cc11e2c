"""`PackAndWriteShards` on a real pipeline (TestPipeline, DirectRunner): rows planned on references,
each segment's tokens joined to its place and written once. Checked against the arrays read back
from the shards: every segment lands exactly once, whole, with its masks; a stage packed as one
group equals `pack_segments`; several groups and shards keep that per group, in group order."""

from __future__ import annotations

from pathlib import Path

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline

from curation.packing import PositionMode, SegmentRef, StageSegment, pack_segments, packing_group, packing_groups, rows_per_shard
from curation.shards import read_shard, stage_shard_urls
from curation.stages import Stage
from pipelines.packing import PackAndWriteShards

STAGES = [Stage("s64", 64), Stage("s32", 32)]


def _segments(n_docs: int) -> list[StageSegment]:
    rng = np.random.default_rng(n_docs)
    out = []
    for d in range(n_docs):
        for stage in STAGES:
            n = int(rng.integers(3, stage.length + 1))
            tokens = rng.integers(3, 40_000, n).astype(np.int32)
            loss = (rng.random(n) < 0.5).astype(np.float32) if d % 3 == 0 else None
            out.append(StageSegment(stage.name, SegmentRef(f"uid{d}@0", f"doc{d}", 0, n), f"uid{d}", tokens, loss_mask=loss))
    return out


def _run(segments: list[StageSegment], output: Path, target_bytes: int, group_tokens: int) -> dict:
    metadata = {s.name: {"longctx.stage": s.name} for s in STAGES}
    with BeamTestPipeline(options=PipelineOptions(["--runner=DirectRunner"])) as p:
        _ = (
            p
            | beam.Create(segments, reshuffle=False)
            | PackAndWriteShards(str(output), STAGES, metadata, PositionMode.DOCUMENT, target_bytes, seed=5, group_tokens=group_tokens)
        )["shards"]
    return {s.name: [read_shard(u) for u in stage_shard_urls(str(output), s.name)] for s in STAGES}


def _concat(shards, name):
    return np.concatenate([sh.arrays[name] for sh in shards])


def test_one_group_per_stage_writes_exactly_pack_segments(tmp_path):
    segments = _segments(24)
    length = {s.name: s.length for s in STAGES}
    shards = _run(segments, tmp_path / "out", target_bytes=4 * 64 * 16, group_tokens=1 << 30)
    for stage, read in shards.items():
        assert len(read) > 1  # several shards, numbered by the rows' global order
        expected = pack_segments([s for s in segments if s.stage == stage], length[stage], seed=5)
        for name in ("input_ids", "segment_ids", "positions", "loss_mask"):
            np.testing.assert_array_equal(_concat(read, name), getattr(expected, name), err_msg=f"{stage} {name}")
        assert [ids for sh in read for ids in sh.doc_ids] == expected.doc_ids
        per_shard = rows_per_shard(length[stage], 4 * 64 * 16)
        assert [sh.num_rows for sh in read[:-1]] == [per_shard] * (len(read) - 1)


def test_several_groups_place_every_segment_once(tmp_path):
    segments = _segments(40)
    shards = _run(segments, tmp_path / "out", target_bytes=3 * 64 * 16, group_tokens=200)
    by_key = {(s.stage, s.ref.doc_id): s for s in segments}
    for stage, read in shards.items():
        seen = []
        for sh in read:
            for r in range(sh.num_rows):
                for k, doc in enumerate(sh.doc_ids[r], start=1):
                    span = sh.arrays["segment_ids"][r] == k
                    seg = by_key[(stage, doc)]
                    np.testing.assert_array_equal(sh.arrays["input_ids"][r][span], seg.tokens)
                    expected_loss = np.ones(seg.ref.length) if seg.loss_mask is None else seg.loss_mask
                    np.testing.assert_array_equal(sh.arrays["loss_mask"][r][span], expected_loss)
                    seen.append(doc)
        assert sorted(seen) == sorted(d for s, d in by_key if s == stage)  # each exactly once
        # Rows come group by group: a row's documents share one packing group, and groups ascend.
        groups = packing_groups(sum(s.ref.length for s in segments if s.stage == stage), 200)
        assert groups > 2
        row_groups = []
        for sh in read:
            for ids in sh.doc_ids:
                (group,) = {packing_group(f"uid{d[3:]}", groups) for d in ids}
                row_groups.append(group)
        assert row_groups == sorted(row_groups) and len(set(row_groups)) == groups


def test_a_repeated_segment_key_stops_the_job(tmp_path):
    seg = _segments(1)[0]
    with pytest.raises(Exception, match="unique"):
        _run([seg, seg], tmp_path / "out", target_bytes=1 << 20, group_tokens=1 << 30)
