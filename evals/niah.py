"""Needle in a haystack, as in the Large World Model paper (arXiv 2402.08268, after G. Kamradt's test).

A haystack of real book text, a needle sentence with a random fact ("The special magic number for
Lisbon is: 4083721.") placed at a chosen depth, and the model asked for the fact. Multi-needle: N
needles in one haystack, R of them asked in one question.

Everything is built in token space, so where a needle lands is exact, not approximate:

    prompt = frame_head + haystack[:p_0] + needle_0 + haystack[p_0:p_1] + needle_1 + ... + frame_tail

- `length` is the whole prompt in tokens (frame and needles included), as a context length is.
- The haystack budget is H = length - len(head) - len(tail) - sum(len(needle_i)) tokens of book text.
- A needle at depth d% has exactly p = floor(d / 100 * H + 1/2) haystack tokens before it
  (`insertion_point`): d=0 puts it right after the head, d=100 right before the question. It goes
  in at that token, not at a sentence boundary, so the depth is exact whatever the text.
- Multi-needle: needle i of N sits at depth d + i * (100 - d) / N, the first at the grid depth and
  the rest spread evenly over the remaining haystack; R of them (seeded choice) are asked.

The haystack is the book text tokenized once and read from a seeded offset, cycling back to its
start when a context is longer than the text. Facts (city, 7-digit number) are seeded per cell.
Scoring: `contains` (the default, as the LWM release scores: the number appears in the answer) is
the fraction of asked numbers found in the answer; `exact` is 1 when the answer, stripped of
surrounding whitespace and closing punctuation, is exactly the asked numbers (separated by commas,
spaces or "and", in any order) and 0 otherwise.

Two formats (`fmt`): `longctx`, the layout above, and `lwm`, the LWM release's own
(scripts/eval_needle.py and eval_needle_multi.py in largeworldmodel/LWM): the needle
"\nThe special magic {city} number is: {7 digits}\n", its question ("What is the special magic
{city} number?"; with several needles "What is the special magic number for {city}?" / "What are
the special magic numbers for A, B, and C?") followed by its instruction ("Don't give information
outside the document or repeat your findings. Keep your response short and direct."; several
needles: "Don't give information outside the document."), a space between the context and the
question, its city list, and its placement: from the depth's insertion point the needle backs up
to just after the previous token that ends a sentence with a period (or to the haystack's start),
except at depth 100 where it goes last. The prompt keeps the model's frame (chat template, or the
plain `USER: ... ASSISTANT:` layout) and stays exactly `length` tokens.

Models plug in through `Generator` (prompt ids -> answer ids, evals/generators.py): our Flax
checkpoints (KV-cache decoding, sequence-parallel prefill; training/generate.py) and any
transformers causal LM, `batch_size` prompts of a (length, depth) cell at a time.
"""

from __future__ import annotations

import csv
import json
import math
import re
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import MISSING, asdict, dataclass, fields
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from curation.chat_format import ChatFormat
from curation.units import parse_count
from evals.generators import Generator, NiahTokenizer, generate_all
from evals.haystack import Haystack

SCORINGS = ("contains", "exact")
FORMATS = ("longctx", "lwm")
NEEDLE = "The special magic number for {city} is: {value}."
QUESTION_ONE = ("What is the special magic number for {cities} mentioned in the provided text? "
                "Answer with the number only.")
QUESTION_MANY = ("What are the special magic numbers for {cities} mentioned in the provided text? "
                 "Answer with the numbers only, separated by commas.")
