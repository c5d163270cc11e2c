"""Building and running a data job on any Beam runner, then reporting it."""

from __future__ import annotations

import logging
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from curation.shards import read_manifest
from curation.tokenize import load_tokenizer
from pipelines.books import BuildBookShards
from pipelines.config import BooksConfig, JobConfig

log = logging.getLogger("longctx")


class ConfigError(ValueError):
    pass


def pipeline_options(beam_args: list[str]) -> PipelineOptions:
    """Beam's own flags, unchanged; DirectRunner when no runner is named."""
    options = PipelineOptions(beam_args)
    if not options.view_as(StandardOptions).runner:
        options.view_as(StandardOptions).runner = "DirectRunner"
    return options


def shard_metadata(config: JobConfig, kind: str) -> dict[str, dict[str, Any]]:
    """What every shard of each stage records about how it was made."""
    _, info = load_tokenizer(config.tokenizer)
    return {
        stage.name: {
            "kind": kind,
            "stage": stage.name,
            "tokenizer": info.as_metadata(),
            "config_hash": config.hash(),
        }
        for stage in config.resolved_stages()
    }


def validate(config: JobConfig) -> None:
    missing = [name for name in ("inputs", "output", "tokenizer") if not getattr(config, name)]
    if missing:
        raise ConfigError(f"missing required setting(s): {', '.join(missing)} (flags --input/--output/--tokenizer or a --config file)")
    try:
        config.resolved_stages()
    except ValueError as err:
        raise ConfigError(str(err)) from None


def run_books(config: BooksConfig, beam_args: list[str] | None = None) -> dict[str, Any]:
    """Run the book pipeline to completion and return its manifest."""
    validate(config)
    metadata = shard_metadata(config, "books")
    with beam.Pipeline(options=pipeline_options(beam_args or [])) as pipeline:
        _ = pipeline | "Books" >> BuildBookShards(config, metadata)
    return read_manifest(config.output)
