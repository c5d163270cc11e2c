"""What every RULER task shares: the sample, scoring, and fitting a prompt to a token budget.

A task is a function `build(seeds, n) -> TaskText` that writes the user message for `n` haystack
units (noise sentences, book words, distractor needles, list words, documents), deterministic in
(seeds, n). `make_sample` finds the largest `n` whose whole prompt fits the budget, by token count
with the model's own tokenizer, as RULER does: the budget is the context length less the tokens
the answer may take (RULER's `tokens_to_generate`), so prompt plus answer fit the context.

The prompt is the model's frame (its chat template, or LWM's plain `<s>SYSTEM USER: ... ASSISTANT:`
layout, evals/niah.py `PromptFrame`) around the task text, followed by the task's answer prefix
(RULER's `answer_prefix`, e.g. " Answer: The top 10 words ... are:"); the model's continuation is
the prediction.

Scoring is RULER's string match, case-insensitive, after control characters become newlines:
`all` is the fraction of references contained in the prediction; `part` is 1 when any reference
is (the QA tasks, whose references are alternative answers).
"""

from __future__ import annotations

import re
import uuid
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

METRICS = ("all", "part")
# RULER's noise haystack: five sentences, repeated.
NOISE = ("The grass is green.", "The sky is blue.", "The sun is yellow.", "Here we go.", "There and back again.")
# RULER's 40 needle depths over a book haystack, in percent.
DEPTHS = tuple(int(d) for d in np.round(np.linspace(0, 100, 40)))


@dataclass(frozen=True)
class TaskText:
    """The user message of one sample, what the model should answer, and where the evidence is."""

    text: str
    answer_prefix: str
    references: list[str]
    evidence: list[tuple[int, int]] = field(default_factory=list)  # character spans in `text`
    info: dict[str, Any] = field(default_factory=dict)


Build = Callable[[tuple[int, ...], int], TaskText]


@dataclass(frozen=True)
class Task:
    """One RULER task: its text builder, scoring, answer budget and haystack unit range."""

    name: str
    family: str
    build: Build
    metric: str = "all"
    max_new_tokens: int = 128
    min_units: int = 1
    max_units: int | None = None  # e.g. the number of documents a QA file holds

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {self.metric!r}")


@dataclass(frozen=True)
class Sample:
    """One prompt of a task at a length: token ids (frame included), the text after the frame's
    head, the references, and the evidence (its text, character span in `body`, prompt token index)."""

    task: str
    length: int
    index: int
    seed: int
    prompt_ids: list[int]
    body: str
    references: list[str]
    metric: str
    max_new_tokens: int
    units: int
    evidence: list[dict[str, Any]]
    info: dict[str, Any]

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt_ids)


# ----------------------------------------------------------------------------------------------
# Scoring
# ----------------------------------------------------------------------------------------------


def clean_prediction(text: str) -> str:
    """RULER's post-processing: strip, control characters to newlines, strip again."""
    return re.sub(r"[\x00-\x1f]", "\n", text.strip()).strip()


def score(prediction: str, references: Sequence[str], metric: str = "all") -> float:
    """`all`: fraction of references in the prediction; `part`: 1.0 if any is (case-insensitive)."""
    if not references:
        raise ValueError("a sample needs at least one reference")
    pred = clean_prediction(prediction).lower()
    hits = [r.lower() in pred for r in references]
    if metric == "all":
        return sum(hits) / len(hits)
    if metric == "part":
        return float(any(hits))
    raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")


# ----------------------------------------------------------------------------------------------
# Random keys and values, and seeds
# ----------------------------------------------------------------------------------------------


def task_seeds(seed: int, task: str, length: int, index: int) -> tuple[int, ...]:
    """The seed sequence of one sample: stable across runs and Python processes (crc32, not hash())."""
    return (seed, zlib.crc32(task.encode()), length, index)


def rng(seeds: tuple[int, ...], *stream: int) -> np.random.Generator:
    """An independent generator per purpose (`stream`), so drawing haystack positions for another
    `n` never changes the keys and values of a sample."""
    return np.random.default_rng([*seeds, *stream])