CITIES = (
    "Lisbon", "Nairobi", "Osaka", "Quito", "Reykjavik", "Tbilisi", "Hanoi", "Montevideo", "Krakow", "Dakar",
    "Valparaiso", "Bergen", "Marrakesh", "Busan", "Halifax", "Cusco", "Tallinn", "Zanzibar", "Adelaide", "Porto",
    "Ljubljana", "Medellin", "Tashkent", "Kyoto", "Antwerp", "Windhoek", "Cebu", "Seville", "Tromso", "Bamako",
    "Ushuaia", "Lhasa", "Trieste", "Asmara", "Galway", "Hobart", "Almaty", "Cartagena", "Gdansk", "Mombasa",
)
# The LWM release's strings (largeworldmodel/LWM scripts/eval_needle.py, eval_needle_multi.py).
LWM_NEEDLE = "\nThe special magic {city} number is: {value}\n"
LWM_QUESTION = "What is the special magic {cities} number?"
LWM_INSTRUCTION = "Don't give information outside the document or repeat your findings. Keep your response short and direct."
LWM_QUESTION_MULTI_ONE = "What is the special magic number for {cities}?"
LWM_QUESTION_MULTI = "What are the special magic numbers for {cities}?"
LWM_INSTRUCTION_MULTI = "Don't give information outside the document."
LWM_SEPARATOR = " "  # "USER: {context} {question} ..."
# The release's city list, its repeats dropped (needles of one prompt need distinct cities).
LWM_CITIES = (
    "Chicago", "Yangon", "Antananarivo", "Colombo", "Almaty", "Sydney", "Mexico City", "Seattle", "Lagos",
    "Amsterdam", "Belgrade", "Cairo", "Baghdad", "Damascus", "Kigali", "Dakar", "Sofia", "Victoria", "Tashkent",
    "Mumbai", "Barcelona", "Amman", "Toronto", "Bratislava", "Johannesburg", "Thimphu", "Bangkok", "Santiago",
    "San Francisco", "Paris", "Rabat", "Copenhagen", "Madrid", "Ho Chi Minh City", "Sarajevo", "Delhi", "Istanbul",
    "Khartoum", "Helsinki", "Doha", "Kuala Lumpur", "Budapest", "Shanghai", "Moscow", "Los Angeles", "Oslo",
    "Berlin", "Bangalore", "Tokyo", "Melbourne", "Port Louis", "Lisbon", "Nairobi", "Kampala", "Lima", "Maputo",
    "Vancouver", "Dubai", "Jakarta", "Yerevan", "Beirut", "Athens", "Bucharest", "Brussels", "Tunis", "Astana",
    "Seoul", "Buenos Aires", "Vienna",
)
# Sentinels that no chat template writes: the template is rendered around them, then split there.
_CONTEXT, _QUESTION = "\ue000C\ue001", "\ue000Q\ue001"


# ----------------------------------------------------------------------------------------------
# Prompt frame (the model's tokenizer, NiahTokenizer, lives with the models in evals/generators.py)
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PromptFrame:
    """The token ids around the haystack: `head` before it, and `middle` + question + `tail` after."""

    head: tuple[int, ...]
    middle: str
    tail: str

    @classmethod
    def for_tokenizer(cls, tokenizer: NiahTokenizer, fmt: str = "longctx") -> PromptFrame:
        """The model's chat template when the tokenizer has one; otherwise LWM's plain layout,
        the one our QA data trains on (qa_synth/assemble.py, curation/chat_format.py): `<s>SYSTEM USER: {context}\\n\\n{question} ASSISTANT:`.
        `fmt="lwm"` separates context and question by a space, as the LWM release's prompt does."""
        if fmt not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
        separator = LWM_SEPARATOR if fmt == "lwm" else None
        if tokenizer.chat is not None:
            content = f"{_CONTEXT}{separator or chr(10) * 2}{_QUESTION}"
            rendered = tokenizer.chat.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                                          add_generation_prompt=True)
            head, rest = rendered.split(_CONTEXT)
            middle, tail = rest.split(_QUESTION)
            return cls(tuple(tokenizer.encode(head)), middle, tail)
        fmt = ChatFormat()
        bos = [] if tokenizer.bos_id is None else [tokenizer.bos_id]
        return cls(tuple(bos + tokenizer.encode(f"{fmt.system} {fmt.user}")), separator or fmt.context_separator,
                   f" {fmt.assistant}")

    def tail_ids(self, tokenizer: NiahTokenizer, question: str, fmt: str = "longctx") -> list[int]:
        if fmt == "lwm":  # the release tokenizes the prompt whole: the tail as it follows the context
            return tokenizer.encode_continuation(self.middle + question + self.tail)
        return tokenizer.encode(self.middle + question + self.tail)


