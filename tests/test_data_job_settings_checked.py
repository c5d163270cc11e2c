"""Data-job settings that cannot work stop the job before it starts, in one line with exit code 2;
and what a job leaves behind matches what the README promises. Each case here once failed only
inside the running pipeline (pages of tracebacks, exit 1), with a raw TypeError, or was silently
accepted as something else."""

from __future__ import annotations

import json

import pytest

from pipelines.config import BooksConfig
from pipelines.launch import run_books
from tests.conftest import DEMO_TOKENIZER, cli_error

IN_MEMORY = ["--runner=DirectRunner", "--direct_running_mode=in_memory"]
# The curation filters judge real prose; these tests are about settings, not about the texts.
NO_FILTERS = ["--no-quality-filter", "--no-near-duplicates", "--languages", ""]
WORDS = ("river stone garden letter window morning village doctor silver harbour candle forest winter "
         "journey lantern meadow market orchard bridge captain").split()


def _text(seed: int, words: int = 300) -> str:
    """A few hundred distinct-enough words (no two records are duplicates)."""
    return " ".join(WORDS[(seed * 7 + i * (seed + 3)) % len(WORDS)] for i in range(words)) + f". Record {seed}."


@pytest.fixture
def small(tmp_path):
    path = tmp_path / "small.jsonl"
    path.write_text("".join(json.dumps({"id": f"r{i}", "text": _text(i)}) + "\n" for i in range(3)))
    return path


def _qa(small, out, *extra: str) -> list[str]:
    return ["qa", "--input", str(small), "--output", str(out), "--tokenizer", DEMO_TOKENIZER,
            "--stages", "tiny=4096:1", *extra]


def _yaml(path, small, out, body: str):
    path.write_text(f"inputs: [{json.dumps(str(small))}]\noutput: {json.dumps(str(out))}\n"
                    f"tokenizer: {json.dumps(DEMO_TOKENIZER)}\n{body}")
    return path


# --- 1. the transformers backend's model ----------------------------------------------------------


@pytest.mark.parametrize(("model", "problem"), [
    ("missing", "no such file or folder"),
    ("input", "a file that is not a model"),
    ("folder", "no config.json in this folder, so it is not a transformers model"),
    ("bad.gguf", "not a GGUF file"),
])
def test_a_local_generator_model_that_cannot_load_is_refused_before_the_job(small, tmp_path, capsys, model, problem):
    (tmp_path / "folder").mkdir()
    (tmp_path / "bad.gguf").write_text("not a model")
    path = {"missing": tmp_path / "nowhere" / "model", "input": small}.get(model, tmp_path / model)
    out = tmp_path / "out"
    line = cli_error(_qa(small, out, "--backend", "transformers", "--model", str(path)), capsys)[-1]
    assert line.startswith("longctx qa: error: model ") and f": {problem}" in line, line
    assert line.endswith("or a Hugging Face hub id")
    assert not out.exists()


def test_a_hub_id_that_cannot_be_fetched_is_refused_before_the_job(small, tmp_path, capsys, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # as on a machine without network: nothing is fetched
    line = cli_error(_qa(small, tmp_path / "out", "--backend", "transformers", "--model", "someorg/somemodel"), capsys)[-1]
    assert line.startswith("longctx qa: error: model 'someorg/somemodel': no such folder, and as a Hugging Face hub id "
                           "it could not be fetched (HF_HUB_OFFLINE is set) and is not in the local Hugging Face cache"), line
    assert not (tmp_path / "out").exists()


def test_the_extractive_backend_needs_no_model(tmp_path):
    from pipelines.config import QAConfig
    from pipelines.launch import check_generator

    check_generator(QAConfig.model_validate({"backend": "extractive", "model": str(tmp_path / "nowhere")}))


# --- 2. the vllm backend on a local runner ---------------------------------------------------------


def test_the_vllm_backend_without_vllm_is_refused_on_a_local_runner(small, tmp_path, capsys, monkeypatch):
    import pipelines.qa_backends

    monkeypatch.setattr(pipelines.qa_backends, "vllm_installed", lambda: False)
    for runner in ([], ["--runner", "DirectRunner"]):
        line = cli_error(_qa(small, tmp_path / "out", "--backend", "vllm", "--model", "foo", *runner), capsys)[-1]
        assert line.startswith("longctx qa: error: the vllm backend needs the vllm package on this machine"), line
        assert "pip install 'longctx[vllm]'" in line
    assert not (tmp_path / "out").exists()


def test_the_vllm_backend_is_not_refused_for_dataflow_workers(monkeypatch):
    """Dataflow's workers run the server in their own container, which may hold vllm."""
    import pipelines.qa_backends
    from pipelines.config import QAConfig
    from pipelines.launch import check_generator, runs_locally

    monkeypatch.setattr(pipelines.qa_backends, "vllm_installed", lambda: False)
    config = QAConfig.model_validate({"backend": "vllm", "model": "foo"})
    assert runs_locally(None) and runs_locally(["--runner=DirectRunner"])
    assert not runs_locally(["--runner=DataflowRunner"])
    check_generator(config, ["--runner=DataflowRunner"])


def test_vllm_is_looked_for_where_the_server_will_run(tmp_path, monkeypatch):
    """The server is `python -m vllm...` with this environment: a vllm on PYTHONPATH counts."""
    from pipelines.qa_backends import vllm_installed

    (tmp_path / "vllm").mkdir()
    (tmp_path / "vllm" / "__init__.py").write_text("")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    assert vllm_installed()
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "empty"))
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        assert not vllm_installed()


