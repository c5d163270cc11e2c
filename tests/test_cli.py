"""The `longctx` command line: help for every flag, YAML + flag overrides, Beam flags passed through."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pipelines.cli import main
from pipelines.config import BooksConfig, add_config_flags, config_from_args
from tests.conftest import DEMO_TOKENIZER


def test_help_lists_every_config_key():
    out = subprocess.run([sys.executable, "-m", "pipelines.cli", "books", "--help"], capture_output=True, text=True, check=True).stdout
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
    src.write_text("".join(json.dumps({"id": f"b{i}", "text": "Whale ho! " * (300 + 50 * i)}) + "\n" for i in range(3)))
    out = tmp_path / "out"
    code = main(["books", "--input", str(src), "--output", str(out), "--tokenizer", DEMO_TOKENIZER,
                 "--stages", "tiny=1024:100-100000", "--direct_running_mode", "in_memory"])
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

    from pipelines.options import books_config

    options = PipelineOptions([
        "--input", "gs://b/in/*.jsonl.gz", "--input", "gs://b/more/*.parquet", "--output", "gs://b/out",
        "--tokenizer", "gs://b/tok/tokenizer.json", "--stages", "32k,128k", "--no-add-eos", "--sample", "100",
        "--runner", "DataflowRunner", "--project", "P", "--region", "R", "--temp_location", "gs://b/tmp",
        "--setup_file", "./setup.py", "--max_num_workers", "8", "--machine_type", "n1-standard-8",
        "--sdk_container_image", "gcr.io/p/longctx-worker:1", "--experiments", "use_runner_v2",
    ])
    config = books_config(options)
    assert config.inputs == ["gs://b/in/*.jsonl.gz", "gs://b/more/*.parquet"] and config.output == "gs://b/out"
    assert [s.name for s in config.resolved_stages()] == ["32k", "128k"] and config.add_eos is False and config.sample == 100
    assert options.view_as(StandardOptions).runner == "DataflowRunner"
    assert options.view_as(GoogleCloudOptions).project == "P"
    assert options.view_as(SetupOptions).setup_file == "./setup.py"
    assert options.view_as(WorkerOptions).sdk_container_image == "gcr.io/p/longctx-worker:1"
