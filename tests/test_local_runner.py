"""`--runner DirectRunner` runs our jobs on Beam's FnApiRunner directly: the runner the whole suite
checks, with no attempt to download Prism first (our machines reach only the package registries,
and online DirectRunner would switch the job to Prism)."""

from __future__ import annotations

import logging

from apache_beam.options.pipeline_options import DirectOptions
from apache_beam.runners.portability.fn_api_runner.fn_runner import FnApiRunner

from pipelines.config import BooksConfig
from pipelines.launch import local_runner, pipeline_options, run_books
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
