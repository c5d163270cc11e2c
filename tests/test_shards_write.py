"""The shard writer: one Arrow IPC stream, streamed from the row arrays into its file and hashed
on the way, the very bytes Arrow's own stream writer makes, locally and on an object store."""

from __future__ import annotations

import hashlib
import io

import fsspec
import numpy as np
import pyarrow as pa
import pytest

from curation.accounting import printable
from curation.packing import RowArrays
from curation.shards import read_shard, shard_schema, write_shard

META = {"tokenizer": {"name": "demo", "vocab_size": 1000}, "kind": "books", "stage": "s"}


def _rows(n: int, length: int, seed: int, vision: bool = False) -> RowArrays:
    rng = np.random.default_rng(seed)
    rows = RowArrays.empty(n, length, with_vision=vision)
    rows.input_ids[:] = rng.integers(3, 1000, (n, length))
    rows.segment_ids[:] = rng.integers(0, 4, (n, length))
    rows.positions[:] = rng.integers(0, length, (n, length))
    rows.loss_mask[:] = rng.random((n, length), dtype=np.float32)
    if vision:
        rows.vision_mask[:] = rng.integers(0, 2, (n, length))
    rows.doc_ids = [[f"doc-{seed}-{i}", "é", "lone \ud800 surrogate"] for i in range(n)]
    rows.doc_starts = [[0, 5, 2**40] for _ in range(n)]
    return rows


def _arrow_stream(rows: RowArrays) -> bytes:
    """The reference: the same columns through pyarrow's stream writer into a BytesIO."""
    schema = shard_schema(rows.input_ids.shape[1], META, with_vision=rows.vision_mask is not None)
    names = ["input_ids", "segment_ids", "positions", "loss_mask"] + (["vision_mask"] if rows.vision_mask is not None else [])
    columns = [
        pa.FixedSizeListArray.from_arrays(pa.array(getattr(rows, n).ravel(), type=schema.field(n).type.value_type), rows.input_ids.shape[1])
        for n in names
    ]
    doc_ids = [[printable(d) for d in ids] for ids in rows.doc_ids]
    columns += [pa.array(doc_ids, pa.list_(pa.string())), pa.array(rows.doc_starts, pa.list_(pa.int64()))]
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, schema) as writer:
        writer.write_batch(pa.record_batch(columns, schema=schema))
    return sink.getvalue()


@pytest.mark.parametrize("where", ["local", "memory"])
@pytest.mark.parametrize("n,length,vision", [(5, 64, False), (3, 16, True), (0, 8, False), (4, 32, True)])
def test_written_shard_is_the_stream_its_hash_and_its_rows(n, length, vision, where, tmp_path):
    output = str(tmp_path / "out") if where == "local" else "memory://shards-write-test/out"
    rows = _rows(n, length, seed=n, vision=vision)
    info = write_shard(output, "s", 2, 3, rows, META)
    try:
        with fsspec.open(f"{output}/{info.path}", "rb") as fh:
            data = fh.read()
    finally:
        if where == "memory":
            fsspec.filesystem("memory").rm("/shards-write-test", recursive=True)
    assert info.path == "s/train-00002-of-00003.arrow"
    assert data == _arrow_stream(rows)
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    assert (info.rows, info.tokens) == (n, int((rows.segment_ids > 0).sum()))
    if where == "local":
        shard = read_shard(f"{output}/{info.path}")
        assert np.array_equal(shard.arrays["input_ids"], rows.input_ids)
        if vision:
            assert np.array_equal(shard.arrays["vision_mask"], rows.vision_mask)
        else:
            assert "vision_mask" not in shard.arrays
        assert shard.doc_starts == rows.doc_starts
