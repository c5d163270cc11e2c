"""The shard format shared by every pipeline, its atomic deterministic writer and its readers.

A shard is an Arrow IPC *stream* file (what `datasets.Dataset.from_file` and
`pyarrow.ipc.open_stream` open) holding one record batch. Token columns are
`fixed_size_list<int32>[L]` (loss_mask `fixed_size_list<float32>[L]`), so a row is the training
step's input as is. Two readers:

- `read_shard`: the whole shard (tools; local files are memory-mapped, remote ones fetched whole);
- `read_shard_headers` + `ShardReader`: the trainer's. The header (schema + the record batch's
  buffer table, a few KiB) says where every row of every token column lies in the file, so a row
  is read with one byte-range request (an mmap slice locally) and nothing else of the shard is.

What a shard records about how it was made is parsed once, into `ShardMetadata`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import struct
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, TypeVar

import fsspec
import numpy as np
import pyarrow as pa

from curation.accounting import printable
from curation.packing import RowArrays
from curation.vision_layout import UnifiedVocab, VisionVocab, Vocab

log = logging.getLogger("longctx")
T = TypeVar("T")

SCHEMA_VERSION = "1"
TOKEN_COLUMNS = ("input_ids", "segment_ids", "positions", "loss_mask")
OPTIONAL_TOKEN_COLUMNS = ("vision_mask",)
# What the pipelines name a shard: train-00003-of-00017.arrow (shard_name).
SHARD_NAME = re.compile(r"^(?P<split>.+)-(?P<index>\d+)-of-(?P<count>\d+)\.arrow$")


def shard_name(split: str, index: int, count: int) -> str:
    return f"{split}-{index:05d}-of-{count:05d}.arrow"


def shard_schema(length: int, metadata: dict[str, Any], with_vision: bool = False) -> pa.Schema:
    fields = [
        pa.field("input_ids", pa.list_(pa.int32(), length)),
        pa.field("segment_ids", pa.list_(pa.int32(), length)),
        pa.field("positions", pa.list_(pa.int32(), length)),
        pa.field("loss_mask", pa.list_(pa.float32(), length)),
    ]
    if with_vision:
        fields.append(pa.field("vision_mask", pa.list_(pa.uint8(), length)))
    fields += [pa.field("doc_ids", pa.list_(pa.string())), pa.field("doc_starts", pa.list_(pa.int64()))]
    meta = {"longctx.schema_version": SCHEMA_VERSION, "longctx.length": str(length)}
    # json.dumps escapes lone surrogates (ensure_ascii); plain strings are escaped here.
    meta.update({f"longctx.{k}": printable(v) if isinstance(v, str) else json.dumps(v, sort_keys=True) for k, v in metadata.items()})
    return pa.schema(fields, metadata=meta)


def _fixed(values: np.ndarray, dtype: pa.DataType) -> pa.FixedSizeListArray:
    rows, length = values.shape
    return pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(values).reshape(-1), type=dtype), length)


def _shard_batch(rows: RowArrays, metadata: dict[str, Any]) -> tuple[pa.Schema, pa.RecordBatch]:
    """The shard's schema and its one record batch (the token columns wrap `rows` without a copy)."""
    length = rows.input_ids.shape[1]
    schema = shard_schema(length, metadata, with_vision=rows.vision_mask is not None)
    columns = [
        _fixed(rows.input_ids, pa.int32()),
        _fixed(rows.segment_ids, pa.int32()),
        _fixed(rows.positions, pa.int32()),
        _fixed(rows.loss_mask, pa.float32()),
    ]
    if rows.vision_mask is not None:
        columns.append(_fixed(rows.vision_mask.astype(np.uint8), pa.uint8()))
    doc_ids = [[printable(d) for d in ids] for ids in rows.doc_ids]  # Arrow strings must be valid UTF-8
    columns += [pa.array(doc_ids, pa.list_(pa.string())), pa.array(rows.doc_starts, pa.list_(pa.int64()))]
    return schema, pa.record_batch(columns, schema=schema)


def _write_stream(sink: Any, schema: pa.Schema, batch: pa.RecordBatch) -> None:
    with pa.ipc.new_stream(sink, schema) as writer:
        writer.write_batch(batch)


