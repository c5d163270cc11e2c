"""Near-duplicate banding that cannot find the pairs at its own threshold is refused: LSH makes two
documents of Jaccard similarity s a candidate pair with probability P(s) = 1-(1-s^rows)^bands,
and a setting whose P at the threshold is under MIN_PAIR_PROBABILITY (0.5) misses most of them
(1 band of 60 rows: P(0.5) ~ 9e-19, so a copy with 2% of its words edited is kept beside its
original, which the defaults reject). The line shows P and a setting that works; the defaults
and every shipped config pass."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from curation.near_duplicates import (
    MIN_PAIR_PROBABILITY, MinHashConfig, band_keys, banding_problem, estimated_jaccard, pair_probability, signature,
    suggested_banding,
)
from pipelines.config import BooksConfig, QAConfig
from pipelines.jobs import DATA_JOBS
from pipelines.options import job_pipeline_options
from tests.conftest import DEMO_TOKENIZER, REPO, cli_error


@pytest.fixture
def common(tmp_path):
    books = tmp_path / "books.jsonl"
    books.write_text(json.dumps({"id": "a", "text": "A book. " * 50}) + "\n")
    return ["--input", str(books), "--output", str(tmp_path / "out"), "--tokenizer", DEMO_TOKENIZER, "--stages", "t=64:0-"]


def _edited(text: str, share: float, seed: int = 0) -> str:
    words = text.split()
    rng = random.Random(seed)
    for i in rng.sample(range(len(words)), int(len(words) * share)):
        words[i] = f"edit{i}"
    return " ".join(words)


def _paired(a: str, b: str, config: MinHashConfig) -> bool:
    """Whether LSH banding makes the two texts a candidate pair (they share a band bucket)."""
    return bool(set(band_keys(signature(a, config), config.bands, config.rows))
                & set(band_keys(signature(b, config), config.bands, config.rows)))


def test_one_band_of_sixty_rows_misses_a_lightly_edited_copy_the_defaults_find(sample_books):
    text = " ".join(sample_books[0]["text"].split()[:4000])
    copy = _edited(text, 0.02)
    default = MinHashConfig()
    assert _paired(text, copy, default)
    similarity = estimated_jaccard(signature(text, default), signature(copy, default))
    assert default.threshold <= similarity < 0.95  # a near duplicate, not a copy
    # Every one of the 60 values of the single band must agree: at this similarity, no pair.
    assert not _paired(text, copy, MinHashConfig(bands=1, rows=60))


def test_the_probability_and_the_suggestion():
    assert pair_probability(0.5, 1, 60) == pytest.approx(0.5**60)  # not rounded to 0
    assert pair_probability(0.5, 40, 3) == pytest.approx(MinHashConfig().candidate_probability(0.5))
    assert pair_probability(0.5, 40, 3) > 0.99
    assert suggested_banding(0.5, 60) == (40, 3)  # at least the defaults' 120 permutations
    assert suggested_banding(0.2, 120) == (60, 2)
    assert pair_probability(0.2, 60, 2) >= 0.9 > pair_probability(0.2, 40, 3)
    assert banding_problem(0.5, 40, 3) is None
    assert MIN_PAIR_PROBABILITY == 0.5


def test_banding_that_cannot_pair_at_its_threshold_is_refused(common, capsys):
    line = cli_error(["books", *common, "--near-dup-bands", "1", "--near-dup-rows", "60"], capsys)[-1]
    assert line == ("longctx books: error: --near-dup-bands 1 and --near-dup-rows 60: LSH with 1 band of 60 rows pairs two "
                    "documents of similarity 0.5 with probability P = 1-(1-s^rows)^bands = 8.67e-19, below 0.5: most "
                    "near-duplicates would go undetected; 40 bands of 3 rows give P = 0.995 (--near-dup-bands 40 --near-dup-rows 3)")
    # A threshold alone, with the default banding: P(0.2) = 0.275.
    line = cli_error(["qa", *common, "--near-dup-threshold", "0.2"], capsys)[-1]
    assert line.startswith("longctx qa: error: --near-dup-threshold 0.2: LSH with 40 bands of 3 rows pairs two documents of "
                           "similarity 0.2 with probability P = 1-(1-s^rows)^bands = 0.275, below 0.5")
    assert line.endswith("60 bands of 2 rows give P = 0.914 (--near-dup-bands 60 --near-dup-rows 2)")


def test_working_banding_the_defaults_and_the_shipped_configs_pass(common, tmp_path):
    for flags in (["--near-dup-bands", "20"], ["--near-dup-threshold", "0.8", "--near-dup-rows", "8"], []):
        DATA_JOBS["books"].config_from(job_pipeline_options([*common, *flags]))
    for model in (BooksConfig, QAConfig):
        fields = model.model_fields
        assert banding_problem(*(fields[k].default for k in ("near_dup_threshold", "near_dup_bands", "near_dup_rows"))) is None
    configs = sorted((REPO / "configs" / "books").glob("*.yaml"))
    assert configs
    for path in configs:
        config = DATA_JOBS["books"].config_from(job_pipeline_options(["--config", str(path), "--output", str(tmp_path / "o")]))
        assert banding_problem(config.near_dup_threshold, config.near_dup_bands, config.near_dup_rows) is None, Path(path).name