def random_number(r: np.random.Generator, digits: int = 7) -> str:
    return str(int(r.integers(10 ** (digits - 1), 10**digits)))


def random_uuid(r: np.random.Generator) -> str:
    return str(uuid.UUID(bytes=r.bytes(16), version=4))


def random_values(r: np.random.Generator, kind: str, count: int, words: Sequence[str],
                  exclude: set[str] | frozenset[str] = frozenset()) -> list[str]:
    """`count` distinct values of a kind: `words` (from `words`), `numbers` (7 digits) or `uuids`."""
    out: list[str] = []
    seen = set(exclude)
    while len(out) < count:
        if kind == "words":
            value = words[int(r.integers(len(words)))]
        elif kind == "numbers":
            value = random_number(r)
        elif kind == "uuids":
            value = random_uuid(r)
        else:
            raise ValueError(f"value kind must be words, numbers or uuids, got {kind!r}")
        if value not in seen:
            seen.add(value)
            out.append(value)
    return out


def join_query(keys: Sequence[str]) -> str:
    """"a", "a and b", "a, b, and c"."""
    if len(keys) == 1:
        return keys[0]
    if len(keys) == 2:
        return f"{keys[0]} and {keys[1]}"
    return ", ".join(keys[:-1]) + ", and " + keys[-1]


def spans_of(text: str, pieces: Sequence[str], start: int = 0) -> list[tuple[int, int]]:
    """Character spans of `pieces` found in order in `text`."""
    spans = []
    for piece in pieces:
        at = text.index(piece, start)
        spans.append((at, at + len(piece)))
        start = at + len(piece)
    return spans


def insert_lines(units: list[str], inserts: Sequence[str], slots: Sequence[int], sep: str) -> tuple[str, list[tuple[int, int]]]:
    """`units` joined by `sep` with `inserts[i]` placed before unit `slots[i]` (slots sorted, a slot
    may repeat); returns the text and the inserts' character spans."""
    order = sorted(range(len(inserts)), key=lambda i: slots[i])
    parts: list[str] = []
    spans: dict[int, tuple[int, int]] = {}
    pos, k = 0, 0
    for u in range(len(units) + 1):
        while k < len(order) and slots[order[k]] == u:
            i = order[k]
            if parts:
                pos += len(sep)
            spans[i] = (pos, pos + len(inserts[i]))
            parts.append(inserts[i])
            pos += len(inserts[i])
            k += 1
        if u < len(units):
            if parts:
                pos += len(sep)
            parts.append(units[u])
            pos += len(units[u])
    text = sep.join(parts)
    return text, [spans[i] for i in range(len(inserts))]


# ----------------------------------------------------------------------------------------------
# Fitting a prompt to a token budget
# ----------------------------------------------------------------------------------------------


class PromptBuilder:
    """Token ids of a task text in the model's frame. `tokenizer` is evals/niah.py's
    `NiahTokenizer`; `frame` its `PromptFrame` (the model's chat template when it has one)."""

    def __init__(self, tokenizer: Any, frame: Any):
        self.tokenizer = tokenizer
        self.head = list(frame.head)
        self.tail = frame.tail
        # After a chat template's assistant header (which ends in a newline) the prefix needs no
        # leading space; after LWM's "ASSISTANT:" it keeps RULER's.
        self.strip_prefix = frame.tail[-1:].isspace()

    def body(self, task_text: TaskText) -> str:
        prefix = task_text.answer_prefix.lstrip() if self.strip_prefix else task_text.answer_prefix
        return task_text.text + self.tail + prefix

    def ids(self, task_text: TaskText) -> tuple[list[int], str]:
        body = self.body(task_text)
        return self.head + self.tokenizer.encode(body), body

    def token_index(self, ids: list[int], body: str, span: tuple[int, int]) -> int:
        """The prompt index of the first token of `body[span]`: the token count of the text before
        it, checked by decoding (a token that merges across the boundary shifts it by one)."""
        evidence = body[span[0]: span[1]]
        guess = len(self.head) + len(self.tokenizer.encode(body[: span[0]].rstrip(" ")))
        width = len(self.tokenizer.encode(evidence)) + 2
        probe = evidence[: max(1, min(len(evidence), 12))]
        for p in (guess, guess - 1, guess + 1, guess - 2, guess + 2):
            if 0 <= p < len(ids) and self.tokenizer.decode(ids[p: p + width]).lstrip().startswith(probe):
                return p
        return guess


