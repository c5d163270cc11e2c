"""Turning a generator's raw output into a checked QA pair, or a reject with a reason.

Model output is untrusted text: it may wrap the JSON in prose or code fences, stop mid-object,
use other keys, run on for megabytes, or answer with something the passage never says. Every such
case ends in `InvalidQA(reason, detail)` (never another exception), so a pipeline can count
rejects by reason and keep going.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from curation.accounting import LONE_SURROGATE, Reason, as_reason

MAX_RAW_CHARS = 20_000  # a QA pair is a few hundred chars; anything past this is runaway output
MAX_JSON_ATTEMPTS = 32  # '{' positions tried, so a brace-heavy output stays linear-ish
DEFAULT_MAX_ANSWER_WORDS = 64
DEFAULT_MIN_GROUNDING = 0.5


# The chunk reject reasons an InvalidQA carries: members of the one Reason enum
# (curation.accounting), written to rejects/*.jsonl and the manifest as their values.
QA_REASONS = (
    Reason.UNPARSABLE,
    Reason.EMPTY_QUESTION,
    Reason.EMPTY_ANSWER,
    Reason.ANSWER_TOO_LONG,
    Reason.ANSWER_NOT_GROUNDED,
    Reason.DUPLICATE_QUESTION,
    Reason.INVALID_UNICODE,
)


class InvalidQA(ValueError):
    """A generator output that cannot become a training QA pair; `reason` is one of QA_REASONS
    (a Reason; its value string is accepted too)."""

    def __init__(self, reason: Reason | str, detail: str = ""):
        if reason not in QA_REASONS:
            raise ValueError(f"unknown InvalidQA reason {reason!r}: one of {[r.value for r in QA_REASONS]}")
        self.reason = as_reason(reason)
        self.detail = detail[:200]
        super().__init__(f"{self.reason}: {self.detail}")

    def __reduce__(self):  # picklable across Beam workers: rebuilt from its reason, not its message
        return (type(self), (self.reason, self.detail))


@dataclass(frozen=True)
class QAPair:
    question: str
    answer: str


_QUESTION_KEYS = {"question", "q"}
_ANSWER_KEYS = {"answer", "a"}

# Small on purpose: grounding should ignore glue words, not judge meaning.
_STOPWORD_TEXT = """a an the and or but nor of to in on at by for with from into onto upon as is are was were be been
    being am do does did has have had having it its this that these those he she they we you i me him
    her them us my your his our their not no so than then there here what which who whom whose when
    where why how all any some one s t will would shall should can could may might must"""
STOPWORDS = frozenset(_STOPWORD_TEXT.split())
_WORD = re.compile(r"[^\W_]+")
_FENCE = re.compile(r"```[a-zA-Z]*")

# Plain "Question: ...\nAnswer: ..." (also Q:/A:, markdown bold, numbering like "Question 1:").
_PLAIN_Q = re.compile(r"^[\s*#>_-]*(?:question|q)\s*\d*\s*[*_]*\s*[:.)]\s*[*_]*", re.IGNORECASE | re.MULTILINE)
_PLAIN_A = re.compile(r"^[\s*#>_-]*(?:answer|a)\s*\d*\s*[*_]*\s*[:.)]\s*[*_]*", re.IGNORECASE | re.MULTILINE)


def content_words(text: str) -> list[str]:
    """Lowercased alphanumeric words of `text` without stopwords."""
    return [w for w in _WORD.findall(text.lower()) if w not in STOPWORDS]


def _field(obj: dict, keys: set[str]) -> object:
    for key, value in obj.items():
        if isinstance(key, str) and key.strip().lower() in keys:
            return value
    return None


def _as_text(value: object, name: str) -> str:
    """A JSON field as text: strings as is, numbers written out (an answer may be `1851`)."""
    if value is None:
        raise InvalidQA(Reason.UNPARSABLE, f"no {name} field")
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise InvalidQA(Reason.UNPARSABLE, f"{name} is a {type(value).__name__}, not text")
    return str(value).strip()


def _json_objects(text: str):
    """Dicts decodable at the first few '{' positions of text (code fences and prose skipped)."""
    decoder = json.JSONDecoder()
    pos = text.find("{")
    for _ in range(MAX_JSON_ATTEMPTS):
        if pos < 0:
            return
        try:
            obj, end = decoder.raw_decode(text, pos)
        except (ValueError, RecursionError):
            pos = text.find("{", pos + 1)
            continue
        if isinstance(obj, dict):
            yield obj
        pos = text.find("{", end)


def _from_json(text: str) -> QAPair | None:
    """The first JSON object having a question or answer key, or None when there is none."""
    for obj in _json_objects(text):
        question, answer = _field(obj, _QUESTION_KEYS), _field(obj, _ANSWER_KEYS)
        if question is None and answer is None:
            continue
        return QAPair(_as_text(question, "question"), _as_text(answer, "answer"))
    return None


def _clean_plain(text: str) -> str:
    text = " ".join(text.split())
    return text.strip("*_\"'` ").strip()


def _from_plain(text: str) -> QAPair | None:
    """`Question: ...` then `Answer: ...` on a later line; the answer runs to a blank line."""
    q = _PLAIN_Q.search(text)
    if q is None:
        return None
    a = _PLAIN_A.search(text, q.end())
    if a is None:
        return None
    answer = re.split(r"\n\s*\n|^[\s*#>_-]*(?:question|q)\s*\d*\s*[:.)]", text[a.end() :], maxsplit=1,
                      flags=re.IGNORECASE | re.MULTILINE)[0]
    return QAPair(_clean_plain(text[q.end() : a.start()]), _clean_plain(answer))


def parse_qa(raw: str, max_chars: int = MAX_RAW_CHARS) -> QAPair:
    """The QA pair in a generator output: the first JSON object with question/answer keys
    (case-insensitive, also q/a), else a plain `Question:/Answer:` block. Raises InvalidQA."""
    if not isinstance(raw, str):
        raise InvalidQA(Reason.UNPARSABLE, f"output is a {type(raw).__name__}, not text")
    text = _FENCE.sub(" ", raw[:max_chars])
    pair = _from_json(text) or _from_plain(text)
    if pair is None:
        what = "no complete JSON object with question/answer keys" if "{" in text else "no question/answer found"
        raise InvalidQA(Reason.UNPARSABLE, f"{what}: {raw[:80]!r}")
    for name, text in (("question", pair.question), ("answer", pair.answer)):
        bad = LONE_SURROGATE.search(text)
        if bad:
            raise InvalidQA(Reason.INVALID_UNICODE, f"the {name} holds a lone surrogate U+{ord(bad.group()):04X}")
    if not pair.question:
        raise InvalidQA(Reason.EMPTY_QUESTION)
    if not pair.answer:
        raise InvalidQA(Reason.EMPTY_ANSWER, f"question: {pair.question[:80]!r}")
    return pair


def _present(word: str, vocabulary: set[str]) -> bool:
    """Exact, or differing by a plural -s (the passage says "whale", the answer "whales")."""
    return word in vocabulary or word + "s" in vocabulary or (word.endswith("s") and word[:-1] in vocabulary)


def grounding(answer: str, chunk_text: str) -> float:
    """Fraction of the answer's content words found in the chunk (0.0 if it has none)."""
    words = content_words(answer)
    if not words:
        return 0.0
    vocabulary = set(_WORD.findall(chunk_text.lower()))
    return sum(_present(w, vocabulary) for w in words) / len(words)


