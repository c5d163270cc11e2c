"""The data jobs, one entry each: the command's name, its config class, its composite transform,
its help line, and what its shards record. The command line, the flag checks, the runners and the
shard metadata all read this table; adding a job is one entry. Light to import (no Beam): the
transform is imported when the job runs."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from pipelines.config import BooksConfig, ImagesConfig, JobConfig, QAConfig, VideoConfig, config_from_args


@dataclass(frozen=True)
class DataJob:
    """One data job: its name (the command), config class, composite transform ("module:Class",
    imported when the job runs: video and images load JAX and decord), help line, and whether its
    shards carry vision codes (they record their vision vocabulary; a VQGAN is required)."""

    name: str
    config: type[JobConfig]
    transform: str
    help: str
    vision: bool = False

    def build_transform(self) -> type:
        module, name = self.transform.split(":")
        return getattr(importlib.import_module(module), name)

    def config_from(self, options: Any) -> JobConfig:
        """The job's typed config from one PipelineOptions holding the whole command line."""
        from pipelines.options import LongctxOptions

        return config_from_args(self.config, options.view_as(LongctxOptions))

    def run(self, config: JobConfig, beam_args: Any = None) -> dict[str, Any]:
        """Run the job to completion (`pipelines.launch.run_job`); returns its manifest."""
        from pipelines.launch import ConfigError, run_job

        if self.vision and not getattr(config, "vqgan", None):
            raise ConfigError("missing required setting: vqgan (--vqgan PATH)")
        return run_job(self.name, self.build_transform(), config, beam_args)


DATA_JOBS: dict[str, DataJob] = {job.name: job for job in (
    DataJob("books", BooksConfig, "pipelines.books:BuildBookShards",
            "clean, tokenize, length-filter and pack books into Arrow shards per context stage"),
    DataJob("qa", QAConfig, "pipelines.qa:BuildQAShards",
            "synthetic long-context QA: a QA pair per chunk, long chat examples per stage"),
    DataJob("video", VideoConfig, "pipelines.video:BuildVideoShards",
            "video + text manifests -> VQGAN codes laid out with their text, packed per stage", vision=True),
    DataJob("images", ImagesConfig, "pipelines.images:BuildImageShards",
            "image-text pairs -> VQGAN codes laid out with their captions, packed per stage", vision=True),
)}
