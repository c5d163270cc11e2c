"""The QA pipeline end to end on DirectRunner with the extractive backend (no model)."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from curation.shards import read_shard
from curation.text import CleanConfig, clean_text
from curation.tokenize import encode_long
from pipelines.config import QAConfig
from pipelines.launch import run_qa
from qa_synth.chunking import make_chunks
from qa_synth.extractive import extractive_qa
from qa_synth.parse import parse_qa
from tests.conftest import DEMO_TOKENIZER, SAMPLE_BOOKS

IN_MEMORY = ["--runner=DirectRunner", "--direct_running_mode=in_memory"]


@pytest.fixture(scope="module")
def qa_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("qa-in")
    lines = gzip.open(SAMPLE_BOOKS, "rt").read().splitlines()
    books = [json.loads(lines[i]) for i in (3, 2)]  # persuasion, northangerabbey: the two shortest
    (folder / "books.jsonl").write_text("".join(json.dumps(b) + "\n" for b in books) + '{"id": "broken"\n')
    out = tmp_path_factory.mktemp("qa") / "out"
    config = QAConfig.model_validate({"inputs": [str(folder)], "output": str(out), "tokenizer": DEMO_TOKENIZER,
                                      "stages": ["q4k=4096:0-"], "backend": "extractive"})
    return out, run_qa(config, IN_MEMORY), books


def _answers_by_chunk(book, tok, info) -> dict[int, tuple[np.ndarray, str]]:
    tokens = encode_long(tok, clean_text(book["text"], CleanConfig()), info.bos_id, info.eos_id)
    out = {}
    for chunk in make_chunks(book["id"], "", tokens, tok, strip_ids={info.bos_id, info.eos_id}):
        out[chunk.start] = (chunk.tokens, parse_qa(extractive_qa(chunk.text, seed_key=chunk.text)).answer)
    return out


def test_every_book_and_chunk_is_accounted_for(qa_run):
    out, manifest, _ = qa_run
    assert manifest["read"] == 3 == manifest["kept"] + manifest["rejected_total"]
    assert manifest["rejected"] == {"malformed_json": 1}
    chunks = manifest["chunks"]
    assert chunks["read"] > 200 and chunks["read"] == chunks["accepted"] + sum(chunks["rejected"].values())
    rejects = [json.loads(x) for f in (out / "rejects").glob("*.jsonl") for x in f.read_text().splitlines()]
    assert sum(r.get("unit") == "chunk" for r in rejects) == sum(chunks["rejected"].values())


def test_examples_hold_chunks_in_order_and_loss_only_on_answers(qa_run, demo_tokenizer):
    out, manifest, books = qa_run
    tok, info = demo_tokenizer
    expected = {b["id"]: _answers_by_chunk(b, tok, info) for b in books}
    examples = 0
    for shard in manifest["stages"]["q4k"]["shards"]:
        view = read_shard(str(out / shard["path"]))
        assert view.arrays["input_ids"].shape[1] == 4096
        for r in range(view.num_rows):
            for k, (doc_id, start) in enumerate(zip(view.doc_ids[r], view.doc_starts[r]), start=1):
                span = view.arrays["segment_ids"][r] == k
                ids, mask = view.arrays["input_ids"][r][span], view.arrays["loss_mask"][r][span]
                chunks = expected[doc_id]
                # The context: consecutive chunks from `start`, their tokens as they are.
                first = chunks[start][0]
                at = next(i for i in range(len(ids)) if np.array_equal(ids[i : i + len(first)], first))
                pos, starts = at, []
                chunk_start = start
                while chunk_start in chunks and np.array_equal(ids[pos : pos + len(chunks[chunk_start][0])], chunks[chunk_start][0]):
                    starts.append(chunk_start)
                    pos += len(chunks[chunk_start][0])
                    chunk_start += len(chunks[chunk_start][0])
                assert mask[:pos].sum() == 0  # no loss on the instructions or the context
                # Loss-masked runs decode to exactly the answers of those chunks, in order.
                runs, current = [], []
                for token, m in zip(ids, mask):
                    if m > 0:
                        current.append(int(token))
                    elif current:
                        runs.append(current)
                        current = []
                if current:
                    runs.append(current)
                assert [tok.decode(run).strip() for run in runs] == [chunks[s][1].strip() for s in starts]
                assert all(run[-1] == info.eos_id for run in runs)
                examples += 1
    assert examples == manifest["stages"]["q4k"]["documents"] > 10
