"""Decontamination on the real sample novels: a copied evaluation passage rejects its novel, a
famous quoted sentence does not, distinct novels share no 13-gram; and the book pipeline."""

from __future__ import annotations

import argparse
import gzip
import json
import re
from pathlib import Path

import numpy as np
import pytest

from benchmarks.near_duplicates import read_novels
from curation.decontaminate import build_index, contamination, eval_ngrams
from pipelines.config import BooksConfig, add_config_flags, config_from_args
from pipelines.launch import run_books
from pipelines.refusals import BEAM_ELEMENT_LOGGER, JobRefused
from tests.conftest import DEMO_TOKENIZER

FAMOUS = ("It is a truth universally acknowledged, that a single man in possession of a good fortune, "
          "must be in want of a wife.")
THRESHOLD = BooksConfig.model_fields["decontaminate_threshold"].default


@pytest.fixture(scope="module")
def novels() -> dict[str, str]:
    return {n["id"]: n["text"] for n in read_novels(chars=100_000)}


def _passage(text: str, words: int, at: float = 0.5) -> str:
    w = text.split()
    start = int(len(w) * at)
    return " ".join(w[start : start + words])


def _insert(text: str, passage: str) -> str:
    cut = text.find("\n\n", len(text) // 2)
    return f"{text[:cut]}\n\n{passage}\n\n{text[cut:]}"


def test_ngrams_are_normalised_and_short_texts_have_none():
    assert eval_ngrams("one two three", 13).size == 0
    text = " ".join(f"w{i}" for i in range(20))
    assert eval_ngrams(text, 13).size == 8
    assert np.array_equal(eval_ngrams(text, 13), eval_ngrams(text.upper().replace(" ", ",\n  "), 13))


def test_the_index_does_not_depend_on_input_order(novels):
    docs = [(name, eval_ngrams(_passage(t, 300), 13)) for name, t in novels.items()]
    a, b = build_index(docs, 13), build_index(docs[::-1], 13)
    assert a.names == b.names and np.array_equal(a.hashes, b.hashes) and np.array_equal(a.owners, b.owners)


def test_a_copied_passage_rejects_the_novel_and_names_it(novels):
    passage = _passage(novels["mobydick"], 1000)
    index = build_index([("evals.jsonl id=moby-1000", eval_ngrams(passage, 13)),
                         ("evals.jsonl id=other", eval_ngrams(_passage(novels["emma"], 500), 13))], 13)
    found = contamination(_insert(novels["prideprejudice"], passage), index, THRESHOLD)
    assert found is not None and found.eval_name == "evals.jsonl id=moby-1000"
    assert found.shared == found.eval_ngrams > 980  # ~1000 words: ~1000 13-grams, every one held
    assert f"{found.shared} of the {found.shared}" in found.detail and "moby-1000" in found.detail
    # Half the passage is still a majority of nothing: rejected at 0.5 only when >= half is held.
    half = contamination(_insert(novels["prideprejudice"], _passage(novels["mobydick"], 520)), index, THRESHOLD)
    assert half is not None and half.share >= THRESHOLD


def test_a_famous_quoted_sentence_does_not_reject_a_novel(novels):
    # An evaluation passage (1,000 words of Moby-Dick) that quotes Pride and Prejudice's first line.
    passage = _insert(_passage(novels["mobydick"], 1000), FAMOUS)
    index = build_index([("evals id=quoting", eval_ngrams(passage, 13))], 13)
    assert FAMOUS[:40] in novels["prideprejudice"].replace("\n", " ")
    assert contamination(novels["prideprejudice"], index, THRESHOLD) is None
    overlap = contamination(novels["prideprejudice"], index, 1e-9)
    assert overlap is not None and 0 < overlap.share < 0.03  # the sentence: ~11 of ~1,000 n-grams


def test_distinct_novels_share_no_13gram(novels):
    # The evidence for any threshold above zero: 1,000-word passages of each novel against the others.
    for name, text in novels.items():
        index = build_index([(f"{o}@{k}", eval_ngrams(_passage(t, 1000, k / 5), 13))
                             for o, t in novels.items() if o != name for k in range(1, 5)], 13)
        assert contamination(text, index, 1e-9) is None, name


def test_flag_is_repeatable():
    parser = argparse.ArgumentParser()
    add_config_flags(parser, BooksConfig)
    args = parser.parse_args(["--decontaminate", "a.jsonl", "--decontaminate", "gs://b/evals/*.parquet"])
    assert config_from_args(BooksConfig, args).decontaminate == ["a.jsonl", "gs://b/evals/*.parquet"]


def _write(records, path: Path) -> Path:
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in records)
    return path


