"""Large inputs read in pieces: JSONL byte ranges and Parquet row-group runs each read every record
exactly once (as the whole-file read does), also through Beam with several workers; a network
failure is raised for the runner to retry, bad bytes stay a `corrupt_file` reject."""

from __future__ import annotations

import gzip
import io
import json

import apache_beam as beam
import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.util import assert_that, equal_to
from fsspec.implementations.memory import MemoryFileSystem
from hypothesis import given
from hypothesis import strategies as st

from curation.accounting import Reject
from curation.documents import Document
from curation.sources import (
    FileRange,
    SourceConfig,
    is_transient_io_error,
    iter_file_records,
    iter_range_records,
    plan_reads,
)
from pipelines.accounting import REJECTS
from pipelines.io import ReadInputs


def _lines(n: int) -> list[bytes]:
    """JSONL lines of varied lengths with a blank line, a malformed one and a non-object among them."""
    out = []
    for i in range(n):
        if i % 11 == 5:
            out.append(b"")
        elif i % 13 == 7:
            out.append(b'{"id": "broken", "text": ')
        elif i % 17 == 9:
            out.append(b"[1, 2, 3]")
        else:
            out.append(json.dumps({"id": f"r{i}", "text": f"record {i} " + "word " * (i * 7 % 60)}).encode())
    return out


def _summary(items) -> list[tuple]:
    """What a record is, independent of how it is numbered: (kind, id or reason, text or records)."""
    out = []
    for item in items:
        if isinstance(item, Document):
            out.append(("doc", item.id, item.text))
        else:
            out.append(("reject", item.reason, item.records))
    return sorted(out)


def _read_pieces(url: str, config: SourceConfig) -> tuple[list[FileRange], list]:
    pieces = plan_reads(url, config)
    return pieces, [record for piece in pieces for record in iter_range_records(piece, config)]


