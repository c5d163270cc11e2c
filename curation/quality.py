"""Document quality and language filters: Gopher-style heuristics and language identification.
Pure functions; the Beam shell is `pipelines/quality.py`.

The heuristics follow Rae et al. 2021 ("Scaling Language Models: Methods, Analysis & Insights from
Training Gopher", appendix A.1.1): bounds on word count and mean word length, '#' and ellipsis
per word, lines starting with a bullet or ending in an ellipsis, words with a letter, English stop
words, and repetition (duplicate lines and paragraphs, the most frequent word 2..4-gram, repeated
word 5..10-grams). `QualityRules` holds Gopher's thresholds except the word count, which is off
for books: a novel has 80K-250K words, and the stages' token windows bound length already. With
the definitions below, repeated dialogue ("said Mr. Knightley", "I do not know") keeps the sample
novels far inside Gopher's repetition bounds (at most 0.014 of their characters in repeated
5-grams against 0.15), so those need no relaxing for books.

Definitions used here (the paper states the rules, not every detail):
- a *word* is a run of non-whitespace characters (the text split at whitespace); its length
  counts every character in it; n-grams are over these words as written (case and punctuation
  kept);
- *lines* are split at '\\n', *paragraphs* at blank lines; both are stripped and empty ones skipped;
- a *duplicate* line, paragraph or n-gram occurrence is one whose exact text occurred earlier in
  the document: a text that is X twice over has a duplicate fraction of 0.5 (the first copy is
  not a duplicate), whichever of lines, paragraphs or n-grams is measured;
- *character fractions* of n-grams are over word characters (whitespace excluded), each word
  counted once however many n-grams cover it;
- the *top n-gram* fraction is the share of word characters covered by the occurrences of the most
  frequent n-gram (all of its occurrences, the first included).

`text_stats` is one pass over the lines and one over the words: Arrow splits the words and
numbers them in C (no Python object per word), and the word n-grams of each size n = 2..10 are
numbered exactly (no hashing: an n-gram is the pair of its (n-1)-gram's number and its last word)
with one hash-table pass per size (pandas' factorize) over the positions that can still repeat,
so the cost is linear in the text: about 0.03 s for a 135,000-word novel on one core (0.85 s CPU
for the 28 novels, 3.8M words, of `benchmarks/books_throughput.py --copies 4`; 1.39 s before the
Arrow split and the counting shortcuts, with bit-identical statistics).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from operator import itemgetter, methodcaller
from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from curation.accounting import Reason
from curation.config_errors import read_inline_yaml
from curation.word_memo import WordMemo

LOW_QUALITY = "low_quality"
LANGUAGE = Reason.LANGUAGE.value

TOP_NGRAMS = (2, 3, 4)
DUP_NGRAMS = (5, 6, 7, 8, 9, 10)

# Gopher's stop words: a text of English prose holds at least two of them.
STOP_WORDS = frozenset({"the", "be", "to", "of", "and", "that", "have", "with"})
# What a line starting with a list bullet starts with (after indentation). The em dash is not one:
# it opens dialogue lines in many novels.
BULLETS = frozenset("•●○◦▪▫■□‣⁃∙·➢►▶-*–")
ELLIPSES = ("...", "…")
_LETTER = re.compile(r"[^\W\d_]")  # a Unicode letter
_PARAGRAPH_BREAK = re.compile(r"\n[ \t\r\f\v]*\n")
_EDGE_PUNCT = re.compile(r"^\W+|\W+$")


@dataclass(frozen=True)
class TextStats:
    """The statistics the rules judge. Fractions are in [0, 1]; ratios are per word."""

    words: int
    mean_word_length: float
    hash_ratio: float  # '#' per word
    ellipsis_ratio: float  # '...' or '…' per word
    bullet_lines: float  # share of non-empty lines starting with a bullet
    ellipsis_lines: float  # share of non-empty lines ending in an ellipsis
    alpha_words: float  # share of words holding at least one letter
    stop_words: int  # occurrences of STOP_WORDS (case folded, edge punctuation stripped)
    dup_lines: float
    dup_line_chars: float
    dup_paragraphs: float
    dup_paragraph_chars: float
    top_ngram_chars: dict[int, float]  # n -> share of word characters in the most frequent n-gram
    dup_ngram_chars: dict[int, float]  # n -> share of word characters in repeats of an earlier n-gram


def _duplicates(parts: Sequence[str]) -> tuple[float, float]:
    """(share of parts that repeat an earlier one, share of their characters). Every part except
    the first copy of each distinct one repeats, so set sizes give both counts (no Python loop)."""
    if not parts:
        return 0.0, 0.0
    distinct = set(parts)
    total_chars = sum(map(len, parts))
    dup_chars = total_chars - sum(map(len, distinct))
    return (len(parts) - len(distinct)) / len(parts), (dup_chars / total_chars if total_chars else 0.0)


def _covered_chars(starts: np.ndarray, n: int, cum: np.ndarray) -> int:
    """Characters of the words covered by n-grams starting at `starts` (ascending, distinct), each
    word counted once; `cum[i]` holds the characters of the first i words. All n-grams have the
    same length, so the words of one before the next one's start lie in no other: the union is
    those disjoint stretches, read off the prefix sums in time linear in len(starts)."""
    if starts.size == 0:
        return 0
    ends = starts + n
    np.minimum(ends[:-1], starts[1:], out=ends[:-1])
    return int((cum[ends] - cum[starts]).sum())


def _renumber(keys: np.ndarray) -> np.ndarray:
    """Dense ids numbered in order of first occurrence: one hash-table pass (pandas' factorize)."""
    import pandas as pd  # here, not at the top: the CLI imports this module for QualityRules only

    codes, _ = pd.factorize(keys, sort=False)
    return codes.astype(np.int64, copy=False)


def _ngram_fractions(word_ids: np.ndarray, cum: np.ndarray) -> tuple[dict[int, float], dict[int, float]]:
    """Top and duplicate n-gram character fractions for n = 2..10 (`cum`: see _covered_chars).

    Only an n-gram whose (n-1)-gram prefix and (n-1)-gram suffix both occur more than once can
    repeat, so each size numbers just those positions (`rep`, in text order); every other position
    holds an n-gram of its own, which can neither be the top n-gram (that needs two occurrences)
    nor repeat. In prose most 4-grams and nearly all 5-grams are unique, so the passes shrink fast.
    Within `rep` ids are numbered in order of first occurrence, which is what the rules need: ties
    of the top n-gram go to the one seen first, and a position repeats an earlier n-gram exactly
    when its id is not larger than every id before it."""
    total = int(cum[-1])
    top: dict[int, float] = {}
    dup: dict[int, float] = {}
    size = word_ids.size
    vocab = int(word_ids.max()) + 1 if size else 1
    rep = np.arange(size)  # positions whose (n-1)-gram may repeat
    ids = word_ids  # at `rep`: ids of their (n-1)-grams, in order of first occurrence
    for n in range(2, max(DUP_NGRAMS) + 1):
        count = size - n + 1
        if count <= 0 or total == 0:
            top.update({m: 0.0 for m in TOP_NGRAMS if m >= n})
            dup.update({m: 0.0 for m in DUP_NGRAMS if m >= n})
            break
        # Positions starting a repeated (n-1)-gram: `rep` keeps every occurrence of those.
        repeated = np.bincount(ids)[ids] > 1
        rep, ids = rep[repeated], ids[repeated]
        # Keep those that still start an n-gram and whose suffix, at the next position, repeats too
        # (on the sample novels this drops 37% of the 3-gram pass and 64% of the 4-gram one).
        starts_repeat = np.zeros(size + 1, dtype=bool)
        starts_repeat[rep] = True
        keep = starts_repeat[rep + 1]
        keep &= rep < count
        rep, ids = rep[keep], ids[keep]
        # An n-gram is its (n-1)-gram prefix and its last word: a*vocab + b numbers the pair exactly
        # (both are < number of words, so the product stays far below 2**63).
        ids = _renumber(ids * vocab + word_ids[rep + n - 1]) if rep.size else rep
        if n in TOP_NGRAMS:
            counts = np.bincount(ids) if ids.size else np.zeros(1, dtype=np.int64)
            best = int(np.argmax(counts))  # ties: the n-gram seen first
            top[n] = _covered_chars(rep[ids == best], n, cum) / total if counts[best] > 1 else 0.0
        if n in DUP_NGRAMS:
            if ids.size:
                first = np.empty(ids.size, dtype=bool)
                first[0] = True
                first[1:] = ids[1:] > np.maximum.accumulate(ids)[:-1]
                dup[n] = _covered_chars(rep[~first], n, cum) / total
            else:
                dup[n] = 0.0
    return top, dup


# Whitespace str.split() breaks words at but Arrow's ascii_split_whitespace does not: Arrow breaks
# only at ' ', \t, \n, \v, \f and \r (checked over every code point, pyarrow 25).
_OTHER_SPACE = re.compile(r"[^\S \t\n\v\f\r]")


def _words(text: str) -> tuple[np.ndarray, list[str]]:
    """The words of `text.split()`, numbered exactly: (id of each word, in text order; the distinct
    words, by id). Arrow splits and numbers them in C without a Python object per word (3x faster
    than str.split and factorize on a novel); a text Arrow would split differently (whitespace
    beyond ASCII inside a word) or cannot hold (a lone surrogate) takes the plain way instead."""
    import pyarrow as pa  # here, not at the top: see _renumber
    import pyarrow.compute as pc

    try:
        column = pa.array([text], type=pa.large_string())
    except UnicodeEncodeError:  # not encodable as UTF-8: a lone surrogate
        column = None
    if column is not None:
        words = pc.ascii_split_whitespace(column).flatten()
        # Arrow keeps an empty word for leading and for trailing whitespace; str.split() does not.
        if len(words) and words[0].as_py() == "":
            words = words.slice(1)
        if len(words) and words[-1].as_py() == "":
            words = words.slice(0, len(words) - 1)
        encoded = pc.dictionary_encode(words)
        unique = encoded.dictionary.to_pylist()
        # Arrow's words are the runs between ASCII whitespace: the same as str.split()'s unless one
        # holds other whitespace, which a scan of the distinct words (not the whole text) finds.
        if not _OTHER_SPACE.search("".join(unique)):
            return encoded.indices.to_numpy().astype(np.int64), unique
    import pandas as pd  # see _renumber

    codes, distinct = pd.factorize(np.asarray(text.split(), dtype=object), sort=False)
    return codes.astype(np.int64, copy=False), list(distinct)


_ALPHA, _STOP = 1, 2


def _word_kind(word: str) -> int:
    """1 if the word holds a letter, plus 2 if it is a stop word."""
    return (_ALPHA if _LETTER.search(word) else 0) | (_STOP if _EDGE_PUNCT.sub("", word.casefold()) in STOP_WORDS else 0)


# Per distinct word, its kind; shared by every document a worker judges.
_WORD_KINDS = WordMemo(_word_kind, 1 << 19)


def _word_kinds(words: Sequence[str]) -> np.ndarray:
    """The kind (_ALPHA | _STOP bits) of each distinct word, as an int8 array."""
    return np.array(_WORD_KINDS(words), dtype=np.int8)


def text_stats(text: str) -> TextStats:
    """Every statistic the quality rules judge, in one pass over lines and one over words."""
    lines = list(filter(None, map(str.strip, text.split("\n"))))
    paragraphs = list(filter(None, map(str.strip, _PARAGRAPH_BREAK.split(text))))
    word_ids, unique = _words(text)
    n_words = word_ids.size
    # Properties of each distinct word, computed once and weighted by its number of occurrences.
    occurrences = np.bincount(word_ids, minlength=len(unique))
    unique_len = np.fromiter(map(len, unique), dtype=np.int64, count=len(unique))
    kinds = _word_kinds(unique)
    cum = np.zeros(n_words + 1, dtype=np.int64)  # cum[i]: characters of the first i words
    np.cumsum(unique_len[word_ids], out=cum[1:])
    chars = int(cum[-1])
    n_lines = len(lines)
    dup_lines, dup_line_chars = _duplicates(lines)
    dup_paragraphs, dup_paragraph_chars = _duplicates(paragraphs)
    top, dup = _ngram_fractions(word_ids, cum)
    per_word = 1 / n_words if n_words else 0.0
    per_line = 1 / n_lines if n_lines else 0.0
    return TextStats(
        words=n_words,
        # Exact integer counts over the word count: the same floats as numpy's means of the
        # per-word lengths and flags (their float sums of integers are exact below 2**53).
        mean_word_length=chars / n_words if n_words else 0.0,
        hash_ratio=text.count("#") * per_word,
        ellipsis_ratio=sum(text.count(e) for e in ELLIPSES) * per_word,
        bullet_lines=sum(map(BULLETS.__contains__, map(itemgetter(0), lines))) * per_line,
        ellipsis_lines=sum(map(methodcaller("endswith", ELLIPSES), lines)) * per_line,
        alpha_words=int(occurrences[(kinds & _ALPHA) != 0].sum()) / n_words if n_words else 0.0,
        stop_words=int(occurrences[(kinds & _STOP) != 0].sum()),
        dup_lines=dup_lines,
        dup_line_chars=dup_line_chars,
        dup_paragraphs=dup_paragraphs,
        dup_paragraph_chars=dup_paragraph_chars,
        top_ngram_chars=top,
        dup_ngram_chars=dup,
    )


def _inline_yaml(value: Any) -> Any:
    """A flag's value is a string: read it as an inline YAML mapping ('{min_words: 100}')."""
    if isinstance(value, str):
        parsed = read_inline_yaml(value) if value.strip() else {}
        if not isinstance(parsed, dict):
            raise ValueError(f"quality must be a YAML mapping of rule thresholds, e.g. '{{min_words: 100}}', got {value!r}")
        return parsed
    return value


# A threshold: a number >= 0, or None for a bound that is off.
Bound = Annotated[float | None, Field(ge=0)]
Count = Annotated[int | None, Field(ge=0)]


class QualityRules(BaseModel):
    """Thresholds of the Gopher-style rules. A document outside any bound is rejected as
    `low_quality:<rule>`, the rule being the field name without `min_`/`max_` (both bounds of a
    statistic share its name; the detail says which). None switches a bound off. The defaults are
    Gopher's except the word count, which is off for books; on the 7 sample novels every other
    statistic stays far inside Gopher's bounds (RESULTS)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_words: Count = Field(None, description="fewest words (Gopher: 50). Off: the stages' token windows bound a book's length and reject short texts as no_stage")
    max_words: Count = Field(None, description="most words (Gopher: 100,000). Off: a novel has 80K-250K words")
    min_mean_word_length: Bound = Field(3.0, description="shortest mean word length in characters (Gopher: 3; novels: 4.5-4.7)")
    max_mean_word_length: Bound = Field(10.0, description="longest mean word length in characters (Gopher: 10)")
    max_hash_ratio: Bound = Field(0.1, description="most '#' per word (Gopher: 0.1)")
    max_ellipsis_ratio: Bound = Field(0.1, description="most ellipses ('...' or '\u2026') per word (Gopher: 0.1)")
    max_bullet_lines: Bound = Field(0.9, description="largest share of lines starting with a bullet (Gopher: 0.9)")
    max_ellipsis_lines: Bound = Field(0.3, description="largest share of lines ending in an ellipsis (Gopher: 0.3)")
    min_alpha_words: Bound = Field(0.8, description="smallest share of words holding a letter (Gopher: 0.8; novels: 0.999)")
    min_stop_words: Count = Field(2, description="fewest English stop words: the, be, to, of, and, that, have, with (Gopher: 2). Judged only on texts identified as English, or on every text when language identification is off")
    max_dup_lines: Bound = Field(0.3, description="largest share of lines repeating an earlier line (Gopher: 0.3; novels: <= 0.006)")
    max_dup_line_chars: Bound = Field(0.2, description="largest share of line characters in lines repeating an earlier one (Gopher: 0.2)")
    max_dup_paragraphs: Bound = Field(0.3, description="largest share of paragraphs repeating an earlier one (Gopher: 0.3; novels: <= 0.016)")
    max_dup_paragraph_chars: Bound = Field(0.2, description="largest share of paragraph characters in paragraphs repeating an earlier one (Gopher: 0.2)")
    max_top_2gram_chars: Bound = Field(0.2, description="largest share of word characters in the most frequent word 2-gram (Gopher: 0.2; novels: <= 0.01)")
    max_top_3gram_chars: Bound = Field(0.18, description="the same for 3-grams (Gopher: 0.18)")
    max_top_4gram_chars: Bound = Field(0.16, description="the same for 4-grams (Gopher: 0.16)")
    # Repeated dialogue ("said Mr. Knightley", "I do not know") puts only 0.7-1.3% of a sample
    # novel's word characters in repeated 5-grams (counted from the second occurrence on) and
    # under 0.1% in repeated 10-grams, so Gopher's values hold for books with a wide margin.
    max_dup_5gram_chars: Bound = Field(0.15, description="largest share of word characters in repeats of an earlier word 5-gram (Gopher: 0.15; novels: <= 0.014)")
    max_dup_6gram_chars: Bound = Field(0.14, description="the same for 6-grams (Gopher: 0.14)")
    max_dup_7gram_chars: Bound = Field(0.13, description="the same for 7-grams (Gopher: 0.13)")
    max_dup_8gram_chars: Bound = Field(0.12, description="the same for 8-grams (Gopher: 0.12)")
    max_dup_9gram_chars: Bound = Field(0.11, description="the same for 9-grams (Gopher: 0.11)")
    max_dup_10gram_chars: Bound = Field(0.10, description="the same for 10-grams (Gopher: 0.10)")

    @model_validator(mode="before")
    @classmethod
    def _from_flag(cls, data: Any) -> Any:
        return _inline_yaml(data)


@dataclass(frozen=True)
class Failure:
    """A rule a text fails: its name (the reject reason is `low_quality:<rule>`) and why."""

    rule: str
    value: float
    bound: float
    kind: str  # "min" or "max"

    @property
    def reason(self) -> str:
        return Reason(f"{LOW_QUALITY}:{self.rule}").value

    @property
    def detail(self) -> str:
        return f"{self.rule} {self.value:.4g} {'<' if self.kind == 'min' else '>'} {self.bound:.4g}"


def _stat(stats: TextStats, rule: str) -> float:
    """The statistic a rule judges (`top_3gram_chars` -> stats.top_ngram_chars[3])."""
    match = re.fullmatch(r"(top|dup)_(\d+)gram_chars", rule)
    if match:
        table = stats.top_ngram_chars if match.group(1) == "top" else stats.dup_ngram_chars
        return table[int(match.group(2))]
    return getattr(stats, rule)


def rule_names() -> list[str]:
    """Every rule, in the order they are checked (the order of QualityRules' fields)."""
    return list(dict.fromkeys(field.split("_", 1)[1] for field in QualityRules.model_fields))


def failed_rules(stats: TextStats, rules: QualityRules, english: bool = True) -> list[Failure]:
    """Every bound `stats` falls outside of, in the order of QualityRules' fields (empty: the text
    passes). The stop-word rule is English: it is skipped when `english` is False (a text
    identified as another allowed language)."""
    failures = []
    for field in QualityRules.model_fields:
        bound = getattr(rules, field)
        kind, rule = field.split("_", 1)
        if bound is None or (rule == "stop_words" and not english):
            continue
        value = _stat(stats, rule)
        if (kind == "min" and value < bound) or (kind == "max" and value > bound):
            failures.append(Failure(rule, float(value), float(bound), kind))
    return failures


def quality_reject(failures: Sequence[Failure]) -> tuple[str, str, dict[str, object]]:
    """(reason, detail, facts) of a text failing `failures`: the first rule names it, the detail
    lists the rest, and the facts hold every failed rule with its value (for per-rule counts)."""
    first, rest = failures[0], failures[1:]
    detail = first.detail + (f"; also {', '.join(f.rule for f in rest)}" if rest else "")
    facts: dict[str, object] = {"rules": [f.rule for f in failures], "values": {f.rule: round(f.value, 6) for f in failures}}
    return first.reason, detail, facts


# ---- Language identification -------------------------------------------------------------------

# Below this many characters lingua's confidence is no evidence: on 100 snippets of the sample
# novels, English scored >= 0.5 in 10% of 20-character snippets, 63% of 50-character ones, and
# 1.0 in every 200-character one. Shorter texts are not judged (a book is never that short: the
# stages' token windows reject it as no_stage).
LANGUAGE_MIN_CHARS = 200


def parse_languages(value: Any) -> list[str]:
    """`languages` from YAML or flags: a list or a comma-separated string of ISO 639-1 codes,
    lower-cased; empty entries dropped (so `--languages ''` switches language identification off)."""
    if value is None:
        return []
    # A YAML scalar such as `5`, `true` or `3.5` is no list of codes: one line, not list()'s TypeError.
    if not isinstance(value, (str, list, tuple)):
        raise ValueError("languages takes a list or a comma-separated string of ISO 639-1 codes (e.g. [en, de] or 'en,de'), "
                         f"not {'a mapping' if isinstance(value, dict) else 'a single value'}")
    items = [value] if isinstance(value, str) else list(value)
    codes = [c.strip().lower() for item in items for c in str(item).split(",") if c.strip()]
    known = supported_languages()
    unknown = [c for c in codes if c not in known]
    if unknown:
        raise ValueError(f"unknown language code(s) {', '.join(map(repr, unknown))}: languages takes ISO 639-1 codes lingua knows ({', '.join(sorted(known))})")
    return list(dict.fromkeys(codes))


Languages = Annotated[list[str], BeforeValidator(parse_languages)]


def supported_languages() -> frozenset[str]:
    """ISO 639-1 codes (lower case) of the languages lingua identifies."""
    from lingua import Language

    return frozenset(lang.iso_code_639_1.name.lower() for lang in Language.all())


@dataclass(frozen=True)
class LanguageRule:
    """Keep texts in `languages` (ISO 639-1): the summed confidence of the allowed languages, the
    mean over `windows` evenly spaced windows of `window_chars` characters, must reach
    `min_confidence`. Only the windows are read, so a novel costs the same as a short story."""

    languages: tuple[str, ...] = ("en",)
    min_confidence: float = 0.5
    # 3 windows of 1000 characters, not 5 of 2000: lingua's cost is linear in the characters it
    # reads, and 3,000 instead of 10,000 cut its CPU 3.6x (0.187 -> 0.052 s over the 7 sample
    # novels) with every verdict the same: the 7 novels (Gutenberg-stripped) en 1.0000, and
    # German, French, Spanish, Italian, Dutch and Portuguese texts of 0.5K-50K characters each
    # their own language at 1.0000 and en 0.0000 -- all 0.5 from the threshold. A 1000-character
    # window is 5x the length (200) where lingua already scores English snippets 1.0. Its
    # low-accuracy mode (trigrams only) saved nothing measurable on top. windows=5,
    # window_chars=2000 give the old sample.
    windows: int = 3
    window_chars: int = 1000
    min_chars: int = LANGUAGE_MIN_CHARS


def language_windows(text: str, windows: int, window_chars: int) -> list[str]:
    """Up to `windows` evenly spaced pieces of about `window_chars` characters, cut at whitespace
    (the whole text when it is short enough)."""
    if len(text) <= windows * window_chars:
        return [text]
    step = (len(text) - window_chars) / (windows - 1) if windows > 1 else 0
    pieces = []
    for i in range(windows):
        start = int(i * step)
        if start:  # start after a break, so no window opens mid-word
            space = text.find(" ", start, start + 100)
            start = space + 1 if space >= 0 else start
        end = text.rfind(" ", start, start + window_chars)
        pieces.append(text[start : end if end > start + window_chars // 2 else start + window_chars])
    return pieces


@dataclass(frozen=True)
class LanguageVerdict:
    """What identification found: the most likely language, its confidence, and the allowed
    languages' summed confidence. `judged` is False for a text too short to identify."""

    detected: str | None
    confidence: float
    allowed: float
    judged: bool = True

    def detail(self, rule: LanguageRule) -> str:
        return (f"detected {self.detected or 'none'} ({self.confidence:.2f}); "
                f"{'+'.join(rule.languages)} {self.allowed:.2f} < {rule.min_confidence:g}")


def build_detector():
    """A lingua detector over all its languages. Models load lazily, the first call about 0.5-1 s
    and 80-100 MB (preloading all would take ~30 s and 1.3 GB); build one per worker."""
    from lingua import LanguageDetectorBuilder

    return LanguageDetectorBuilder.from_all_languages().build()


def mean_confidences(pieces: Sequence[str], detector) -> dict[str, float]:
    """Language code -> confidence averaged over the pieces (lingua's values sum to 1 per piece)."""
    total: dict[str, float] = {}
    # The pieces are identified on lingua's own threads (the same values as one call per piece,
    # summed in the same order), so a document's windows use every core.
    for values in detector.compute_language_confidence_values_in_parallel(list(pieces)):
        for value in values:
            code = value.language.iso_code_639_1.name.lower()
            total[code] = total.get(code, 0.0) + value.value
    return {code: v / len(pieces) for code, v in total.items()} if pieces else {}


def language_verdict(confidences: dict[str, float], rule: LanguageRule) -> LanguageVerdict:
    """The verdict on mean confidences: the top language, and the allowed languages' sum."""
    if not confidences or max(confidences.values()) <= 0.0:  # no letters: lingua scores every language 0
        return LanguageVerdict(None, 0.0, 0.0)
    detected = max(sorted(confidences), key=confidences.__getitem__)  # ties: the first code
    allowed = sum(confidences.get(code, 0.0) for code in rule.languages)
    return LanguageVerdict(detected, confidences[detected], allowed)


def identify_language(text: str, rule: LanguageRule, detector) -> LanguageVerdict:
    """Identify `text` on its sample windows (texts under `rule.min_chars` are not judged)."""
    if len(text) < rule.min_chars:
        return LanguageVerdict(None, 0.0, 0.0, judged=False)
    return language_verdict(mean_confidences(language_windows(text, rule.windows, rule.window_chars), detector), rule)


def language_ok(verdict: LanguageVerdict, rule: LanguageRule) -> bool:
    return not verdict.judged or verdict.allowed >= rule.min_confidence
