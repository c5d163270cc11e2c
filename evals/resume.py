"""Results folders a rerun resumes: `longctx eval ruler` and `longctx eval niah` (and a stage's
`eval:` RULER run) write OUT/results.jsonl one record per scored cell as it runs, and a rerun into
the same folder skips the cells already there and appends the others.

A cell's coordinates (task or depth, length, sample, seed) are in its record, so a rerun may ask
for more or other cells: more samples, another length, another seed. What changes a cell's score
without being one of its coordinates (the model, the tokenizer, the answer budget, the haystack,
the NIAH format...) is a *setting*: OUT/settings.json records the settings the records were made
with (`{"eval": "ruler", "settings": {...}}`), and a rerun with another value of one is refused in
one line naming it, rather than mixing two models' answers in one table. A folder written before
settings.json existed is checked on the settings its records carry (e.g. `model`).

A results line that is not a record of the kind (bad JSON, a missing field) is an error naming
FILE:LINE, so a rerun never silently redoes or drops cells.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RESULTS_FILE = "results.jsonl"
SETTINGS_FILE = "settings.json"


def read_records(path: str | Path, check: Callable[[dict[str, Any]], Any]) -> list[dict[str, Any]]:
    """The records of a results.jsonl (none if it does not exist). `check(record)` raises
    KeyError, TypeError or ValueError for a record it cannot use; that, or a line that is not JSON,
    is a ValueError naming the file and line."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for number, raw in enumerate(path.read_bytes().splitlines(), 1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw.decode("utf-8"))  # bytes that are not UTF-8: a ValueError naming the line
            if not isinstance(record, dict):
                raise TypeError(f"a JSON {type(record).__name__}, not an object")
            check(record)
        except KeyError as err:
            raise ValueError(f"{path}:{number}: not a results record (no field {err}); fix or remove the line") \
                from None
        except (json.JSONDecodeError, TypeError, ValueError) as err:
            raise ValueError(f"{path}:{number}: not a results record ({err}); fix or remove the line") from None
        records.append(record)
    return records


def _show(value: Any) -> str:
    return "unset" if value is None else repr(value)


@dataclass
class ResultsFolder:
    """OUT/results.jsonl of one kind of eval (`kind`: "ruler", "niah") made with `settings`
    (JSON values); `check` validates one record (see `read_records`)."""

    out: Path
    kind: str
    settings: dict[str, Any]
    check: Callable[[dict[str, Any]], Any]

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        self.settings = json.loads(json.dumps(self.settings))  # as they read back: tuples are lists

    @property
    def results(self) -> Path:
        return self.out / RESULTS_FILE

    @property
    def settings_path(self) -> Path:
        return self.out / SETTINGS_FILE

    def recorded_settings(self) -> tuple[str | None, dict[str, Any] | None]:
        """(eval kind, settings) of OUT/settings.json; (None, None) when there is none."""
        path = self.settings_path
        if not path.exists():
            return None, None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            kind, settings = data["eval"], data["settings"]
            if not isinstance(settings, dict):
                raise TypeError("settings is not an object")
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as err:
            raise ValueError(f"{path}: not a settings record ({err}); fix it, or remove it to start over") from None
        return str(kind), settings

    def read(self) -> list[dict[str, Any]]:
        """The records already there, refused (ValueError, one line) when a line is damaged or the
        folder holds results of another kind or made with other settings. Writes nothing."""
        kind, recorded = self.recorded_settings()
        written = self.results.exists() and self.results.read_bytes().strip()
        if kind is not None and kind != self.kind and written:
            raise ValueError(f"{self.results} holds `eval {kind}` results, not `eval {self.kind}`: write to another "
                             "folder")
        records = read_records(self.results, self.check)
        if not records:
            return records
        if recorded is None:  # written before settings.json: the settings its records carry
            recorded = {}
            for key in self.settings:
                values = {json.dumps(r[key], sort_keys=True) for r in records if key in r}
                if len(values) == 1:
                    recorded[key] = json.loads(values.pop())
                elif values:
                    recorded[key] = [json.loads(v) for v in sorted(values)]  # already mixed: differs from any one
        for key, value in self.settings.items():
            if key in recorded and recorded[key] != value:
                raise ValueError(f"{self.results} was made with {key} {_show(recorded[key])}, this run has "
                                 f"{_show(value)}: its cells would mix with this run's; write to another folder, "
                                 "or remove it to start over")
        return records

    def append(self, records: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        """Each record appended to results.jsonl as it comes (flushed) and passed on; settings.json
        is written first."""
        self.out.mkdir(parents=True, exist_ok=True)
        self.settings_path.write_text(json.dumps({"eval": self.kind, "settings": self.settings}, indent=2) + "\n",
                                      encoding="utf-8")
        with open(self.results, "a", encoding="utf-8") as fh:
            for record in records:
                fh.write(json.dumps(record, ensure_ascii=False) + "\n")
                fh.flush()  # a long run's records reach the disk as they come
                yield record


def set_aside_stale(out: str | Path, key: str, value: Any) -> Path | None:
    """Move the results folder `out` to OUT_PARENT/set-aside/NAME (NAME-2, ... when taken) when its
    settings.json records another `key` than `value`, and say where; None when nothing moved (no
    folder, no settings.json, the same value, or none recorded). A stage's evaluation calls it with
    its checkpoint's `weights_saved`: a stage retrained into its run folder made the old cells
    scores of other weights, which a `train-stages` rerun should redo, not refuse after training;
    nothing is deleted."""
    out = Path(out)
    recorded = ResultsFolder(out, "", {}, lambda record: None).recorded_settings()[1]
    if not recorded or recorded.get(key) is None or recorded[key] == value:
        return None
    dest = out.parent / "set-aside" / out.name
    n = 1
    while dest.exists():
        n += 1
        dest = out.parent / "set-aside" / f"{out.name}-{n}"
    dest.parent.mkdir(parents=True, exist_ok=True)
    out.rename(dest)
    return dest


def haystack_identity(haystack: str | Path | None) -> str | None:
    """A haystack source in settings: `sample books` for the bundled novels (wherever the checkout
    is), a URL as given, else the absolute path (the same files from another working directory)."""
    from evals.haystack import SAMPLE_BOOKS

    if haystack is None:
        return None
    text = str(haystack)
    if "://" in text:
        return text
    path = Path(text).expanduser().resolve()
    return "sample books" if path == SAMPLE_BOOKS.resolve() else str(path)


def tokenizer_identity(tokenizer: Any) -> str | None:
    """What tells two tokenizers apart in settings: the sha256 evals/generators.py's
    NiahTokenizer carries (None for an object without one)."""
    sha = getattr(tokenizer, "sha256", None)
    return str(sha) if sha else None
