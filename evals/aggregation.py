"""RULER's aggregation tasks: common words extraction (`cwe`) and frequent words extraction (`fwe`).

- `cwe`: a numbered list of words ("1. lantern 2. brisk 3. ..."); ten common words appear 30 times
  each and the others 3 times each (6 and 1 below a 4K context, as RULER), shuffled; the model
  lists the ten common ones. A one-shot example with its answer comes first, as in RULER. Words
  come from evals/words.py `vocabulary()` (none a substring of another): wonderwords' lists when
  installed, else the sample novels' word types, with our bundled list; ~6,000-7,700 words, enough
  for prompts past 128K tokens (the bundled list alone stops at ~23K; `max_units` bounds it).
- `fwe`: "coded" words (random six-letter strings) drawn by a Zipf law with exponent 2 over a
  vocabulary of length/50 words: word k appears floor(N k^-2 / zeta(2)) times, the most frequent
  one is replaced by "...", and the model names the next three.
Both are scored `all`.
"""

from __future__ import annotations

import math
import string

import numpy as np

from evals.common import Task, TaskText, rng
from evals.words import default_source, vocabulary

CWE_TEMPLATE = ("Below is a numbered list of words. In these words, some appear more often than others. "
                "Memorize the ones that appear most often.\n{context}\n"
                "Question: What are the 10 most common words in the above list?")
CWE_PREFIX = " Answer: The top 10 words that appear most often in the list are:"
CWE_MAX_NEW_TOKENS = 120
COMMON = 10

FWE_TEMPLATE = ("Read the following coded text and track the frequency of each coded word. Find the three most "
                "frequently appeared coded words. {context}\nQuestion: Do not provide any explanation. Please ignore "
                "the dots '....'. What are the three most frequently appeared words in the above coded text?")
FWE_PREFIX = " Answer: According to the coded text above, the three most frequently appeared words are:"
FWE_MAX_NEW_TOKENS = 50
FWE_ALPHA = 2.0
ZETA_2 = math.pi**2 / 6  # zeta(2), RULER's normaliser for alpha = 2


def numbered(words: list[str]) -> str:
    return " ".join(f"{i + 1}. {w}" for i, w in enumerate(words))


def cwe_frequencies(length: int) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """((example words, common repeats, rare repeats), (-, common repeats, rare repeats)) by length."""
    if length < 4096:
        return (20, 3, 1), (0, 6, 1)
    return (40, 10, 3), (0, 30, 3)


def _word_list(pick: np.random.Generator, order: np.random.Generator, distinct: int, common_repeats: int,
               rare_repeats: int, vocab: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """`pick` chooses the words (the first ones are the same whatever `distinct` is, so one more
    rare word lengthens the prompt by its repeats and nothing else), `order` shuffles the list."""
    chosen = [vocab[i] for i in pick.permutation(len(vocab))[:distinct]]
    common, rare = chosen[:COMMON], chosen[COMMON:]
    words = common * common_repeats + rare * rare_repeats
    order.shuffle(words)
    return words, common


def build_cwe(seeds: tuple[int, ...], n: int, source: str | None = None) -> TaskText:
    """`n` rare words besides the ten common ones. seeds[2] is the context length (task_seeds);
    `source` the vocabulary's (evals/words.py; default: the best one installed)."""
    source = source or default_source()
    vocab = vocabulary(source)
    (ex_distinct, ex_common, ex_rare), (_, common_repeats, rare_repeats) = cwe_frequencies(seeds[2])
    ex_words, ex_answer = _word_list(rng(seeds, 10), rng(seeds, 11), ex_distinct, ex_common, ex_rare, vocab)
    shot = CWE_TEMPLATE.format(context=numbered(ex_words)) + CWE_PREFIX + " " + numbered(ex_answer) + "\n"
    words, common = _word_list(rng(seeds, 0), rng(seeds, 1, n), COMMON + n, common_repeats, rare_repeats, vocab)
    text = shot + CWE_TEMPLATE.format(context=numbered(words))
    return TaskText(text, CWE_PREFIX, common, [], {"list_start": len(shot), "repeats": [common_repeats, rare_repeats],
                                                   "words": source, "vocabulary": len(vocab)})


def cwe_task(source: str | None = None) -> Task:
    """The task with its vocabulary fixed when it is made (so every sample of a run uses one)."""
    source = source or default_source()
    return Task("cwe", "aggregation", lambda seeds, n: build_cwe(seeds, n, source), "all", CWE_MAX_NEW_TOKENS,
                min_units=0, max_units=len(vocabulary(source)) - COMMON)


def fwe_counts(total: int, vocab_size: int) -> list[int]:
    """Occurrences of the word of each rank: floor(total * k^-alpha / zeta(alpha)), k = 1..vocab_size."""
    return [int(total * k**-FWE_ALPHA / ZETA_2) for k in range(1, vocab_size + 1)]


def build_fwe(seeds: tuple[int, ...], n: int) -> TaskText:
    """About `n` coded words in all. seeds[2] is the context length (task_seeds)."""
    vocab_size = max(seeds[2] // 50, 8)
    r = rng(seeds, 0)
    vocab: list[str] = []
    while len(vocab) < vocab_size:
        word = "".join(r.choice(list(string.ascii_lowercase), 6))
        if word not in vocab:
            vocab.append(word)
    vocab[0] = "..."  # the most frequent word is noise
    words = [w for w, c in zip(vocab, fwe_counts(n, vocab_size)) for _ in range(c)]
    rng(seeds, 1, n).shuffle(words)
    return TaskText(FWE_TEMPLATE.format(context=" ".join(words)), FWE_PREFIX, vocab[1:4], [],
                    {"vocabulary": vocab_size})


def fwe_task() -> Task:
    # 30 words: the fourth-ranked word appears at least once.
    return Task("fwe", "aggregation", build_fwe, "all", FWE_MAX_NEW_TOKENS, min_units=30)