class _HashingSink:
    """A writable file for Arrow's IPC writer that hashes (sha256) what it passes on to `fh`: the
    shard goes from the row arrays to the file in one copy, with no buffer of the whole file."""

    def __init__(self, fh: Any):
        self.fh = fh
        self.sha256 = hashlib.sha256()
        self.closed = False

    def write(self, data: Any) -> int:
        self.sha256.update(data)
        self.fh.write(data)
        return memoryview(data).nbytes

    def flush(self) -> None:
        self.fh.flush()

    def close(self) -> None:  # Arrow closes its sink; the file is closed by its owner
        self.closed = True

    def writable(self) -> bool:
        return True


def join_url(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *[p.strip("/") for p in parts]])


def write_bytes_atomic(url: str, data: bytes | pa.Buffer) -> None:
    """`data` as the file `url`, atomically (`write_atomic`)."""
    write_atomic(url, lambda fh: fh.write(data))


def write_atomic(url: str, write: Callable[[Any], T]) -> T:
    """Call `write(fh)` with a binary file that becomes `url`, and return what it returns; readers
    see the whole file or nothing.
    Locally: a hidden temporary name beside the target, then a rename. On object stores (gs://,
    s3://, memory://) an object becomes visible only when its upload completes, so it is written
    under its final name directly (a rename there would be a copy and a delete, and a killed writer
    could leave the temporary object behind)."""
    fs, path = fsspec.core.url_to_fs(url)
    parent, _, name = path.rpartition("/")
    fs.makedirs(parent, exist_ok=True)
    if not _is_local(fs):
        with fs.open(path, "wb") as fh:
            return write(fh)
    tmp = f"{parent}/.{name}.tmp-{uuid.uuid4().hex}"
    try:
        with fs.open(tmp, "wb") as fh:
            result = write(fh)
        fs.mv(tmp, path)
        return result
    finally:
        if fs.exists(tmp):
            fs.rm(tmp)


def _is_local(fs) -> bool:
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else fs.protocol
    return "file" in protocols or "local" in protocols


@dataclass(frozen=True)
class ShardInfo:
    """What the manifest says of one written shard (path relative to the job's output)."""

    stage: str
    path: str
    rows: int
    tokens: int
    sha256: str

    def as_json(self) -> dict[str, Any]:
        return {"path": self.path, "rows": self.rows, "tokens": self.tokens, "sha256": self.sha256}


def write_shard(
    output: str, stage: str, index: int, count: int, rows: RowArrays, metadata: dict[str, Any], split: str = "train"
) -> ShardInfo:
    schema, batch = _shard_batch(rows, metadata)
    rel = f"{stage}/{shard_name(split, index, count)}"

    def stream(fh: Any) -> str:
        sink = _HashingSink(fh)
        _write_stream(sink, schema, batch)
        return sink.sha256.hexdigest()

    return ShardInfo(
        stage=stage,
        path=rel,
        rows=int(rows.input_ids.shape[0]),
        tokens=int((rows.segment_ids > 0).sum()),
        sha256=write_atomic(join_url(output, rel), stream),
    )


class UnfinishedDataError(ValueError):
    """The data folder is not the finished output of a job (no manifest, shards missing)."""


