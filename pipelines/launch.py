"""Building and running a data job on any Beam runner, then reporting it."""

from __future__ import annotations

import logging
from typing import Any

import apache_beam as beam
import fsspec
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from curation.shards import join_url, read_manifest
from curation.tokenize import load_tokenizer
from pipelines.books import BuildBookShards
from pipelines.config import BooksConfig, ImagesConfig, JobConfig, QAConfig, VideoConfig

log = logging.getLogger("longctx")


class ConfigError(ValueError):
    pass


def pipeline_options(beam_args: list[str] | PipelineOptions) -> PipelineOptions:
    """Beam's own flags, unchanged; DirectRunner when no runner is named."""
    options = beam_args if isinstance(beam_args, PipelineOptions) else PipelineOptions(beam_args)
    if not options.view_as(StandardOptions).runner:
        options.view_as(StandardOptions).runner = "DirectRunner"
    return options


def shard_metadata(config: JobConfig, kind: str) -> dict[str, dict[str, Any]]:
    """What every shard of each stage records about how it was made."""
    _, info = load_tokenizer(config.tokenizer)
    extra = {}
    if kind in ("video", "images"):
        from pipelines.video import vision_metadata

        extra["vision"] = vision_metadata(getattr(config, "vision_layout", "separate"), info.vocab_size)
    return {
        stage.name: {
            "kind": kind,
            "stage": stage.name,
            "tokenizer": info.as_metadata(),
            "config_hash": config.hash(),
            **extra,
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


def prepare_output(output: str, overwrite: bool) -> dict[str, Any] | None:
    """The finished job's manifest if there is one and we may not overwrite; otherwise remove
    everything a job of ours writes there (a killed run's partial shards and temporary files,
    or the previous run's outputs), so the new run's files are the only ones."""
    fs, root = fsspec.core.url_to_fs(output)
    root = root.rstrip("/")
    if fs.exists(f"{root}/manifest.json") and not overwrite:
        return read_manifest(output)
    ours = [f"{root}/manifest.json", f"{root}/.manifest.json.tmp-*", f"{root}/*/train-*-of-*.arrow",
            f"{root}/*/.train-*-of-*.arrow.tmp-*", f"{root}/rejects/rejects-*-of-*.jsonl", f"{root}/rejects/.rejects-*.tmp-*"]
    stale = sorted({p for pattern in ours for p in fs.glob(pattern)})
    for path in stale:
        fs.rm(path)
    if stale:
        log.info("removed %d files of an earlier run under %s", len(stale), join_url(output))
    return None


def run_job(kind: str, transform, config: JobConfig, beam_args: list[str] | PipelineOptions | None = None) -> dict[str, Any]:
    """Run a data job to completion and return its manifest. A finished job (its manifest exists)
    is not redone unless `config.overwrite`; an unfinished one's leftovers are removed first."""
    validate(config)
    finished = prepare_output(config.output, config.overwrite)
    if finished is not None:
        log.warning("%s is already complete (manifest.json exists): nothing to do; pass --overwrite to redo it", config.output)
        return finished
    metadata = shard_metadata(config, kind)
    with beam.Pipeline(options=pipeline_options(beam_args or [])) as pipeline:
        _ = pipeline | kind.capitalize() >> transform(config, metadata)
    return read_manifest(config.output)


def run_books(config: BooksConfig, beam_args: list[str] | PipelineOptions | None = None) -> dict[str, Any]:
    return run_job("books", BuildBookShards, config, beam_args)


def run_video(config: VideoConfig, beam_args: list[str] | PipelineOptions | None = None) -> dict[str, Any]:
    from pipelines.video import BuildVideoShards

    if not config.vqgan:
        raise ConfigError("missing required setting: vqgan (--vqgan PATH)")
    return run_job("video", BuildVideoShards, config, beam_args)


def run_images(config: ImagesConfig, beam_args: list[str] | PipelineOptions | None = None) -> dict[str, Any]:
    from pipelines.images import BuildImageShards

    if not config.vqgan:
        raise ConfigError("missing required setting: vqgan (--vqgan PATH)")
    return run_job("images", BuildImageShards, config, beam_args)


def run_qa(config: QAConfig, beam_args: list[str] | PipelineOptions | None = None) -> dict[str, Any]:
    from pipelines.qa import BuildQAShards

    return run_job("qa", BuildQAShards, config, beam_args)
