"""Our flags as a Beam `PipelineOptions` subclass, so a job's whole command line (ours and
Beam's: --runner, --project, --region, --temp_location, --setup_file, --sdk_container_image, ...)
is one `PipelineOptions`, as on any Beam pipeline (and in a Dataflow template).

Beam parses the flags of every PipelineOptions subclass together, so there is one subclass with
the union of the data jobs' config keys; each job reads its own keys from it.
"""

from __future__ import annotations

from apache_beam.options.pipeline_options import PipelineOptions

from pipelines.config import BooksConfig, ImagesConfig, QAConfig, VideoConfig, add_config_flags, config_from_args


class LongctxOptions(PipelineOptions):
    """`longctx books` / `longctx qa` flags (one per config key)."""

    @classmethod
    def _add_argparse_args(cls, parser) -> None:
        add_config_flags(parser, BooksConfig, QAConfig, VideoConfig, ImagesConfig)


def books_config(options: PipelineOptions) -> BooksConfig:
    return config_from_args(BooksConfig, options.view_as(LongctxOptions))


def qa_config(options: PipelineOptions) -> QAConfig:
    return config_from_args(QAConfig, options.view_as(LongctxOptions))


def video_config(options: PipelineOptions) -> VideoConfig:
    return config_from_args(VideoConfig, options.view_as(LongctxOptions))


def images_config(options: PipelineOptions) -> ImagesConfig:
    return config_from_args(ImagesConfig, options.view_as(LongctxOptions))
