"""Our flags as a Beam `PipelineOptions` subclass, so a job's whole command line (ours and
Beam's: --runner, --project, --region, --temp_location, --setup_file, --sdk_container_image, ...)
is one `PipelineOptions`, as on any Beam pipeline (and in a Dataflow template).

Beam parses the flags of every PipelineOptions subclass together, so there is one subclass with
the union of the data jobs' config keys; each job reads its own keys from it.

Beam drops a flag it does not know with only a log line, so a mistyped flag would run the job
with the default: `check_job_flags` refuses such a command line before the job starts.
"""

from __future__ import annotations

import argparse
import difflib
import json
from collections.abc import Sequence

from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions, _BeamArgumentParser

from pipelines.config import JobConfig, add_config_flags
from pipelines.jobs import DATA_JOBS

# SDK-harness workers (multi_processing, Dataflow) rebuild the options in a fresh process from
# the job's option dict and log them (sdk_worker_main.create_harness) before they import any of
# our code, so LongctxOptions is not registered there and Beam warns "Discarding unparseable
# args" with every flag of ours (and its own negated booleans such as --pipeline_type_check,
# which it writes back under their dest). The launcher has already refused unknown flags
# (check_job_flags) and workers never read our options (the DoFns carry their config), so the
# warning is noise there: the options module's logger is quieted in the workers only.
WORKER_LOG_LEVEL_OVERRIDES = {"apache_beam.options.pipeline_options": "ERROR"}


class LongctxOptions(PipelineOptions):
    """The data jobs' flags (one per config key of every job in `pipelines.jobs.DATA_JOBS`)."""

    @classmethod
    def _add_argparse_args(cls, parser) -> None:
        add_config_flags(parser, *(job.config for job in DATA_JOBS.values()))


class FlagError(ValueError):
    """A data job's command line has a flag neither the job nor Beam knows (or a bad Beam value)."""


class _FlagParser(_BeamArgumentParser):
    """Beam's parser (it has `add_value_provider_argument`), raising instead of exiting."""

    def error(self, message: str) -> None:  # type: ignore[override]
        if message.startswith("ambiguous option: "):
            return super().error(message)  # Beam ignores these; so do we
        raise FlagError(message)


def job_pipeline_options(flags: Sequence[str]) -> PipelineOptions:
    """The one PipelineOptions of a data job: its command line, after a worker log-level
    default the command line can still override (Beam unions the JSON dicts, the last wins)."""
    default = "--sdk_harness_log_level_overrides=" + json.dumps(WORKER_LOG_LEVEL_OVERRIDES)
    return PipelineOptions([default, *flags])


def _registered_beam_option_classes() -> list[type[PipelineOptions]]:
    """Every PipelineOptions subclass imported so far (Beam's, a runner's, a plugin's), at any
    depth, except ours: a data job takes its own config flags, not the other jobs'."""
    found: dict[str, type[PipelineOptions]] = {}
    stack = list(PipelineOptions.__subclasses__())
    while stack:
        cls = stack.pop()
        stack.extend(cls.__subclasses__())
        # A class that does not define its own flags would re-add its parent's.
        if issubclass(cls, LongctxOptions) or "_add_argparse_args" not in cls.__dict__:
            continue
        found.setdefault(f"{cls.__module__}.{cls.__qualname__}", cls)  # a module imported twice
    return list(found.values())


def _import_runner(flags: Sequence[str]) -> None:
    """Import the runner's module as Beam will (a runner may register its own options class);
    a runner that cannot be created is left for the run itself to report."""
    from apache_beam.runners.runner import create_runner

    parser = _FlagParser(allow_abbrev=False, add_help=False)
    StandardOptions._add_argparse_args(parser)
    runner = parser.parse_known_args(list(flags))[0].runner
    if isinstance(runner, str):
        try:
            create_runner(runner)
        except Exception:  # noqa: BLE001 - the job's own start reports a bad runner properly
            pass


def _known_flags_parser(config: type[JobConfig]) -> _FlagParser:
    # allow_abbrev=False as in Beam: PipelineOptions would drop an abbreviated flag.
    # conflict_handler="resolve": two registered classes sharing a flag must not stop the check.
    parser = _FlagParser(allow_abbrev=False, add_help=False, conflict_handler="resolve")
    add_config_flags(parser, config)
    for cls in _registered_beam_option_classes():
        cls._add_argparse_args(parser)
    return parser


def _config_flags(config: type[JobConfig]) -> set[str]:
    parser = argparse.ArgumentParser(add_help=False)
    add_config_flags(parser, config)
    return {s for action in parser._actions for s in action.option_strings}


def unknown_flags(config: type[JobConfig], flags: Sequence[str]) -> list[str]:
    """One message per argument of `flags` that neither `config`'s flags nor any registered Beam
    options class accepts (`--flag value` and `--flag=value` forms), naming the closest known flag."""
    _import_runner(flags)
    parser = _known_flags_parser(config)
    _, rest = parser.parse_known_args(list(flags))
    known = sorted({s for action in parser._actions for s in action.option_strings if s.startswith("--")})
    problems = []
    i = 0
    while i < len(rest):
        token = rest[i]
        i += 1
        if token.startswith("-") and token != "-":
            name, has_value = token.split("=", 1)[0], "=" in token
            if not has_value and i < len(rest) and not rest[i].startswith("-"):
                i += 1  # its value
            elsewhere = [job.name for job in DATA_JOBS.values() if job.config is not config and name in _config_flags(job.config)]
            close = difflib.get_close_matches(name, known, n=1)
            if elsewhere:
                hint = f" (a flag of longctx {'/'.join(elsewhere)} only)"
            else:
                hint = f" (did you mean {close[0]}?)" if close else ""
            problems.append(f"unknown flag {name}{hint}")
        else:
            problems.append(f"unexpected argument {token!r}")
    return problems


def check_job_flags(config: type[JobConfig], flags: Sequence[str]) -> None:
    """Raise FlagError if the job's command line has a flag that neither the job nor Beam
    knows (Beam would drop it and run the job with the default) or a Beam flag's value is bad."""
    problems = unknown_flags(config, flags)
    if problems:
        raise FlagError("; ".join(problems) + " (see --help; any Beam pipeline option is accepted too)")
