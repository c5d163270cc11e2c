"""A mistyped --id-field (`idd`) named every document by its place in its file (FILE:LINE) with no
word. Before the job starts, an --id-field other than the default that the first input record does
not hold is now a warning naming the record's fields (a warning: a corpus may carry ids on some
records only). JSONL reads the first record, Parquet its columns."""

from __future__ import annotations

import json
import logging

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.config import BooksConfig
from pipelines.launch import check_id_field
from tests.conftest import DEMO_TOKENIZER


def _warnings(caplog, tmp_path, inputs: list[str], **extra) -> list[str]:
    config = BooksConfig.model_validate({"inputs": inputs, "output": str(tmp_path / "out"), "tokenizer": DEMO_TOKENIZER,
                                         "stages": ["tiny=4096:0-"], **extra})
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="longctx"):
        check_id_field(config)
    # Files are named as listed (absolute): the folder is taken out, so no temporary path is compared.
    return [r.getMessage().replace(f"{tmp_path}/", "") for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_mistyped_id_field_is_said_before_the_job(tmp_path, caplog, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "b.jsonl").write_text(json.dumps({"id": "a", "text": "hello"}) + "\n")
    pq.write_table(pa.table({"doc": ["a"], "text": ["hello"]}), tmp_path / "b.parquet")
    assert _warnings(caplog, tmp_path, ["b.jsonl"], id_field="idd") == [
        "--id-field 'idd': the first record of b.jsonl has no such field (its fields: id, text); records without it "
        "are named FILE:LINE"]
    assert _warnings(caplog, tmp_path, ["b.parquet"], id_field="idd") == [
        "--id-field 'idd': the first record of b.parquet has no such field (its fields: doc, text); records without "
        "it are named FILE:LINE"]
    assert _warnings(caplog, tmp_path, ["b.parquet"], id_field="doc") == []  # the field is there
    assert _warnings(caplog, tmp_path, ["b.jsonl"]) == []  # the default: ids are optional