@pytest.mark.parametrize("split", [1, 7, 64, 100, 333, 1000, 4096])
def test_jsonl_byte_ranges_read_every_record_once(tmp_path, split):
    path = tmp_path / "books.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + b"\n".join(_lines(60)))  # a BOM, no newline at the end
    whole = list(iter_file_records(str(path), SourceConfig()))
    pieces, split_read = _read_pieces(str(path), SourceConfig(split_bytes=split))
    size = path.stat().st_size
    assert len(pieces) == -(-size // split) and all(p.kind == "jsonl_bytes" for p in pieces)
    assert _summary(split_read) == _summary(whole)
    docs = [r for r in split_read if isinstance(r, Document)]
    assert len(docs) == len({d.uid for d in docs}) > 40
    # A record of a split file is numbered by its line's byte offset, whatever the range sizes.
    offsets = {d.uid for d in docs}
    _, again = _read_pieces(str(path), SourceConfig(split_bytes=max(1, size // 2 - 3)))
    assert {d.uid for d in again if isinstance(d, Document)} == offsets


@given(lengths=st.lists(st.integers(0, 40), min_size=1, max_size=30), split=st.integers(1, 200),
       trailing=st.booleans())
def test_jsonl_ranges_at_any_boundary(lengths, split, trailing):
    """Lines of any length (blank ones too) against ranges of any size, on an in-memory file."""
    lines = [json.dumps({"id": f"r{i}", "text": "x" * n}).encode() if n else b"" for i, n in enumerate(lengths)]
    data = b"\n".join(lines) + (b"\n" if trailing else b"")
    fs = fsspec.filesystem("memory")
    url = f"memory://split/{split}-{len(lengths)}-{trailing}-{hash(tuple(lengths)) & 0xffff}.jsonl"
    fs.pipe(url, data)
    whole = list(iter_file_records(url, SourceConfig()))
    _, split_read = _read_pieces(url, SourceConfig(split_bytes=split))
    assert _summary(split_read) == _summary(whole)


def _parquet(path, groups: int, rows: int) -> None:
    ids = [f"p{i}" for i in range(groups * rows)]
    table = pa.table({"id": ids, "text": [f"parquet record {i} " + "lorem " * (i % 9) for i in range(len(ids))]})
    pq.write_table(table, path, row_group_size=rows)


@pytest.mark.parametrize("groups,rows,split", [(6, 5, 1), (6, 5, 600), (7, 3, 2000), (1, 10, 1)])
def test_parquet_row_group_runs_read_every_row_once_with_the_same_uids(tmp_path, groups, rows, split):
    path = tmp_path / "books.parquet"
    _parquet(path, groups, rows)
    whole = list(iter_file_records(str(path), SourceConfig()))
    pieces, split_read = _read_pieces(str(path), SourceConfig(split_bytes=split))
    assert len(pieces) > 1 or groups == 1
    assert [p.start for p in pieces] == sorted(p.start for p in pieces) and pieces[-1].stop == groups
    # Row numbers come from the footer: the same uids (and so the same shards) as the whole read.
    assert sorted(d.uid for d in split_read) == sorted(d.uid for d in whole)
    assert _summary(split_read) == _summary(whole) and len(whole) == groups * rows


def test_compressed_and_small_files_stay_whole(tmp_path):
    data = b"\n".join(_lines(30))
    (tmp_path / "a.jsonl.gz").write_bytes(gzip.compress(data))
    (tmp_path / "b.jsonl").write_bytes(data)
    (tmp_path / "c.txt").write_text("a book " * 500)
    assert plan_reads(str(tmp_path / "a.jsonl.gz"), SourceConfig(split_bytes=10)) == [FileRange(str(tmp_path / "a.jsonl.gz"))]
    assert plan_reads(str(tmp_path / "c.txt"), SourceConfig(split_bytes=10)) == [FileRange(str(tmp_path / "c.txt"))]
    assert plan_reads(str(tmp_path / "b.jsonl"), SourceConfig()) == [FileRange(str(tmp_path / "b.jsonl"))]
    assert len(plan_reads(str(tmp_path / "b.jsonl"), SourceConfig(split_bytes=100))) > 1


def test_beam_read_with_two_workers_reads_each_record_once(tmp_path):
    """The pieces of a JSONL and a Parquet file through ReadInputs on 2 worker processes."""
    (tmp_path / "books.jsonl").write_bytes(b"\n".join(_lines(80)) + b"\n")
    _parquet(tmp_path / "more.parquet", 8, 4)
    config = SourceConfig(split_bytes=500)
    expected = [record for name in ("books.jsonl", "more.parquet")
                for record in iter_file_records(str(tmp_path / name), SourceConfig())]
    want_docs = sorted(d.id for d in expected if isinstance(d, Document))
    want_rejects = sorted((r.reason, r.records) for r in expected if isinstance(r, Reject))
    assert len(plan_reads(str(tmp_path / "books.jsonl"), config)) > 5
    options = PipelineOptions(["--direct_num_workers=2", "--direct_running_mode=multi_processing"])
    with beam.Pipeline(options=options) as p:
        read = p | ReadInputs([str(tmp_path)], config)
        assert_that(read.docs | beam.Map(lambda d: d.id), equal_to(want_docs), label="docs")
        assert_that(read[REJECTS] | beam.Map(lambda r: (r.reason, r.records)), equal_to(want_rejects), label="rejects")
    assert len(want_docs) > 80 and want_rejects


class FlakyFileSystem(MemoryFileSystem):
    """An object store whose connection drops on reads (the border: a network failure)."""

    protocol = "flakynet"
    error: BaseException = ConnectionResetError(104, "Connection reset by peer")

    def cat_file(self, path, start=None, end=None, **kwargs):
        raise self.error

    def _open(self, path, mode="rb", **kwargs):
        if "r" not in mode:
            return super()._open(path, mode, **kwargs)
        return io.BufferedReader(DroppedConnection())


class DroppedConnection(io.RawIOBase):
    """A stream whose connection drops at the first read."""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        raise FlakyFileSystem.error


class HttpError(Exception):
    """Shaped like gcsfs's HttpError: an HTTP status in `.code`."""

    def __init__(self, code: int):
        super().__init__(f"HTTP {code}")
        self.code = code


def test_network_failures_are_raised_and_bad_bytes_are_rejects(tmp_path):
    fsspec.register_implementation("flakynet", FlakyFileSystem, clobber=True)
    fs = fsspec.filesystem("flakynet")
    fs.pipe("flakynet://bucket/books.jsonl", b"\n".join(_lines(10)))
    with pytest.raises(ConnectionResetError):
        list(iter_file_records("flakynet://bucket/books.jsonl", SourceConfig()))
    with pytest.raises(ConnectionResetError):
        list(iter_range_records(FileRange("flakynet://bucket/books.jsonl", "jsonl_bytes", 0, 50), SourceConfig()))
    FlakyFileSystem.error = HttpError(503)
    with pytest.raises(HttpError):
        list(iter_file_records("flakynet://bucket/books.jsonl", SourceConfig()))
    assert is_transient_io_error(TimeoutError()) and is_transient_io_error(HttpError(429))
    assert not is_transient_io_error(HttpError(404)) and not is_transient_io_error(EOFError("truncated"))
    wrapped = OSError("read failed")
    wrapped.__cause__ = ConnectionResetError()
    assert is_transient_io_error(wrapped)
    # A truncated archive is the file's own fault: a corrupt_file reject after the records before it.
    (tmp_path / "cut.jsonl.gz").write_bytes(gzip.compress(b"\n".join(_lines(200)))[:-40])
    items = list(iter_file_records(str(tmp_path / "cut.jsonl.gz"), SourceConfig()))
    assert isinstance(items[-1], Reject) and items[-1].reason == "corrupt_file"
    assert sum(isinstance(i, Document) for i in items) > 100
