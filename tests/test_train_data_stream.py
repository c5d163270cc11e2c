"""The trainer reads shards row by row: from a shard's header (a few KiB) it knows where every row
lies, so a host fetches from an object store exactly the rows its devices hold, never a shard that
holds none of them, and holds only those rows in memory. Checked against a real GCS API server
(the emulator of tests/test_gcs.py), byte for byte, and against the whole-shard reader."""

from __future__ import annotations

import io
import json
from urllib.parse import unquote

import jax
import numpy as np
import pyarrow as pa
import pytest

from curation.packing import RowArrays
from curation.vision_layout import DEFAULT_VISION_VOCAB, UnifiedVocab, vision_vocab, vocab_metadata
from curation.shards import (
    HEADER_PROBE_BYTES,
    ShardMetadata,
    ShardReader,
    UnfinishedDataError,
    join_url,
    read_shard,
    read_shard_headers,
    read_shard_metadata,
    stage_shard_urls,
    write_bytes_atomic,
    write_shard,
)
from training import data as training_data
from training.data import BATCH_COLUMNS, BatchIterator, GlobalRows, StageData, _piece_positions, global_arrays
from training.mesh import make_mesh

gcsfs = pytest.importorskip("gcsfs", reason="gs:// support needs gcsfs: pip install -e '.[dev]'")
from tests.test_gcs import BUCKET, gcs  # noqa: E402,F401  (the GCS emulator fixture)

TOKENIZER = {"name": "toy", "sha256": "ab" * 32, "vocab_size": 1000, "bos_id": 1, "eos_id": 2, "pad_id": None}
VISION = vocab_metadata(vision_vocab("separate", 1000))  # what the vision pipelines write


def _rows(n: int, length: int, seed: int, vision: bool = False) -> RowArrays:
    rng = np.random.default_rng(seed)
    rows = RowArrays.empty(n, length)
    rows.input_ids[:] = rng.integers(3, 1000, (n, length))
    rows.segment_ids[:] = rng.integers(0, 4, (n, length))
    rows.positions[:] = rng.integers(0, length, (n, length))
    rows.loss_mask[:] = rng.random((n, length), dtype=np.float32)
    if vision:
        rows.vision_mask = rng.integers(0, 2, (n, length)).astype(np.uint8)
    rows.doc_ids = [[f"doc-{seed}-{i}", "é"] for i in range(n)]
    rows.doc_starts = [[0, 5] for _ in range(n)]
    return rows


def _write_stage(output: str, shards: int, rows: int, length: int, vision: bool = False, stage: str = "s") -> list[str]:
    """A finished job's stage: `shards` shards and the manifest listing them."""
    meta = {"tokenizer": TOKENIZER, "kind": "video" if vision else "books", "stage": stage, "config_hash": "c0ffee"}
    if vision:
        meta["vision"] = VISION
    infos = [write_shard(output, stage, i, shards, _rows(rows, length, 100 * vision + i, vision), meta) for i in range(shards)]
    manifest = {"stages": {stage: {"length": length, "shards": [s.as_json() for s in infos]}}}
    write_bytes_atomic(join_url(output, "manifest.json"), json.dumps(manifest).encode())
    return [join_url(output, s.path) for s in infos]


def _whole(urls: list[str]) -> dict[str, np.ndarray]:
    """Every row of a stage through the whole-shard reader (pyarrow decodes the batch)."""
    shards = [read_shard(u) for u in urls]
    out = {}
    for name in BATCH_COLUMNS:
        parts = [s.arrays.get(name, np.zeros_like(s.arrays["input_ids"], dtype=np.uint8)) for s in shards]
        out[name] = np.concatenate(parts)
    return out


