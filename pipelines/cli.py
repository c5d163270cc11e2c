"""`longctx`: one command line for every job. Beam's own flags pass through unchanged."""

from __future__ import annotations

import argparse
import logging
import sys

from rich.console import Console
from rich.logging import RichHandler

from pipelines.config import BooksConfig, add_config_flags, config_from_args

BEAM_HELP = (
    "Any other flag goes to Apache Beam unchanged, e.g. --runner DataflowRunner --project P --region R "
    "--temp_location gs://b/tmp --setup_file ./setup.py, or --direct_num_workers 2 "
    "--direct_running_mode multi_processing on the local DirectRunner."
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="longctx", description="Build million-token training data and train on it.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every file read and shard written")
    commands = parser.add_subparsers(dest="command", required=True)
    books = commands.add_parser(
        "books",
        help="clean, tokenize, length-filter and pack books into Arrow shards per context stage",
        description=(BooksConfig.__doc__ or "") + " " + BEAM_HELP,
    )
    add_config_flags(books, BooksConfig)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args, beam_args = parser.parse_known_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(show_path=False, console=Console(stderr=True))],
    )
    logging.getLogger("longctx").setLevel(logging.INFO)
    console = Console(width=None if sys.stdout.isatty() else 120)
    from pipelines.launch import ConfigError, run_books
    from pipelines.summary import print_summary

    if args.command == "books":
        try:
            config = config_from_args(BooksConfig, args)
        except Exception as err:  # pydantic validation, bad YAML, unknown stage
            parser.error(str(err))
        try:
            manifest = run_books(config, beam_args)
        except ConfigError as err:
            parser.error(str(err))
        print_summary(manifest, config.output, console)
    return 0


if __name__ == "__main__":
    sys.exit(main())
