"""Decontamination: reject a training document that holds (much of) an evaluation document.

As GPT-3 did (Brown et al. 2020, appendix C), texts are compared as sets of word 13-grams after
normalisation (case folded, punctuation and line breaks dropped: `normalized_words`). The n-grams
of every evaluation document are built once into an `EvalIndex` (64-bit hashes, sorted), which
a pipeline passes to its workers as a side input.

GPT-3 flagged any shared 13-gram; on books that rejects a whole novel for one famous sentence an
evaluation passage happens to quote. Here a document is contaminated by an evaluation document
when it holds at least `threshold` of that evaluation document's n-grams (default 0.5, the
majority): a quoted 30-word sentence is ~2% of a 1,000-word passage's n-grams and ~20% of a
100-word one, a copied passage is 100%, and 100- or 1,000-word passages of one sample novel share
no 13-gram at all with the other six (measured: see tests/test_decontaminate.py).
Evaluation documents shorter than n words have no n-gram and cannot contaminate anything; a job whose
evaluation documents hold no n-gram at all is stopped with one line (`build_index`).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from curation.accounting import Reason
from curation.near_duplicates import text_ngram_hashes64
from curation.refusals import JobRefused

CONTAMINATED = Reason.CONTAMINATED.value


def eval_ngrams(text: str, n: int) -> np.ndarray:
    """Sorted unique 64-bit hashes of the text's word n-grams; none when it has fewer than n words."""
    return text_ngram_hashes64(unicodedata.normalize("NFC", text), n)


@dataclass(frozen=True)
class EvalIndex:
    """Every evaluation document's n-grams: `hashes` sorted, `owners[i]` the index into `names`
    of the evaluation document holding `hashes[i]` (an n-gram in two documents appears twice)."""

    ngram: int
    names: tuple[str, ...]
    sizes: np.ndarray  # n-grams per evaluation document
    hashes: np.ndarray
    owners: np.ndarray

    @property
    def empty(self) -> bool:
        return self.hashes.size == 0


class NoEvaluationNgrams(JobRefused):
    """The evaluation documents hold no n-gram at the configured size: decontaminating against
    them would reject nothing, and the job would run as if --decontaminate had not been given."""

    # Beam adds " [while running 'STEP']" to an exception raised in a step unless it is tagged as
    # already named: the line says what is wrong without the step (the index is built in one).
    _tagged_with_step = True


def no_ngrams_line(documents: int, ngram: int) -> str:
    """The one line that stops a job whose evaluation documents hold no word n-gram."""
    if documents:
        read = (f"{documents:,} evaluation document{'s' if documents != 1 else ''} {'was' if documents == 1 else 'were'} read "
                f"and none holds a word {ngram}-gram (each has fewer than {ngram} words)")
    else:
        read = "no evaluation document was read (the files hold no record)"
    return (f"decontaminate: {read}, so nothing could be found contaminated: give evaluation documents of at least "
            f"{ngram} words, or a smaller --decontaminate-ngram")


def build_index(docs: Iterable[tuple[str, np.ndarray]], ngram: int) -> EvalIndex:
    """(name, n-gram hashes) per evaluation document -> the index; order of input does not matter
    (documents are sorted by name, then by their hashes, so the index is the same on any runner).
    Raises NoEvaluationNgrams (a JobRefused: the job stops with its one line) when no document
    holds an n-gram, none read included: a job given --decontaminate must decontaminate."""
    docs = list(docs)
    items = sorted(((name, hashes) for name, hashes in docs if hashes.size), key=lambda item: (item[0], item[1].tobytes()))
    if not items:
        raise NoEvaluationNgrams(no_ngrams_line(len(docs), ngram))
    hashes = np.concatenate([h for _, h in items])
    owners = np.concatenate([np.full(h.size, i, dtype=np.int32) for i, (_, h) in enumerate(items)])
    order = np.lexsort((owners, hashes))
    return EvalIndex(
        ngram, tuple(name for name, _ in items), np.array([h.size for _, h in items], dtype=np.int64),
        hashes[order], owners[order],
    )


@dataclass(frozen=True)
class Contamination:
    eval_name: str
    shared: int  # n-grams of the evaluation document found in the training document
    eval_ngrams: int

    @property
    def share(self) -> float:
        return self.shared / self.eval_ngrams

    @property
    def facts(self) -> dict[str, object]:
        return {"eval_document": self.eval_name, "shared_ngrams": self.shared, "eval_ngrams": self.eval_ngrams}

    @property
    def detail(self) -> str:
        return (
            f"holds {self.shared} of the {self.eval_ngrams} word n-grams ({self.share:.0%}) of evaluation "
            f"document {self.eval_name}"
        )


def contamination(text: str, index: EvalIndex, threshold: float) -> Contamination | None:
    """The evaluation document whose n-grams the text holds the largest share of, when that share
    reaches `threshold` (ties: the first by name); else None."""
    if index.empty:
        return None
    grams = eval_ngrams(text, index.ngram)
    if grams.size == 0:
        return None
    hit = np.isin(index.hashes, grams, assume_unique=False)
    if not hit.any():
        return None
    shared = np.bincount(index.owners[hit], minlength=len(index.names))
    shares = shared / index.sizes
    best = int(np.argmax(shares))  # the first maximum: names are sorted
    if shares[best] < threshold:
        return None
    return Contamination(index.names[best], int(shared[best]), int(index.sizes[best]))
