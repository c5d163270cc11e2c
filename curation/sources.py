"""Reading book records from files (JSONL, Parquet, plain text; compressed or not) via fsspec.

Each file yields `Document`s and `Reject`s, never an exception: a record that cannot be read is
a reject with its reason, and a file that breaks part-way (a truncated archive) yields the
records before the break and one `corrupt_file` reject for the rest.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass

import fsspec

from curation.accounting import Reason, Reject
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
    """Files matching a local path, folder or glob, or any fsspec URL/glob, as full URLs, sorted."""
    fs, path = fsspec.core.url_to_fs(pattern)
    if any(ch in path for ch in "*?["):
        paths = fs.glob(path)
    elif fs.isdir(path):
        paths = [p for p in fs.find(path) if split_extension(p)[0] != "unknown"]
    else:
        paths = [path] if fs.exists(path) else []
    files = sorted(p for p in paths if not fs.isdir(p))
    return [fs.unstrip_protocol(p) if "://" in pattern else p for p in files]


def _record_id(value: object, fallback: str) -> str:
    return fallback if value is None or value == "" else str(value)


def _document(url: str, index: int, record_id: str, text: object) -> Document | Reject:
    if isinstance(text, bytes):
        try:
            text = decode_utf8(text)
        except Rejected as err:
            return Reject(url, record_id, err.reason.value, err.detail)
    if not isinstance(text, str):
        return Reject(url, record_id, Reason.WRONG_TYPE.value, f"text is {type(text).__name__}, not a string")
    return Document(source=url, id=record_id, uid=f"{url}#{index}", index=index, text=text)


def iter_lines(fh, block: int = 1 << 20) -> Iterator[bytes]:
    """Lines of a binary stream, read in blocks (works for decompressors that lack readline)."""
    pending: list[bytes] = []  # pieces of a line longer than one block, joined once complete
    while True:
        chunk = fh.read(block)
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


def _iter_jsonl(fh, url: str, config: SourceConfig) -> Iterator[Document | Reject]:
    base = posixpath.basename(url)
    for index, raw in enumerate(iter_lines(fh)):
        fallback = f"{base}:{index + 1}"
        if not raw.strip():
            yield Reject(url, fallback, Reason.EMPTY.value, f"blank line {index + 1}")
            continue
        try:
            line = decode_utf8(raw)
        except Rejected as err:
            yield Reject(url, fallback, err.reason.value, f"line {index + 1}: {err.detail}")
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            yield Reject(url, fallback, Reason.MALFORMED_JSON.value, f"line {index + 1}: {err.msg} at col {err.colno}")
            continue
        if not isinstance(record, dict):
            yield Reject(url, fallback, Reason.MALFORMED_JSON.value, f"line {index + 1}: not a JSON object")
            continue
        record_id = _record_id(record.get(config.id_field), fallback)
        missing = [f for f in (config.text_field, *config.meta_fields) if f not in record]
        if missing:
            yield Reject(url, record_id, Reason.MISSING_FIELD.value, f"no {missing[0]!r} field")
            continue
        doc = _document(url, index, record_id, record[config.text_field])
        if config.meta_fields and isinstance(doc, Document):
            doc = doc.with_(meta={f: record[f] for f in config.meta_fields})
        yield doc


def _iter_parquet(fh, url: str, config: SourceConfig) -> Iterator[Document | Reject]:
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(fh)
    names = parquet.schema_arrow.names
    missing = [f for f in (config.text_field, *config.meta_fields) if f not in names]
    if missing:
        yield Reject(url, url, Reason.MISSING_FIELD.value, f"no {missing[0]!r} column (has {names})")
        return
    columns = [config.text_field, *config.meta_fields] + ([config.id_field] if config.id_field in names else [])
    base = posixpath.basename(url)
    index = 0
    for batch in parquet.iter_batches(batch_size=config.parquet_batch_rows, columns=columns):
        texts = batch.column(config.text_field).to_pylist()
        ids = batch.column(config.id_field).to_pylist() if config.id_field in names else [None] * len(texts)
        metas = [batch.column(f).to_pylist() for f in config.meta_fields]
        for row, (text, raw_id) in enumerate(zip(texts, ids)):
            record_id = _record_id(raw_id, f"{base}:{index + 1}")
            meta = {f: values[row] for f, values in zip(config.meta_fields, metas)}
            if text is None or any(v is None for v in meta.values()):
                null = config.text_field if text is None else next(f for f, v in meta.items() if v is None)
                yield Reject(url, record_id, Reason.MISSING_FIELD.value, f"{null!r} is null")
            else:
                doc = _document(url, index, record_id, text)
                yield doc.with_(meta=meta) if meta and isinstance(doc, Document) else doc
            index += 1


def _iter_text(fh, url: str, config: SourceConfig) -> Iterator[Document | Reject]:
    yield _document(url, 0, url, fh.read())


_READERS = {"jsonl": _iter_jsonl, "parquet": _iter_parquet, "text": _iter_text}


def iter_file_records(url: str, config: SourceConfig) -> Iterator[Document | Reject]:
    """Every record of one input file, as a Document or a Reject (never raises for bad data)."""
    fmt, compression = split_extension(url)
    if config.format != "auto":
        fmt = config.format
    if fmt not in _READERS:
        yield Reject(url, url, Reason.CORRUPT_FILE.value, f"unknown file format (expected one of {sorted(FORMATS)})")
        return
    emitted = 0
    try:
        with fsspec.open(url, "rb", compression=compression) as fh:
            for item in _READERS[fmt](fh, url, config):
                emitted += 1
                yield item
    except Exception as err:  # truncated archive, bad parquet footer, unreadable object, ...
        yield Reject(
            url,
            f"{url}@{emitted}",
            Reason.CORRUPT_FILE.value,
            f"{type(err).__name__}: {err} (after {emitted} records)",
        )
