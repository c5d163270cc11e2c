"""The runner a job's options name (`pipelines.runners`): `--runner DirectRunner` runs our jobs on
Beam's FnApiRunner directly (the runner the whole suite checks, with no attempt to download Prism
first: our machines reach only the package registries, and online DirectRunner would switch the
job to Prism), and the documents a job reads are spread over its workers unless it has one."""

from __future__ import annotations

import logging
import multiprocessing

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import DirectOptions
from apache_beam.runners.portability.fn_api_runner.fn_runner import FnApiRunner

from pipelines.config import BooksConfig
from pipelines.launch import pipeline_options, run_books
from pipelines.runners import local_runner, worker_count
from tests.conftest import DEMO_TOKENIZER, SAMPLE_BOOKS


def test_direct_runner_is_the_fn_api_runner_with_the_options():
    options = pipeline_options(["--direct_running_mode=multi_processing", "--direct_num_workers=2"])
    runner = local_runner(options)
    assert isinstance(runner, FnApiRunner)
    # The options travel to the workers as DirectRunner sends them, and the running mode stays
    # the options' to choose (the FnApiRunner reads it when the job starts).
    sent = runner._provision_info.provision_info.pipeline_options
    assert sent["beam:option:direct_running_mode:v1"] == "multi_processing"
    assert options.view_as(DirectOptions).direct_num_workers == 2
    for name in ("DirectRunner", "direct", "Direct", "SwitchingDirectRunner", "apache_beam.runners.direct.direct_runner.DirectRunner"):
        assert isinstance(local_runner(pipeline_options([f"--runner={name}"])), FnApiRunner), name


def test_other_runners_are_left_to_beam():
    for name in ("DataflowRunner", "PrismRunner", "FnApiRunner", "BundleBasedDirectRunner", "TestDirectRunner", "NoSuchRunner"):
        assert local_runner(pipeline_options([f"--runner={name}"])) is None, name


def test_a_job_on_direct_runner_never_tries_prism(tmp_path, caplog):
    config = BooksConfig.model_validate({
        "inputs": [str(SAMPLE_BOOKS)], "output": str(tmp_path / "out"), "tokenizer": DEMO_TOKENIZER,
        "stages": ["s1k=1024:100000-250000"], "sample": 2,
    })
    with caplog.at_level(logging.INFO):
        manifest = run_books(config, ["--runner=DirectRunner"])
    assert manifest["stages"]["s1k"]["rows"] > 0
    beam_lines = [r.getMessage() for r in caplog.records if r.name.startswith("apache_beam")]
    assert beam_lines, "Beam logged nothing at INFO: the check below would prove nothing"
    assert not [line for line in beam_lines if "prism" in line.lower()]


@pytest.mark.parametrize("flags, workers", [
    ([], 1),
    (["--runner=direct"], 1),
    (["--runner=FnApiRunner"], 1),
    (["--direct_num_workers=4"], 1),  # in memory: Beam warns that the count has no effect
    (["--direct_running_mode=multi_processing", "--direct_num_workers=2"], 2),
    (["--runner=FnApiRunner", "--direct_running_mode=multi_threading", "--direct_num_workers=3"], 3),
    (["--direct_running_mode=multi_processing", "--direct_num_workers=0"], multiprocessing.cpu_count()),
    (["--direct_running_mode=multi_processing", "--direct_num_workers=1"], 1),
    (["--runner=PrismRunner"], None),
])
def test_worker_count_of_a_runner(flags, workers):
    options = pipeline_options(flags)
    assert worker_count(beam.Pipeline(options=options)) == workers
    if workers is not None:  # the runner our jobs run DirectRunner on (launch.job_pipeline)
        assert worker_count(beam.Pipeline(runner=local_runner(options) or FnApiRunner(), options=options)) == workers


def test_worker_count_follows_the_runner_the_pipeline_was_given():
    from apache_beam.runners.portability.prism_runner import PrismRunner

    in_memory = pipeline_options([])  # --runner DirectRunner, in memory
    assert worker_count(beam.Pipeline(options=in_memory)) == 1
    assert worker_count(beam.Pipeline(runner=PrismRunner(), options=in_memory)) is None


def _books_graph(flags: list[str]) -> tuple[set[str], str]:
    """(every step name, the name of the step whose output Clean reads) of the books job built,
    not run, with these Beam flags."""
    from pipelines.books import BuildBookShards
    from pipelines.launch import shard_metadata

    config = BooksConfig.model_validate({"inputs": [str(SAMPLE_BOOKS)], "output": "memory://unused", "tokenizer": DEMO_TOKENIZER,
                                         "stages": ["s1k=1024:100000-250000"]})
    pipeline = beam.Pipeline(options=pipeline_options(flags))
    _ = pipeline | "Books" >> BuildBookShards(config, shard_metadata(config, "books"))
    proto = pipeline.to_runner_api()
    transforms = proto.components.transforms
    producer = {pc: t.unique_name for t in transforms.values() if not t.subtransforms for pc in t.outputs.values()}
    (clean,) = [t for t in transforms.values() if t.unique_name.endswith("/Clean/ParDo(CleanText)")]
    (docs,) = clean.inputs.values()
    return {t.unique_name for t in transforms.values()}, producer[docs]


def test_documents_are_spread_over_workers_unless_there_is_one():
    # One worker (DirectRunner in memory): Clean reads the parsed records straight from the read.
    names, feeder = _books_graph([])
    assert feeder.endswith("/Read/Parse/ParDo(ReadRecords)") and not [n for n in names if "SpreadDocuments" in n]
    # Two worker processes: the documents are reshuffled first, so a compressed file read whole
    # by one worker is cleaned, judged and sketched by all of them.
    names, feeder = _books_graph(["--direct_running_mode=multi_processing", "--direct_num_workers=2"])
    assert "/Prepare/SpreadDocuments/" in feeder, feeder
