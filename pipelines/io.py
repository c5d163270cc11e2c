"""Beam steps that find and read input files through fsspec (local, gs://, memory://, ...)."""

from __future__ import annotations

import logging

import apache_beam as beam
from apache_beam.metrics import Metrics

from curation.accounting import Reject
from curation.sources import SourceConfig, expand_pattern, iter_file_records
from pipelines.accounting import NAMESPACE, REJECTS

log = logging.getLogger("longctx")


class NoInputFiles(ValueError):
    pass


def match_pattern(pattern: str) -> list[str]:
    files = expand_pattern(pattern)
    if not files:
        raise NoInputFiles(f"input {pattern!r} matched no files")
    return files


class ReadRecords(beam.DoFn):
    """One input file -> its Documents (main) and unreadable records (rejects)."""

    def __init__(self, config: SourceConfig):
        self.config = config
        self.read = Metrics.counter(NAMESPACE, "read")
        self.files = Metrics.counter(NAMESPACE, "files")

    def process(self, url: str):
        self.files.inc()
        count = 0
        for item in iter_file_records(url, self.config):
            count += 1
            self.read.inc()
            if isinstance(item, Reject):
                yield beam.pvalue.TaggedOutput(REJECTS, item)
            else:
                yield item
        log.info("read %s: %d records", url, count)


class ReadInputs(beam.PTransform):
    """Patterns -> files (deduplicated, spread over workers) -> records."""

    def __init__(self, patterns: list[str], config: SourceConfig):
        super().__init__()
        self.patterns = list(patterns)
        self.config = config

    def expand(self, pbegin):
        files = (
            pbegin
            | "Patterns" >> beam.Create(self.patterns)
            | "Match" >> beam.FlatMap(match_pattern)
            | "UniqueFiles" >> beam.Distinct()
            | "Spread" >> beam.Reshuffle()
        )
        return files | "Parse" >> beam.ParDo(ReadRecords(self.config)).with_outputs(REJECTS, main="docs")
