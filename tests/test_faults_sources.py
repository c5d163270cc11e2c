"""Fault probes on the readers: truncated streams of every compression, lone surrogates, valid but
unparseable JSON lines, a byte order mark, corrupt Parquet row groups, odd file names.

Each bad input is made here, at several positions, formats and sizes; the readers must turn it
into rejects with a reason (never an exception) and still read every record they can.
"""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from curation.accounting import Reject
from curation.documents import Document
from curation.sources import SourceConfig, expand_pattern, iter_file_records

COMPRESS = {
    "gz": gzip.compress,
    "bz2": bz2.compress,
    "xz": lzma.compress,
    "zst": lambda data: zstandard.ZstdCompressor().compress(data),
}


def _decodable_prefix(compression: str, data: bytes) -> bytes:
    """What a streaming decompressor gets out of a truncated archive before its end."""
    import zlib

    if compression == "gz":
        return zlib.decompressobj(wbits=31).decompress(data)
    if compression == "bz2":
        return bz2.BZ2Decompressor().decompress(data)
    if compression == "xz":
        return lzma.LZMADecompressor().decompress(data)
    return zstandard.ZstdDecompressor().decompressobj().decompress(data)


def _records(url, **kw) -> list[Document | Reject]:
    return list(iter_file_records(url, SourceConfig(**kw)))


def _jsonl(n: int, words: int = 5) -> bytes:
    return b"".join(json.dumps({"id": f"r{i}", "text": f"record {i} " + "lorem ipsum " * words}).encode() + b"\n" for i in range(n))


def _count(items) -> int:
    """Records the items stand for (a reject may stand for several)."""
    return sum(getattr(item, "records", 1) for item in items)


# --- truncated compressed streams -------------------------------------------------------------


@pytest.mark.parametrize("compression", sorted(COMPRESS))
@pytest.mark.parametrize(("records", "words", "keep"), [(3, 2, 0.5), (400, 20, 0.25), (400, 20, 0.75), (2000, 3, -1)])
def test_truncated_stream_is_a_corrupt_file_for_every_compression(tmp_path, compression, records, words, keep):
    data = COMPRESS[compression](_jsonl(records, words))
    cut = len(data) - 1 if keep == -1 else int(len(data) * keep)
    path = tmp_path / f"books.jsonl.{compression}"
    path.write_bytes(data[:cut])
    items = _records(str(path))
    *docs, last = items
    assert isinstance(last, Reject) and last.reason == "corrupt_file", (compression, last)
    assert all(isinstance(d, Document) for d in docs)
    # Every whole line before the cut is read, and nothing after it.
    complete_lines = _decodable_prefix(compression, data[:cut]).count(b"\n")
    assert [d.id for d in docs] == [f"r{i}" for i in range(complete_lines)]