@dataclass(frozen=True)
class ShardMetadata:
    """What a shard records about how it was made (its schema metadata), parsed once: the stage
    length, the pipeline kind and stage name, the tokenizer record (`TokenizerInfo.as_metadata()`:
    name, sha256, vocab_size, bos/eos/pad ids), the vision id layout (`vocab_metadata`; None for
    text) and the job's config hash. `raw` keeps the strings as stored."""

    length: int
    schema_version: str | None
    kind: str | None
    stage: str | None
    config_hash: str | None
    tokenizer: Mapping[str, Any]  # {} when the shard records none
    vision: Mapping[str, Any] | None
    raw: Mapping[str, str] = field(repr=False)

    @classmethod
    def parse(cls, raw: Mapping[str, str]) -> "ShardMetadata":
        """From schema metadata (str -> str); ValueError, on one line, naming the bad key."""
        length = raw.get("longctx.length")
        if length is None or not length.isdigit() or int(length) <= 0:
            raise ValueError(f"not a longctx shard: schema metadata longctx.length is {length!r}, not a positive integer")
        tokenizer = _json_record(raw, "longctx.tokenizer")
        vision = _json_record(raw, "longctx.vision")
        return cls(
            length=int(length),
            schema_version=raw.get("longctx.schema_version"),
            kind=raw.get("longctx.kind"),
            stage=raw.get("longctx.stage"),
            config_hash=raw.get("longctx.config_hash"),
            tokenizer=tokenizer or {},
            vision=vision,
            raw=dict(raw),
        )

    def vision_vocab(self) -> Vocab | None:
        """The vision vocabulary the `vision` record describes (None: a text shard); ValueError
        when the record is not one a vocabulary of its layout has."""
        if self.vision is None:
            return None
        meta = self.vision
        try:
            if meta.get("layout") == "unified":
                vocab: Vocab = UnifiedVocab(text_vocab_size=int(meta["offset"]))
            else:
                vocab = VisionVocab(eof=int(meta["eof"]), eov=int(meta["eov"]), size=int(meta["vocab_size"]))
            matches = (vocab.eof, vocab.eov) == (int(meta["eof"]), int(meta["eov"]))
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"shard vision metadata {dict(meta)} describes no vision vocabulary ({err})") from None
        if not matches:
            raise ValueError(f"shard vision metadata {dict(meta)} does not match a {vocab.mode} vocabulary")
        return vocab

    def tokenizer_identity(self) -> dict[str, Any]:
        """The tokenizer as far as the ids depend on it (its name may be spelt differently for the
        same file, so it is not part of it)."""
        return {f"tokenizer {k}": self.tokenizer.get(k) for k in ("sha256", "vocab_size", "bos_id", "eos_id", "pad_id")}

    def identity(self) -> dict[str, Any]:
        """What every shard of one data source must share: the stage length, the tokenizer, the
        vision id layout and the schema version. Job-specific keys (config hash, stage name) may
        differ: shards of two jobs with one tokenizer go together."""
        return {
            "stage length": self.length,
            **self.tokenizer_identity(),
            **{f"vision {k}": v for k, v in sorted((self.vision or {}).items())},
            "schema version": self.schema_version,
        }


def _json_record(raw: Mapping[str, str], key: str) -> dict[str, Any] | None:
    text = raw.get(key)
    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError as err:
        raise ValueError(f"shard metadata {key} is not JSON ({err})") from None
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValueError(f"shard metadata {key} is a {type(value).__name__}, not a JSON object")
    return value


@dataclass
class Shard:
    """A shard opened for reading: `arrays[name]` are zero-copy `(rows, L)` views."""

    length: int
    arrays: dict[str, np.ndarray]
    doc_ids: list[list[str]]
    doc_starts: list[list[int]]
    metadata: dict[str, str]
    table: pa.Table

    @property
    def num_rows(self) -> int:
        return int(self.arrays["input_ids"].shape[0])

    @cached_property
    def info(self) -> ShardMetadata:
        return ShardMetadata.parse(self.metadata)


def _open_buffer(url: str) -> pa.Buffer:
    fs, path = fsspec.core.url_to_fs(url)
    if _is_local(fs):
        return pa.memory_map(path, "r").read_buffer()
    with fs.open(path, "rb") as fh:
        return pa.py_buffer(fh.read())


def _schema_metadata(schema: pa.Schema) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in (schema.metadata or {}).items()}


def read_shard_metadata(url: str) -> dict[str, str]:
    """A shard's schema metadata as stored (str -> str), reading only its header; parse it with
    `ShardMetadata.parse`, or take `read_shard_headers([url])[0].metadata`."""
    return dict(read_shard_headers([url])[0].metadata.raw)


def read_shard(url: str) -> Shard:
    """Open a whole shard (local path or fsspec URL). Local files are memory-mapped; remote ones
    are fetched whole (for tools: the trainer reads rows through `ShardReader`). A file that is
    not a whole Arrow stream is a one-line ValueError naming it (truncated, or not a shard)."""
    buffer = _open_buffer(url)
    try:
        table = pa.ipc.open_stream(buffer).read_all()
    except (pa.ArrowException, OSError) as err:  # pyarrow's messages do not name the file
        raise ValueError(_unreadable_reason(url, memoryview(buffer), buffer.size, err)) from None
    meta = _schema_metadata(table.schema)
    length = int(meta["longctx.length"])
    arrays = {}
    for name in TOKEN_COLUMNS + OPTIONAL_TOKEN_COLUMNS:
        if name not in table.column_names:
            continue
        column = table.column(name)
        chunk = column.chunk(0) if column.num_chunks == 1 else pa.concat_arrays(column.chunks)
        flat = chunk.values.to_numpy(zero_copy_only=True) if chunk.offset == 0 else chunk.flatten().to_numpy()
        arrays[name] = flat.reshape(-1, length)
    return Shard(
        length=length,
        arrays=arrays,
        doc_ids=table.column("doc_ids").to_pylist(),
        doc_starts=table.column("doc_starts").to_pylist(),
        metadata=meta,
        table=table,
    )


