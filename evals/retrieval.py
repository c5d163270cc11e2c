"""RULER's retrieval tasks: needle in a haystack, single, multi-key, multi-value and multi-query.

A needle is `One of the special magic {numbers|words|uuids} for {key} is: {value}.`; keys are
"adjective-noun" words or UUIDs, values 7-digit numbers, words or UUIDs. Haystacks:
- `noise`: RULER's five noise sentences, repeated (passkey-retrieval style); needles go between
  sentences at random places;
- `book`: real book text, word by word from a seeded offset; needles go at sentence ends, at
  depths drawn from RULER's 40 evenly spaced depths (0..100 %);
- `needles`: distractor needles with other keys (KV-retrieval style); the needles go among them.

The task settings are RULER's (synthetic.yaml): `niah_single_1` noise/words/numbers,
`niah_single_2` book/words/numbers, `niah_single_3` book/words/uuids, `niah_multikey_1` book with
4 keys (one asked), `niah_multikey_2` needles/words/numbers, `niah_multikey_3` needles/uuids/uuids,
`niah_multivalue` 4 values for the asked key, `niah_multiquery` 4 keys all asked. Scored `all`.
"""

from __future__ import annotations

from dataclasses import dataclass

from evals.common import DEPTHS, NOISE, Task, TaskText, insert_lines, join_query, random_values, rng
from evals.haystack import BookWords, split_sentences
from evals.words import key_words

NEEDLE = "One of the special magic {kind} for {key} is: {value}."
TEMPLATE_MANY = ("Some special magic {kind} are hidden within the following text. Make sure to memorize it. "
                 "I will quiz you about the {kind} afterwards.\n{context}\n"
                 "What are all the special magic {kind} for {query} mentioned in the provided text?")
TEMPLATE_ONE = ("A special magic {kind} is hidden within the following text. Make sure to memorize it. "
                "I will quiz you about the {kind} afterwards.\n{context}\n"
                "What is the special magic {kind} for {query} mentioned in the provided text?")
PREFIX_MANY = " The special magic {kind} for {query} mentioned in the provided text are"
PREFIX_ONE = " The special magic {kind} for {query} mentioned in the provided text is"
MAX_NEW_TOKENS = 128


@dataclass(frozen=True)
class NiahSpec:
    haystack: str  # noise | book | needles
    key: str  # words | uuids
    value: str  # numbers | words | uuids
    keys: int = 1
    values: int = 1
    queries: int = 1


SPECS: dict[str, NiahSpec] = {
    "niah_single_1": NiahSpec("noise", "words", "numbers"),
    "niah_single_2": NiahSpec("book", "words", "numbers"),
    "niah_single_3": NiahSpec("book", "words", "uuids"),
    "niah_multikey_1": NiahSpec("book", "words", "numbers", keys=4),
    "niah_multikey_2": NiahSpec("needles", "words", "numbers"),
    "niah_multikey_3": NiahSpec("needles", "uuids", "uuids"),
    "niah_multivalue": NiahSpec("book", "words", "numbers", values=4),
    "niah_multiquery": NiahSpec("book", "words", "numbers", keys=4, queries=4),
}


def _slots(place, choices: int, count: int) -> list[int]:
    """Sorted insertion slots, distinct while there are enough of them (RULER samples without replacement)."""
    return sorted(int(s) for s in place.choice(choices, count, replace=choices < count))


def build_niah(spec: NiahSpec, seeds: tuple[int, ...], n: int, book: BookWords | None) -> TaskText:
    """The text of one sample with `n` haystack units (sentences, words or distractor needles)."""
    words = key_words()
    facts = rng(seeds, 0)  # keys, values, question: the same for every n
    num_keys = max(spec.keys, spec.queries)
    keys = random_values(facts, spec.key, num_keys, words)
    values = [random_values(facts, spec.value, spec.values, words) for _ in keys]
    asked = sorted(int(i) for i in facts.choice(num_keys, spec.queries, replace=False))
    kind = spec.value  # "numbers", "words", "uuids"
    needles = [NEEDLE.format(kind=kind, key=k, value=v) for k, vs in zip(keys, values) for v in vs]
    facts.shuffle(needles)

    place = rng(seeds, 1, n)  # where the needles go, and the distractors: depends on n
    if spec.haystack == "noise":
        units = [NOISE[i % len(NOISE)] for i in range(n)]
        slots = _slots(place, n + 1, len(needles))
        context, _ = insert_lines(units, needles, slots, " ")
    elif spec.haystack == "needles":
        # Distractors from their own stream: the first n are the same whatever n is.
        others = rng(seeds, 3)
        taken, units = set(keys), []
        for _ in range(n):
            key = random_values(others, spec.key, 1, words, exclude=taken)[0]
            taken.add(key)
            units.append(NEEDLE.format(kind=kind, key=key, value=random_values(others, spec.value, 1, words)[0]))
        slots = _slots(place, n + 1, len(needles))
        context, _ = insert_lines(units, needles, slots, "\n")
    elif spec.haystack == "book":
        if book is None:
            raise ValueError("a book haystack needs book text")
        offset = int(rng(seeds, 2).integers(len(book.words)))
        sentences = split_sentences(" ".join(book.window(offset, n)))
        depths = place.choice(DEPTHS, len(needles), replace=False)
        slots = sorted(int(len(sentences) * int(d) / 100) for d in depths)
        context, _ = insert_lines(sentences, needles, slots, " ")
    else:
        raise ValueError(f"haystack must be noise, book or needles, got {spec.haystack!r}")

    query = join_query([keys[i] for i in asked])
    one = spec.queries * spec.values == 1
    shown = kind[:-1] if one else kind  # "number" for a single answer
    template, prefix = (TEMPLATE_ONE, PREFIX_ONE) if one else (TEMPLATE_MANY, PREFIX_MANY)
    text = template.format(kind=shown, context=context, query=query)
    references = [v for i in asked for v in values[i]]
    answer_needles = [NEEDLE.format(kind=kind, key=keys[i], value=v) for i in asked for v in values[i]]
    evidence = []
    for needle in answer_needles:
        at = text.index(needle)
        evidence.append((at, at + len(needle)))
    info = {"keys": keys, "asked": [keys[i] for i in asked], "haystack": spec.haystack}
    return TaskText(text, prefix.format(kind=shown, query=query), references, evidence, info)


def niah_task(name: str, book: BookWords | None = None) -> Task:
    spec = SPECS[name]
    if spec.haystack == "book" and book is None:
        book = BookWords.load(max_words=400_000)
    return Task(name, "retrieval", lambda seeds, n: build_niah(spec, seeds, n, book), "all", MAX_NEW_TOKENS)
