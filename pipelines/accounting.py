"""One accounting path for every pipeline: count events, write rejects, write the manifest.

Each record produces one `read` event where it is read and exactly one `kept` or `rejected.*`
event where its journey ends; the job sums them and refuses to finish unless they balance.
"""

from __future__ import annotations

import json
import logging
import zlib
from collections import Counter

import apache_beam as beam
from apache_beam.metrics import Metrics

from curation.accounting import Reject
from curation.events import READ, TOKENS_IN, is_max
from curation.manifest import build_manifest
from curation.shards import join_url, write_bytes_atomic
from curation.stages import Stage

NAMESPACE = "longctx"
REJECTS = "rejects"
KEPT_EVENTS = "kept_events"

log = logging.getLogger("longctx")


def merge_counts(acc: Counter, counts: dict) -> Counter:
    for key, value in counts.items():
        if is_max(key):  # a `max.` event keeps its largest value instead of a sum (curation.events)
            acc[key] = max(acc.get(key, value), value)
        else:
            acc[key] += value
    return acc


class SumCounts(beam.CombineFn):
    """Sums dicts of counts (str -> int); `max.` keys (curation.events.max_event) keep their maximum."""

    def create_accumulator(self):
        return Counter()

    def add_input(self, acc, counts):
        return merge_counts(acc, counts)

    def merge_accumulators(self, accs):
        out = Counter()
        for acc in accs:
            merge_counts(out, acc)
        return out

    def extract_output(self, acc):
        return dict(acc)


class CountRejects(beam.DoFn):
    """A reject counts as the records it stands for (more than one for a corrupt Parquet row group);
    a `no_stage` reject also adds the tokens it states to `tokens_in` (kept + no_stage)."""

    def process(self, reject: Reject):
        Metrics.counter(NAMESPACE, reject.counter).inc(reject.records)
        event = {reject.counter: reject.records}
        if reject.tokens_in:
            event[TOKENS_IN] = reject.tokens_in
        yield event


def reject_file_name(index: int, count: int) -> str:
    return f"rejects/rejects-{index:05d}-of-{count:05d}.jsonl"


class WriteRejectFile(beam.DoFn):
    def __init__(self, output: str, count: int):
        self.output = output
        self.count = count

    def process(self, keyed):
        index, rejects = keyed
        # as_json escapes lone surrogates, so every line is valid UTF-8.
        lines = [json.dumps(r.as_json(), ensure_ascii=False) for r in sorted(rejects, key=lambda r: r.sort_key)]
        rel = reject_file_name(index, self.count)
        write_bytes_atomic(join_url(self.output, rel), ("\n".join(lines) + "\n").encode())
        yield rel


class WriteRejects(beam.PTransform):
    """Rejects -> sorted JSONL files under OUT/rejects/, and their count events. A reject goes to
    file `crc32(source, id) % files`: no single hot key, the same names on every runner; only
    files that receive a reject are written."""

    def __init__(self, output: str, files: int = 1):
        super().__init__()
        self.output = output
        self.files = files

    def expand(self, rejects):
        files = (
            rejects
            | "ByFile" >> beam.Map(lambda r: (zlib.crc32(f"{r.source}\0{r.id}".encode("utf-8", "backslashreplace")) % self.files, r))
            | "GroupByFile" >> beam.GroupByKey()
            | "Write" >> beam.ParDo(WriteRejectFile(self.output, self.files))
        )
        counts = rejects | "Count" >> beam.ParDo(CountRejects())
        return files, counts


class WriteManifest(beam.DoFn):
    """Runs once, after everything else: checks read == kept + rejected and writes manifest.json
    (yielding its text)."""

    def __init__(self, kind: str, output: str, stages: list[Stage], config: dict, extra: dict | None = None):
        self.kind = kind
        self.output = output
        self.stages = stages
        self.config = config
        self.extra = extra

    def process(self, _, counters, shards, reject_files):
        manifest = build_manifest(self.kind, counters, self.stages, shards, self.config, reject_files, self.extra)
        # JSON text (ASCII: a lone surrogate in the config, e.g. an input path that is not UTF-8,
        # is escaped) is what is written and what is yielded: Beam's coders need valid UTF-8.
        text = json.dumps(manifest, indent=2)
        write_bytes_atomic(join_url(self.output, "manifest.json"), text.encode())
        yield text


def read_events(item) -> dict[str, int]:
    """A document is one record read; a reject, the records it stands for."""
    return {READ: item.records if isinstance(item, Reject) else 1}


def count_read(pcoll_docs, pcoll_rejects, label: str = "CountRead"):
    """One `read` event per record read, whether it parsed or not."""
    return (pcoll_docs, pcoll_rejects) | label >> beam.Flatten() | f"{label}Events" >> beam.Map(read_events)


def finish_job(pbegin, kind, config, stages, read, rejects, kept_events, packed):
    """Shared ending of every data pipeline: rejects files, summed counts, manifest (checked)."""
    all_rejects = rejects | "AllRejects" >> beam.Flatten()
    reject_files, reject_events = all_rejects | "Rejects" >> WriteRejects(config.output, config.reject_files)
    counters = (
        (count_read(read.docs, read.rejects), reject_events, kept_events, packed["events"])
        | "AllEvents" >> beam.Flatten()
        | "SumCounts" >> beam.CombineGlobally(SumCounts())
    )
    return (
        pbegin
        | "Once" >> beam.Create([None])
        | "Manifest" >> beam.ParDo(
            WriteManifest(kind, config.output, stages, config.data_config()),
            counters=beam.pvalue.AsSingleton(counters),
            shards=beam.pvalue.AsList(packed["shards"]),
            reject_files=beam.pvalue.AsList(reject_files),
        )
    )


class ShardJob(beam.PTransform):
    """Base of every data job's composite transform: its config, stages and per-stage shard
    metadata, and the tail every job shares (`pack_and_finish`). A job's `expand` reads its recipe
    down to the stage segments, then hands them here."""

    kind = ""  # the job's name in the manifest (books, qa, video, images)

    def __init__(self, config, shard_metadata: dict[str, dict]):
        super().__init__()
        self.config = config
        self.stages = config.resolved_stages()
        self.shard_metadata = shard_metadata

    def pack_and_finish(self, pbegin, read, rejects, kept_events, segments):
        """Stage segments -> packed rows -> shards; then rejects, summed counts and the checked
        manifest (`finish_job`)."""
        from pipelines.packing import PackAndWriteShards  # packing imports this module

        c = self.config
        packed = segments | "PackAndWrite" >> PackAndWriteShards(
            c.output, self.stages, self.shard_metadata, c.positions, c.shard_target_bytes, c.shuffle_seed, c.pack_group_tokens
        )
        return finish_job(pbegin, self.kind, c, self.stages, read, rejects, kept_events, packed)
