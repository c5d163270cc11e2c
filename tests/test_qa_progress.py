"""QA generation shows progress (done/total, rate, ETA) and `max_chunks` tries the generator on
the first N chunks of each book, accounting for the rest as `not_generated`. Extractive backend
(no model), two slices of real sample books."""

from __future__ import annotations

import json
import logging

import pytest

from curation.progress import progress_line
from curation.units import duration
from pipelines.config import QAConfig
from pipelines.launch import run_qa
from tests.conftest import DEMO_TOKENIZER

IN_MEMORY = ["--runner=DirectRunner", "--direct_running_mode=in_memory"]
CHUNKING = {"chunk_tokens": 300, "chunk_min_tokens": 150, "chunk_max_tokens": 450}


def test_progress_line_has_counts_rate_and_eta():
    assert progress_line("generated", "chunks", 40, 228, 360.0) == (
        "generated 40/228 chunks (17%), 0.11 chunks/s, ETA 28m12s, elapsed 6m00s"
    )
    assert progress_line("generated", "chunks", 0, 228, 0.0).endswith("ETA unknown, elapsed 0s")
    assert progress_line("tokenized", "documents", 3, None, 2.0) == "tokenized 3 documents, 1.50 documents/s, elapsed 2s"
    assert [duration(s) for s in (0, 59.4, 61, 3600 + 7 * 60 + 5)] == ["0s", "59s", "1m01s", "1h07m"]


def test_max_chunks_is_a_flag_config_key_and_in_the_hash_only_when_set():
    base = {"inputs": ["x"], "output": "o", "tokenizer": DEMO_TOKENIZER}
    full, unset, two = QAConfig.model_validate(base), QAConfig.model_validate({**base, "max_chunks": None}), QAConfig.model_validate({**base, "max_chunks": 2})
    assert "max_chunks" not in full.data_config() and full.hash() == unset.hash()
    assert two.data_config()["max_chunks"] == 2 and two.hash() != full.hash()
    with pytest.raises(ValueError, match="max_chunks"):
        QAConfig.model_validate({**base, "max_chunks": 0})


@pytest.fixture(scope="module")
def run(tmp_path_factory, sample_books):
    folder = tmp_path_factory.mktemp("qa-progress")
    books = {"emma": sample_books[2]["text"][:20_000], "persuasion": sample_books[3]["text"][:20_000]}
    (folder / "books.jsonl").write_text("".join(json.dumps({"id": k, "text": v}) + "\n" for k, v in books.items()))
    out = tmp_path_factory.mktemp("qa-progress-out") / "out"
    config = QAConfig.model_validate({"inputs": [str(folder)], "output": str(out), "tokenizer": DEMO_TOKENIZER,
                                      "stages": ["q4k=4096:0-"], "backend": "extractive", "max_chunks": 2,
                                      "quality_filter": False, "languages": [], **CHUNKING})
    return out, config, folder


def test_max_chunks_generates_n_per_book_and_accounts_for_the_rest(run, caplog):
    out, config, _ = run
    with caplog.at_level(logging.INFO, logger="longctx"):
        manifest = run_qa(config, IN_MEMORY)
    chunks = manifest["chunks"]
    assert chunks["read"] == chunks["accepted"] + sum(chunks["rejected"].values())
    rejects = [json.loads(line) for f in sorted((out / "rejects").glob("*.jsonl")) for line in f.read_text().splitlines()]
    skipped = {r["id"].split("#")[0]: r for r in rejects if r["reason"] == "not_generated"}
    assert set(skipped) == {"emma", "persuasion"}  # one reject per book, standing for its other chunks
    assert all(r["unit"] == "chunk" and r["id"].endswith(f"#chunk2-{1 + r['records']}") for r in skipped.values())
    assert chunks["rejected"]["not_generated"] == sum(r["records"] for r in skipped.values())
    # Exactly 2 chunks per book reached the generator: every other outcome covers 4 chunks.
    assert chunks["read"] - chunks["rejected"]["not_generated"] == 4
    assert chunks["accepted"] >= 1 and manifest["kept"] >= 1
    assert manifest["config"]["max_chunks"] == 2
    # The generation step reported its progress against the job's total, ending at 4/4.
    lines = [r.getMessage() for r in caplog.records if "generated" in r.getMessage() and "chunks" in r.getMessage()]
    assert any("generated 4/4 chunks (100%)" in line and "ETA 0s" in line for line in lines), lines