def validate(
    pair: QAPair,
    chunk_text: str,
    max_answer_words: int = DEFAULT_MAX_ANSWER_WORDS,
    min_grounding: float = DEFAULT_MIN_GROUNDING,
    max_answer_tokens: int | None = None,
    tok=None,
) -> QAPair:
    """Check a parsed pair against its chunk; returns it unchanged or raises InvalidQA.
    `max_answer_tokens` (with the training tokenizer `tok`) caps the answer in tokens as well."""
    if not pair.question.strip():
        raise InvalidQA(Reason.EMPTY_QUESTION)
    if not pair.answer.strip():
        raise InvalidQA(Reason.EMPTY_ANSWER)
    words = len(pair.answer.split())
    if words > max_answer_words:
        raise InvalidQA(Reason.ANSWER_TOO_LONG, f"{words} words > {max_answer_words}")
    if max_answer_tokens is not None and tok is not None:
        count = len(tok.encode(pair.answer, add_special_tokens=False).ids)
        if count > max_answer_tokens:
            raise InvalidQA(Reason.ANSWER_TOO_LONG, f"{count} tokens > {max_answer_tokens}")
    score = grounding(pair.answer, chunk_text)
    if score < min_grounding:
        raise InvalidQA(Reason.ANSWER_NOT_GROUNDED, f"{score:.2f} of answer words in chunk < {min_grounding}")
    return pair


def normalize_question(question: str) -> str:
    """Case, punctuation and spacing do not make a question new."""
    return " ".join(_WORD.findall(question.lower()))


class QuestionDeduper:
    """Questions seen so far, per book: the same question twice in one book's examples would
    have two answers about different passages. Keep one deduper per book (or key by book uid)."""

    def __init__(self) -> None:
        self._seen: dict[str, set[str]] = {}

    def check(self, book_key: str, question: str) -> None:
        """Record the question; raises InvalidQA(duplicate_question) if the book had it already."""
        norm = normalize_question(question)
        seen = self._seen.setdefault(book_key, set())
        if norm in seen:
            raise InvalidQA(Reason.DUPLICATE_QUESTION, f"{question[:80]!r}")
        seen.add(norm)

    def seen(self, book_key: str) -> int:
        return len(self._seen.get(book_key, ()))
