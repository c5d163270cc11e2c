"""Our flags as Beam `PipelineOptions` subclasses, so a job's whole command line (ours and
Beam's: --runner, --project, --region, --temp_location, --setup_file, --sdk_container_image, ...)
is one `PipelineOptions`, as on any Beam pipeline (and in a Dataflow template)."""

from __future__ import annotations

from apache_beam.options.pipeline_options import PipelineOptions

from pipelines.config import BooksConfig, add_config_flags, config_from_args


class BooksOptions(PipelineOptions):
    """`longctx books` flags (one per BooksConfig key)."""

    @classmethod
    def _add_argparse_args(cls, parser) -> None:
        add_config_flags(parser, BooksConfig)


def books_config(options: PipelineOptions) -> BooksConfig:
    return config_from_args(BooksConfig, options.view_as(BooksOptions))