# ----------------------------------------------------------------------------------------------
# Needles and prompts
# ----------------------------------------------------------------------------------------------


def insertion_point(depth: float, haystack_tokens: int) -> int:
    """Haystack tokens before a needle at `depth` percent: floor(depth / 100 * H + 1/2), exactly."""
    if not 0 <= depth <= 100:
        raise ValueError(f"depth must be within 0..100 percent, got {depth}")
    return math.floor(Fraction(depth) * haystack_tokens / 100 + Fraction(1, 2))


def needle_depths(depth: float, needles: int) -> list[float]:
    """The first needle at `depth`, the others evenly over the rest of the haystack."""
    return [depth + i * (100 - depth) / needles for i in range(needles)]


def sentence_start(hay: np.ndarray, point: int, ends_sentence: Callable[[int], bool]) -> int:
    """The LWM release's placement: back up from `point` to just after the nearest earlier token
    that ends a sentence (0 when there is none)."""
    while point > 0 and not ends_sentence(int(hay[point - 1])):
        point -= 1
    return point


def period_test(tokenizer: NiahTokenizer) -> Callable[[int], bool]:
    """Whether a token id ends a sentence: its text ends with a period (as the release's test for
    the '.' token), cached per id."""
    cache: dict[int, bool] = {}

    def ends(token: int) -> bool:
        if token not in cache:
            cache[token] = tokenizer.decode([token]).rstrip().endswith(".")
        return cache[token]

    return ends


@dataclass(frozen=True)
class Needle:
    city: str
    value: str
    depth: float
    ids: tuple[int, ...]
    fmt: str = "longctx"

    @property
    def text(self) -> str:
        return (LWM_NEEDLE if self.fmt == "lwm" else NEEDLE).format(city=self.city, value=self.value)


@dataclass(frozen=True)
class NiahCase:
    """One prompt: its ids, its needles (in haystack order) with the prompt index of each one's
    first token, and which needles the question asks for."""

    length: int
    depth: float
    sample: int
    prompt_ids: list[int]
    needles: list[Needle]
    positions: list[int]
    asked: list[int]
    question: str
    haystack_offset: int  # where in the haystack's token stream this prompt's text starts
    haystack_tokens: int  # H, the haystack budget the depths are measured in
    fmt: str = "longctx"

    @property
    def expected(self) -> list[str]:
        return [self.needles[i].value for i in self.asked]


def _question(cities: Sequence[str]) -> str:
    names = cities[0] if len(cities) == 1 else ", ".join(cities[:-1]) + " and " + cities[-1]
    return (QUESTION_ONE if len(cities) == 1 else QUESTION_MANY).format(cities=names)


def lwm_question(cities: Sequence[str], needles: int) -> str:
    """The release's question and instruction: eval_needle.py's for one needle, eval_needle_multi.py's
    for several (its cities joined "A, B, and C")."""
    if needles == 1:
        return f"{LWM_QUESTION.format(cities=cities[0])} {LWM_INSTRUCTION}"
    if len(cities) == 1:
        return f"{LWM_QUESTION_MULTI_ONE.format(cities=cities[0])} {LWM_INSTRUCTION_MULTI}"
    names = ", ".join(cities[:-1]) + ", and " + cities[-1]
    return f"{LWM_QUESTION_MULTI.format(cities=names)} {LWM_INSTRUCTION_MULTI}"


