"""Reading book records from files (JSONL, Parquet, plain text; compressed or not) via fsspec.

Each file yields `Document`s and `Reject`s, never an exception: a record that cannot be read is
a reject with its reason, and a file that breaks part-way (a truncated archive) yields the
records before the break and one `corrupt_file` reject for the rest. A Parquet file is read row
group by row group: a corrupt row group is one `corrupt_file` reject standing for its rows (the
footer knows how many), and the row groups after it are still read.

A local file whose name is not valid UTF-8 travels as bytes (`os.fsencode`), since Beam's coders
only carry valid UTF-8 strings; its records name it with the bad bytes escaped (`bad\\xff.jsonl`).
"""

from __future__ import annotations

import io
import json
import os
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass

import fsspec

from curation.accounting import LONE_SURROGATE, Reason, Reject, printable
from curation.documents import Document
from curation.text import Rejected, decode_utf8

COMPRESSIONS = {".gz": "gzip", ".zst": "zstd", ".zstd": "zstd", ".bz2": "bz2", ".xz": "xz"}
FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".parquet": "parquet", ".txt": "text"}


@dataclass(frozen=True)
class SourceConfig:
    text_field: str = "text"
    id_field: str = "id"
    format: str = "auto"  # auto | jsonl | parquet | text
    parquet_batch_rows: int = 64
    meta_fields: tuple[str, ...] = ()  # other JSONL fields a record must carry along (e.g. "video")


def split_extension(url: str) -> tuple[str, str | None]:
    """(format, compression) from a file name such as `books.jsonl.zst`."""
    name = posixpath.basename(url).lower()
    stem, dot, ext = name.rpartition(".")
    compression = COMPRESSIONS.get(f".{ext}") if dot else None
    if compression:
        stem, dot, ext = stem.rpartition(".")
    return FORMATS.get(f".{ext}", "unknown") if dot else "unknown", compression


def expand_pattern(pattern: str) -> list[str]:
    """Files matching a local path, folder or glob, or any fsspec URL/glob, as full URLs, sorted.
    A path that exists is taken literally, even if it holds glob characters (`book[1].jsonl`)."""
    fs, path = fsspec.core.url_to_fs(pattern)
    if fs.isdir(path):
        paths = [p for p in fs.find(path) if split_extension(p)[0] != "unknown"]
    elif fs.exists(path):
        paths = [path]
    elif any(ch in path for ch in "*?["):
        paths = fs.glob(path)
    else:
        paths = []
    files = sorted(p for p in paths if not fs.isdir(p))
    return [fs.unstrip_protocol(p) if "://" in pattern else p for p in files]


def portable_url(url: str) -> str | bytes:
    """The URL itself, or its bytes when it is not valid UTF-8 (a local file name in another
    encoding, decoded by Python with surrogate escapes): Beam's string coder cannot carry it."""
    try:
        url.encode("utf-8")
    except UnicodeEncodeError:
        return os.fsencode(url)
    return url


def file_url(url: str | bytes) -> tuple[str, str]:
    """(path to open, name to record) of a URL from `portable_url`."""
    if isinstance(url, bytes):
        return os.fsdecode(url), url.decode("utf-8", "backslashreplace")
    return url, printable(url)


def _record_id(value: object, fallback: str) -> str:
    # Ids are written to shards, rejects and logs: escape a lone surrogate once, here.
    return fallback if value is None or value == "" else printable(str(value))


def _unencodable(text: str, meta: dict) -> str | None:
    """Where a record holds text that cannot be encoded as UTF-8, or None."""
    match = LONE_SURROGATE.search(text)
    if match:
        return f"lone surrogate U+{ord(match.group()):04X} at char {match.start()} of the text"
    for name, value in meta.items():
        if isinstance(value, str) and LONE_SURROGATE.search(value):
            return f"lone surrogate in field {name!r}"
    return None


def _document(url: str, index: int, record_id: str, text: object, meta: dict | None = None) -> Document | Reject:
    meta = meta or {}
    if isinstance(text, bytes):
        try:
            text = decode_utf8(text)
        except Rejected as err:
            return Reject(url, record_id, err.reason.value, err.detail)
    if not isinstance(text, str):
        return Reject(url, record_id, Reason.WRONG_TYPE.value, f"text is {type(text).__name__}, not a string")
    problem = _unencodable(text, meta)
    if problem:
        return Reject(url, record_id, Reason.INVALID_UNICODE.value, problem)
    doc = Document(source=url, id=record_id, uid=f"{url}#{index}", index=index, text=text)
    return doc.with_(meta=meta) if meta else doc