# --- 3. languages that are not a list ------------------------------------------------------------


@pytest.mark.parametrize("value", ["5", "true", "3.5", "{en: 1}"])
def test_languages_that_are_not_a_list_of_codes_are_one_line(small, tmp_path, capsys, value):
    config = _yaml(tmp_path / "books.yaml", small, tmp_path / "out", f"languages: {value}\n")
    line = cli_error(["books", "--config", str(config)], capsys)[-1]
    assert line.startswith("longctx books: error: ") and "languages: languages takes a list or a comma-separated string of ISO 639-1 codes" in line, line


# --- 4. no stages ---------------------------------------------------------------------------------


NO_STAGES = "no stages given: name at least one with --stages"


@pytest.mark.parametrize("stages", ["", ",", " , "])
def test_an_empty_stage_list_is_refused_before_any_work(small, tmp_path, capsys, stages):
    out = tmp_path / "out"
    argv = ["books", "--input", str(small), "--output", str(out), "--tokenizer", DEMO_TOKENIZER, "--stages", stages]
    assert cli_error(argv, capsys)[-1].startswith(f"longctx books: error: {NO_STAGES}")
    assert not out.exists()


@pytest.mark.parametrize(("name", "why"), [
    ("rejects", "the job writes its own rejects/ folder"),
    ("inspect", "`longctx inspect` writes its plots to inspect/"),  # its PNGs landed beside that stage's shards
])
def test_a_stage_named_like_a_folder_written_beside_the_stages_is_refused(small, tmp_path, capsys, name, why):
    out = tmp_path / "out"
    argv = ["books", "--input", str(small), "--output", str(out), "--tokenizer", DEMO_TOKENIZER, "--stages", f"{name}=512:1"]
    assert cli_error(argv, capsys)[-1].endswith(f"stage name {name!r} is reserved ({why})")
    assert not out.exists()


def test_an_empty_stage_list_in_yaml_is_refused(small, tmp_path, capsys):
    config = _yaml(tmp_path / "books.yaml", small, tmp_path / "out", "stages: []\n")
    assert cli_error(["books", "--config", str(config)], capsys)[-1].startswith(f"longctx books: error: {NO_STAGES}")
    assert not (tmp_path / "out").exists()


def test_an_empty_stage_list_is_refused_for_video(tmp_path, capsys):
    manifest = tmp_path / "videos.jsonl"
    manifest.write_text(json.dumps({"video": "clip.mp4", "text": "A clip."}) + "\n")
    argv = ["video", "--input", str(manifest), "--output", str(tmp_path / "out"), "--tokenizer", DEMO_TOKENIZER,
            "--vqgan", str(tmp_path), "--stages", ""]
    assert cli_error(argv, capsys)[-1].startswith(f"longctx video: error: {NO_STAGES}")


# --- 5. a damaged rejects line -------------------------------------------------------------------


def _books_config(small, out, stages: list[str], **extra) -> BooksConfig:
    return BooksConfig.model_validate({"inputs": [str(small)], "output": str(out), "tokenizer": DEMO_TOKENIZER,
                                       "stages": stages, "quality_filter": False, "near_duplicates": False,
                                       "languages": [], **extra})


NO_STAGE_TAKES_THEM = ["big=512:100000"]  # every record is shorter: all are rejected (no_stage)


@pytest.mark.parametrize("damage", ["{broken", "5"])
def test_inspect_names_the_rejects_file_and_line_that_is_damaged(small, tmp_path, capsys, damage):
    out = tmp_path / "out"
    manifest = run_books(_books_config(small, out, NO_STAGE_TAKES_THEM), IN_MEMORY)
    rel = manifest["rejects"][0]
    lines = (out / rel).read_text().splitlines()
    (out / rel).write_text("\n".join([*lines, damage]) + "\n")
    line = cli_error(["inspect", str(out), "--no-plots"], capsys)[-1]
    assert line.startswith("longctx inspect: error: ") and f"{rel}, line {len(lines) + 1}:" in line, line


# --- 6. --overwrite leaves no empty rejects/ -----------------------------------------------------


def test_overwrite_removes_the_rejects_folder_when_the_new_run_rejects_nothing(small, tmp_path):
    out = tmp_path / "out"
    first = run_books(_books_config(small, out, NO_STAGE_TAKES_THEM), IN_MEMORY)
    assert first["rejects"] and (out / "rejects").is_dir()
    second = run_books(_books_config(small, out, ["tiny=512:1"], overwrite=True), IN_MEMORY)
    assert second["kept"] == 3 and second["rejects"] == []
    assert not (out / "rejects").exists()  # README: rejects/ exists only when something was rejected


# --- 7. strict integers in stage_catalog ---------------------------------------------------------


@pytest.mark.parametrize(("entry", "field"), [
    ("{length: true, min_tokens: 1}", "length"),
    ("{length: 4096, min_tokens: true}", "min_tokens"),
    ("{length: 4096, max_tokens: true}", "max_tokens"),
    ("{length: 4096.0, min_tokens: 1}", "length"),
])
def test_a_stage_catalog_number_must_be_an_integer(small, tmp_path, capsys, entry, field):
    config = _yaml(tmp_path / "books.yaml", small, tmp_path / "out", f"stages: [tiny]\nstage_catalog: {{tiny: {entry}}}\n")
    line = cli_error(["books", "--config", str(config)], capsys)[-1]
    assert line.startswith("longctx books: error: ") and f"stage_catalog.tiny.{field}: Input should be a valid integer" in line, line
    assert not (tmp_path / "out").exists()
