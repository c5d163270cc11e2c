"""Settings a job would ignore without a word are refused in one line naming both sides: a
filter's thresholds with the filter off (quality, language, near duplicates), decontamination
settings without evaluation documents, and QA generator settings the chosen backend does not read.
Judged on what the user gave (flags and --config keys): a default never triggers a refusal, and
the same settings with their filter on still run (up to the next check: the output folder)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines.config import GENERATOR_KEYS, QAConfig
from pipelines.jobs import DATA_JOBS
from pipelines.options import job_pipeline_options
from tests.conftest import DEMO_TOKENIZER, REPO, cli_error

ERR = "longctx {job}: error: "


@pytest.fixture
def common(tmp_path):
    books = tmp_path / "books.jsonl"
    books.write_text(json.dumps({"id": "a", "text": "A book. " * 50}) + "\n")
    return ["--input", str(books), "--output", str(tmp_path / "out"), "--tokenizer", DEMO_TOKENIZER, "--stages", "t=64:0-"]


def _config(job: str, flags: list[str]):
    return DATA_JOBS[job].config_from(job_pipeline_options(flags))


@pytest.mark.parametrize("extra, message", [
    (["--no-quality-filter", "--quality", "{max_dup_lines: 0.9}"],
     "--quality '{max_dup_lines: 0.9}' is given with --no-quality-filter, which turns the quality rules off, so it would be "
     "ignored: drop it or give --quality-filter"),
    (["--languages", "", "--min-language-confidence", "0.9"],
     "--min-language-confidence 0.9 is given with --languages '', which turns language identification off, so it would be "
     "ignored: drop it or give languages to keep (--languages en)"),
    (["--no-near-duplicates", "--near-dup-threshold", "0.3"],
     "--near-dup-threshold 0.3 is given with --no-near-duplicates, which turns near-duplicate detection off, so it would be "
     "ignored: drop it or give --near-duplicates"),
    (["--no-near-duplicates", "--near-dup-bands", "20", "--near-dup-rows", "6", "--near-dup-ngram", "3"],
     "--near-dup-ngram 3 and --near-dup-bands 20 and --near-dup-rows 6 are given with --no-near-duplicates, which turns "
     "near-duplicate detection off, so they would be ignored: drop them or give --near-duplicates"),
    (["--decontaminate-threshold", "0.8"],
     "--decontaminate-threshold 0.8 is given without --decontaminate (no evaluation documents), so it would be ignored: "
     "drop it or give the evaluation documents with --decontaminate FILE"),
    (["--decontaminate-ngram", "8", "--decontaminate-text-field", "question"],
     "--decontaminate-ngram 8 and --decontaminate-text-field question are given without --decontaminate (no evaluation "
     "documents), so they would be ignored: drop them or give the evaluation documents with --decontaminate FILE"),
])
@pytest.mark.parametrize("job", ["books", "qa"])
def test_a_setting_of_a_step_that_is_off_is_refused(common, capsys, job, extra, message):
    line = cli_error([job, *common, *extra], capsys)[-1]
    assert line == ERR.format(job=job) + message


def test_the_settings_in_a_config_file_are_named_there(common, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the file is named as given: books.yaml
    config = Path("books.yaml")
    config.write_text("quality_filter: false\nquality: {max_dup_lines: 0.9}\nnear_duplicates: false\n")
    line = cli_error(["books", "--config", str(config), *common], capsys)[-1]
    assert line == (ERR.format(job="books") + f"quality: {{'max_dup_lines': 0.9}} in {config} is given with quality_filter: "
                    f"false in {config}, which turns the quality rules off, so it would be ignored: drop it or give --quality-filter")
    config.write_text("languages: []\n")
    line = cli_error(["books", "--config", str(config), *common, "--min-language-confidence", "0.7"], capsys)[-1]
    assert line.startswith(ERR.format(job="books") + f"--min-language-confidence 0.7 is given with languages: [] in {config}, ")


@pytest.mark.parametrize("flags", [
    ["--no-quality-filter"], ["--languages", ""], ["--no-near-duplicates"], ["--quality", "{max_dup_lines: 0.9}"],
    ["--near-dup-threshold", "0.6"], ["--decontaminate-threshold", "0.8", "--decontaminate", "x.jsonl"],
    ["--languages", "en", "--min-language-confidence", "0.9"], ["--quality-filter", "--quality", "{min_words: 10}"],
])
def test_a_switch_alone_or_a_setting_with_its_step_on_is_accepted(common, flags):
    # Every other key is at its default (thresholds included): defaults are never "given".
    config = _config("books", [*common, *flags])
    assert config.stages == ["t=64:0-"]


def test_the_shipped_config_passes(tmp_path):
    config = _config("books", ["--config", str(REPO / "configs/books/demo.yaml"), "--output", str(tmp_path / "out")])
    assert config.near_duplicates and config.quality_filter


@pytest.mark.parametrize("extra, message", [
    (["--model", "HuggingFaceTB/SmolLM2-135M-Instruct"],
     "--model HuggingFaceTB/SmolLM2-135M-Instruct is given, but --backend extractive (the default) does not read it "
     "(read only by --backend transformers and --backend vllm), so it would be ignored: drop it or choose one of those"),
    (["--backend", "extractive", "--temperature", "0.7", "--device", "cuda"],
     "--device cuda and --temperature 0.7 are given, but --backend extractive does not read them (read only by --backend "
     "transformers), so they would be ignored: drop them or choose that backend"),
    (["--backend", "extractive", "--gguf-file", "m.gguf"],
     "--gguf-file m.gguf is given, but --backend extractive does not read it (read only by --backend transformers), so it "
     "would be ignored: drop it or choose that backend"),
    (["--backend", "extractive", "--vllm-chat-template", "t.jinja", "--max-new-tokens", "50"],
     "--max-new-tokens 50 and --vllm-chat-template t.jinja are given, but --backend extractive does not read them (read only "
     "by --backend vllm), so they would be ignored: drop them or choose that backend"),
    (["--backend", "transformers", "--model", "m", "--vllm-chat-template", "t.jinja"],
     "--vllm-chat-template t.jinja is given, but --backend transformers does not read it (read only by --backend vllm), so "
     "it would be ignored: drop it or choose that backend"),
    (["--backend", "vllm", "--model", "m", "--device", "cuda", "--batch-size", "8"],
     "--device cuda and --batch-size 8 are given, but --backend vllm does not read them (read only by --backend "
     "transformers), so they would be ignored: drop them or choose that backend"),
])
def test_a_generator_setting_the_backend_does_not_read_is_refused(common, capsys, extra, message):
    line = cli_error(["qa", *common, *extra], capsys)[-1]
    assert line == ERR.format(job="qa") + message


def test_a_yaml_only_vllm_setting_with_another_backend_is_refused(common, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = Path("qa.yaml")
    config.write_text("backend: transformers\nmodel: m\nvllm_server_kwargs: {max-model-len: '4096'}\n")
    line = cli_error(["qa", "--config", str(config), *common], capsys)[-1]
    assert line.startswith(ERR.format(job="qa") + f"vllm_server_kwargs: {{'max-model-len': '4096'}} in {config} is given, "
                           f"but backend: transformers in {config} does not read it (read only by --backend vllm)")


@pytest.mark.parametrize("backend", ["transformers", "vllm"])
def test_each_backend_takes_the_settings_it_reads(common, backend):
    flags = {"model": "m", "gguf_file": "m.gguf", "device": "cpu", "trust_remote_code": True, "batch_size": "2",
             "max_new_tokens": "20", "temperature": "0.5", "prompt_template": "{passage}", "vllm_chat_template": "t.jinja"}
    argv = [*common, "--backend", backend, "--keep-raw-output"]
    for key in GENERATOR_KEYS[backend]:
        if key in flags:
            flag = "--" + key.replace("_", "-")
            argv += [flag] if flags[key] is True else [flag, flags[key]]
    config = _config("qa", argv)
    assert config.backend == backend and config.model == "m" and config.keep_raw_output


def test_the_generator_key_table_names_what_the_handlers_take():
    import inspect

    from pipelines.qa_backends import TransformersHandler

    assert set(GENERATOR_KEYS["all"]) <= set(QAConfig.model_fields)
    taken = set(inspect.signature(TransformersHandler.__init__).parameters) - {"self"}
    assert {"model" if name == "model" else name for name in taken} <= set(GENERATOR_KEYS["transformers"])
    assert GENERATOR_KEYS["extractive"] == ()


def test_a_manifest_config_with_every_default_validates_again(common):
    # The checks read what was given: a manifest's config (every field set) is validated again.
    config = _config("qa", [*common, "--no-near-duplicates", "--languages", "", "--no-quality-filter"])
    assert QAConfig.model_validate(json.loads(json.dumps(config.model_dump(mode="json")))) == config
    assert Path(config.inputs[0]).name == "books.jsonl"


def test_a_flag_that_turns_a_step_off_overrides_the_config_files_settings_for_it(common, tmp_path, monkeypatch):
    """`--no-quality-filter` (or `--no-near-duplicates`, `--languages ''`, another `--backend`) on a
    run whose --config file sets that step's thresholds is the flag doing its job for this run: the
    file stays usable for the runs that keep the step, so this is accepted (the same keys given as
    flags, or the switch in the same file, are refused above)."""
    monkeypatch.chdir(tmp_path)
    Path("books.yaml").write_text("quality: {max_dup_lines: 0.9}\nnear_dup_threshold: 0.6\nmin_language_confidence: 0.7\n")
    config = _config("books", ["--config", "books.yaml", *common, "--no-quality-filter", "--no-near-duplicates",
                               "--languages", ""])
    assert config.quality_filter is False and config.near_duplicates is False and config.languages == []
    Path("qa.yaml").write_text("backend: transformers\nmodel: m\ntemperature: 0.7\n")
    assert _config("qa", ["--config", "qa.yaml", *common, "--backend", "extractive"]).backend == "extractive"