def test_pipeline_rejects_the_contaminated_book_only(novels, tmp_path):
    passage = _passage(novels["mobydick"], 1000)
    books = _write([
        {"id": "pp-with-passage", "text": _insert(novels["prideprejudice"], passage)},
        {"id": "emma", "text": novels["emma"]},
        {"id": "persuasion-quoting", "text": _insert(novels["persuasion"], FAMOUS)},
    ], tmp_path / "books.jsonl.gz")
    (tmp_path / "evals").mkdir()
    (tmp_path / "evals" / "passages.jsonl").write_text(
        json.dumps({"id": "moby-1000", "question": passage}) + "\n"
        + json.dumps({"id": "quoting", "question": _insert(_passage(novels["mobydick"], 1000, 0.2), FAMOUS)}) + "\n"
    )
    (tmp_path / "evals" / "plain.txt").write_text(_passage(novels["northangerabbey"], 800))
    config = BooksConfig.model_validate({
        "inputs": [str(books)], "output": str(tmp_path / "out"), "tokenizer": DEMO_TOKENIZER, "stages": ["s=2048:1000-10000000"],
        "decontaminate": [str(tmp_path / "evals")], "decontaminate_text_field": "question",
    })
    manifest = run_books(config, ["--runner=DirectRunner", "--direct_running_mode=in_memory"])
    assert manifest["read"] == 3 == manifest["kept"] + manifest["rejected_total"]
    assert manifest["rejected"] == {"contaminated": 1}
    [reject] = [json.loads(line) for f in (tmp_path / "out" / "rejects").glob("*.jsonl") for line in f.read_text().splitlines()]
    assert reject["id"] == "pp-with-passage" and reject["reason"] == "contaminated"
    assert re.search(r"holds (\d+) of the \1 word n-grams \(100%\)", reject["detail"])
    assert "passages.jsonl id=moby-1000" in reject["detail"]
    facts = reject["facts"]
    assert facts["eval_document"].endswith("passages.jsonl id=moby-1000") and facts["shared_ngrams"] == facts["eval_ngrams"] > 0


def test_an_unreadable_evaluation_record_stops_the_job(novels, tmp_path, caplog):
    books = _write([{"id": "emma", "text": novels["emma"][:20_000]}], tmp_path / "books.jsonl.gz")
    (tmp_path / "evals.jsonl").write_text('{"id": "ok", "text": "fine words here"}\n{"id": "bad", "text": \n')
    config = BooksConfig.model_validate({
        "inputs": [str(books)], "output": str(tmp_path / "out"), "tokenizer": DEMO_TOKENIZER, "stages": ["s=2048:10-10000000"],
        "decontaminate": [str(tmp_path / "evals.jsonl")],
    })
    with pytest.raises(JobRefused, match="decontamination input .*evals.jsonl record .* is unreadable \\(malformed_json"):
        run_books(config, ["--runner=DirectRunner", "--direct_running_mode=in_memory"])
    assert not (tmp_path / "out" / "manifest.json").exists()
    # The command says it in one line (a ValueError); Beam logs no traceback of it before that.
    assert [r for r in caplog.records if r.exc_info] == []
    assert not [r for r in caplog.records if r.name == BEAM_ELEMENT_LOGGER]