# ----------------------------------------------------------------------------------------------
# Row-level reading: where each row lies in the file, from the IPC header alone
# ----------------------------------------------------------------------------------------------

# One ranged request for the header: the schema message (with the tokenizer record) and the record
# batch's buffer table take 1-3 KiB; a longer header costs one more request for exactly the rest.
HEADER_PROBE_BYTES = 8192
_EOS = b"\xff\xff\xff\xff\x00\x00\x00\x00"  # what pyarrow's stream writer ends a stream with
_SCHEMA_MESSAGE, _RECORD_BATCH_MESSAGE = 1, 3  # org.apache.arrow.flatbuf.MessageHeader


class _NeedBytes(Exception):
    """The header continues past the bytes read so far: read up to `size`."""

    def __init__(self, size: int):
        self.size = size


class _FlatTable:
    """Just enough of the flatbuffers wire format to read an Arrow IPC message's metadata
    (Message.fbs): a table's scalar fields, sub-tables and vectors of structs."""

    def __init__(self, buf: bytes, pos: int):
        self.buf, self.pos = buf, pos
        self.vtable = pos - struct.unpack_from("<i", buf, pos)[0]
        self.vtable_size = struct.unpack_from("<H", buf, self.vtable)[0]

    def _offset(self, index: int) -> int:
        slot = 4 + 2 * index
        return struct.unpack_from("<H", self.buf, self.vtable + slot)[0] if slot < self.vtable_size else 0

    def scalar(self, index: int, fmt: str, default: int = 0) -> int:
        off = self._offset(index)
        return struct.unpack_from(fmt, self.buf, self.pos + off)[0] if off else default

    def _target(self, index: int) -> int | None:
        off = self._offset(index)
        if not off:
            return None
        at = self.pos + off
        return at + struct.unpack_from("<I", self.buf, at)[0]

    def table(self, index: int) -> "_FlatTable | None":
        at = self._target(index)
        return None if at is None else _FlatTable(self.buf, at)

    def structs(self, index: int, fmt: str) -> list[tuple]:
        at = self._target(index)
        if at is None:
            return []
        count = struct.unpack_from("<I", self.buf, at)[0]
        size = struct.calcsize(fmt)
        return [struct.unpack_from(fmt, self.buf, at + 4 + i * size) for i in range(count)]


def _message(head: bytes, pos: int) -> tuple[_FlatTable, int, int]:
    """(Message table, end of its metadata = start of its body, body length) of the encapsulated
    IPC message at `pos` (continuation marker, int32 size, flatbuffer; the pre-1.0 form without
    the marker too)."""
    if len(head) < pos + 8:
        raise _NeedBytes(pos + 8)
    (size,) = struct.unpack_from("<i", head, pos)
    start = pos + 4
    if size == -1:
        (size,) = struct.unpack_from("<i", head, pos + 4)
        start = pos + 8
    if size <= 0:
        raise ValueError("the stream ends before its record batch")
    if len(head) < start + size:
        raise _NeedBytes(start + size)
    meta = bytes(head[start : start + size])
    table = _FlatTable(meta, struct.unpack_from("<I", meta, 0)[0])
    return table, start + size, table.scalar(3, "<q")


def _buffer_count(t: pa.DataType) -> tuple[int, int]:
    """(field nodes, buffers) a column of type `t` takes in a record batch, children included."""
    if pa.types.is_fixed_size_list(t):
        nodes, buffers = _buffer_count(t.value_type)
        return 1 + nodes, 1 + buffers
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        nodes, buffers = _buffer_count(t.value_type)
        return 1 + nodes, 2 + buffers
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return 1, 3
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t):
        return 1, 2
    raise ValueError(f"column type {t} is not one a shard holds")


@dataclass(frozen=True)
class ShardHeader:
    """Where a shard's rows lie: `columns[name] = (file offset of the column's values, dtype)`;
    row r of a token column is `length` values from offset + r * length * itemsize."""

    metadata: ShardMetadata
    num_rows: int
    body_end: int  # the record batch's last byte + 1: the end-of-stream marker follows
    columns: Mapping[str, tuple[int, np.dtype]]

    @property
    def length(self) -> int:
        return self.metadata.length

    def span(self, name: str, row: int, columns: range) -> tuple[int, int]:
        """Byte range [start, end) of `columns` (sequence positions) of row `row` of column `name`."""
        offset, dtype = self.columns[name]
        first = (row * self.length + columns.start) * dtype.itemsize
        return offset + first, offset + first + len(columns) * dtype.itemsize


