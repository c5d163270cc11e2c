"""The throughput benchmark's own logic: copies of a novel that every dedup step keeps, and the
profile's attribution of stack samples to pipeline steps."""

from __future__ import annotations

import sys
import sysconfig

import pytest

from benchmarks.books_throughput import OTHER, REPO, StepSampler, step_of, vary
from curation.near_duplicates import MinHashConfig, estimated_jaccard, signature
from curation.text import CleanConfig, clean_text


@pytest.fixture(scope="module")
def moby(sample_books) -> str:
    return next(b["text"] for b in sample_books if b["id"] == "mobydick")


def test_a_copy_is_a_distinct_book_of_the_same_words(moby):
    copy = vary(moby, 1)
    assert copy != moby and len(copy) == len(moby)
    assert sorted(copy.split()) == sorted(moby.split())  # the same words: the same cost to judge and tokenize
    assert vary(moby, 1) == copy and vary(moby, 2) != copy  # a fixed seed per copy
    config = MinHashConfig()
    assert estimated_jaccard(signature(copy, config), signature(moby, config)) < config.threshold / 2
    # Gutenberg's header and footer markers are left alone, so cleaning strips them from the copy too.
    clean = CleanConfig()
    assert len(clean_text(copy, clean)) == len(clean_text(moby, clean))
    assert "Project Gutenberg" not in clean_text(copy, clean)[-2000:]


def _here(module: str) -> str:
    return str(REPO / module)


def test_samples_are_charged_to_the_innermost_step_of_ours():
    site = sysconfig.get_paths()["purelib"]
    numpy_frame = (f"{site}/numpy/_core/fromnumeric.py", "unique", "")
    beam_frame = (f"{site}/apache_beam/runners/worker/operations.py", "process", "DoOperation")
    assert step_of([numpy_frame, (_here("curation/quality.py"), "text_stats", ""), beam_frame]) == "quality rules"
    assert step_of([(_here("curation/quality.py"), "mean_confidences", ""), beam_frame]) == "language"
    assert step_of([(f"{site}/lingua/__init__.py", "x", ""), (_here("curation/quality.py"), "identify_language", "")]) == "language"
    assert step_of([(f"{site}/sentencepiece/__init__.py", "Encode", "SentencePieceProcessor"), beam_frame]) == "tokenize"
    assert step_of([(_here("pipelines/books.py"), "process", "Tokenize"), beam_frame]) == "tokenize"
    assert step_of([(_here("pipelines/books.py"), "process", "CleanText")]) == "clean"
    assert step_of([(_here("pipelines/packing.py"), "process", "WriteShard")]) == "write shards"
    assert step_of([(_here("pipelines/packing.py"), "process", "PackGroup")]) == "pack"
    assert step_of([(_here("curation/near_duplicates.py"), "signature", "")]) == "near-duplicates"
    # Arrow is called by several steps: its time is the caller's.
    arrow_frame = (f"{site}/pyarrow/compute.py", "wrapper", "")
    assert step_of([arrow_frame, (_here("curation/quality.py"), "_words", "")]) == "quality rules"
    assert step_of([arrow_frame, (_here("curation/word_encoding.py"), "split_units", "")]) == "tokenize"
    assert step_of([arrow_frame, (_here("curation/shards.py"), "write_shard", "")]) == "write shards"
    # Beam's own frames, and our books module outside any step: the rest.
    assert step_of([beam_frame, (_here("pipelines/books.py"), "expand", "BuildBookShards")]) == OTHER


def test_the_sampler_shortens_the_switch_interval_while_it_runs():
    # At the default 5 ms the sampler got the GIL mostly when the main thread released it inside a
    # C call, which was then charged the Python time before it (RESULTS, run 10).
    before = sys.getswitchinterval()
    with StepSampler(switch_interval=2e-4) as sampler:
        assert sys.getswitchinterval() == pytest.approx(2e-4)
        assert sampler.is_alive()
    assert sys.getswitchinterval() == before and not sampler.is_alive()
