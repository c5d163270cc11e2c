"""A QA book counts as kept only when some of it reaches a shard; otherwise it is a book-level
reject (`no_valid_chunks`), and read == kept + rejected still holds. Extractive backend, inputs
made here: books the cloze generator can do nothing with, beside one it can."""

from __future__ import annotations

import json

import pytest

from curation.shards import read_shard
from curation.text import CleanConfig, clean_text
from curation.tokenize import encode_long
from pipelines.config import QAConfig
from pipelines.launch import run_qa
from tests.conftest import DEMO_TOKENIZER

IN_MEMORY = ["--runner=DirectRunner", "--direct_running_mode=in_memory"]

# Cyrillic: sentences, but no Latin word the cloze generator could blank.
NON_LATIN = " ".join(
    f"Мой дядя самых честных правил, когда не в шутку занемог, он уважать себя заставил {i}. "
    "И лучше выдумать не мог, его пример другим наука." for i in range(120)
)
# English words, no sentence end anywhere: no sentence to make a cloze from.
NO_SENTENCE_END = " ".join(
    f"the grey river ran on under low clouds past mills and meadows and bridges number {i}," for i in range(150)
)
TOO_SHORT = "A short note."  # one chunk, a sentence too short to blank


@pytest.fixture(scope="module")
def run(tmp_path_factory, sample_books):
    folder = tmp_path_factory.mktemp("qa-books")
    good = sample_books[3]["text"][:12_000]  # a slice of Persuasion: several usable chunks
    books = {"good": good, "cyrillic": NON_LATIN, "no-sentence-end": NO_SENTENCE_END, "tiny": TOO_SHORT}
    (folder / "books.jsonl").write_text("".join(json.dumps({"id": k, "text": v}, ensure_ascii=False) + "\n" for k, v in books.items()))
    out = tmp_path_factory.mktemp("qa-books-out") / "out"
    config = QAConfig.model_validate({"inputs": [str(folder)], "output": str(out), "tokenizer": DEMO_TOKENIZER,
                                      "stages": ["q4k=4096:0-"], "backend": "extractive",
                                      "chunk_tokens": 300, "chunk_min_tokens": 150, "chunk_max_tokens": 450,
                                      # the Russian, sentence-less and tiny books must reach the chunker
                                      "quality_filter": False, "languages": []})
    manifest = run_qa(config, IN_MEMORY)
    rejects = [json.loads(line) for f in sorted((out / "rejects").glob("*.jsonl")) for line in f.read_text().splitlines()]
    return out, manifest, rejects, good


def test_books_without_a_valid_chunk_are_rejected_not_kept(run):
    out, manifest, rejects, _ = run
    assert manifest["read"] == 4 == manifest["kept"] + manifest["rejected_total"]
    assert manifest["kept"] == 1
    assert manifest["rejected"] == {"no_valid_chunks": 3}
    books = {r["id"]: r for r in rejects if "unit" not in r}
    assert set(books) == {"cyrillic", "no-sentence-end", "tiny"}
    assert all(r["reason"] == "no_valid_chunks" and "reached an example" in r["detail"] for r in books.values())
    # The rejected books' chunks are each rejected too, and each of them was counted as read.
    chunk_rejects = [r for r in rejects if r.get("unit") == "chunk"]
    for book in books:
        assert any(r["id"].startswith(f"{book}#chunk") for r in chunk_rejects)
    chunks = manifest["chunks"]
    assert chunks["read"] == chunks["accepted"] + sum(chunks["rejected"].values())
    assert sum(chunks["rejected"].values()) == len(chunk_rejects)


def test_only_the_kept_book_reaches_the_shards_and_tokens_in(run, demo_tokenizer):
    out, manifest, _, good = run
    docs = {d for shard in manifest["stages"]["q4k"]["shards"] for row in read_shard(str(out / shard["path"])).doc_ids for d in row}
    assert docs == {"good"}
    # tokens_in counts the kept book only (BOS + cleaned text + EOS, as the pipeline tokenizes it).
    tok, info = demo_tokenizer
    assert manifest["tokens_in"] == len(encode_long(tok, clean_text(good, CleanConfig()), info.bos_id, info.eos_id))