@pytest.mark.parametrize("vision", [False, True])
def test_rows_read_by_range_equal_the_whole_shard_read(tmp_path, vision):
    urls = _write_stage(str(tmp_path / "out"), shards=3, rows=5, length=48, vision=vision)
    data = StageData.open(str(tmp_path / "out" / "s"))
    whole = _whole(urls)
    assert data.num_rows == 15 and data.length == 48
    picks = np.array([14, 0, 7, 7, 3, 10, 11, 12, 4])  # any order, repeats, runs across shard ends
    for columns in (slice(None), slice(5, 29), slice(47, 48)):
        got = data.rows(picks, columns)
        for name in BATCH_COLUMNS:
            assert got[name].dtype == whole[name].dtype, name
            assert np.array_equal(got[name], whole[name][picks, columns]), (name, columns)
    if not vision:
        assert not data.rows(picks)["vision_mask"].any()  # text rows mix with vision rows as all-zero masks
    # A shard read whole by the tools' path and its row reader agree too.
    reader = data.shards[1]
    assert all(np.array_equal(reader.arrays[k], read_shard(urls[1]).arrays[k]) for k in reader.column_names)
    with pytest.raises(IndexError, match="outside the stage's 15 rows"):
        data.rows(np.array([15]))


def test_shard_metadata_is_parsed_once_with_clear_errors(tmp_path):
    urls = _write_stage(str(tmp_path / "out"), shards=1, rows=2, length=16, vision=True)
    meta = read_shard_headers(urls)[0].metadata
    assert meta == ShardMetadata.parse(read_shard(urls[0]).metadata) == read_shard(urls[0]).info
    assert (meta.length, meta.kind, meta.stage, meta.config_hash, meta.schema_version) == (16, "video", "s", "c0ffee", "1")
    assert meta.tokenizer == TOKENIZER and meta.vision == VISION and meta.vision_vocab() == DEFAULT_VISION_VOCAB
    unified = ShardMetadata.parse({"longctx.length": "8", "longctx.vision": json.dumps(vocab_metadata(UnifiedVocab(32000)))})
    assert unified.vision_vocab() == UnifiedVocab(32000)
    moved = {**vocab_metadata(UnifiedVocab(32000)), "eof": 7}
    with pytest.raises(ValueError, match="does not match a unified vocabulary"):
        ShardMetadata.parse({"longctx.length": "8", "longctx.vision": json.dumps(moved)}).vision_vocab()
    with pytest.raises(ValueError, match="describes no vision vocabulary"):
        ShardMetadata.parse({"longctx.length": "8", "longctx.vision": json.dumps({**VISION, "eov": 5})}).vision_vocab()
    assert read_shard_metadata(urls[0]) == dict(meta.raw)
    assert meta.identity()["tokenizer sha256"] == "ab" * 32 and meta.identity()["vision layout"] == "separate"
    text = ShardMetadata.parse({"longctx.length": "8"})
    assert text.tokenizer == {} and text.vision is None and text.vision_vocab() is None
    assert text.tokenizer_identity()["tokenizer vocab_size"] is None
    with pytest.raises(ValueError, match="^shard metadata longctx.tokenizer is not JSON"):
        ShardMetadata.parse({"longctx.length": "8", "longctx.tokenizer": "{oops"})
    with pytest.raises(ValueError, match="longctx.vision is a list, not a JSON object"):
        ShardMetadata.parse({"longctx.length": "8", "longctx.vision": "[1]"})
    with pytest.raises(ValueError, match="not a longctx shard: schema metadata longctx.length is None"):
        ShardMetadata.parse({})