def smallest_prompt(task: Task, builder: PromptBuilder, length: int, index: int, seed: int) -> int:
    """Tokens of sample `index`'s prompt at context `length` with the fewest haystack units the
    task has (`task.min_units`): the least of the context it takes before any haystack."""
    ids, _ = builder.ids(task.build(task_seeds(seed, task.name, length, index), task.min_units))
    return len(ids)


def min_context(task: Task, builder: PromptBuilder, length: int, samples: int = 1, seed: int = 0,
                max_new_tokens: int | None = None) -> tuple[int, int]:
    """(the least context length, its smallest prompt) that the first `samples` prompts of `task`
    built for context `length` need: their largest smallest prompt plus the answer budget. What a
    task's text holds depends on the length (cwe's repeats, fwe's vocabulary) and on the sample's
    random keys, so this is per length and over the samples; `make_sample` refuses a length below it."""
    prompt = max(smallest_prompt(task, builder, length, index, seed) for index in range(max(samples, 1)))
    return prompt + (max_new_tokens or task.max_new_tokens), prompt


def check_min_context(tasks: Sequence[Task], builder: PromptBuilder, lengths: Sequence[int], samples: int = 1,
                      seed: int = 0, max_new_tokens: int | None = None) -> None:
    """Refuse (ValueError, one line) a length shorter than a task's least context (`min_context`):
    found before a model is loaded, not when that cell comes to be built."""
    for task in tasks:
        for length in sorted(lengths):
            need, prompt = min_context(task, builder, length, samples, seed, max_new_tokens)
            if need > length:
                raise ValueError(f"RULER task {task.name} cannot run at length {length}: it needs at least {need} "
                                 f"tokens there (its shortest prompt, {prompt} tokens, and "
                                 f"{need - prompt} answer tokens)")


def make_sample(task: Task, builder: PromptBuilder, length: int, index: int, seed: int,
                max_new_tokens: int | None = None) -> Sample:
    """The sample `index` of `task` at context `length`: the most haystack units whose prompt fits
    `length - max_new_tokens` tokens (binary search on the unit count, by exact token counts)."""
    new_tokens = max_new_tokens or task.max_new_tokens
    budget = length - new_tokens
    seeds = task_seeds(seed, task.name, length, index)
    cache: dict[int, tuple[TaskText, list[int], str]] = {}

    def at(n: int) -> tuple[TaskText, list[int], str]:
        if n not in cache:
            text = task.build(seeds, n)
            ids, body = builder.ids(text)
            cache[n] = (text, ids, body)
        return cache[n]

    lo = task.min_units
    if len(at(lo)[1]) > budget:
        raise ValueError(f"{task.name}: context length {length} leaves {budget} tokens for the prompt after "
                         f"{new_tokens} answer tokens; the smallest prompt takes {len(at(lo)[1])}")
    # Grow an upper bound, then bisect: the largest n with a prompt within the budget.
    hi = lo + 1
    while (task.max_units is None or hi <= task.max_units) and len(at(hi)[1]) <= budget:
        lo, hi = hi, hi * 2
    if task.max_units is not None and hi > task.max_units:
        hi = task.max_units + 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if len(at(mid)[1]) <= budget:
            lo = mid
        else:
            hi = mid
    text, ids, body = at(lo)
    evidence = [{"text": body[s:e], "char": [s, e], "token": builder.token_index(ids, body, (s, e))}
                for s, e in text.evidence]
    return Sample(task.name, length, index, seed, ids, body, list(text.references), task.metric, new_tokens, lo,
                  evidence, dict(text.info))
