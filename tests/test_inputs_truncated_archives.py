"""A truncated compressed JSONL file gives back the records before the cut, then one
corrupt_file reject for the rest: .gz, .zst, .bz2 and .xz alike, read as a stream.

zstd and bz2 decode whole blocks only (up to 128 KiB and 900 kB of text), so they give back the
records of every whole block before the cut; a file smaller than one block gives none, and the
reject says why.
"""

from __future__ import annotations

import bz2
import gzip
import json
import lzma

import pytest
import zstandard

from curation.accounting import Reject
from curation.documents import Document
from curation.sources import SourceConfig, iter_file_records

COMPRESS = {
    "gz": gzip.compress,
    "zst": lambda data: zstandard.ZstdCompressor().compress(data),
    "bz2": bz2.compress,
    "xz": lzma.compress,
}
RECORD_CHARS = 3000


@pytest.fixture(scope="module")
def records(sample_books):
    """~2.4 MB of JSONL: more than two bz2 blocks and many zstd blocks."""
    text = "".join(book["text"] for book in sample_books)
    return [{"id": f"r{i}", "text": text[i * RECORD_CHARS:(i + 1) * RECORD_CHARS]} for i in range(800)]


def _jsonl(records) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in records).encode()


def _cut(path, ext: str, data: bytes, fraction: float) -> None:
    packed = COMPRESS[ext](data)
    path.write_bytes(packed[: int(len(packed) * fraction)])


@pytest.mark.parametrize("ext", sorted(COMPRESS))
def test_records_before_the_cut_are_kept_then_one_corrupt_file_reject(tmp_path, records, ext):
    path = tmp_path / f"books.jsonl.{ext}"
    _cut(path, ext, _jsonl(records), 0.6)
    items = list(iter_file_records(str(path), SourceConfig()))
    *docs, last = items
    assert docs and all(isinstance(d, Document) for d in docs)
    # A prefix of the file, in order, each record whole.
    assert [(d.id, d.text) for d in docs] == [(r["id"], r["text"]) for r in records[: len(docs)]]
    # Most of what lies before the cut comes back: block-wise codecs lose the cut block too, and
    # the compressed bytes are not spread evenly over the text.
    block_records = {"gz": 0, "xz": 0, "zst": 128 * 1024 // RECORD_CHARS, "bz2": 900_000 // RECORD_CHARS}[ext]
    assert len(docs) > len(records) * 0.6 - block_records - 60, len(docs)
    assert isinstance(last, Reject) and last.reason == "corrupt_file"
    assert last.id == f"books.jsonl.{ext}@{len(docs)}"
    assert last.detail.startswith("EOFError: ") and last.detail.endswith(f"(after {len(docs)} records)")


@pytest.mark.parametrize("ext, block", [("zst", "128 KiB"), ("bz2", "900 kB")])
def test_a_cut_inside_the_only_block_says_why_no_record_came_back(tmp_path, records, ext, block):
    path = tmp_path / f"small.jsonl.{ext}"
    _cut(path, ext, _jsonl(records[:20]), 0.5)  # 60 kB of text: one block
    [reject] = list(iter_file_records(str(path), SourceConfig()))
    assert reject.reason == "corrupt_file" and reject.id == f"small.jsonl.{ext}@0"
    assert f"decodes whole blocks of up to {block}, so the records of the cut block are lost too" in reject.detail
    assert reject.detail.endswith("(after 0 records)")
    assert reject.detail.count("decodes whole blocks") == 1


@pytest.mark.parametrize("ext", ["gz", "xz"])
def test_streaming_codecs_give_back_records_of_a_small_file(tmp_path, records, ext):
    path = tmp_path / f"small.jsonl.{ext}"
    _cut(path, ext, _jsonl(records[:20]), 0.5)
    *docs, reject = list(iter_file_records(str(path), SourceConfig()))
    assert [d.id for d in docs] == [f"r{i}" for i in range(len(docs))] and len(docs) >= 5
    assert reject.reason == "corrupt_file" and "decodes whole blocks" not in reject.detail


def test_the_book_pipeline_accounts_for_every_truncated_archive(tmp_path, records):
    from pipelines.config import BooksConfig
    from pipelines.launch import run_books
    from tests.conftest import DEMO_TOKENIZER

    data = tmp_path / "in"
    data.mkdir()
    expected = 0
    for ext in sorted(COMPRESS):
        path = data / f"books.jsonl.{ext}"
        _cut(path, ext, _jsonl(records[:400]), 0.7)
        expected += len(list(iter_file_records(str(path), SourceConfig())))  # docs + the one reject
    config = BooksConfig.model_validate({"inputs": [str(data)], "output": str(tmp_path / "out"),
                                         "tokenizer": DEMO_TOKENIZER, "stages": ["tiny=4096:0-"]})
    manifest = run_books(config, ["--runner=DirectRunner", "--direct_running_mode=in_memory"])
    assert manifest["read"] == expected == manifest["kept"] + manifest["rejected_total"]
    assert manifest["rejected"]["corrupt_file"] == len(COMPRESS)
    rejects = [json.loads(line) for name in manifest["rejects"]
               for line in (tmp_path / "out" / name).read_text().splitlines()]
    corrupt = sorted(r["source"].rsplit("/", 1)[1] for r in rejects if r["reason"] == "corrupt_file")
    assert corrupt == sorted(f"books.jsonl.{ext}" for ext in COMPRESS)
