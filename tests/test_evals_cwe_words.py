"""The common-words task (`cwe`) at long contexts: its vocabulary (evals/words.py) holds enough
words for a 128K-token prompt, from wonderwords when installed, else the sample novels."""

from __future__ import annotations

import importlib.util
import re
from collections import Counter

import numpy as np
import pytest

from evals import niah
from evals.generators import NiahTokenizer, load_niah_tokenizer
from evals.aggregation import COMMON, build_cwe, cwe_task
from evals.common import PromptBuilder, make_sample, task_seeds
from evals.words import default_source, substring_free, vocabulary
from tests.conftest import DEMO_TOKENIZER

SOURCES = ["books", "bundled"] + (["wonderwords"] if importlib.util.find_spec("wonderwords") else [])


@pytest.fixture(scope="module")
def tokenizer() -> NiahTokenizer:
    return load_niah_tokenizer(DEMO_TOKENIZER)


def test_substring_free():
    assert substring_free(["art", "party", "par", "tea", "steam", "dog"]) == ("dog", "party", "steam")


@pytest.mark.parametrize("source", SOURCES)
def test_vocabulary_has_no_word_inside_another(source):
    vocab = vocabulary(source)
    assert list(vocab) == sorted(set(vocab)) and all(re.fullmatch(r"[a-z]+", w) for w in vocab)
    probe = [vocab[i] for i in np.random.default_rng(0).choice(len(vocab), 300, replace=False)]
    assert not [(w, o) for w in probe for o in vocab if w != o and w in o]
    assert len(vocab) == {"bundled": 937}.get(source, len(vocab))  # the bundled list is unchanged
    if source != "bundled":
        assert len(vocab) > 6000


@pytest.mark.parametrize("source", [s for s in SOURCES if s != "bundled"])
def test_cwe_word_list_reaches_128k_tokens(tokenizer, source):
    """The longest list the vocabulary allows is longer than a 128K context (the bundled list alone
    stops at ~23K tokens with this tokenizer)."""
    task = cwe_task(source)
    text = build_cwe(task_seeds(0, "cwe", 131072, 0), task.max_units, source)
    assert len(tokenizer.encode(text.text)) > 131072
    assert text.info["words"] == source
    bundled = build_cwe(task_seeds(0, "cwe", 131072, 0), len(vocabulary("bundled")) - COMMON, "bundled")
    assert len(tokenizer.encode(bundled.text)) < 32768  # ~23K with this tokenizer


def test_cwe_fills_a_128k_prompt(tokenizer):
    """At 128K the prompt fills the budget (prompt + answer budget = the length, to within one
    more word's repeats) and the answer is recoverable: the ten words seen 30 times."""
    builder = PromptBuilder(tokenizer, niah.PromptFrame.for_tokenizer(tokenizer))
    length = 131072
    sample = make_sample(cwe_task(), builder, length, index=0, seed=3)
    budget = length - sample.max_new_tokens
    assert budget - 40 < sample.prompt_tokens <= budget
    assert sample.info["words"] == default_source()
    listed = sample.body[sample.info["list_start"]:].split("Question:")[0]
    counts = Counter(re.findall(r"\d+\. ([a-z]+)", listed))
    assert sorted(w for w, c in counts.items() if c == 30) == sorted(sample.references)
    assert len(counts) == COMMON + sample.units and set(counts.values()) == {30, 3}
