"""The file kinds the books reader takes are written in the README twice (the book pipeline's
inputs, loss-by-position's raw books) and in two --help texts; the help texts are built from the
reader's own tables (curation.sources.FORMATS, COMPRESSIONS), and the README's two paragraphs
must name every one of them. Before, both paragraphs left out `.zstd`, and loss-by-position's
left out `.ndjson` and `.json`, which the reader takes."""

from __future__ import annotations

from pathlib import Path

import pytest

from curation.sources import BOOK_FILES, COMPRESSIONS, FORMATS
from longctx.cli import main

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")


def _paragraph(starting: str) -> str:
    start = README.index(starting)
    return README[start:README.index("\n\n", start)]


@pytest.mark.parametrize("starting", ["**Inputs** are local paths", "**Data.** `--data` is a stage folder"])
def test_each_readme_paragraph_names_every_extension_the_reader_takes(starting):
    paragraph = _paragraph(starting)
    missing = [ext for ext in (*FORMATS, *COMPRESSIONS) if f"`{ext}`" not in paragraph and f"/{ext}`" not in paragraph
               and f"`{ext}/" not in paragraph and f"/{ext}/" not in paragraph]
    assert not missing, f"README paragraph {starting!r} does not name {missing}"


@pytest.mark.parametrize("argv, said", [(["books", "--help"], "auto infers it from the file extension: {}"),
                                        (["eval", "loss-by-position", "--help"], "or raw books: a {} file")])
def test_help_names_the_readers_extensions(argv, said, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert BOOK_FILES == ".jsonl, .ndjson, .json, .parquet, .txt (optionally .gz, .zst, .zstd, .bz2, .xz)"
    assert said.format(BOOK_FILES) in text
