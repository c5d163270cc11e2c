"""Runners: the one our DirectRunner jobs run on (`local_runner`, from `--runner` read as Beam
reads it), whether the runner's workers are other machines (`remote_workers`), and how many
workers a pipeline's runner gives a stage (`worker_count`)."""

from __future__ import annotations

import multiprocessing

import apache_beam as beam
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions
from apache_beam.runners.runner import PipelineRunner, create_runner


def local_runner(options: PipelineOptions) -> PipelineRunner | None:
    """The runner for `--runner DirectRunner`: Beam's FnApiRunner, set up as DirectRunner sets it
    up (the options reach the workers; `--direct_running_mode` and `--direct_num_workers` apply).
    DirectRunner itself first tries Prism, a binary it downloads from GitHub: on our machines,
    which reach only the package registries, that always fails and falls back to the FnApiRunner
    after ~0.25 CPU s and a logged exception; on one with network access the job would run on
    Prism, a runner the tests never take. Our jobs are batch pipelines, which the FnApiRunner runs
    whole. None for any other runner (Beam creates it from `--runner`; `--runner PrismRunner`
    still picks Prism)."""
    from apache_beam.runners.direct.direct_runner import SwitchingDirectRunner

    named = options.view_as(StandardOptions).runner
    try:  # the name as Beam reads it: "DirectRunner", "direct", a dotted path, ...
        runner = create_runner(named) if isinstance(named, str) else named
    except Exception:  # noqa: BLE001 - a runner that cannot be created is the job's start to report
        return None
    if type(runner) is not SwitchingDirectRunner:
        return None
    from apache_beam.portability.api import beam_provision_api_pb2
    from apache_beam.runners.portability.fn_api_runner import fn_runner
    from apache_beam.runners.portability.portable_runner import JobServiceHandle

    encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
    info = fn_runner.ExtendedProvisionInfo(beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded))
    return fn_runner.FnApiRunner(provision_info=info)


def remote_workers(options: PipelineOptions) -> str | None:
    """What runs the job's work when it is not this machine (so this machine's paths are not
    there), as a message names it; None when the workers share this machine's files. Decided as
    Beam decides it: the Dataflow service by Beam's own test
    (`PipelineOptionsValidator.is_service_runner`: DataflowRunner, not on a localhost endpoint);
    a portable runner (Flink, Spark, Prism, PortableRunner) by the SDK environment it would give
    its workers (`runner.default_environment`; Flink and Prism choose loopback, this process,
    for a local cluster): Docker containers do not see this machine's folders. DirectRunner and
    the other in-process runners (any running mode) work here; a runner Beam cannot create is
    left for the job's start to report."""
    from apache_beam.options.pipeline_options_validator import PipelineOptionsValidator
    from apache_beam.runners.portability.portable_runner import PortableRunner
    from apache_beam.transforms.environments import DockerEnvironment

    if local_runner(options) is not None:
        return None
    named = options.view_as(StandardOptions).runner
    try:
        runner = create_runner(named) if isinstance(named, str) else named
    except Exception:  # noqa: BLE001 - reported by the job's start
        return None
    name = type(runner).__name__
    if PipelineOptionsValidator(options, runner).is_service_runner():
        return f"{name}'s workers (Google Cloud machines)"
    if isinstance(runner, PortableRunner):
        # default_environment may fill in --environment_type (Flink, Prism): ask on a copy.
        copy = PipelineOptions.from_dictionary(options.get_all_options(drop_default=True))
        try:
            environment = runner.default_environment(copy)
        except Exception:  # noqa: BLE001 - a bad environment flag is the job's start to report
            return None
        if isinstance(environment, DockerEnvironment):
            return f"{name}'s workers (Docker containers)"
    return None


def worker_count(pipeline: beam.Pipeline) -> int | None:
    """How many workers the pipeline's runner runs a stage on: for DirectRunner and the FnApiRunner,
    1 in memory (one bundle at a time, in this process), else `--direct_num_workers` (0: one per
    CPU); None for every other runner (Dataflow, Prism, Flink, ...: as many as they choose)."""
    from apache_beam.runners.direct.direct_runner import SwitchingDirectRunner
    from apache_beam.runners.portability.fn_api_runner.fn_runner import FnApiRunner

    if not isinstance(pipeline.runner, SwitchingDirectRunner | FnApiRunner):
        return None
    direct = pipeline.options.view_as(DirectOptions)
    if direct.direct_running_mode == "in_memory":
        return 1
    return direct.direct_num_workers or multiprocessing.cpu_count()