def parse_shard_header(head: bytes) -> ShardHeader:
    """The header of a shard from the file's first bytes (raises _NeedBytes(n) when they stop
    short of it). Refuses, with the reason, what `ShardReader` could not read row by row: a
    compressed batch, nulls in a token column, a token column that is not fixed_size_list[L]."""
    message, end, body = _message(head, 0)
    if message.scalar(1, "<B") != _SCHEMA_MESSAGE:
        raise ValueError("the stream does not start with a schema")
    schema = pa.ipc.read_schema(pa.py_buffer(bytes(head[:end])))
    metadata = ShardMetadata.parse(_schema_metadata(schema))
    message, body_start, body_length = _message(head, end + body)
    if message.scalar(1, "<B") != _RECORD_BATCH_MESSAGE:
        raise ValueError("the schema is not followed by a record batch (dictionary batches are not used by shards)")
    batch = message.table(2)
    if batch is None:
        raise ValueError("the record batch message has no header")
    if batch.table(3) is not None:
        raise ValueError("the record batch is compressed (shards are written uncompressed)")
    num_rows = batch.scalar(0, "<q")
    nodes, buffers = batch.structs(1, "<qq"), batch.structs(2, "<qq")
    columns: dict[str, tuple[int, np.dtype]] = {}
    node, buffer = 0, 0
    wanted = [n for n in TOKEN_COLUMNS + OPTIONAL_TOKEN_COLUMNS if n in schema.names]
    for f in schema:
        if len(columns) == len(wanted):
            break
        if f.name in wanted:
            t = f.type
            if not pa.types.is_fixed_size_list(t) or t.list_size != metadata.length:
                raise ValueError(f"column {f.name} is {t}, not fixed_size_list[{metadata.length}]")
            if any(nodes[node + k][1] for k in (0, 1)):
                raise ValueError(f"column {f.name} has nulls")
            offset, size = buffers[buffer + 2]  # [list validity, values validity, values]
            dtype = np.dtype(t.value_type.to_pandas_dtype())
            if size < num_rows * metadata.length * dtype.itemsize:
                raise ValueError(f"column {f.name} holds {size} bytes, fewer than {num_rows} rows of {metadata.length}")
            columns[f.name] = (body_start + offset, dtype)
        n, b = _buffer_count(f.type)
        node, buffer = node + n, buffer + b
    missing = [n for n in TOKEN_COLUMNS if n not in columns]
    if missing:
        raise ValueError(f"no {missing[0]} column")
    return ShardHeader(metadata=metadata, num_rows=num_rows, body_end=body_start + body_length, columns=columns)


def _cat_ranges(fs, path: str, spans: Sequence[tuple[int, int]]) -> list[bytes]:
    """Bytes of each [start, end) of one file: concurrent ranged GETs on object stores."""
    if not spans:
        return []
    return fs.cat_ranges([path] * len(spans), [s for s, _ in spans], [e for _, e in spans], on_error="raise")


