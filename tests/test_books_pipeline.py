"""The book pipeline end to end on DirectRunner: real books, corrupt inputs, every record accounted."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pytest
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to

from curation.accounting import AccountingError
from curation.documents import Document
from curation.manifest import build_manifest
from curation.shards import read_manifest, read_shard
from curation.stages import Stage, StagePolicy
from curation.text import CleanConfig, clean_text
from pipelines.accounting import REJECTS
from pipelines.books import CleanText, assign_stages
from pipelines.dedup import DropDuplicates
from pipelines.config import BooksConfig
from pipelines.launch import run_books
from tests.conftest import DEMO_TOKENIZER, SAMPLE_BOOKS, write_corrupt_inputs

STAGES = ["small=2048:500-20000", "4k=4096:100000-400000", "16k=16384:150000-400000"]
IN_MEMORY = ["--runner=DirectRunner", "--direct_running_mode=in_memory"]


def _config(inputs, output, **overrides) -> BooksConfig:
    # Small packing groups and shards, so several of each are exercised (and must agree across runners).
    data = {"inputs": inputs, "output": str(output), "tokenizer": DEMO_TOKENIZER, "stages": STAGES, "min_tail_tokens": 256,
            "pack_group_tokens": 300_000, "shard_target_bytes": 4 << 20}
    data.update(overrides)
    return BooksConfig.model_validate(data)


@pytest.fixture(scope="module")
def corrupt_dir(tmp_path_factory, sample_books):
    folder = tmp_path_factory.mktemp("corrupt")
    expected = write_corrupt_inputs(folder, sample_books[0]["text"][:6000])
    return folder, expected


@pytest.fixture(scope="module")
def run(tmp_path_factory, corrupt_dir):
    out = tmp_path_factory.mktemp("books") / "out"
    manifest = run_books(_config([str(SAMPLE_BOOKS), str(corrupt_dir[0])], out), IN_MEMORY)
    return out, manifest


def _rejects(out: Path) -> list[dict]:
    return [json.loads(line) for f in sorted((out / "rejects").glob("*.jsonl")) for line in f.read_text().splitlines()]


def test_every_record_is_accounted_for(run, corrupt_dir):
    out, manifest = run
    assert manifest == read_manifest(str(out))
    assert manifest["read"] == manifest["kept"] + manifest["rejected_total"]
    rejects = _rejects(out)
    assert len(rejects) == manifest["rejected_total"]
    by_id = {r["id"]: r["reason"] for r in rejects}
    _, expected = corrupt_dir
    for record_id, reason in expected.items():
        assert by_id.get(record_id) == reason, record_id
    assert any(r["reason"] == "corrupt_file" and r["source"].endswith("truncated.jsonl.gz") for r in rejects)
    assert any(r["reason"] == "binary" and r["source"].endswith("blob.txt") for r in rejects)
    # 7 books + good-1 + the gz records before the cut (all in the small stage) are kept.
    assert manifest["kept"] >= 8
    assert {r["source"] for r in rejects} <= {str(p) for p in corrupt_dir[0].iterdir()}
    # A record dropped after it was tokenized (no_stage) also carries its token count.
    assert all(set(r) == {"source", "id", "reason", "detail"} | ({"tokens"} if r["reason"] == "no_stage" else set())
               for r in rejects)
    assert all(r["tokens"] == int(r["detail"].split()[0]) > 0 for r in rejects if r["reason"] == "no_stage")


def test_shards_are_exact_length_rows_readable_by_datasets_and_pyarrow(run):
    import datasets

    out, manifest = run
    assert len(manifest["stages"]["4k"]["shards"]) > 3  # 64 rows of 4K per 4 MiB shard
    # The 4k stage (~1.4M tokens) is planned as ceil(tokens / 300K) packing groups. Which of them
    # a book lands in is a hash of its id (which holds this test's temporary path), so only bounds
    # that hold for any assignment are asserted: never more groups than planned, and the largest
    # group holds at least its share (pigeonhole) and at most the stage.
    stage = manifest["stages"]["4k"]
    planned = -(-stage["tokens"] // 300_000)
    assert planned >= 4
    assert 1 <= stage["packing_groups"] <= planned
    assert stage["tokens"] / stage["packing_groups"] <= stage["max_group_tokens"] <= stage["tokens"]
    for name, stage in manifest["stages"].items():
        assert stage["rows"] > 0, name
        total_tokens = 0
        for shard in stage["shards"]:
            path = out / shard["path"]
            assert path.name.startswith("train-") and path.name.endswith(f"-of-{len(stage['shards']):05d}.arrow")
            assert hashlib.sha256(path.read_bytes()).hexdigest() == shard["sha256"]
            with pa.ipc.open_stream(path) as reader:
                table = reader.read_all()
            assert table.schema.field("input_ids").type == pa.list_(pa.int32(), stage["length"])
            meta = table.schema.metadata
            assert json.loads(meta[b"longctx.tokenizer"])["vocab_size"] == 32000
            assert int(meta[b"longctx.length"]) == stage["length"]
            assert meta[b"longctx.config_hash"].decode() == manifest["config_hash"]
            ds = datasets.Dataset.from_file(str(path))
            assert len(ds) == shard["rows"] and len(ds[0]["input_ids"]) == stage["length"]
            view = read_shard(str(path))
            ids = view.arrays["input_ids"]
            assert ids.shape == (shard["rows"], stage["length"]) and ids.dtype == np.int32
            assert not ids.flags.owndata  # a view onto the memory-mapped file, not a copy
            total_tokens += int((view.arrays["segment_ids"] > 0).sum())
            assert int((view.arrays["loss_mask"] > 0).sum()) == int((view.arrays["segment_ids"] > 0).sum())
        assert total_tokens == stage["tokens"]
        assert stage["packing_efficiency"] == pytest.approx(total_tokens / (stage["rows"] * stage["length"]), abs=1e-6)


def test_segments_decode_back_to_the_cleaned_books(run, sample_books, demo_tokenizer):
    tok, info = demo_tokenizer
    out, manifest = run
    for stage in ("4k", "16k"):
        pieces: dict[str, list[tuple[int, np.ndarray]]] = {}
        for shard in manifest["stages"][stage]["shards"]:
            view = read_shard(str(out / shard["path"]))
            for r in range(view.num_rows):
                for k, (doc_id, start) in enumerate(zip(view.doc_ids[r], view.doc_starts[r]), start=1):
                    span = view.arrays["segment_ids"][r] == k
                    assert np.array_equal(view.arrays["positions"][r][span], np.arange(span.sum()))
                    pieces.setdefault(doc_id, []).append((start, view.arrays["input_ids"][r][span]))
        assert pieces, stage
        for book in sample_books:
            if book["id"] not in pieces:
                continue
            ordered = sorted(pieces[book["id"]], key=lambda p: p[0])
            tokens = np.concatenate([t for _, t in ordered])
            assert [s for s, _ in ordered] == [i * manifest["stages"][stage]["length"] for i in range(len(ordered))]
            assert tokens[0] == info.bos_id
            cleaned = clean_text(book["text"], CleanConfig())
            if tokens[-1] == info.eos_id:  # nothing dropped: the whole book comes back
                assert tok.decode(tokens[1:-1].tolist()) == cleaned
            else:  # a short tail was dropped: the windows are a prefix of the book
                decoded = tok.decode(tokens[1:].tolist())
                assert cleaned.startswith(decoded) and len(cleaned) - len(decoded) < 256 * 8


def test_rerun_gives_identical_bytes_also_with_two_worker_processes(run, tmp_path, corrupt_dir):
    out, manifest = run
    inputs = [str(SAMPLE_BOOKS), str(corrupt_dir[0])]
    other = run_books(
        _config(inputs, tmp_path / "mp"),
        ["--runner=DirectRunner", "--direct_num_workers=2", "--direct_running_mode=multi_processing"],
    )
    for name, stage in manifest["stages"].items():
        assert [s["sha256"] for s in stage["shards"]] == [s["sha256"] for s in other["stages"][name]["shards"]]
        for shard in stage["shards"]:
            assert (out / shard["path"]).read_bytes() == (tmp_path / "mp" / shard["path"]).read_bytes()
    assert _rejects(out) == _rejects(tmp_path / "mp")
    assert {k: v for k, v in manifest.items() if k != "config"} == {k: v for k, v in other.items() if k != "config"}


def test_memory_filesystem_in_and_out(tmp_path):
    import fsspec

    fs = fsspec.filesystem("memory")
    books = [{"id": f"m{i}", "text": f"Chapter {i}. " + "The sea was calm that morning. " * (200 + 40 * i)} for i in range(5)]
    fs.pipe("/in/books.jsonl", "".join(json.dumps(b) + "\n" for b in books).encode())
    manifest = run_books(
        _config(["memory://in/*.jsonl"], "memory://out", stages=["mini=1024:100-100000"], min_tail_tokens=64,
                # five books of one repeated sentence are near-duplicates and low-quality (repeated
                # n-grams) by design; this test is about I/O
                near_duplicates=False, quality_filter=False),
        IN_MEMORY
    )
    assert manifest["read"] == 5 == manifest["kept"]
    [shard] = manifest["stages"]["mini"]["shards"]
    view = read_shard("memory://out/" + shard["path"])
    assert view.arrays["input_ids"].shape == (shard["rows"], 1024)
    assert fs.exists("/out/manifest.json")
    assert not [p for p in fs.find("/out") if "/." in p]  # no temporary files left behind


def test_clean_and_dedup_transforms():
    docs = [
        Document("f", "b", "f#1", index=1, text="Same text."),
        Document("f", "a", "f#0", index=0, text="Same text.\r\n"),
        Document("f", "c", "f#2", index=2, text="   "),
    ]
    with BeamTestPipeline(runner="DirectRunner") as p:
        cleaned = p | beam.Create(docs) | beam.ParDo(CleanText(CleanConfig())).with_outputs(REJECTS, main="docs")
        unique = cleaned.docs | DropDuplicates()
        assert_that(unique.docs | "Ids" >> beam.Map(lambda d: (d.id, d.text)), equal_to([("a", "Same text.")]), label="kept")
        assert_that(
            unique.rejects | "DupReasons" >> beam.Map(lambda r: (r.id, r.reason)), equal_to([("b", "duplicate")]), label="dups"
        )
        assert_that(
            cleaned.rejects | "CleanReasons" >> beam.Map(lambda r: (r.id, r.reason)), equal_to([("c", "empty")]), label="empty"
        )


def test_assign_stages_policy_and_windows():
    stages = [Stage("a", 10, 0, 100), Stage("b", 40, 20, None)]
    doc = Document("f", "d", "f#0", tokens=np.arange(25, dtype=np.int32))
    with BeamTestPipeline(runner="DirectRunner") as p:
        out = (
            p
            | beam.Create([doc])
            | beam.FlatMap(assign_stages, stages, StagePolicy.ALL, 3).with_outputs(REJECTS, "kept_events", main="segments")
        )
        assert_that(
            out.segments | beam.Map(lambda s: (s.stage, s.ref.start, s.ref.length, int(s.tokens[0]))),
            equal_to([("a", 0, 10, 0), ("a", 10, 10, 10), ("a", 20, 5, 20), ("b", 0, 25, 0)]),
        )
        assert_that(
            out.kept_events | beam.Map(lambda e: (e["kept"], e["stage.a.segments"], e["stage.b.documents"])),
            equal_to([(1, 3, 1)]),
            label="events",
        )


def test_unbalanced_counts_fail_the_job():
    with pytest.raises(AccountingError, match="read=3"):
        build_manifest("books", {"read": 3, "kept": 1, "rejected.empty": 1}, [], [], {}, [])


def test_missing_inputs_fail_with_a_clear_error(tmp_path):
    with pytest.raises(Exception, match="matched no files"):
        run_books(_config([str(tmp_path / "nothing-*.jsonl")], tmp_path / "o"), IN_MEMORY)