def iter_lines(fh, block: int = 1 << 20) -> Iterator[bytes]:
    """Lines of a binary stream, read in blocks (works for decompressors that lack readline).
    `read1` where there is one: it returns what one underlying read decoded, so the lines before
    a truncated archive's end are yielded before its EOFError (`read` would drop the block)."""
    read = getattr(fh, "read1", fh.read)
    pending: list[bytes] = []  # pieces of a line longer than one block, joined once complete
    while True:
        chunk = read(block)
        if not chunk:
            break
        if b"\n" not in chunk:
            pending.append(chunk)
            continue
        lines = chunk.split(b"\n")
        lines[0] = b"".join(pending + [lines[0]])
        pending = [lines.pop()]
        yield from lines
    if any(pending):
        yield b"".join(pending)


def _parse_json(line: str, number: int) -> object:
    """One JSONL line, or `Rejected(MALFORMED_JSON)`. Valid JSON can still be unreadable here:
    nesting deeper than Python's recursion limit, or an integer past `int`'s digit limit."""
    try:
        return json.loads(line)
    except json.JSONDecodeError as err:
        raise Rejected(Reason.MALFORMED_JSON, f"line {number}: {err.msg} at col {err.colno}") from None
    except RecursionError:
        raise Rejected(Reason.MALFORMED_JSON, f"line {number}: nested too deeply to parse") from None
    except ValueError as err:  # e.g. "Exceeds the limit (4300 digits) for integer string conversion"
        raise Rejected(Reason.MALFORMED_JSON, f"line {number}: {_one_line(err)}") from None


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


def _iter_jsonl(fh, url: str, config: SourceConfig) -> Iterator[Document | Reject]:
    base = posixpath.basename(url)
    for index, raw in enumerate(iter_lines(fh)):
        fallback = f"{base}:{index + 1}"
        if index == 0:
            raw = raw.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte order mark starts the file, not the record
        if not raw.strip():
            yield Reject(url, fallback, Reason.EMPTY.value, f"blank line {index + 1}")
            continue
        try:
            line = decode_utf8(raw)
        except Rejected as err:
            yield Reject(url, fallback, err.reason.value, f"line {index + 1}: {err.detail}")
            continue
        try:
            record = _parse_json(line, index + 1)
        except Rejected as err:
            yield Reject(url, fallback, err.reason.value, err.detail)
            continue
        if not isinstance(record, dict):
            yield Reject(url, fallback, Reason.MALFORMED_JSON.value, f"line {index + 1}: not a JSON object")
            continue
        record_id = _record_id(record.get(config.id_field), fallback)
        missing = [f for f in (config.text_field, *config.meta_fields) if f not in record]
        if missing:
            yield Reject(url, record_id, Reason.MISSING_FIELD.value, f"no {missing[0]!r} field")
            continue
        yield _document(url, index, record_id, record[config.text_field], {f: record[f] for f in config.meta_fields})


def _parquet_rows(batch, url: str, base: str, first: int, config: SourceConfig, has_id: bool) -> Iterator[Document | Reject]:
    texts = batch.column(config.text_field).to_pylist()
    ids = batch.column(config.id_field).to_pylist() if has_id else [None] * len(texts)
    metas = [batch.column(f).to_pylist() for f in config.meta_fields]
    for row, (text, raw_id) in enumerate(zip(texts, ids)):
        index = first + row
        record_id = _record_id(raw_id, f"{base}:{index + 1}")
        meta = {f: values[row] for f, values in zip(config.meta_fields, metas)}
        if text is None or any(v is None for v in meta.values()):
            null = config.text_field if text is None else next(f for f, v in meta.items() if v is None)
            yield Reject(url, record_id, Reason.MISSING_FIELD.value, f"{null!r} is null")
        else:
            yield _document(url, index, record_id, text, meta)


