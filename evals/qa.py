"""RULER's QA tasks over distractor documents: `qa_1` (SQuAD, single hop) and `qa_2` (HotpotQA,
multi-hop), from JSON files the user supplies (nothing is downloaded).

- SQuAD (v1.1 or v2.0 layout, e.g. `dev-v2.0.json`): `{"data": [{"paragraphs": [{"context": ...,
  "qas": [{"question": ..., "answers": [{"text": ...}], "is_impossible": false}]}]}]}`. Unanswerable
  questions are skipped; a question's gold document is its paragraph, and the other paragraphs of
  the same article are the first distractors, as in RULER.
- HotpotQA (distractor setting, e.g. `hotpot_dev_distractor_v1.json`): `[{"question": ...,
  "answer": ..., "context": [[title, [sentence, ...]], ...]}]`; each paragraph becomes a document
  "title\\nsentences"; a question's own paragraphs are all in its prompt, as in RULER.

A sample is one question (a seeded order over the file, the same question for a sample index at
every length), its documents plus as many others as the length holds, shuffled, each written
"Document i:\\n...". Scored `part`: the prediction holds any of the reference answers.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from evals.common import Task, TaskText, rng

TEMPLATE = ("Answer the question based on the given documents. Only give me the answer and do not output any other "
            "words.\n\nThe following are given documents.\n\n{context}\n\nAnswer the question based on the given "
            "documents. Only give me the answer and do not output any other words.\n\nQuestion: {question}")
PREFIX = " Answer:"
DOCUMENT = "Document {i}:\n{text}"
MAX_NEW_TOKENS = 32


@dataclass(frozen=True)
class Question:
    question: str
    answers: tuple[str, ...]
    gold: tuple[int, ...]  # documents that must be in the prompt
    related: tuple[int, ...] = ()  # preferred distractors (SQuAD: the same article's paragraphs)


@dataclass(frozen=True)
class QaData:
    name: str
    documents: tuple[str, ...]
    questions: tuple[Question, ...]

    def __post_init__(self) -> None:
        if not self.questions:
            raise ValueError(f"{self.name}: no answerable questions")


def _read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"QA file not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a JSON file ({err})") from None


def load_squad(path: str | Path) -> QaData:
    """Questions and paragraphs of a SQuAD JSON file (see module docstring)."""
    raw = _read_json(path)
    articles = raw.get("data") if isinstance(raw, dict) else None
    if not isinstance(articles, list):
        raise ValueError(f"{path}: not a SQuAD file (want an object with a \"data\" list of articles)")
    try:
        contexts = sorted({p["context"] for a in articles for p in a["paragraphs"]})
        index = {c: i for i, c in enumerate(contexts)}
        questions = []
        for article in articles:
            own = [index[p["context"]] for p in article["paragraphs"]]
            for paragraph in article["paragraphs"]:
                doc = index[paragraph["context"]]
                for qa in paragraph["qas"]:
                    answers = tuple(dict.fromkeys(a["text"] for a in qa.get("answers", []) if a["text"].strip()))
                    if qa.get("is_impossible", False) or not answers:
                        continue
                    questions.append(Question(qa["question"], answers, (doc,), tuple(d for d in own if d != doc)))
    except (KeyError, TypeError, AttributeError) as err:
        raise ValueError(f"{path}: not a SQuAD file (missing or malformed field {err})") from None
    return QaData("squad", tuple(contexts), tuple(questions))


def load_hotpotqa(path: str | Path) -> QaData:
    """Questions and paragraphs of a HotpotQA JSON file (see module docstring)."""
    raw = _read_json(path)
    if not isinstance(raw, list):
        raise ValueError(f"{path}: not a HotpotQA file (want a list of questions)")
    try:
        docs_of = [[f"{title}\n{''.join(sentences)}" for title, sentences in item["context"]] for item in raw]
        documents = sorted({d for docs in docs_of for d in docs})
        index = {d: i for i, d in enumerate(documents)}
        questions = tuple(Question(item["question"], (str(item["answer"]),), tuple(index[d] for d in docs))
                          for item, docs in zip(raw, docs_of) if str(item["answer"]).strip())
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path}: not a HotpotQA file (missing or malformed field {err})") from None
    return QaData("hotpotqa", tuple(documents), questions)


def question_for(data: QaData, seed: int, task: str, index: int) -> Question:
    """Sample `index`'s question: a seeded order over the file, independent of the length."""
    order = np.random.default_rng([seed, zlib.crc32(task.encode())]).permutation(len(data.questions))
    return data.questions[int(order[index % len(order)])]


def build_qa(data: QaData, task: str, seeds: tuple[int, ...], n: int) -> TaskText:
    """The question of the sample with its documents and `n` distractors (fewer if the file runs out)."""
    q = question_for(data, seeds[0], task, seeds[3])
    own = list(dict.fromkeys(q.gold))
    related = [d for d in q.related if d not in own]
    pick = rng(seeds, 1, n)
    if n <= len(related):
        extra = [related[int(i)] for i in pick.choice(len(related), n, replace=False)]
    else:
        taken = set(own) | set(related)
        others = [d for d in range(len(data.documents)) if d not in taken]
        count = min(n - len(related), len(others))
        extra = related + [others[int(i)] for i in pick.choice(len(others), count, replace=False)]
    chosen = own + extra
    pick.shuffle(chosen)
    blocks = [DOCUMENT.format(i=i + 1, text=data.documents[d]) for i, d in enumerate(chosen)]
    prefix_len = TEMPLATE.index("{context}")
    evidence, at = [], prefix_len
    for d, block in zip(chosen, blocks):
        if d in own:
            start = at + block.index("\n") + 1
            evidence.append((start, start + len(data.documents[d])))
        at += len(block) + 2
    text = TEMPLATE.format(context="\n\n".join(blocks), question=q.question)
    return TaskText(text, PREFIX, list(q.answers), evidence, {"question": q.question, "documents": len(chosen)})


def qa_task(name: str, data: QaData) -> Task:
    return Task(name, "qa", lambda seeds, n: build_qa(data, name, seeds, n), "part", MAX_NEW_TOKENS, min_units=0,
                max_units=max(len(data.documents) - 1, 0))
