"""stage_catalog: a negative token bound is refused (it read as 0 without a word), and so is a
catalog entry giving a built-in stage name another length (`4k: {length: 8192}` built 8,192-token
rows in a folder named 4k); a built-in name with its own window (configs/books/demo.yaml) is kept."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from curation.stages import KNOWN_STAGES, Stage, catalog_stages
from pipelines.config import BooksConfig
from tests.conftest import DEMO_TOKENIZER, REPO, cli_error


@pytest.fixture
def small(tmp_path):
    books = tmp_path / "books.jsonl"
    books.write_text(json.dumps({"id": "a", "text": "A book. " * 50}) + "\n")
    return books


def _yaml(path, books, out, body: str):
    path.write_text(f"inputs: [{books}]\noutput: {out}\ntokenizer: {DEMO_TOKENIZER}\n{body}")
    return path


@pytest.mark.parametrize("entry, field", [
    ("{length: 128, min_tokens: -5}", "min_tokens"),
    ("{length: 128, max_tokens: -1}", "max_tokens"),
    ("{length: -128}", "length"),
])
def test_a_negative_bound_is_refused(small, tmp_path, capsys, monkeypatch, entry, field):
    monkeypatch.chdir(tmp_path)  # the file is named as given: books.yaml
    config = _yaml(Path("books.yaml"), small, tmp_path / "out", f"stages: [tiny]\nstage_catalog: {{tiny: {entry}}}\n")
    line = cli_error(["books", "--config", str(config)], capsys)[-1]
    assert line.startswith(f"longctx books: error: {config}: stage_catalog.tiny.{field}: Input should be greater than")
    assert not (tmp_path / "out").exists()


def test_a_negative_bound_is_refused_by_the_stage_itself():
    with pytest.raises(ValueError, match=r"stage 'tiny': a token count is never negative, got window \[-5, None\)"):
        Stage("tiny", 128, -5)


def test_a_built_in_name_with_another_length_is_refused(small, tmp_path, capsys):
    config = _yaml(tmp_path / "books.yaml", small, tmp_path / "out", "stages: [4k]\nstage_catalog: {4k: {length: 8192}}\n")
    line = cli_error(["books", "--config", str(config)], capsys)[-1]
    assert line == ("longctx books: error: stage_catalog: '4k' is a built-in stage of length 4,096, and a catalog entry may "
                    "change its window but not its length (got 8,192): give a stage of length 8,192 another name")
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_a_built_in_name_with_its_own_window_is_kept():
    assert catalog_stages({"4k": (4096, 100, 200)}) == {"4k": Stage("4k", 4096, 100, 200)}
    config = BooksConfig.model_validate({**__import__("yaml").safe_load((REPO / "configs/books/demo.yaml").read_text())})
    stages = {s.name: s for s in config.resolved_stages()}
    assert stages["4k"] == Stage("4k", 4096, 100_000, 200_000) != KNOWN_STAGES["4k"]
    assert stages["16k"].length == KNOWN_STAGES["16k"].length