def read_shard_headers(urls: Sequence[str]) -> list[ShardHeader]:
    """The headers of shards (all on one filesystem), one ranged read of HEADER_PROBE_BYTES each,
    concurrently, and no row data beyond that probe. Errors name the shard."""
    if not urls:
        return []
    fs, _ = fsspec.core.url_to_fs(urls[0])
    paths = [fsspec.core.url_to_fs(u)[1] for u in urls]
    heads = [b""] * len(urls)
    pending = list(range(len(urls)))
    want = {i: HEADER_PROBE_BYTES for i in pending}
    out: list[ShardHeader | None] = [None] * len(urls)
    sizes: list[int | None] = [None] * len(urls)
    while pending:
        got = fs.cat_ranges([paths[i] for i in pending], [len(heads[i]) for i in pending], [want[i] for i in pending],
                            on_error="return")
        again = []
        for i, data in zip(pending, got):
            if isinstance(data, BaseException):
                kind = FileNotFoundError if isinstance(data, FileNotFoundError) else OSError
                raise kind(f"{urls[i]}: cannot read its header ({data})") from data
            short = len(data) < want[i] - len(heads[i])
            heads[i] += data
            try:
                out[i] = parse_shard_header(heads[i])
            except _NeedBytes as more:
                if short:  # the file ended first
                    raise ValueError(f"{urls[i]} is not a shard: it ends inside its header ({len(heads[i])} bytes)") from None
                want[i] = more.size
                again.append(i)
            except (ValueError, struct.error, pa.ArrowInvalid) as err:
                raise ValueError(f"{urls[i]} is not a shard this reader can read: {err}") from None
            if short:  # the whole file was read: its size is known
                sizes[i] = len(heads[i])
        pending = again
    # A file cut short (an interrupted copy or download) still has its header: it says where the
    # record batch ends, the file's size says where the file does. Found here, before any row is read.
    unknown = [i for i in range(len(urls)) if sizes[i] is None]
    if unknown:
        try:
            found = fs.sizes([paths[i] for i in unknown])  # concurrent on object stores
        except OSError:
            found = [_size(fs, paths[i], urls[i]) for i in unknown]  # which one: it names the shard
        for i, size in zip(unknown, found):
            sizes[i] = size
    for url, header, size in zip(urls, out, sizes):
        problem = truncation(url, header, size)  # type: ignore[arg-type]
        if problem:
            raise ValueError(problem)
    return out  # type: ignore[return-value]


def _size(fs, path: str, url: str) -> int | None:
    try:
        return fs.size(path)
    except OSError as err:
        kind = FileNotFoundError if isinstance(err, FileNotFoundError) else OSError
        raise kind(f"{url}: cannot read its size ({err})") from err


def truncation(url: str, header: ShardHeader, size: int | None) -> str | None:
    """Why a shard of `size` bytes is cut short of the record batch its header describes (None
    when it is not, or its size is not known)."""
    if size is None or size >= header.body_end:
        return None
    return (f"{url} is truncated: {size:,} bytes, but its header says its {header.num_rows:,} rows end at byte "
            f"{header.body_end:,} (a copy or download cut short? copy it again or rerun the job)")


def _unreadable_reason(url: str, head: bytes | memoryview, size: int, err: Exception) -> str:
    """One line for a file pyarrow could not read as a stream: truncated when its header (in
    `head`, the file's first bytes) says the record batch ends past `size`, else not a shard."""
    try:
        problem = truncation(url, parse_shard_header(head), size)
    except (_NeedBytes, ValueError, struct.error, pa.ArrowInvalid):
        problem = None
    if problem:
        return problem
    reason = " ".join(str(err).split()) or type(err).__name__
    return f"{url} is not a shard (an Arrow stream of one record batch): {reason}"


