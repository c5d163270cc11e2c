"""Fault probes end to end: one folder of bad inputs through the real book and QA (extractive)
jobs. Every job finishes, writes its manifest, and keeps read == kept + rejected, counting the
records a corrupt Parquet row group stands for."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest
import zstandard

from curation.shards import read_shard
from pipelines.config import BooksConfig, QAConfig
from pipelines.launch import run_books, run_qa
from tests.conftest import DEMO_TOKENIZER
from tests.test_faults_sources import write_parquet_with_bad_group

IN_MEMORY = ["--runner=DirectRunner", "--direct_running_mode=in_memory"]


def _text(key: str, sentences: int = 6) -> str:
    # Distinct texts (no duplicates), with sentences for the extractive QA backend.
    return " ".join(f"The keeper of record {key} counted {n} lanterns in the harbour before dawn." for n in range(sentences))


def _line(record_id: str, text: str | None = None) -> str:
    return json.dumps({"id": record_id, "text": text or _text(record_id)})


def write_fault_inputs(folder: Path) -> dict:
    """A folder with one file per fault; returns what the job must make of it."""
    folder.mkdir(parents=True, exist_ok=True)
    # A truncated zstd stream (two frames, the cut in the second): the records before the cut,
    # then one corrupt_file reject.
    frames = [zstandard.ZstdCompressor().compress("".join(_line(f"z{i}") + "\n" for i in part).encode())
              for part in (range(20), range(20, 200))]
    (folder / "cut.jsonl.zst").write_bytes(frames[0] + frames[1][: len(frames[1]) // 2])
    # Lone surrogates: in a text (a reject) and in an id (kept, the id escaped).
    (folder / "surrogates.jsonl").write_text(
        _line("s-good") + "\n"
        + '{"id": "s-text", "text": "broken \\udc80 text ' + _text("s-text") + '"}\n'
        + '{"id": "s-id-\\ud800", "text": "' + _text("s-id") + '"}\n'
    )
    # Valid JSON that Python cannot parse, then a good line.
    (folder / "odd.jsonl.gz").write_bytes(gzip.compress((
        "[" * 100_000 + "]" * 100_000 + "\n"
        + '{"id": "huge", "text": "x", "n": ' + "7" * 5000 + "}\n"
        + _line("o-after") + "\n"
    ).encode()))
    # A byte order mark before the first record.
    (folder / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + (_line("b0") + "\n" + _line("b1") + "\n").encode())
    # A Parquet file whose middle row group is corrupt.
    lost = write_parquet_with_bad_group(folder / "rows.parquet", groups=3, rows_per_group=4, bad=1)
    # A file name that is not UTF-8 (found in the folder, and also given on its own: read once).
    latin1 = os.fsencode(str(folder)) + b"/caf\xe9.jsonl"
    with open(latin1, "wb") as fh:
        fh.write((_line("latin1-name") + "\n").encode())
    # A literal input path holding glob characters, given on its own.
    literal = folder.parent / f"{folder.name}-literal" / "book[1].jsonl"
    literal.parent.mkdir(exist_ok=True)
    literal.write_text(_line("bracket") + "\n")
    return {
        "inputs": [str(folder), str(literal), os.fsdecode(latin1)],
        "kept_exact": {"s-good", "s-id-\\ud800", "o-after", "b0", "b1", "latin1-name", "bracket"}
        | {f"p{i}" for i in (0, 1, 2, 3, 8, 9, 10, 11)},
        "rejects": {
            ("s-text", "invalid_unicode"), ("odd.jsonl.gz:1", "malformed_json"), ("odd.jsonl.gz:2", "malformed_json"),
        },
        "parquet_lost": lost,
    }


def _rejects(out: Path) -> list[dict]:
    return [json.loads(line) for f in sorted((out / "rejects").glob("*.jsonl")) for line in f.read_text().splitlines()]


def _check_front(out: Path, manifest: dict, expected: dict) -> None:
    """What every text job must say about the faulty front."""
    assert json.loads((out / "manifest.json").read_text()) == manifest
    assert manifest["read"] == manifest["kept"] + manifest["rejected_total"]
    rejects = [r for r in _rejects(out) if r.get("unit", "record") == "record"]
    assert sum(r.get("records", 1) for r in rejects) == manifest["rejected_total"]
    assert expected["rejects"] <= {(r["id"], r["reason"]) for r in rejects}
    corrupt = {Path(r["source"]).name: r for r in rejects if r["reason"] == "corrupt_file"}
    assert set(corrupt) == {"cut.jsonl.zst", "rows.parquet"}
    assert "truncated" in corrupt["cut.jsonl.zst"]["detail"]
    assert corrupt["rows.parquet"]["records"] == expected["parquet_lost"]
    assert manifest["rejected"]["corrupt_file"] == 1 + expected["parquet_lost"]
    assert manifest["rejected"]["invalid_unicode"] == 1
    assert manifest["rejected"]["malformed_json"] == 2
    # The records the job read: every line of every file, less the zstd lines after the cut.
    zst_read = manifest["read"] - (len(expected["kept_exact"]) + 1 + 2 + 1 + expected["parquet_lost"])
    assert 20 <= zst_read < 200


@pytest.fixture(scope="module")
def faults(tmp_path_factory):
    return write_fault_inputs(tmp_path_factory.mktemp("faults") / "in")


def test_books_job_survives_every_fault(tmp_path, faults):
    out = tmp_path / "books"
    config = BooksConfig.model_validate({"inputs": faults["inputs"], "output": str(out), "tokenizer": DEMO_TOKENIZER,
                                         "stages": ["s=256:1-"], "min_tail_tokens": 1,
                                         "quality_filter": False})  # the texts repeat one sentence template
    manifest = run_books(config, IN_MEMORY)
    _check_front(out, manifest, faults)
    doc_ids = set()
    for shard in manifest["stages"]["s"]["shards"]:
        doc_ids.update(d for row in read_shard(str(out / shard["path"])).doc_ids for d in row)
    zst_ids = {d for d in doc_ids if d.startswith("z")}
    assert doc_ids - zst_ids == faults["kept_exact"]
    assert zst_ids == {f"z{i}" for i in range(len(zst_ids))}  # a clean prefix of the cut file
    assert manifest["kept"] == len(doc_ids)
    sources = {r["source"] for r in _rejects(out)}
    assert all(s.encode("utf-8") for s in sources)


def test_qa_extractive_job_survives_every_fault(tmp_path, faults):
    out = tmp_path / "qa"
    config = QAConfig.model_validate({"inputs": faults["inputs"], "output": str(out), "tokenizer": DEMO_TOKENIZER,
                                      "stages": ["q=2048:0-"], "backend": "extractive",
                                      "chunk_tokens": 60, "chunk_min_tokens": 20, "chunk_max_tokens": 120,
                                      "quality_filter": False})  # the texts repeat one sentence template
    manifest = run_qa(config, IN_MEMORY)
    _check_front(out, manifest, faults)
    chunks = manifest["chunks"]
    assert chunks["read"] == chunks["accepted"] + sum(chunks["rejected"].values())