@pytest.mark.parametrize("fmt", ["jsonl", "txt"])
def test_truncated_zstd_in_a_later_frame_and_as_plain_text(tmp_path, fmt):
    # Two frames (as `zstd` writes for concatenated or streamed input); the cut is in the second.
    full = _jsonl(300, 30)
    first, second = full[: len(_jsonl(50, 30))], full[len(_jsonl(50, 30)) :]
    frames = [zstandard.ZstdCompressor().compress(part) for part in (first, second)]
    whole = tmp_path / f"whole.{fmt}.zst"
    whole.write_bytes(b"".join(frames))
    cut = tmp_path / f"cut.{fmt}.zst"
    cut.write_bytes(frames[0] + frames[1][: len(frames[1]) // 2])
    complete = _records(str(whole))
    assert all(isinstance(d, Document) for d in complete)
    assert sum(d.text.count("\n") if fmt == "txt" else 1 for d in complete) == 300
    items = _records(str(cut))
    assert isinstance(items[-1], Reject) and items[-1].reason == "corrupt_file"
    assert "truncated" in items[-1].detail
    if fmt == "jsonl":
        assert 50 <= len(items) - 1 < 300


# --- lone surrogates --------------------------------------------------------------------------


@pytest.mark.parametrize("position", [0, 3, 6])
@pytest.mark.parametrize("escape", ["\\udc80", "\\ud800", "\\udfff"])
def test_lone_surrogate_in_text_is_an_invalid_unicode_reject(tmp_path, position, escape):
    lines = [json.dumps({"id": f"r{i}", "text": f"record {i} text"}) for i in range(7)]
    lines[position] = '{"id": "bad", "text": "caf' + escape + ' au lait"}'
    path = tmp_path / "s.jsonl"
    path.write_text("\n".join(lines) + "\n")
    items = _records(str(path))
    assert len(items) == 7
    [reject] = [r for r in items if isinstance(r, Reject)]
    assert (reject.id, reject.reason) == ("bad", "invalid_unicode")
    assert "surrogate" in reject.detail
    assert [d.id for d in items if isinstance(d, Document)] == [f"r{i}" for i in range(7) if i != position]


def test_surrogate_pair_is_text_and_lone_surrogate_in_id_is_escaped(tmp_path):
    path = tmp_path / "ids.jsonl"
    path.write_text(
        '{"id": "pair", "text": "smile \\ud83d\\ude00 please"}\n'
        '{"id": "id-\\udc80-x", "text": "a fine text"}\n'
        '{"id": "meta", "text": "fine", "video": "clip-\\udcff.mp4"}\n'
    )
    pair, escaped_id, _ = _records(str(path))
    assert isinstance(pair, Document) and pair.text == "smile \U0001F600 please"
    assert isinstance(escaped_id, Document) and escaped_id.id == "id-\\udc80-x"
    escaped_id.id.encode("utf-8")  # writable everywhere
    # A lone surrogate in a field the job carries along (a video path) rejects the record too.
    meta = _records(str(path), meta_fields=("video",))[2]
    assert isinstance(meta, Reject) and meta.reason == "invalid_unicode" and "'video'" in meta.detail


# --- valid JSON that Python cannot parse, one line at a time ------------------------------------


ODD_LINES = {
    "deep": "[" * 100_000 + "]" * 100_000,
    "deep-object": '{"a": ' * 50_000 + "1" + "}" * 50_000,
    "huge-int": '{"id": "big", "text": "x", "n": ' + "7" * 5000 + "}",
    "huge-int-id": '{"id": ' + "9" * 4400 + ', "text": "x"}',
}


@pytest.mark.parametrize("kind", sorted(ODD_LINES))
@pytest.mark.parametrize("position", [0, 2, 4])
@pytest.mark.parametrize("compression", [None, "gz"])
def test_odd_json_line_is_one_reject_and_the_next_line_is_read(tmp_path, kind, position, compression):
    lines = [json.dumps({"id": f"r{i}", "text": f"record {i}"}) for i in range(5)]
    lines[position] = ODD_LINES[kind]
    data = ("\n".join(lines) + "\n").encode()
    path = tmp_path / ("odd.jsonl" + (".gz" if compression else ""))
    path.write_bytes(gzip.compress(data) if compression else data)
    items = _records(str(path))
    assert len(items) == 5
    [reject] = [r for r in items if isinstance(r, Reject)]
    assert (reject.id, reject.reason) == (f"{path.name}:{position + 1}", "malformed_json")
    assert "\n" not in reject.detail and len(reject.detail) < 300
    assert [d.id for d in items if isinstance(d, Document)] == [f"r{i}" for i in range(5) if i != position]


# --- byte order mark ----------------------------------------------------------------------------


@pytest.mark.parametrize("compression", [None, "gz", "zst"])
@pytest.mark.parametrize("records", [1, 3])
def test_utf8_bom_at_the_start_keeps_the_first_record(tmp_path, compression, records):
    data = b"\xef\xbb\xbf" + _jsonl(records)
    name = "bom.jsonl" + (f".{compression}" if compression else "")
    (tmp_path / name).write_bytes(COMPRESS[compression](data) if compression else data)
    items = _records(str(tmp_path / name))
    assert [d.id for d in items if isinstance(d, Document)] == [f"r{i}" for i in range(records)]
    assert not [r for r in items if isinstance(r, Reject)]


# --- corrupt Parquet row groups -----------------------------------------------------------------


def write_parquet_with_bad_group(path: Path, groups: int, rows_per_group: int, bad: int, column: str = "text") -> int:
    """A Parquet file of `groups` row groups whose group `bad` has its `column` chunk overwritten
    with garbage (the footer stays intact). Returns that group's row count."""
    rows = groups * rows_per_group
    table = pa.table({"id": [f"p{i}" for i in range(rows)], "text": [f"parquet row {i} " * 8 for i in range(rows)]})
    pq.write_table(table, path, row_group_size=rows_per_group)
    group = pq.ParquetFile(path).metadata.row_group(bad)
    chunk = group.column(table.column_names.index(column))
    start = chunk.dictionary_page_offset or chunk.data_page_offset
    data = bytearray(path.read_bytes())
    data[start : start + chunk.total_compressed_size] = b"\xab" * chunk.total_compressed_size
    path.write_bytes(bytes(data))
    return group.num_rows


@pytest.mark.parametrize(("groups", "rows_per_group", "bad"), [(1, 5, 0), (3, 7, 0), (3, 7, 1), (4, 100, 3), (5, 3, 2)])
@pytest.mark.parametrize("batch", [2, 64])
def test_corrupt_parquet_row_group_is_counted_and_later_groups_are_read(tmp_path, groups, rows_per_group, bad, batch):
    path = tmp_path / "books.parquet"
    lost = write_parquet_with_bad_group(path, groups, rows_per_group, bad)
    items = _records(str(path), parquet_batch_rows=batch)
    rejects = [r for r in items if isinstance(r, Reject)]
    assert [(r.reason, r.records) for r in rejects] == [("corrupt_file", lost)]
    assert f"row group {bad + 1} of {groups}" in rejects[0].detail
    bad_ids = {f"p{i}" for i in range(bad * rows_per_group, (bad + 1) * rows_per_group)}
    docs = [d for d in items if isinstance(d, Document)]
    assert [d.id for d in docs] == [f"p{i}" for i in range(groups * rows_per_group) if f"p{i}" not in bad_ids]
    assert [d.index for d in docs] == [int(d.id[1:]) for d in docs]  # positions stay those of the file
    assert _count(items) == groups * rows_per_group


def test_corrupt_id_column_rejects_that_group_only(tmp_path):
    path = tmp_path / "ids.parquet"
    lost = write_parquet_with_bad_group(path, 3, 4, 2, column="id")
    items = _records(str(path))
    assert [(r.reason, r.records) for r in items if isinstance(r, Reject)] == [("corrupt_file", lost)]
    assert _count(items) == 12


def _string_column(values: list[bytes]) -> pa.Array:
    """A Parquet string column as another writer may leave it: bytes that need not be UTF-8."""
    return pa.array(values, pa.binary()).view(pa.string())


@pytest.mark.parametrize("batch", [3, 64])
@pytest.mark.parametrize("column", ["text", "id"])
def test_bytes_that_are_not_utf8_in_a_string_column_reject_their_row_only(tmp_path, column, batch):
    path = tmp_path / "strings.parquet"
    values = [f"row {i} of a string column ".encode() * 4 for i in range(10)]
    values[6] = b"\xff\xfe" + values[6]
    other = [f"r{i}".encode() for i in range(10)] if column == "text" else [f"row {i}".encode() * 4 for i in range(10)]
    columns = {column: _string_column(values), ("id" if column == "text" else "text"): _string_column(other)}
    pq.write_table(pa.table(columns), path, row_group_size=5)
    items = _records(str(path), parquet_batch_rows=batch)
    assert len(items) == 10 and _count(items) == 10
    if column == "text":  # the row is rejected, every other row of its group kept
        assert [(r.id, r.reason) for r in items if isinstance(r, Reject)] == [("r6", "invalid_utf8")]
        assert [d.id for d in items if isinstance(d, Document)] == [f"r{i}" for i in range(10) if i != 6]
    else:  # an id is a name: its bad bytes are escaped and the record is kept
        assert all(isinstance(d, Document) for d in items)
        assert items[6].id.startswith("\\xff\\xferow 6")


def test_a_parquet_file_without_the_text_column_counts_every_row(tmp_path):
    path = tmp_path / "notext.parquet"
    pq.write_table(pa.table({"id": [f"n{i}" for i in range(7)], "body": ["words"] * 7}), path, row_group_size=3)
    (reject,) = _records(str(path))
    assert (reject.reason, reject.records) == ("missing_field", 7)
    assert "no 'text' column" in reject.detail and "7 rows unread" in reject.detail


@pytest.mark.parametrize(("value", "reason", "detail"), [
    (None, "missing_field", "'image' is null"),
    ("", "missing_field", "'image' is empty"),
    (["cat.png"], "wrong_type", "'image' is list"),
    (True, "wrong_type", "'image' is bool"),
    (5, "wrong_type", "'image' is int"),
    ({"bytes": "abc"}, "wrong_type", "'image' bytes are str"),
    ({"other": "cat.png"}, "wrong_type", "'image' is dict"),
])
def test_a_media_field_that_is_not_a_path_is_rejected_not_turned_into_one(tmp_path, value, reason, detail):
    path = tmp_path / "pairs.jsonl"
    good = {"id": "ok", "image": "cat.png", "text": "a cat"}
    path.write_text(json.dumps({"id": "bad", "image": value, "text": "x"}) + "\n" + json.dumps(good) + "\n")
    bad, ok = _records(str(path), meta_fields=("image",))
    assert (bad.id, bad.reason) == ("bad", reason) and detail in bad.detail
    assert isinstance(ok, Document) and ok.meta == {"image": "cat.png"}


def test_a_hugging_face_image_cell_gives_its_bytes_or_its_path(tmp_path):
    path = tmp_path / "pairs.parquet"
    cells = [{"bytes": b"\x89PNG...", "path": "cat.png"}, {"bytes": None, "path": "dog.png"}, {"bytes": None, "path": None}]
    pq.write_table(pa.table({"id": ["a", "b", "c"], "image": cells, "text": ["x", "y", "z"]}), path)
    a, b, c = _records(str(path), meta_fields=("image",))
    assert a.meta == {"image": b"\x89PNG..."} and b.meta == {"image": "dog.png"}
    assert (c.reason, c.detail) == ("missing_field", "'image' is null")


def test_a_null_text_is_a_missing_field_in_jsonl_as_in_parquet(tmp_path):
    (tmp_path / "a.jsonl").write_text(json.dumps({"id": "j", "text": None}) + "\n")
    pq.write_table(pa.table({"id": ["p"], "text": pa.array([None], pa.string())}), tmp_path / "b.parquet")
    rejects = _records(str(tmp_path / "a.jsonl")) + _records(str(tmp_path / "b.parquet"))
    assert [(r.id, r.reason, r.detail) for r in rejects] == [("j", "missing_field", "'text' is null"),
                                                             ("p", "missing_field", "'text' is null")]


# --- file names ---------------------------------------------------------------------------------


def test_literal_path_with_glob_characters_is_found(tmp_path):
    for name in ("book[1].jsonl", "book1.jsonl", "b*.jsonl"):
        (tmp_path / name).write_bytes(_jsonl(1))
    assert expand_pattern(str(tmp_path / "book[1].jsonl")) == [str(tmp_path / "book[1].jsonl")]
    assert expand_pattern(str(tmp_path / "b*.jsonl")) == [str(tmp_path / "b*.jsonl")]
    # A pattern that is not an existing path is still a glob.
    assert expand_pattern(str(tmp_path / "book?.jsonl")) == [str(tmp_path / "book1.jsonl")]
    sub = tmp_path / "dir[x]"
    sub.mkdir()
    (sub / "in.jsonl").write_bytes(_jsonl(2))
    assert expand_pattern(str(sub)) == [str(sub / "in.jsonl")]


def test_file_name_that_is_not_utf8_is_read_and_named_escaped(tmp_path):
    from curation.sources import portable_url

    raw = os.fsencode(str(tmp_path)) + b"/caf\xe9-\xff.jsonl"
    with open(raw, "wb") as fh:
        fh.write(_jsonl(3))
    [url] = expand_pattern(str(tmp_path))
    portable = portable_url(url)
    assert isinstance(portable, bytes)  # Beam's string coder could not carry it
    items = _records(portable)
    assert [d.id for d in items] == ["r0", "r1", "r2"]
    assert {d.source for d in items} == {str(tmp_path) + "/caf\\xe9-\\xff.jsonl"}
    assert all(d.uid.encode("utf-8") for d in items)