def test_one_stage_shard_urls_for_the_trainer_and_the_tools(tmp_path, caplog):
    assert training_data.stage_shard_urls is stage_shard_urls  # one implementation
    out = tmp_path / "out"
    urls = _write_stage(str(out), shards=2, rows=2, length=16)
    # The tools name (output, stage); the trainer names the stage folder: the manifest's list either way.
    assert stage_shard_urls(str(out), "s") == stage_shard_urls(str(out / "s")) == urls
    # A stray shard the manifest does not list is not read; a listed one that is gone is refused.
    write_shard(str(out), "s", 0, 7, _rows(1, 16, 9), {"tokenizer": TOKENIZER})
    assert stage_shard_urls(str(out), "s") == urls
    (out / "s" / "train-00001-of-00002.arrow").unlink()
    with pytest.raises(UnfinishedDataError, match="1 of the 2 shards its manifest lists are missing"):
        stage_shard_urls(str(out), "s")
    assert stage_shard_urls(str(out), "s", allow_unfinished=True) == urls[:1]
    # Without a manifest: a whole -of-N set, from either form; a partial one refused unless allowed.
    (out / "manifest.json").unlink()
    (out / "s" / "train-00000-of-00007.arrow").unlink()
    with pytest.raises(UnfinishedDataError, match="only 1 of 2 shards"):
        stage_shard_urls(str(out), "s")
    write_shard(str(out), "s", 1, 2, _rows(2, 16, 1), {"tokenizer": TOKENIZER})
    assert stage_shard_urls(str(out), "s") == stage_shard_urls(str(out / "s")) == urls
    assert stage_shard_urls(str(tmp_path / "nothing"), "s") == []
    with pytest.raises(TypeError, match="allow_unfinished by name"):
        stage_shard_urls(str(out / "s"), True)


def _stream(batches: list[pa.RecordBatch], **options) -> bytes:
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, batches[0].schema, options=pa.ipc.IpcWriteOptions(**options)) as writer:
        for b in batches:
            writer.write_batch(b)
    return sink.getvalue()


def test_files_the_row_reader_cannot_read_are_refused_with_the_reason(tmp_path):
    info = write_shard(str(tmp_path / "made"), "s16", 0, 1, _rows(3, 16, 0), {"tokenizer": TOKENIZER})
    good = (tmp_path / "made" / info.path).read_bytes()
    batch = pa.ipc.open_stream(good).read_next_batch()
    cases = {
        "zstd.arrow": (_stream([batch], compression="zstd"), "is compressed"),
        "junk.arrow": (b"\x00" * 100, "not a shard this reader can read"),
        "short.arrow": (good[:300], "ends inside its header"),
    }
    for name, (blob, reason) in cases.items():
        (tmp_path / name).write_bytes(blob)
        with pytest.raises(ValueError, match=reason) as err:
            read_shard_headers([str(tmp_path / name)])
        assert name in str(err.value) and "\n" not in str(err.value)
    # Two record batches: the header counts the first one's rows; the first read finds the second.
    (tmp_path / "two.arrow").write_bytes(_stream([batch, batch]))
    header = read_shard_headers([str(tmp_path / "two.arrow")])[0]
    assert header.num_rows == 3
    with pytest.raises(ValueError, match="two.arrow holds more than one record batch"):
        ShardReader(str(tmp_path / "two.arrow"), header).read(np.array([0]))


def _record_object_reads(monkeypatch) -> list[tuple[str, str | None, int]]:
    """(object, Range header, bytes received) for every shard download gcsfs makes (the manifest
    is read too, by stage_shard_urls: not counted)."""
    seen: list[tuple[str, str | None, int]] = []
    real = gcsfs.GCSFileSystem._call

    async def call(self, method, path, *args, **kwargs):
        result = await real(self, method, path, *args, **kwargs)
        name = unquote(str(path).split("/o/", 1)[-1].split("?", 1)[0])
        if method == "GET" and "alt=media" in str(path) and name.endswith(".arrow"):
            seen.append((name, (kwargs.get("headers") or {}).get("Range"), len(result[1])))
        return result

    monkeypatch.setattr(gcsfs.GCSFileSystem, "_call", call)
    return seen


