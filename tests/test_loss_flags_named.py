"""`longctx eval loss-by-position` says what went wrong with --data and --buckets in words that
lead to the fix: a single shard file names the stage folder holding it (it said "no shards
(*.arrow) under X.arrow"), a file of another kind names what --data takes (it said "--length and
--tokenizer are for raw books"), an empty books file says it holds no text (it said "... gives a
row of 256 tokens ()"), and a --buckets that is neither form lists both, `log` included."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from curation.sources import COMPRESSIONS, FORMATS
from tests.conftest import DEMO_TOKENIZER, cli_error, write_toy_stage
from tests.test_niah import TOY, toy_params

PREFIX = "longctx eval loss-by-position: error: "


@pytest.fixture(scope="module")
def toy_checkpoint(tmp_path_factory) -> str:
    from training import checkpoint as ckpt

    return str(ckpt.save_params(tmp_path_factory.mktemp("toy") / "toy", TOY, toy_params()))


def _loss(checkpoint: str, data: str, *extra: str) -> list[str]:
    return ["eval", "loss-by-position", "--checkpoint", checkpoint, "--data", data, "--rows", "1", "--out", "o", *extra]


def _says_what_data_takes(line: str) -> None:
    """The line names both kinds --data takes, with every extension of the books reader."""
    assert "stage folder" in line and "raw books" in line, line
    assert ", ".join(FORMATS) in line and ", ".join(COMPRESSIONS) in line, line


def test_a_shard_file_names_the_stage_folder_to_pass(toy_checkpoint, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    stage = write_toy_stage(tmp_path / "data", length=64, shards=1, rows=4)
    shard = sorted(p.name for p in (tmp_path / "data" / "s64").iterdir() if p.suffix == ".arrow")[0]
    line = cli_error(_loss(toy_checkpoint, f"data/s64/{shard}"), capsys)[-1]
    assert line.startswith(f"{PREFIX}--data data/s64/{shard} is one shard file: --data takes a stage folder, "
                           "the folder holding the .arrow shards (here --data data/s64), or raw books"), line
    assert "no shards" not in line
    _says_what_data_takes(line)
    # The absolute path names its absolute folder; and the folder named is one the stage reader opens.
    line = cli_error(_loss(toy_checkpoint, f"{stage}/{shard}"), capsys)[-1]
    assert f"(here --data {stage})" in line, line
    from training.data import StageData

    assert StageData.open("data/s64").num_rows == 4
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("extra", [(), ("--length", "4k"), ("--tokenizer", DEMO_TOKENIZER)])
def test_a_file_of_another_kind_names_what_data_takes(toy_checkpoint, tmp_path, monkeypatch, capsys, extra):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "script.py").write_text("print('not a book')\n")
    line = cli_error(_loss(toy_checkpoint, "script.py", *extra), capsys)[-1]
    assert line.startswith(f"{PREFIX}--data script.py is neither a stage folder nor a books file: --data takes "
                           "a stage folder (the folder holding a stage's .arrow shards"), line
    assert "are for raw books" not in line and "no shards" not in line
    _says_what_data_takes(line)


def test_the_books_extensions_come_from_the_books_reader():
    from evals.loss_sources import BOOK_FILES

    assert BOOK_FILES == ".jsonl, .ndjson, .json, .parquet, .txt (optionally .gz, .zst, .zstd, .bz2, .xz)"
    assert all(ext in BOOK_FILES for ext in (*FORMATS, *COMPRESSIONS))


@pytest.mark.parametrize(("files", "said"), [
    ({"held-out.jsonl": ""}, "the file is empty"),
    ({"a.jsonl": "", "b.jsonl.gz": None}, "its 2 book files are empty"),
    ({"empty.txt": ""}, "1 empty record (empty.txt: empty (no text after cleaning))"),
    ({"blank.jsonl": "\n\n"}, "2 empty records (blank.jsonl:1: empty (blank line 1); blank.jsonl:2: empty (blank line 2))"),
])
def test_books_without_text_say_so(toy_checkpoint, tmp_path, monkeypatch, capsys, files, said):
    import gzip

    monkeypatch.chdir(tmp_path)
    (tmp_path / "books").mkdir()
    for name, text in files.items():
        path = tmp_path / "books" / name
        path.write_bytes(gzip.compress(b"") if text is None else text.encode())
    data = "books" if len(files) > 1 else f"books/{next(iter(files))}"
    line = cli_error(_loss(toy_checkpoint, data, "--length", "256", "--tokenizer", DEMO_TOKENIZER), capsys)[-1]
    assert line == f"{PREFIX}{data} holds no books, no text to score: {said}", line
    assert "()" not in line and not (tmp_path / "o").exists()


def test_books_too_short_still_say_their_length(demo_tokenizer, tmp_path):
    from evals.loss_sources import read_book_rows

    tok, info = demo_tokenizer
    books = tmp_path / "short.jsonl"
    books.write_text('{"id": "tiny", "text": "Call me Ishmael."}\n')
    with pytest.raises(ValueError, match=r"gives a row of 256 tokens \(tiny: too_short \(\d+ tokens < --length 256\)\)"):
        read_book_rows(str(books), tok, 256, bos_id=info.bos_id)


@pytest.mark.parametrize("buckets", ["abc", "0", "linear"])
def test_a_bad_buckets_value_lists_the_accepted_forms(toy_checkpoint, tmp_path, monkeypatch, capsys, buckets):
    monkeypatch.chdir(tmp_path)
    stage = write_toy_stage(tmp_path / "data", length=64, shards=1, rows=4)
    line = cli_error(_loss(toy_checkpoint, stage, "--buckets", buckets), capsys)[-1]
    assert line.startswith(f"{PREFIX}--buckets bad count {buckets!r}: "), line
    assert "expected 'log' (log-spaced buckets 1, 2-3, 4-7, ...) or a window width in tokens, a whole number " \
           "such as 4096, 32k" in line, line
    assert not (tmp_path / "o").exists()


def test_a_plan_with_bad_buckets_lists_the_accepted_forms_too():
    from evals.stage_eval import EvalSection

    with pytest.raises(ValidationError, match=r"bad count 'lg': expected 'log' \(log-spaced"):
        EvalSection.model_validate({"loss_by_position": {"buckets": "lg"}})
    assert EvalSection.model_validate({"loss_by_position": {"buckets": "LOG"}}).loss_by_position.buckets == "LOG"
