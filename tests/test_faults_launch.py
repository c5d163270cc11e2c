"""Fault probes on the launcher: what can be checked before a pipeline starts is checked then,
and said in one line (the CLI turns it into a usage error): unsafe stage names, an output that
is a file or cannot be created, a tokenizer file that is not a tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from curation.stages import LWM_STAGES, Stage, parse_stage_list
from longctx.cli import main
from pipelines.config import BooksConfig
from pipelines.launch import ConfigError, run_books
from tests.conftest import DEMO_TOKENIZER

IN_MEMORY = ["--runner=DirectRunner", "--direct_running_mode=in_memory"]
BAD_NAMES = ["../x", "..", "a/b", "/abs", ".hidden", "x\\y", "sp ace", "rejects", "", "-dash"]


def _config(tmp_path: Path, **kw) -> BooksConfig:
    (tmp_path / "in.jsonl").write_text(json.dumps({"id": "a", "text": "a short book about lanterns"}) + "\n")
    data = {"inputs": [str(tmp_path / "in.jsonl")], "output": str(tmp_path / "out"), "tokenizer": DEMO_TOKENIZER,
            "stages": ["s=128:1-"]}
    data.update(kw)
    return BooksConfig.model_validate(data)


@pytest.mark.parametrize("name", BAD_NAMES)
def test_unsafe_stage_names_are_refused_inline_and_in_a_catalog(tmp_path, name):
    with pytest.raises(ValueError, match="stage name"):
        parse_stage_list(f"{name}=1024:1-2000", LWM_STAGES)
    with pytest.raises(ValueError, match="stage name"):
        Stage(name, 1024)
    config = _config(tmp_path, stages=[name], stage_catalog={name: {"length": 128, "min_tokens": 1}})
    with pytest.raises(ConfigError, match="stage name"):
        run_books(config, IN_MEMORY)
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("name", ["s", "32k", "stage_1.v2", "A-b"])
def test_safe_stage_names_still_parse(name):
    [stage] = parse_stage_list(f"{name}=1024:1-2000", LWM_STAGES)
    assert stage.name == name


def test_cli_refuses_a_stage_that_climbs_out_of_the_output(tmp_path, capsys):
    out = tmp_path / "deep" / "out"
    with pytest.raises(SystemExit) as exit_info:
        main(["books", "--input", str(tmp_path), "--output", str(out), "--tokenizer", DEMO_TOKENIZER,
              "--stages", "../../escape=128:1-"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "stage name '../../escape' is not allowed" in error
    assert not (tmp_path / "escape").exists() and not out.exists()


def test_output_that_is_a_file_is_refused_before_the_job(tmp_path):
    (tmp_path / "taken").write_text("not a folder")
    with pytest.raises(ConfigError, match="is a file"):
        run_books(_config(tmp_path, output=str(tmp_path / "taken")), IN_MEMORY)
    with pytest.raises(ConfigError, match="not writable"):
        run_books(_config(tmp_path, output=str(tmp_path / "taken" / "out")), IN_MEMORY)
    assert (tmp_path / "taken").read_text() == "not a folder"


def _not_a_tokenizer(tmp_path: Path, kind: str) -> str:
    if kind == "json":
        path = tmp_path / "tokenizer.json"
        path.write_text(json.dumps({"vocab": ["a", "b"], "note": "some other json"}))
    elif kind == "model":
        path = tmp_path / "tokenizer.model"
        path.write_bytes(bytes(range(256)) * 4)
    elif kind == "folder-model":
        (tmp_path / "tok").mkdir()
        path = tmp_path / "tok"
        (path / "tokenizer.model").write_bytes(b"\x00garbage")
    else:
        path = tmp_path / "empty.json"
        path.write_text("")
    return str(path)


@pytest.mark.parametrize("kind", ["json", "model", "folder-model", "empty-json"])
def test_a_file_that_is_not_a_tokenizer_is_a_one_line_error(tmp_path, kind, capsys):
    spec = _not_a_tokenizer(tmp_path, kind)
    with pytest.raises(ConfigError) as err:
        run_books(_config(tmp_path, tokenizer=spec), IN_MEMORY)
    message = str(err.value)
    assert "\n" not in message and spec in message
    assert not (tmp_path / "out").exists()  # nothing ran
    with pytest.raises(SystemExit) as exit_info:
        main(["books", "--input", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "out"), "--tokenizer", spec,
              "--stages", "s=128:1-"])
    assert exit_info.value.code == 2
    stderr = capsys.readouterr().err
    assert "Traceback" not in stderr and f"error: tokenizer {spec!r}" in stderr