def test_a_host_fetches_from_gcs_only_the_rows_its_devices_hold(gcs, tmp_path, monkeypatch):
    shards, per_shard, length = 8, 4, 2048
    remote = f"gs://{BUCKET}/stream/out"
    urls = _write_stage(remote, shards, per_shard, length)
    local = _write_stage(str(tmp_path / "out"), shards, per_shard, length)
    expected = _whole(local)
    sizes = [gcs.size(u) for u in urls]
    assert min(sizes) > 8 * HEADER_PROBE_BYTES  # the probe is a small part of each shard

    seen = _record_object_reads(monkeypatch)
    data = StageData.open(f"{remote}/s")
    # Opening the stage reads each shard's header, with one ranged request, and nothing else.
    assert sorted(seen) == sorted((f"stream/out/s/train-{i:05d}-of-{shards:05d}.arrow", f"bytes=0-{HEADER_PROBE_BYTES - 1}",
                                   HEADER_PROBE_BYTES) for i in range(shards))
    assert data.num_rows == shards * per_shard
    seen.clear()

    # A global batch of 8 rows on a dp=2 x sp=4 mesh; "host 0" holds the devices of dp index 0:
    # 4 rows, each as 4 sequence quarters. It reads its pieces as the trainer does (global_arrays).
    rows = BatchIterator(data, 8, seed=3).next_rows()
    mesh = make_mesh("dp=2,fsdp=1,tp=1,sp=4")
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, ("dp", "fsdp"), "sp"))
    shape = (1, 8, length)
    index_of = sharding.devices_indices_map(shape)
    host_devices = list(mesh.devices[0].reshape(-1))
    pieces = {}
    for device in host_devices:
        index = index_of[device]
        pieces[device] = (index, rows.read(_piece_positions(index, 1, 8), index[2]))
    host_rows = sorted({int(r) for device in host_devices for r in rows.picks[_piece_positions(index_of[device], 1, 8), 1]})
    assert len(host_rows) == 4

    # Exactly the host's rows were fetched, and they are the rows the local shards hold.
    for device, (index, got) in pieces.items():
        positions = _piece_positions(index, 1, 8)
        for name in BATCH_COLUMNS:
            assert np.array_equal(got[name], expected[name][rows.picks[positions, 1], index[2]]), (device, name)
    holding = {r // per_shard for r in host_rows}
    assert 1 <= len(holding) <= 4 < shards  # so at least 4 shards hold none of its rows
    fetched = {}
    for name, _, n in seen:
        fetched[name] = fetched.get(name, 0) + n
    names = [f"stream/out/s/train-{i:05d}-of-{shards:05d}.arrow" for i in range(shards)]
    assert {names.index(n) for n in fetched} == holding  # the other shards: not one request
    row_bytes = length * (4 + 4 + 4 + 4)  # input_ids, segment_ids, positions (int32), loss_mask (float32)
    end_marker = 8  # each opened shard's end-of-stream marker, read once (one batch per shard)
    assert sum(fetched.values()) == len(host_rows) * row_bytes + len(holding) * end_marker

    # The whole batch through the trainer's path (replicated: one piece, read once) equals the local read.
    seen.clear()
    arrays = global_arrays(rows, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
    for name in BATCH_COLUMNS:
        assert np.array_equal(np.asarray(arrays[name])[0], expected[name][rows.picks[:, 1]]), name
    assert sum(n for _, _, n in seen) == 8 * row_bytes + (len({int(r) // per_shard for r in rows.picks[:, 1]}) - len(holding)) * end_marker

    # A mixture batch reads each source once; the metadata reader fetches the header only.
    mixed = GlobalRows([data, StageData.open(str(tmp_path / "out" / "s"))], np.array([[0, 5], [1, 6], [0, 30], [1, 5]]))
    got = mixed.read(slice(None), slice(100, 300))
    assert np.array_equal(got["input_ids"], expected["input_ids"][[5, 6, 30, 5], 100:300])
    seen.clear()
    assert read_shard_metadata(urls[3])["longctx.config_hash"] == "c0ffee"
    assert sum(n for _, _, n in seen) == HEADER_PROBE_BYTES
