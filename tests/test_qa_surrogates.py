"""Lone surrogates (a JSON `\\udXXX` escape that is no character) never crash the QA job: in a
book's text or id (handled by the shared front) or in what the generator writes (a chunk reject)."""

from __future__ import annotations

import json

import numpy as np
from apache_beam.ml.inference.base import PredictionResult

from curation.shards import read_shard
from pipelines.config import QAConfig
from pipelines.launch import run_qa
from pipelines.qa import ValidateQA
from qa_synth.chunking import Chunk
from tests.conftest import DEMO_TOKENIZER

PASSAGE = "Emma Woodhouse, handsome, clever, and rich, lived at Hartfield with her father."


def test_a_model_answer_with_a_lone_surrogate_is_a_chunk_reject(tmp_path):
    config = QAConfig.model_validate({"inputs": ["x"], "output": str(tmp_path), "tokenizer": DEMO_TOKENIZER})
    chunk = Chunk("emma", "in.jsonl#0", 3, 1, np.arange(5, dtype=np.int32), PASSAGE)
    raw = '{"question": "Where did Emma live \\ud83d?", "answer": "at Hartfield"}'  # half an emoji, as JSON allows
    (out,) = ValidateQA(config).process((("in.jsonl", chunk), PredictionResult("prompt", raw)))
    reject = out.value
    assert (reject.id, reject.reason, reject.unit) == ("emma#chunk3", "invalid_unicode", "chunk")
    json.dumps(reject.as_json(), ensure_ascii=False).encode("utf-8")  # writable


def test_qa_job_with_surrogates_in_a_book_id_and_text(tmp_path, sample_books):
    (tmp_path / "in").mkdir()
    good = sample_books[2]["text"][:9_000]
    lines = [
        json.dumps({"id": "north\udc80anger", "text": good}),  # json.dumps writes the \\udc80 escape
        json.dumps({"id": "broken-text", "text": "It was a dark \ud800 and stormy night. " * 50}),
    ]
    (tmp_path / "in" / "books.jsonl").write_text("\n".join(lines) + "\n")
    config = QAConfig.model_validate({
        "inputs": [str(tmp_path / "in")], "output": str(tmp_path / "out"), "tokenizer": DEMO_TOKENIZER,
        "stages": ["q4k=4096:0-"], "backend": "extractive",
    })
    manifest = run_qa(config, ["--runner=DirectRunner", "--direct_running_mode=in_memory"])
    assert manifest["read"] == 2 and manifest["kept"] == 1
    assert manifest["rejected"] == {"invalid_unicode": 1}
    rejects = [json.loads(x) for f in (tmp_path / "out" / "rejects").glob("*.jsonl") for x in f.read_text().splitlines()]
    assert [r["id"] for r in rejects if "unit" not in r] == ["broken-text"]
    docs = {d for s in manifest["stages"]["q4k"]["shards"] for row in read_shard(str(tmp_path / "out" / s["path"])).doc_ids for d in row}
    assert docs == {"north\\udc80anger"}  # the id, escaped once at the front