def _iter_parquet(fh, url: str, config: SourceConfig) -> Iterator[Document | Reject]:
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(fh)
    names = parquet.schema_arrow.names
    missing = [f for f in (config.text_field, *config.meta_fields) if f not in names]
    if missing:
        yield Reject(url, url, Reason.MISSING_FIELD.value, f"no {missing[0]!r} column (has {names})")
        return
    has_id = config.id_field in names
    columns = [config.text_field, *config.meta_fields] + ([config.id_field] if has_id else [])
    base = posixpath.basename(url)
    groups = parquet.metadata.num_row_groups
    index = 0  # a record's position in the file, from the footer's row counts: stable past a bad group
    for group in range(groups):
        group_rows = parquet.metadata.row_group(group).num_rows
        done = 0
        try:
            for batch in parquet.iter_batches(batch_size=config.parquet_batch_rows, columns=columns, row_groups=[group]):
                rows = list(_parquet_rows(batch, url, base, index + done, config, has_id))
                done += batch.num_rows
                yield from rows
        except Exception as err:  # a corrupt page: this group's unread rows are one reject, then go on
            unread = group_rows - done
            yield Reject(
                url,
                f"{url}@{index + done}",
                Reason.CORRUPT_FILE.value,
                f"row group {group + 1} of {groups}: {type(err).__name__}: {_one_line(err)} ({unread} rows unread)",
                records=max(unread, 1),
            )
        index += group_rows


def _iter_text(fh, url: str, config: SourceConfig) -> Iterator[Document | Reject]:
    yield _document(url, 0, url, fh.read())


_READERS = {"jsonl": _iter_jsonl, "parquet": _iter_parquet, "text": _iter_text}


class ZstdReader(io.RawIOBase):
    """A zstd stream (one or more frames) that raises EOFError when the input ends inside a
    frame. fsspec's zstd reader returns a truncated stream as a shorter, clean one."""

    def __init__(self, raw, block: int = 1 << 16):
        import zstandard

        self._raw = raw
        self._block = block
        self._new = zstandard.ZstdDecompressor().decompressobj
        self._obj = self._new()
        self._in_frame = False  # bytes of an unfinished frame were fed
        self._out = b""
        self._pos = 0  # how much of `_out` was handed out
        self._done = False

    def readable(self) -> bool:
        return True

    def _fill(self) -> None:
        if self._pos == len(self._out):
            self._out, self._pos = b"", 0
        while not self._out and not self._done:
            data = self._raw.read(self._block)
            if not data:
                if self._in_frame:
                    raise EOFError("zstd stream ends inside a frame (truncated file)")
                self._done = True
                return
            while data:
                self._in_frame = True
                self._out += self._obj.decompress(data)
                data = b""
                if self._obj.eof:  # a frame ended; what follows it is the next frame
                    data = self._obj.unused_data
                    self._obj = self._new()
                    self._in_frame = False

    def readinto(self, buffer) -> int:
        self._fill()
        n = min(len(buffer), len(self._out) - self._pos)
        buffer[:n] = memoryview(self._out)[self._pos : self._pos + n]
        self._pos += n
        return n


def _open(path: str, compression: str | None):
    """A binary stream of the file's decompressed bytes; every compression detects truncation."""
    if compression != "zstd":
        return fsspec.open(path, "rb", compression=compression)
    return _ZstdOpen(path)


class _ZstdOpen:
    def __init__(self, path: str):
        self._file = fsspec.open(path, "rb")

    def __enter__(self):
        # Unbuffered: a read returns what was decoded so far, so the records before a truncation
        # are read before the EOFError (a BufferedReader would drop its partly filled block).
        return ZstdReader(self._file.__enter__())

    def __exit__(self, *exc):
        return self._file.__exit__(*exc)


def iter_file_records(url: str | bytes, config: SourceConfig) -> Iterator[Document | Reject]:
    """Every record of one input file, as a Document or a Reject (never raises for bad data).
    `url` is a string, or the bytes of a local file name that is not UTF-8 (`portable_url`)."""
    path, url = file_url(url)
    fmt, compression = split_extension(url)
    if config.format != "auto":
        fmt = config.format
    if fmt not in _READERS:
        yield Reject(url, url, Reason.CORRUPT_FILE.value, f"unknown file format (expected one of {sorted(FORMATS)})")
        return
    emitted = 0
    try:
        with _open(path, compression) as fh:
            for item in _READERS[fmt](fh, url, config):
                emitted += 1
                yield item
    except Exception as err:  # truncated archive, bad parquet footer, unreadable object, ...
        yield Reject(
            url,
            f"{url}@{emitted}",
            Reason.CORRUPT_FILE.value,
            f"{type(err).__name__}: {_one_line(err)} (after {emitted} records)",
        )