class ShardReader:
    """One shard's rows, read on demand and only those asked for: a local file is memory-mapped at
    the first read (the OS pages in what is touched), a remote one (gs://, s3://) is read with one
    ranged request per row and column (adjacent rows merged). Memory is the rows read, not the
    shard; nothing is fetched before the first read."""

    def __init__(self, url: str, header: ShardHeader):
        self.url, self.header = url, header
        self._fs, self._path = fsspec.core.url_to_fs(url)
        self._local = _is_local(self._fs)
        self._map: np.memmap | None = None
        self._checked = False

    @property
    def num_rows(self) -> int:
        return self.header.num_rows

    @property
    def length(self) -> int:
        return self.header.length

    @property
    def metadata(self) -> ShardMetadata:
        return self.header.metadata

    @property
    def column_names(self) -> list[str]:
        return list(self.header.columns)

    def _spans(self, spans: list[tuple[int, int]]) -> list[bytes]:
        """Bytes of each span; the first read also checks the file ends after the one record batch
        (a stream with more batches would hold rows the header does not count)."""
        if not self._checked:
            spans = [*spans, (self.header.body_end, self.header.body_end + len(_EOS))]
        if self._local:
            if self._map is None:
                self._map = np.memmap(self._path, dtype=np.uint8, mode="r")
            got = [self._map[s:e].tobytes() for s, e in spans]
        else:
            got = _cat_ranges(self._fs, self._path, spans)
        if not self._checked:
            tail = got.pop()
            if tail not in (_EOS, b"\x00\x00\x00\x00", b""):
                raise ValueError(f"{self.url} holds more than one record batch; shards hold one (curation.shards)")
            self._checked = True
        return got

    def read(self, rows: np.ndarray, columns: slice = slice(None), names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """`{name: [len(rows), width]}` for rows `rows` (any order, repeats allowed) and sequence
        positions `columns` of each token column in `names` (default: all the shard has)."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if rows.size and (rows.min() < 0 or rows.max() >= self.num_rows):
            raise IndexError(f"rows {rows.min()}..{rows.max()} outside {self.url}'s {self.num_rows} rows")
        cols = range(self.length)[columns]
        if cols.step != 1:
            raise ValueError("sequence columns must be a contiguous slice")
        names = list(self.header.columns) if names is None else list(names)
        unique, inverse = np.unique(rows, return_inverse=True)
        # Runs of consecutive rows are one range when whole rows are read (they are adjacent on disk).
        runs = _runs(unique) if len(cols) == self.length else [(int(r), int(r) + 1) for r in unique]
        spans, where = [], []
        for name in names:
            for lo, hi in runs:
                start, _ = self.header.span(name, lo, cols)
                _, end = self.header.span(name, hi - 1, cols)
                spans.append((start, end))
                where.append((name, lo, hi))
        out = {name: np.empty((len(unique), len(cols)), self.header.columns[name][1]) for name in names}
        position = {int(r): i for i, r in enumerate(unique)}
        for (name, lo, hi), data in zip(where, self._spans(spans)):
            dtype = self.header.columns[name][1]
            expected = (hi - lo) * len(cols) * dtype.itemsize
            if len(data) != expected:
                raise OSError(f"{self.url}: read {len(data)} bytes of rows {lo}..{hi - 1} of {name}, expected {expected} "
                              "(did the file change?)")
            out[name][position[lo] : position[lo] + hi - lo] = np.frombuffer(data, dtype).reshape(hi - lo, len(cols))
        return {name: value[inverse] for name, value in out.items()}

    @property
    def arrays(self) -> dict[str, np.ndarray]:
        """Every row of every token column (tools that walk a whole shard): memory-mapped views
        locally; a remote shard is read whole."""
        if self._local:
            if self._map is None:
                self._spans([])
            size = self.num_rows * self.length
            return {name: self._map[offset : offset + size * dtype.itemsize].view(dtype).reshape(self.num_rows, self.length)
                    for name, (offset, dtype) in self.header.columns.items()}
        return self.read(np.arange(self.num_rows))


def _runs(sorted_rows: np.ndarray) -> list[tuple[int, int]]:
    """[lo, hi) runs of consecutive values of a sorted, duplicate-free array."""
    if not len(sorted_rows):
        return []
    breaks = np.flatnonzero(np.diff(sorted_rows) != 1) + 1
    return [(int(chunk[0]), int(chunk[-1]) + 1) for chunk in np.split(sorted_rows, breaks)]


# ----------------------------------------------------------------------------------------------
# Which shards make a stage
# ----------------------------------------------------------------------------------------------


class ManifestError(ValueError):
    """A manifest.json that is not a job's manifest (damaged, or some other file): one line
    naming it, `OUT/manifest.json is not a job manifest: ...`."""


def _json_kind(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number",
            type(None): "null"}.get(type(value), type(value).__name__)


def _manifest_json(url: str, fs=None, path: str | None = None) -> dict[str, Any]:
    """The JSON object of the manifest file at `url` (ManifestError when it is not one)."""
    if fs is None:
        fs, path = fsspec.core.url_to_fs(url)
    with fs.open(path, "rb") as fh:
        data = fh.read()
    try:
        manifest = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise ManifestError(f"{url} is not a job manifest: not UTF-8 text ({err.reason} at byte {err.start})") from None
    except json.JSONDecodeError as err:
        raise ManifestError(f"{url} is not a job manifest: not valid JSON ({err.msg} at line {err.lineno} "
                            f"column {err.colno})") from None
    if not isinstance(manifest, dict):
        raise ManifestError(f"{url} is not a job manifest: it holds a JSON {_json_kind(manifest)}, not an object")
    return manifest


def read_manifest(output: str) -> dict[str, Any]:
    """OUT/manifest.json, checked to be a job's: a JSON object whose "stages" maps each stage to an
    object (ManifestError, one line naming the file, otherwise)."""
    url = join_url(output, "manifest.json")
    manifest = _manifest_json(url)
    stages = manifest.get("stages")
    if not isinstance(stages, dict):
        what = "no \"stages\"" if stages is None else f"its \"stages\" is a JSON {_json_kind(stages)}, not an object"
        raise ManifestError(f"{url} is not a job manifest: {what}")
    for name, entry in stages.items():
        if not isinstance(entry, dict):
            raise ManifestError(f"{url} is not a job manifest: stage {name!r} is a JSON {_json_kind(entry)}, not an object")
    return manifest


def _basename(url: str) -> str:
    return url.rstrip("/").rpartition("/")[2]


def unfinished_reason(names: list[str]) -> str | None:
    """Why shard file names are not a whole `-of-N` set (None when they are: every index 0..N-1
    of one N, each once). Pure, so the rule is tested on names alone."""
    if not names:
        return "no shards (*.arrow)"
    parsed = [SHARD_NAME.match(n) for n in names]
    odd = [n for n, m in zip(names, parsed) if m is None]
    if odd:
        return f"{odd[0]} is not named like a job's shard (train-00000-of-00004.arrow), so nothing says the set is whole"
    counts = sorted({int(m["count"]) for m in parsed})
    if len(counts) > 1:
        return f"shards of different sets are mixed (-of-{counts[0]:05d} and -of-{counts[-1]:05d})"
    count = counts[0]
    indices = {int(m["index"]) for m in parsed}
    if indices != set(range(count)) or len(names) != count:
        missing = sorted(set(range(count)) - indices)
        where = f", missing {', '.join(f'{i:05d}' for i in missing[:3])}{' ...' if len(missing) > 3 else ''}" if missing else ""
        return f"only {len(indices & set(range(count)))} of {count} shards (*-of-{count:05d}.arrow) are there{where}"
    return None


def stage_shard_urls(folder: str, stage: str | None = None, *, allow_unfinished: bool = False) -> list[str]:
    """Shards of a stage, in order, only from a finished output. The stage is the folder `folder`
    (`OUT/32k`), or `stage` of the output `folder` (`OUT`, "32k"): the shards the job's manifest
    (`OUT/manifest.json`, written last) lists for it, or, without a manifest, a whole `-of-N` set.
    A killed job leaves some shards and no manifest: that is refused with the reason
    (UnfinishedDataError) unless `allow_unfinished`, which takes what is there and says so
    loudly; so are listed shards that are gone. An empty or missing folder gives []."""
    if isinstance(stage, bool):
        raise TypeError("stage_shard_urls(folder, stage=None, *, allow_unfinished=False): pass allow_unfinished by name")
    data = join_url(folder, stage) if stage else folder.rstrip("/")
    parent, _, name = data.rpartition("/")
    fs, path = fsspec.core.url_to_fs(join_url(parent or ".", "manifest.json"))
    if fs.exists(path):
        manifest = _manifest_json(join_url(parent or ".", "manifest.json"), fs, path)
        if isinstance(manifest.get("stages"), dict) and name in manifest["stages"]:
            urls = [join_url(parent, s["path"]) for s in manifest["stages"][name]["shards"]]
            return _present_listed(data, urls, allow_unfinished)
    fs, path = fsspec.core.url_to_fs(data)
    files = sorted(fs.glob(path.rstrip("/") + "/*.arrow"))
    urls = [fs.unstrip_protocol(f) if "://" in data else f for f in files]
    if not urls:
        return []
    reason = unfinished_reason([_basename(u) for u in urls])
    if reason:
        _refuse_or_warn(f"{data} is not a finished output: no manifest.json in {parent or '.'} lists stage {name!r} and {reason}",
                        allow_unfinished)
    return urls


def _present_listed(data: str, urls: list[str], allow_unfinished: bool) -> list[str]:
    """The manifest's shards, refusing (or, allowed, skipping) any that are gone."""
    fs, path = fsspec.core.url_to_fs(data)
    present = {_basename(f) for f in fs.glob(path.rstrip("/") + "/*.arrow")}
    missing = [u for u in urls if _basename(u) not in present]
    if missing:
        _refuse_or_warn(f"{data}: {len(missing)} of the {len(urls)} shards its manifest lists are missing, e.g. {missing[0]}",
                        allow_unfinished)
    return [u for u in urls if _basename(u) in present]


def _refuse_or_warn(problem: str, allow_unfinished: bool) -> None:
    if not allow_unfinished:
        raise UnfinishedDataError(f"{problem}; rerun the data job to finish it, or set allow_unfinished_data: true "
                                  "(--allow-unfinished-data) to train on these shards anyway")
    log.warning("!!! TRAINING ON UNFINISHED DATA (allow_unfinished_data): %s", problem)
