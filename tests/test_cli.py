"""The `longctx` command line: help for every flag, YAML + flag overrides, Beam flags passed through."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys

import pytest

from longctx.cli import main
from pipelines.config import BooksConfig, add_config_flags, config_from_args
from tests.conftest import DEMO_TOKENIZER, REPO, SAMPLE_BOOKS


def test_help_lists_every_config_key():
    out = subprocess.run([sys.executable, "-m", "longctx", "books", "--help"], capture_output=True, text=True, check=True).stdout
    flat = " ".join(out.split())
    for name, field in BooksConfig.model_fields.items():
        if name == "stage_catalog":
            continue  # YAML only (a mapping)
        assert f"{field.description} [config key: {name}]" in flat, name
    assert "--runner DataflowRunner" in flat


def test_yaml_then_flags(tmp_path):
    import argparse

    cfg = tmp_path / "job.yaml"
    cfg.write_text("inputs: [a.jsonl]\noutput: o\ntokenizer: t\nstages: [32k]\nmin_tail_tokens: 5\nadd_eos: true\n")
    parser = argparse.ArgumentParser()
    add_config_flags(parser, BooksConfig)
    args, beam_args = parser.parse_known_args(
        ["--config", str(cfg), "--stages", "tiny=4096:1000-20000,128k", "--no-add-eos", "--direct_num_workers", "2"]
    )
    config = config_from_args(BooksConfig, args)
    assert [s.name for s in config.resolved_stages()] == ["tiny", "128k"]
    assert config.resolved_stages()[0].length == 4096 and config.min_tail_tokens == 5 and config.add_eos is False
    assert beam_args == ["--direct_num_workers", "2"]


def test_cli_runs_a_job_and_prints_the_summary(tmp_path, capsys):
    src = tmp_path / "books.jsonl"
    # Openings of three real novels: distinct English prose that the quality filters keep.
    with gzip.open(SAMPLE_BOOKS, "rt", encoding="utf-8") as fh:
        texts = [json.loads(next(fh))["text"][:3000] for _ in range(3)]
    src.write_text("".join(json.dumps({"id": f"b{i}", "text": text}) + "\n" for i, text in enumerate(texts)))
    out = tmp_path / "out"
    code = main(["books", "--input", str(src), "--output", str(out), "--tokenizer", DEMO_TOKENIZER,
                 "--stages", "tiny=1024:100-100000", "--direct_running_mode", "in_memory",
                 "--runner=DirectRunner", "--direct_num_workers", "1", "--no_pipeline_type_check"])  # Beam's flags pass
    assert code == 0
    printed = capsys.readouterr().out
    assert "read 3 = kept 3 + rejected 0: OK" in printed and "tiny" in printed
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stages"]["tiny"]["rows"] >= 1


def test_cli_refuses_a_job_without_inputs(capsys):
    with pytest.raises(SystemExit) as err:
        main(["books", "--output", "x", "--tokenizer", DEMO_TOKENIZER])
    assert err.value.code == 2
    assert "missing required setting(s): inputs" in capsys.readouterr().err


def test_unknown_stage_is_a_usage_error(capsys):
    with pytest.raises(SystemExit):
        main(["books", "--input", "x", "--output", "y", "--tokenizer", "t", "--stages", "nope"])
    assert "unknown stage 'nope'" in capsys.readouterr().err


def test_one_pipeline_options_holds_our_flags_and_beams():
    from apache_beam.options.pipeline_options import (
        GoogleCloudOptions,
        PipelineOptions,
        SetupOptions,
        StandardOptions,
        WorkerOptions,
    )

    from pipelines.jobs import DATA_JOBS

    options = PipelineOptions([
        "--input", "gs://b/in/*.jsonl.gz", "--input", "gs://b/more/*.parquet", "--output", "gs://b/out",
        "--tokenizer", "gs://b/tok/tokenizer.json", "--stages", "32k,128k", "--no-add-eos", "--sample", "100",
        "--runner", "DataflowRunner", "--project", "P", "--region", "R", "--temp_location", "gs://b/tmp",
        "--setup_file", "./setup.py", "--max_num_workers", "8", "--machine_type", "n1-standard-8",
        "--sdk_container_image", "gcr.io/p/longctx-worker:1", "--experiments", "use_runner_v2",
    ])
    config = DATA_JOBS["books"].config_from(options)
    assert config.inputs == ["gs://b/in/*.jsonl.gz", "gs://b/more/*.parquet"] and config.output == "gs://b/out"
    assert [s.name for s in config.resolved_stages()] == ["32k", "128k"] and config.add_eos is False and config.sample == 100
    assert options.view_as(StandardOptions).runner == "DataflowRunner"
    assert options.view_as(GoogleCloudOptions).project == "P"
    assert options.view_as(SetupOptions).setup_file == "./setup.py"
    assert options.view_as(WorkerOptions).sdk_container_image == "gcr.io/p/longctx-worker:1"


DATA_JOBS = ["books", "qa", "video", "images"]


@pytest.mark.parametrize("job", DATA_JOBS)
@pytest.mark.parametrize("typo", [["--min-tial-tokens", "5"], ["--min-tial-tokens=5"]])
def test_a_mistyped_flag_stops_the_job_before_it_writes(job, typo, tmp_path, capsys):
    # Beam used to drop the flag with a log line and run the job with min_tail_tokens=1024.
    src = tmp_path / "books.jsonl"
    src.write_text(json.dumps({"id": "b0", "text": "Whale ho! " * 300}) + "\n")
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as err:
        main([job, "--input", str(src), "--output", str(out), "--tokenizer", DEMO_TOKENIZER,
              "--stages", "tiny=1024:100-100000", *typo, "--direct_running_mode", "in_memory"])
    assert err.value.code == 2
    message = capsys.readouterr().err
    assert f"{job}: unknown flag --min-tial-tokens (did you mean --min-tail-tokens?)" in " ".join(message.split())
    assert not out.exists()


def test_every_unknown_flag_is_named_with_its_closest_known_flag():
    from pipelines.config import QAConfig, VideoConfig
    from pipelines.options import unknown_flags

    assert unknown_flags(BooksConfig, ["--shuffle-sed", "3", "--direct_num_worker", "2", "stray", "--min_tail_tokens=7"]) == [
        "unknown flag --shuffle-sed (did you mean --shuffle-seed?)",
        "unknown flag --direct_num_worker (did you mean --direct_num_workers?)",
        "unexpected argument 'stray'",
        "unknown flag --min_tail_tokens (did you mean --min-tail-tokens?)",
    ]
    # Beam parses without abbreviations, so an abbreviated flag would be dropped too.
    assert unknown_flags(BooksConfig, ["--min-tail", "5"]) == ["unknown flag --min-tail (did you mean --min-tail-tokens?)"]
    # Another data job's flag is not this job's (LongctxOptions holds them all for Beam).
    assert unknown_flags(BooksConfig, ["--vqgan", "v", "--backend", "vllm"]) == [
        "unknown flag --vqgan (a flag of longctx video/images only)", "unknown flag --backend (a flag of longctx qa only)",
    ]
    assert unknown_flags(QAConfig, ["--backend", "vllm", "--model", "m"]) == []
    assert unknown_flags(VideoConfig, ["--vqgan", "v", "--fps", "2", "--no-strip-gutenberg"]) == []


def test_beam_flags_of_every_options_class_pass_in_both_forms():
    from pipelines.options import check_job_flags, unknown_flags

    beam_flags = [
        "--runner", "DataflowRunner", "--project=P", "--region", "R", "--temp_location=gs://b/tmp",
        "--staging_location", "gs://b/staging", "--setup_file", "./setup.py", "--sdk_container_image=img:1",
        "--experiments=use_runner_v2", "--experiments", "a,b", "--max_num_workers", "8", "--machine_type=n1-standard-8",
        "--dataflow_service_options=worker_accelerator=type:nvidia-l4;count:1", "--no_use_public_ips",
        "--save_main_session", "--streaming", "--no_pipeline_type_check", "--dry_run=True",
        "--direct_num_workers", "2", "--direct_running_mode=multi_processing", "--direct_runner_bundle_repeat", "0",
        "--sdk_harness_log_level_overrides", '{"a.b": "DEBUG"}', "--s3_region_name=eu", "--job_endpoint", "localhost:8099",
        "--environment_type=LOOPBACK", "--prism_location", "/bin/prism", "--beam_plugins", "x.y",
    ]
    ours = ["--config", "c.yaml", "--input", "a", "--output=o", "--no-add-eos", "--stages", "32k", "--sample=3"]
    assert unknown_flags(BooksConfig, ours + beam_flags) == []
    check_job_flags(BooksConfig, beam_flags + ours)
    # Beam's own value checks are made before the job starts too.
    with pytest.raises(ValueError, match="invalid int value: 'two'"):
        check_job_flags(BooksConfig, ["--direct_num_workers", "two"])


def test_a_runners_own_options_class_is_known():
    # RenderRunner registers RenderOptions (--render_output) only when Beam imports the runner,
    # after the check would otherwise have run: a fresh process, so nothing imported it before.
    code = ("import json; from pipelines.config import BooksConfig; from pipelines.options import unknown_flags\n"
            "print(json.dumps(unknown_flags(BooksConfig, ['--runner', 'apache_beam.runners.render.RenderRunner', "
            "'--render_output', 'g.svg', '--render_outptu', 'x'])))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO).stdout
    assert json.loads(out) == ["unknown flag --render_outptu (did you mean --render_output?)"]


def _worker_startup_log(options) -> str:
    """What an SDK-harness worker (multi_processing, Dataflow) logs while it starts: Beam's own
    start-up code in a fresh process, given the options as the runner hands them over."""
    from google.protobuf import json_format

    code = ("import sys; from apache_beam.runners.worker import sdk_worker_main\n"
            "sdk_worker_main.create_harness({'PIPELINE_OPTIONS': sys.argv[1], "
            "'CONTROL_API_SERVICE_DESCRIPTOR': \"url: 'localhost:1'\"}, dry_run=True)")
    options_json = json_format.MessageToJson(options.to_runner_api())
    return subprocess.run([sys.executable, "-c", code, options_json], capture_output=True, text=True, check=True).stderr


def test_workers_do_not_warn_about_our_flags():
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipelines.options import job_pipeline_options

    flags = ["--input", "a.jsonl", "--output", "o", "--tokenizer", "t", "--overwrite", "--direct_running_mode", "multi_processing"]
    # Without the job's options, the worker reproduces the warning with our flags ...
    warning = [line for line in _worker_startup_log(PipelineOptions(flags)).splitlines() if "Discarding unparseable args" in line]
    assert len(warning) == 1 and all(f in warning[0] for f in ("'--overwrite'", "'--tokenizer=t'", "'--inputs=a.jsonl'", "'--output=o'"))
    log = _worker_startup_log(job_pipeline_options(flags))
    options_line = next(line for line in log.splitlines() if "Pipeline_options: {" in line)
    assert "'direct_running_mode': 'multi_processing'" in options_line  # the worker read the options
    assert "Discarding" not in log


def test_a_worker_log_level_given_on_the_command_line_wins():
    from apache_beam.options.pipeline_options import WorkerOptions

    from pipelines.options import job_pipeline_options

    options = job_pipeline_options(["--sdk_harness_log_level_overrides", '{"apache_beam.options.pipeline_options": "INFO", "x": "DEBUG"}'])
    assert options.view_as(WorkerOptions).sdk_harness_log_level_overrides == {"apache_beam.options.pipeline_options": "INFO", "x": "DEBUG"}
