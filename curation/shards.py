"""The shard format shared by every pipeline, its atomic deterministic writer and its reader.

A shard is an Arrow IPC *stream* file (what `datasets.Dataset.from_file` and
`pyarrow.ipc.open_stream` open) holding one record batch. Token columns are
`fixed_size_list<int32>[L]` (loss_mask `fixed_size_list<float32>[L]`), so a row is the training
step's input as is, and the reader hands out `(rows, L)` numpy views without copying.
"""

from __future__ import annotations

import hashlib
import io
import json
import uuid
from dataclasses import dataclass
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa

from curation.accounting import printable
from curation.packing import RowArrays

SCHEMA_VERSION = "1"
TOKEN_COLUMNS = ("input_ids", "segment_ids", "positions", "loss_mask")
OPTIONAL_TOKEN_COLUMNS = ("vision_mask",)


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


def rows_to_ipc_bytes(rows: RowArrays, metadata: dict[str, Any]) -> bytes:
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
    batch = pa.record_batch(columns, schema=schema)
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, schema) as writer:
        writer.write_batch(batch)
    return sink.getvalue()


def join_url(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *[p.strip("/") for p in parts]])


def write_bytes_atomic(url: str, data: bytes) -> None:
    """Readers see the whole file or nothing. Locally: a hidden temporary name beside the target,
    then a rename. On object stores (gs://, s3://, memory://) an object becomes visible only when
    its upload completes, so it is written under its final name directly (a rename there would be
    a copy and a delete, and a killed writer could leave the temporary object behind)."""
    fs, path = fsspec.core.url_to_fs(url)
    parent, _, name = path.rpartition("/")
    fs.makedirs(parent, exist_ok=True)
    if not _is_local(fs):
        with fs.open(path, "wb") as fh:
            fh.write(data)
        return
    tmp = f"{parent}/.{name}.tmp-{uuid.uuid4().hex}"
    try:
        with fs.open(tmp, "wb") as fh:
            fh.write(data)
        fs.mv(tmp, path)
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
    data = rows_to_ipc_bytes(rows, metadata)
    rel = f"{stage}/{shard_name(split, index, count)}"
    write_bytes_atomic(join_url(output, rel), data)
    return ShardInfo(
        stage=stage,
        path=rel,
        rows=int(rows.input_ids.shape[0]),
        tokens=int((rows.segment_ids > 0).sum()),
        sha256=hashlib.sha256(data).hexdigest(),
    )


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


def _open_buffer(url: str) -> pa.Buffer:
    fs, path = fsspec.core.url_to_fs(url)
    if _is_local(fs):
        return pa.memory_map(path, "r").read_buffer()
    with fs.open(path, "rb") as fh:
        return pa.py_buffer(fh.read())


def _schema_metadata(schema: pa.Schema) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in (schema.metadata or {}).items()}


def read_shard_metadata(url: str) -> dict[str, str]:
    """A shard's schema metadata (stage length, tokenizer, vision ids, config hash), reading only
    the stream's first message, not its rows."""
    with fsspec.open(url, "rb") as fh:
        return _schema_metadata(pa.ipc.open_stream(fh).schema)


def read_shard(url: str) -> Shard:
    """Open a shard (local path or fsspec URL). Local files are memory-mapped."""
    table = pa.ipc.open_stream(_open_buffer(url)).read_all()
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


def read_manifest(output: str) -> dict[str, Any]:
    with fsspec.open(join_url(output, "manifest.json"), "r") as fh:
        return json.load(fh)


def stage_shard_urls(output: str, stage: str) -> list[str]:
    """Shard URLs of a stage, in order, as the manifest lists them."""
    manifest = read_manifest(output)
    return [join_url(output, s["path"]) for s in manifest["stages"][stage]["shards"]]
