"""RULER's multi-hop tracing task, variable tracking (`vt`).

A chain of assignments `VAR QXKVT = 41807.`, `VAR HBNEA = VAR QXKVT.`, ... (RULER's defaults: one
chain, four hops, so five variables of five capital letters and a five-digit value) is hidden in
order among the noise sentences; the model names every variable that holds the value. A one-shot
example with its answer (a short prompt of its own variables) comes first, as in RULER. Scored
`all` over the five names.
"""

from __future__ import annotations

import string

import numpy as np

from evals.common import NOISE, Task, TaskText, insert_lines, rng

TEMPLATE = ("Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n{context}\n"
            "Question: Find all variables that are assigned the value {value} in the text above.")
PREFIX = (" Answer: According to the chain(s) of variable assignment in the text above, {count} variables are "
          "assigned the value {value}, they are: ")
MAX_NEW_TOKENS = 30
EXAMPLE_NOISE = 10  # noise sentences in the one-shot example


def _names(r: np.random.Generator, count: int) -> list[str]:
    names: list[str] = []
    while len(names) < count:
        name = "".join(r.choice(list(string.ascii_uppercase), 5))
        if name not in names:
            names.append(name)
    return names


def _chain_text(r: np.random.Generator, place: np.random.Generator, n: int, hops: int) -> tuple[str, list[str], str, list[str]]:
    """Noise of `n` sentences with one chain hidden in it: (question text, variables, value, statements)."""
    names = _names(r, hops + 1)
    value = str(int(r.integers(10_000, 100_000)))
    statements = [f"VAR {names[0]} = {value}."] + [f"VAR {names[i + 1]} = VAR {names[i]}." for i in range(hops)]
    units = [NOISE[i % len(NOISE)] for i in range(n)]
    # Each statement before its own unit, in chain order (slots sorted; repeats allowed when short).
    slots = sorted(int(s) for s in place.choice(n + 1, len(statements), replace=n + 1 < len(statements)))
    context, _ = insert_lines(units, statements, slots, " ")
    return TEMPLATE.format(context=context, value=value), names, value, statements


def build_vt(seeds: tuple[int, ...], n: int, hops: int = 4) -> TaskText:
    example, ex_names, ex_value, _ = _chain_text(rng(seeds, 10), rng(seeds, 11), EXAMPLE_NOISE, hops)
    shot = example + PREFIX.format(count=hops + 1, value=ex_value) + " ".join(ex_names) + "\n\n"
    text, names, value, statements = _chain_text(rng(seeds, 0), rng(seeds, 1, n), n, hops)
    full = shot + text
    evidence, start = [], len(shot)
    for statement in statements:
        at = full.index(statement, start)
        evidence.append((at, at + len(statement)))
        start = at + len(statement)
    return TaskText(full, PREFIX.format(count=hops + 1, value=value), names, evidence,
                    {"value": value, "example_chars": len(shot)})


def vt_task() -> Task:
    return Task("vt", "tracing", build_vt, "all", MAX_NEW_TOKENS)
