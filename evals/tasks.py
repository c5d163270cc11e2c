"""The RULER task names and how to build them."""

from __future__ import annotations

from pathlib import Path

from evals.common import Task
from evals.haystack import SAMPLE_BOOKS, BookWords

NIAH_TASKS = ("niah_single_1", "niah_single_2", "niah_single_3", "niah_multikey_1", "niah_multikey_2",
              "niah_multikey_3", "niah_multivalue", "niah_multiquery")
TASK_NAMES = (*NIAH_TASKS, "vt", "cwe", "fwe", "qa_1", "qa_2")
QA_FILES = {"qa_1": "--squad", "qa_2": "--hotpotqa"}


def parse_tasks(spec: str) -> list[str]:
    """`all`, or comma-separated task names (in RULER's order, duplicates dropped)."""
    names = [p.strip() for p in spec.split(",") if p.strip()]
    if not names:
        raise ValueError("no tasks given")
    if "all" in names:
        return list(TASK_NAMES)
    unknown = [n for n in names if n not in TASK_NAMES]
    if unknown:
        raise ValueError(f"unknown task(s) {', '.join(unknown)}; known: all, {', '.join(TASK_NAMES)}")
    return [n for n in TASK_NAMES if n in names]


def build_tasks(names: list[str], *, squad: str | Path | None = None, hotpotqa: str | Path | None = None,
                book: BookWords | None = None, haystack: str | Path = SAMPLE_BOOKS,
                book_words: int = 400_000) -> list[Task]:
    """Tasks by name. The book haystack (`book`, else `book_words` words of `haystack`) is read
    once, only when a task needs it; QA tasks need their file."""
    from evals import aggregation, qa, retrieval, tracing

    tasks = []
    for name in names:
        if name in NIAH_TASKS:
            if book is None and retrieval.SPECS[name].haystack == "book":
                book = BookWords.load(haystack, max_words=book_words)
            tasks.append(retrieval.niah_task(name, book))
        elif name == "vt":
            tasks.append(tracing.vt_task())
        elif name == "cwe":
            tasks.append(aggregation.cwe_task())
        elif name == "fwe":
            tasks.append(aggregation.fwe_task())
        elif name in QA_FILES:
            path = squad if name == "qa_1" else hotpotqa
            if path is None:
                raise ValueError(f"{name} needs {QA_FILES[name]} FILE (a {'SQuAD' if name == 'qa_1' else 'HotpotQA'} "
                                 "JSON file; nothing is downloaded)")
            data = qa.load_squad(path) if name == "qa_1" else qa.load_hotpotqa(path)
            tasks.append(qa.qa_task(name, data))
        else:
            raise ValueError(f"unknown task {name!r}")
    return tasks
