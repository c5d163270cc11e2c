"""Beam steps that find and read input files through fsspec (local, gs://, memory://, ...)."""

from __future__ import annotations

import contextlib
import contextvars
import functools
import hashlib
import logging
import posixpath
from collections.abc import Iterable, Iterator, Sequence

import apache_beam as beam
from apache_beam.metrics import Metrics

from curation.accounting import Reject, printable
from curation.documents import Document
from curation.sources import (
    FileRange,
    SourceConfig,
    expand_inputs,
    file_url,
    iter_range_records,
    plan_reads,
    portable_url,
)
from pipelines.accounting import NAMESPACE, REJECTS

log = logging.getLogger("longctx")


class NoInputFiles(ValueError):
    pass


# The output folders of the job being built (`reading_beside_outputs`): a folder input skips them.
_JOB_OUTPUTS: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("longctx_job_outputs", default=())


@contextlib.contextmanager
def reading_beside_outputs(outputs: Iterable[str]) -> Iterator[None]:
    """While a job's pipeline is built: the `ReadInputs` made in it skip these output folders
    (the job's own) when they lie inside a folder input, besides any earlier job's output."""
    token = _JOB_OUTPUTS.set(tuple(outputs))
    try:
        yield
    finally:
        _JOB_OUTPUTS.reset(token)


def match_pattern(pattern: str | bytes, what: str = "input", exclude: Sequence[str] = (),
                  log_level: int = logging.DEBUG) -> list[str | bytes]:
    """Files of one input pattern; a local name that is not UTF-8 comes as bytes (`portable_url`).
    A folder's files leave out the longctx job outputs below it (`exclude`: the running job's
    own), one line each at `log_level`."""
    path, name = file_url(pattern)
    files, skipped = expand_inputs(path, exclude)
    for folder in skipped:
        log.log(log_level, "%s %s: skipped %s, %s", what, name, printable(folder.url), folder.why)
    if not files:
        raise NoInputFiles(f"{what} {name!r} matched no files" + (
            f" (skipped {len(skipped)} longctx job output folder{'s' if len(skipped) > 1 else ''} under it)" if skipped else ""))
    return [portable_url(f) for f in files]


class PlanReads(beam.DoFn):
    """One input file -> its work items: the file, or its byte ranges / row-group runs when it is
    a large uncompressed JSONL or Parquet file (`curation.sources.plan_reads`)."""

    def __init__(self, config: SourceConfig):
        self.config = config
        self.files = Metrics.counter(NAMESPACE, "files")
        self.pieces = Metrics.counter(NAMESPACE, "read_pieces")

    def process(self, url: str | bytes):
        self.files.inc()
        items = plan_reads(url, self.config)
        self.pieces.inc(len(items))
        if len(items) > 1:
            log.info("read %s in %d pieces", file_url(url)[1], len(items))
        yield from items


class ReadRecords(beam.DoFn):
    """One work item (a file or a piece of one) -> its Documents (main) and unreadable records
    (rejects). A network failure is raised: the runner retries the item."""

    def __init__(self, config: SourceConfig):
        self.config = config
        self.parsed = Metrics.counter(NAMESPACE, "records_parsed")

    def process(self, item: FileRange):
        count = 0
        for record in iter_range_records(item, self.config):
            records = record.records if isinstance(record, Reject) else 1
            count += records
            self.parsed.inc(records)
            if isinstance(record, Reject):
                yield beam.pvalue.TaggedOutput(REJECTS, record)
            else:
                yield record
        piece = "" if item.kind == "file" else f" ({item.kind} {item.start}-{item.stop})"
        log.info("read %s%s: %d records", file_url(item.url)[1], piece, count)


def record_key(item: Document | Reject) -> tuple[str, str]:
    """What sampling orders records by: a document by its text and its id, an unreadable record
    by its file's name and its id. Neither holds the folder, so a moved corpus samples the same
    records (a document's uid would: it is where it was read)."""
    if isinstance(item, Document):
        content = item.text or ""
    else:
        content = f"{posixpath.basename(item.source)}\0{item.reason}"
    digest = hashlib.sha1(content.encode("utf-8", "backslashreplace")).hexdigest()
    return digest, item.id


def split_sampled(items):
    for item in items:
        yield beam.pvalue.TaggedOutput(REJECTS, item) if isinstance(item, Reject) else item


class ReadInputs(beam.PTransform):
    """Patterns -> files (deduplicated; a folder's files leave out the longctx job outputs
    below it, `match_pattern`) -> work items (whole files, or pieces of large ones;
    spread over workers) -> records; with `sample`, only the
    `sample` records first by `record_key` go on (deterministic on any runner, from any folder)."""

    def __init__(self, patterns: list[str], config: SourceConfig, sample: int | None = None,
                 exclude: Sequence[str] | None = None):
        super().__init__()
        self.patterns = list(patterns)
        self.config = config
        self.sample = sample
        # Output folders a folder input skips: the job's own (`reading_beside_outputs`) unless given.
        self.exclude = tuple(_JOB_OUTPUTS.get() if exclude is None else exclude)

    def expand(self, pbegin):
        files = (
            pbegin
            | "Patterns" >> beam.Create([portable_url(p) for p in self.patterns])
            | "Match" >> beam.FlatMap(functools.partial(match_pattern, exclude=self.exclude))
            | "UniqueFiles" >> beam.Distinct()
            | "PlanReads" >> beam.ParDo(PlanReads(self.config))
            | "Spread" >> beam.Reshuffle()
        )
        parsed = files | "Parse" >> beam.ParDo(ReadRecords(self.config)).with_outputs(REJECTS, main="docs")
        if self.sample is None:
            return parsed
        return (
            (parsed.docs, parsed[REJECTS])
            | "All" >> beam.Flatten()
            | "Sample" >> beam.combiners.Top.Smallest(self.sample, key=record_key)
            | "Split" >> beam.FlatMap(split_sampled).with_outputs(REJECTS, main="docs")
        )