def build_case(tokenizer: NiahTokenizer, frame: PromptFrame, haystack: Haystack, length: int, depth: float, *,
               needles: int = 1, ask: int = 1, sample: int = 0, seed: int = 0, fmt: str = "longctx",
               ends_sentence: Callable[[int], bool] | None = None) -> NiahCase:
    """The prompt of one grid cell, exactly `length` tokens (see module docstring for the layout).
    `frame` must be made for the same `fmt`; `ends_sentence` (lwm) caches `period_test`."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    pool = LWM_CITIES if fmt == "lwm" else CITIES
    if not 1 <= ask <= needles <= len(pool):
        raise ValueError(f"need 1 <= ask ({ask}) <= needles ({needles}) <= {len(pool)}")
    # The haystack text depends on the sample only, so cells of one sample differ only in length and depth.
    offset = int(np.random.default_rng([seed, sample]).integers(len(haystack.tokens)))
    rng = np.random.default_rng([seed, sample, length, round(depth * 1000)])
    cities = [pool[i] for i in rng.choice(len(pool), needles, replace=False)]
    values = [str(1_000_000 + v) for v in rng.choice(9_000_000, needles, replace=False)]  # 7 digits, distinct
    asked = sorted(int(i) for i in rng.choice(needles, ask, replace=False))
    if fmt == "lwm":
        # Newline-delimited, tokenized as inside running text (no word marker before its newline).
        placed = [Needle(c, v, d, tuple(tokenizer.encode_continuation(LWM_NEEDLE.format(city=c, value=v))), fmt)
                  for c, v, d in zip(cities, values, needle_depths(depth, needles))]
        question = lwm_question([cities[i] for i in asked], needles)
    else:
        # A leading space: the needle starts a word for SentencePiece and byte-level BPE alike.
        placed = [Needle(c, v, d, tuple(tokenizer.encode(" " + NEEDLE.format(city=c, value=v))))
                  for c, v, d in zip(cities, values, needle_depths(depth, needles))]
        question = _question([cities[i] for i in asked])
    tail = frame.tail_ids(tokenizer, question, fmt)
    budget = length - len(frame.head) - len(tail) - sum(len(n.ids) for n in placed)
    if budget < 0:
        raise ValueError(f"context length {length} is shorter than the prompt frame, question and needles "
                         f"({length - budget} tokens)")
    hay = haystack.window(offset, budget)
    if fmt == "lwm" and ends_sentence is None:
        ends_sentence = period_test(tokenizer)
    ids, positions, start = list(frame.head), [], 0
    for needle in placed:
        point = insertion_point(needle.depth, budget)
        if fmt == "lwm" and needle.depth < 100:
            # Never before the previous needle: backing up is monotone, so this only guards ties.
            point = max(start, sentence_start(hay, point, ends_sentence))
        ids += hay[start:point].tolist()
        positions.append(len(ids))
        ids += needle.ids
        start = point
    ids += hay[start:].tolist() + tail
    assert len(ids) == length, (len(ids), length)
    return NiahCase(length, depth, sample, ids, placed, positions, asked, question, offset, budget, fmt)


# ----------------------------------------------------------------------------------------------
# Scoring
# ----------------------------------------------------------------------------------------------


def score_answer(answer: str, expected: Sequence[str], scoring: str = "contains") -> float:
    """`contains`: fraction of expected values in the answer; `exact`: 1.0 iff the answer is
    exactly those values (any order; separated by commas, spaces or "and"; closing punctuation ok)."""
    if scoring == "contains":
        return sum(v in answer for v in expected) / len(expected)
    if scoring == "exact":
        parts = [p for p in re.split(r"[\s,;]+|\band\b", answer.strip().rstrip(".!?")) if p]
        return float(sorted(parts) == sorted(expected))
    raise ValueError(f"scoring must be one of {SCORINGS}, got {scoring!r}")


# ----------------------------------------------------------------------------------------------
# The grid and its outputs
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NiahRecord:
    model: str
    length: int
    depth: float
    sample: int
    needles: int
    ask: int
    scoring: str
    score: float
    expected: list[str]
    answer: str
    positions: list[int]
    seconds: float
    format: str = "longctx"
    seed: int = 0

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def cell_key(record: NiahRecord | dict[str, Any]) -> tuple[int, float, int, int]:
    """A grid cell's coordinates (length, depth, sample, seed): a rerun skips the cells already
    in OUT/results.jsonl (evals/resume.py). A record written before records named their seed has seed 0."""
    if isinstance(record, NiahRecord):
        return (record.length, float(record.depth), record.sample, record.seed)
    return (int(record["length"]), float(record["depth"]), int(record["sample"]), int(record.get("seed", 0)))


_RECORD_FIELDS = {f.name: f for f in fields(NiahRecord)}


def record_from_json(data: dict[str, Any]) -> NiahRecord:
    """A results.jsonl line's record (KeyError naming a missing field, TypeError/ValueError for a
    value of the wrong kind; evals/resume.py names the line)."""
    for name, f in _RECORD_FIELDS.items():
        if name not in data and f.default is MISSING:
            raise KeyError(name)
    record = NiahRecord(**{k: v for k, v in data.items() if k in _RECORD_FIELDS})
    for name, kind in (("length", int), ("sample", int), ("seed", int), ("depth", (int, float)),
                       ("score", (int, float))):
        value = getattr(record, name)
        if isinstance(value, bool) or not isinstance(value, kind):
            raise TypeError(f"{name} {value!r} is not a number")
    if not isinstance(record.expected, list) or not isinstance(record.answer, str):
        raise TypeError("expected must be a list and answer text")
    return record


def default_max_new_tokens(ask: int) -> int:
    """The answer budget when none is given: 7 digits (a token each here) and a few words per asked value."""
    return 16 + 12 * ask


def niah_settings(model: str, tokenizer: Any, *, fmt: str, needles: int, ask: int, scoring: str,
                  max_new_tokens: int | None, haystack: str | Path,
                  weights_saved: str | None = None) -> dict[str, Any]:
    """What a NIAH cell's score depends on besides its coordinates (length, depth, sample, seed):
    a rerun into a folder made with other settings is refused (evals/resume.py). The names of
    those a record carries are its fields' (model, format, needles, ask, scoring); `weights_saved`
    as in evals.runner.ruler_settings."""
    from evals.resume import haystack_identity, tokenizer_identity

    return {"model": model, "weights_saved": weights_saved, "format": fmt, "needles": needles, "ask": ask, "scoring": scoring,
            "max_new_tokens": max_new_tokens or default_max_new_tokens(ask),
            "tokenizer_sha256": tokenizer_identity(tokenizer), "haystack": haystack_identity(haystack)}


def run_grid(generator: Generator, tokenizer: NiahTokenizer, haystack: Haystack, lengths: Sequence[int],
             depths: Sequence[float], *, needles: int = 1, ask: int = 1, samples: int = 1, seed: int = 0,
             scoring: str = "contains", max_new_tokens: int | None = None,
             frame: PromptFrame | None = None, fmt: str = "longctx", batch_size: int = 1,
             done: Collection[tuple[int, float, int, int]] = frozenset()) -> Iterator[NiahRecord]:
    """One record per (length, depth, sample) whose `cell_key` is not in `done`, lengths outermost
    (so a model compiles each length once); the samples of a cell go to the model `batch_size` at
    a time (a record's `seconds` is its batch's wall time over its rows)."""
    if scoring not in SCORINGS:
        raise ValueError(f"scoring must be one of {SCORINGS}, got {scoring!r}")
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    if max_new_tokens is not None and max_new_tokens < 1:  # 0 is no answer, not the default (None)
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if samples < 1:  # no prompt would be scored: a grid of nan means
        raise ValueError(f"samples must be at least 1, got {samples}")
    frame = frame or PromptFrame.for_tokenizer(tokenizer, fmt)
    ends_sentence = period_test(tokenizer) if fmt == "lwm" else None
    if max_new_tokens is None:
        max_new_tokens = default_max_new_tokens(ask)
    for length, depth, todo in pending_cells(lengths, depths, samples, seed, done):
        for first in range(0, len(todo), batch_size):
            cases = [build_case(tokenizer, frame, haystack, length, depth, needles=needles, ask=ask, sample=sample,
                                seed=seed, fmt=fmt, ends_sentence=ends_sentence)
                     for sample in todo[first: first + batch_size]]
            start = time.perf_counter()
            answers = generate_all(generator, [case.prompt_ids for case in cases], max_new_tokens)
            seconds = (time.perf_counter() - start) / len(cases)
            for case, answer_ids in zip(cases, answers):
                answer = tokenizer.decode(answer_ids).strip()
                yield NiahRecord(generator.name, length, depth, case.sample, needles, ask, scoring,
                                 score_answer(answer, case.expected, scoring), case.expected, answer,
                                 case.positions, round(seconds, 3), fmt, seed)


def pending_cells(lengths: Sequence[int], depths: Sequence[float], samples: int, seed: int,
                  done: Collection[tuple[int, float, int, int]] = frozenset()) -> list[tuple[int, float, list[int]]]:
    """(length, depth, samples to run) of every grid cell with samples not in `done`, in the order
    `run_grid` runs them (the count of those samples is a run's progress total)."""
    cells = []
    for length in lengths:
        for depth in depths:
            todo = [s for s in range(samples) if (length, float(depth), s, seed) not in done]
            if todo:
                cells.append((length, depth, todo))
    return cells


def grid_records(records: Iterable[NiahRecord], lengths: Sequence[int], depths: Sequence[float], samples: int,
                 seed: int) -> list[NiahRecord]:
    """The records of a grid (lengths x depths x samples of `seed`) in grid order, one per cell
    (the last written where a cell was recorded twice): what its table and heatmap show."""
    order = {(length, float(depth), s): i for i, (length, depth, s) in
             enumerate((length, depth, s) for length in lengths for depth in depths for s in range(samples))}
    chosen: dict[int, NiahRecord] = {}
    for r in records:
        at = order.get((r.length, float(r.depth), r.sample))
        if at is not None and r.seed == seed:
            chosen[at] = r
    return [chosen[i] for i in sorted(chosen)]


CSV_COLUMNS = ("model", "format", "length", "depth", "sample", "needles", "ask", "scoring", "score", "expected", "answer",
               "seconds")


def write_csv(records: Iterable[NiahRecord], path: str | Path) -> Path:
    path = Path(path)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(CSV_COLUMNS)
        for r in records:
            row = r.as_json()
            row["expected"] = " ".join(r.expected)
            writer.writerow([row[c] for c in CSV_COLUMNS])
    return path


def write_jsonl(records: Iterable[NiahRecord], path: str | Path) -> Path:
    path = Path(path)
    with open(path, "w", encoding="utf-8") as fh:
        for r in records:
            fh.write(json.dumps(r.as_json(), ensure_ascii=False) + "\n")
            fh.flush()  # records of a long grid reach the disk as they come
    return path


def score_grid(records: Sequence[NiahRecord]) -> tuple[list[int], list[float], np.ndarray]:
    """(lengths, depths, mean score [depth, length]) over samples; NaN where a cell has none."""
    lengths = sorted({r.length for r in records})
    depths = sorted({r.depth for r in records})
    total = np.zeros((len(depths), len(lengths)))
    count = np.zeros_like(total)
    for r in records:
        i, j = depths.index(r.depth), lengths.index(r.length)
        total[i, j] += r.score
        count[i, j] += 1
    with np.errstate(invalid="ignore"):
        return lengths, depths, total / count


# ----------------------------------------------------------------------------------------------
# Grid specs from the command line
# ----------------------------------------------------------------------------------------------


def parse_lengths(spec: str) -> list[int]:
    """`1k,2k,4k`, or `1k..32k:8` for 8 lengths log-spaced from 1K to 32K (both ends included)."""
    if ".." in spec:
        span, _, count = spec.partition(":")
        low, _, high = span.partition("..")
        lo, hi, n = parse_count(low, minimum=1), parse_count(high, minimum=1), int(count or 2)
        if n < 2 or lo >= hi:
            raise ValueError(f"bad length range {spec!r}: want LOW..HIGH:N with LOW < HIGH and N >= 2")
        return sorted({round(v) for v in np.geomspace(lo, hi, n)})
    return sorted({parse_count(p, minimum=1) for p in spec.split(",") if p.strip()})


def parse_depths(spec: str) -> list[float]:
    """`11`: 11 depths evenly from 0 to 100 %; `0,25,50` or `50%`: those percents."""
    spec = spec.strip()
    if "," not in spec and not spec.endswith("%"):
        n = int(spec)
        if n < 1:
            raise ValueError("the number of depths must be at least 1")
        return [50.0] if n == 1 else [float(round(d, 4)) for d in np.linspace(0, 100, n)]
    depths = sorted({float(p.strip().rstrip("%")) for p in spec.split(",") if p.strip()})
    if not all(0 <= d <= 100 for d in depths):
        raise ValueError(f"depths must be percents within 0..100, got {spec!r}")
    return depths
