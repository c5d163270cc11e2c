"""A model-free QA generator: deterministic cloze questions cut from the chunk itself.

It lets the whole QA pipeline run (and be tested) on a laptop without any model, and it answers
with the same JSON a model is asked for, so its output goes through the same parse/validate path
and the same reject accounting as every other backend.
"""

from __future__ import annotations

import hashlib
import json
import re

from qa_synth.parse import STOPWORDS

BLANK = "____"
MIN_SENTENCE_WORDS = 6
MAX_SENTENCE_WORDS = 60

_SENTENCE = re.compile(r"[^.!?]+[.!?]+[\"'\u201d\u2019)\]]*")
# Titles whose period does not end a sentence ("Mr. Knightley").
_ABBREVIATION = re.compile(r"\b(?:Mr|Mrs|Ms|Dr|St|Jr|Sr|Capt|Col|Gen|Rev|Prof)\.$")
# A capitalised name (one or more capitalised words, e.g. "Miss Taylor") or a word of 4+ letters.
_NAME = re.compile(r"\b[A-Z][a-z]+(?:\s+[A-Z][a-z]+)*\b")
_WORD = re.compile(r"\b[A-Za-z]{4,}\b")


def _seed(seed_key: str) -> int:
    """A stable integer from the key: Python's hash() is salted per process, sha256 is not."""
    return int.from_bytes(hashlib.sha256(seed_key.encode("utf-8")).digest()[:8], "big")


def sentences(text: str) -> list[str]:
    """Sentences of the chunk on one line each (hard line wraps joined). A leading fragment that
    starts mid-sentence (lowercase) is dropped: a cloze on half a sentence reads badly."""
    flat = " ".join(text.split())
    found: list[str] = []
    for piece in _SENTENCE.findall(flat):
        if found and _ABBREVIATION.search(found[-1]):
            found[-1] += piece
        else:
            found.append(piece)
    found = [s.strip() for s in found]
    if found and found[0][:1].islower():
        found = found[1:]
    return [s for s in found if MIN_SENTENCE_WORDS <= len(s.split()) <= MAX_SENTENCE_WORDS]


def candidates(sentence: str) -> list[tuple[int, int]]:
    """Spans that can be blanked: names not opening the sentence, else content words of 4+ letters.
    Names come first because they make the least ambiguous cloze answers."""
    names = [
        (m.start(), m.end()) for m in _NAME.finditer(sentence)
        if m.start() > 0 and m.group().lower() not in STOPWORDS
    ]
    if names:
        return names
    return [(m.start(), m.end()) for m in _WORD.finditer(sentence) if m.group().lower() not in STOPWORDS]


def extractive_qa(chunk_text: str, seed_key: str) -> str:
    """The JSON `{"question": "Fill in the blank: ...", "answer": span}` for a sentence and span
    chosen by a hash of `seed_key` (e.g. the chunk key), or "" when no sentence is usable."""
    usable = [(s, spans) for s in sentences(chunk_text) if (spans := candidates(s))]
    if not usable:
        return ""
    seed = _seed(seed_key)
    sentence, spans = usable[seed % len(usable)]
    start, end = spans[(seed // len(usable)) % len(spans)]
    question = f"Fill in the blank: {sentence[:start]}{BLANK}{sentence[end:]}"
    return json.dumps({"question": question, "answer": sentence[start:end]}, ensure_ascii=False)
