"""Reading records from every supported format, and what bad files turn into."""

from __future__ import annotations

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import zstandard

from curation.accounting import Reject
from curation.documents import Document
from curation.sources import SourceConfig, expand_pattern, iter_file_records, split_extension
from tests.conftest import write_corrupt_inputs


def _records(url, **kw):
    return list(iter_file_records(url, SourceConfig(**kw)))


def test_extensions():
    assert split_extension("a/b.jsonl.gz") == ("jsonl", "gzip")
    assert split_extension("b.JSONL.ZST") == ("jsonl", "zstd")
    assert split_extension("x.parquet") == ("parquet", None)
    assert split_extension("book.txt") == ("text", None)
    assert split_extension("weird.bin") == ("unknown", None)


def test_jsonl_gz_zst_parquet_and_text(tmp_path):
    rows = [{"book": "b1", "body": "first"}, {"book": "b2", "body": "second"}]
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    (tmp_path / "a.jsonl.gz").write_bytes(gzip.compress(data))
    (tmp_path / "a.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(data))
    pq.write_table(pa.table({"book": ["b1", "b2"], "body": ["first", "second"]}), tmp_path / "a.parquet")
    (tmp_path / "one.txt").write_text("a whole book")
    for name in ("a.jsonl.gz", "a.jsonl.zst", "a.parquet"):
        docs = _records(str(tmp_path / name), text_field="body", id_field="book")
        assert [(d.id, d.text) for d in docs] == [("b1", "first"), ("b2", "second")], name
        assert len({d.uid for d in docs}) == 2
    [doc] = _records(str(tmp_path / "one.txt"))
    assert (doc.id, doc.text) == ("one.txt", "a whole book") and doc.source.endswith("/one.txt")  # the id holds no folder


def test_corrupt_inputs_become_rejects(tmp_path, sample_books):
    expected = write_corrupt_inputs(tmp_path, sample_books[0]["text"][:5000])
    mixed = _records(str(tmp_path / "mixed.jsonl"))
    rejects = {r.id: r.reason for r in mixed if isinstance(r, Reject)}
    assert rejects == {
        "mixed.jsonl:2": "malformed_json",
        "no-text": "missing_field",
        "mixed.jsonl:6": "invalid_utf8",
        "number": "wrong_type",
    }
    assert {d.id for d in mixed if isinstance(d, Document)} == {"good-1", "empty", "nul", "dup-of-good-1", "tiny"}
    truncated = _records(str(tmp_path / "truncated.jsonl.gz"))
    assert isinstance(truncated[-1], Reject) and truncated[-1].reason == "corrupt_file"
    assert "EOFError" in truncated[-1].detail or "BadGzipFile" in truncated[-1].detail
    assert all(isinstance(d, Document) for d in truncated[:-1])
    assert expected["dup-of-good-1"] == "duplicate"


def test_parquet_garbage_and_missing_column(tmp_path):
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 not really")
    [r] = _records(str(tmp_path / "bad.parquet"))
    assert r.reason == "corrupt_file"
    pq.write_table(pa.table({"other": ["x"]}), tmp_path / "nocol.parquet")
    [r] = _records(str(tmp_path / "nocol.parquet"))
    assert r.reason == "missing_field"


def test_expand_local_glob_folder_and_memory(tmp_path):
    import fsspec

    for name in ("b.jsonl", "a.jsonl", "c.txt", "skip.bin"):
        (tmp_path / name).write_text("{}")
    assert expand_pattern(str(tmp_path / "*.jsonl")) == [str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")]
    assert [p.rsplit("/", 1)[1] for p in expand_pattern(str(tmp_path))] == ["a.jsonl", "b.jsonl", "c.txt"]
    fs = fsspec.filesystem("memory")
    fs.pipe("/srcs/x.jsonl", b'{"id": "m", "text": "in memory"}\n')
    [url] = expand_pattern("memory://srcs/*.jsonl")
    assert url.startswith("memory://")
    [doc] = _records(url)
    assert doc.text == "in memory"
