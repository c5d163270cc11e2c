"""Held-out rows for loss by position cut from raw books (a JSONL / JSONL.GZ / Parquet / text file,
or a folder of them), as an alternative to a stage folder of shards.

Each book goes through the books front's own steps: read with `curation.sources` (a record that
cannot be read is a reject with its reason), cleaned with `curation.text.clean_text` and the
front's default `CleanConfig` (BOM, CRLF, NFC, the Project Gutenberg header and licence stripped),
encoded whole with `curation.tokenize.encode_long` (BOS first when the tokenizer has one and
`add_bos`), then cut into consecutive windows of exactly `length` tokens from its start; the
shorter tail is left out, so every row is one stretch of one book and every position has only
that book before it. A book shorter than `length` gives no row and is listed as skipped with the
reason. Rows are numbered in file order then book order then window order, so the choice of rows
(evenly spaced, as for a stage) is deterministic. `BookRows` has the surface `loss_by_position`
reads from a stage (`length`, `num_rows`, `rows(indices)`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import fsspec
import numpy as np

from curation.accounting import Reason, Reject
from curation.sources import (BOOK_FILES, SourceConfig, expand_pattern, iter_file_records, portable_url,
                              split_extension)
from curation.text import CleanConfig, Rejected, clean_text
from curation.tokenize import encode_long

DATA_KINDS = (f"a stage folder (the folder holding a stage's .arrow shards, e.g. out/books/32k) or raw books "
              f"(a {BOOK_FILES} file, or a folder of them)")


def check_data_file(data: str) -> None:
    """Refuse (ValueError, one line) a `--data` that is one file but not a books file, saying what
    `--data` takes: for a shard file (`.arrow`), the folder holding it. A folder, a books file or a
    path that does not exist passes (the stage reader says what is missing)."""
    fs, path = fsspec.core.url_to_fs(data)
    if not fs.exists(path) or fs.isdir(path) or split_extension(path)[0] != "unknown":
        return
    if path.lower().endswith(".arrow"):
        parent = data.rstrip("/").rpartition("/")[0] or "."
        raise ValueError(f"--data {data} is one shard file: --data takes a stage folder, the folder holding the "
                         f".arrow shards (here --data {parent}), or raw books (a {BOOK_FILES} file, or a folder "
                         "of them)")
    raise ValueError(f"--data {data} is neither a stage folder nor a books file: --data takes {DATA_KINDS}")


def is_book_source(data: str) -> bool:
    """Whether `--data` names raw books rather than a stage folder: a book file, or a folder with
    book files and no shards anywhere under it (a job's output folder holds `manifest.json` beside
    its stage folders; it is not a folder of books)."""
    fs, path = fsspec.core.url_to_fs(data)
    if fs.isdir(path):
        found = fs.find(path)
        if any(p.endswith(".arrow") for p in found):
            return False
        return any(split_extension(p)[0] != "unknown" for p in found)
    return fs.exists(path) and split_extension(path)[0] != "unknown"


@dataclass
class BookRows:
    """Rows of exactly `length` tokens cut from books; `origins[i]` = (file, record id, first token)."""

    length: int
    windows: list[np.ndarray] = field(default_factory=list)
    origins: list[tuple[str, str, int]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    books: int = 0

    @property
    def num_rows(self) -> int:
        return len(self.windows)

    def rows(self, indices: Any) -> dict[str, np.ndarray]:
        """The batch columns of a stage's rows: one document per row, positions 0..length-1."""
        indices = np.asarray(indices, np.int64).reshape(-1)
        n, length = len(indices), self.length
        return {
            "input_ids": np.stack([self.windows[i] for i in indices]).astype(np.int32) if n else
            np.zeros((0, length), np.int32),
            "segment_ids": np.ones((n, length), np.int32),
            "positions": np.broadcast_to(np.arange(length, dtype=np.int32), (n, length)).copy(),
            "loss_mask": np.ones((n, length), np.float32),
            "vision_mask": np.zeros((n, length), np.uint8),
        }

    def describe(self) -> dict[str, Any]:
        """What the summary records about the rows' source."""
        return {"books": self.books, "book_rows": self.num_rows, "skipped": self.skipped}


def read_book_rows(data: str, tokenizer: Any, length: int, *, bos_id: int | None = None,
                   text_field: str = "text", clean: CleanConfig | None = None) -> BookRows:
    """Every book under `data` cleaned, encoded and cut into rows of `length` tokens (see module
    docstring). `bos_id`: prepended to each book (None: nothing). Raises FileNotFoundError when
    `data` holds no book file and ValueError when its files hold no text (empty files or records)
    or no book is `length` tokens long."""
    if length < 2:
        raise ValueError(f"--length must be at least 2 tokens, got {length}")
    files = [f for f in expand_pattern(data) if split_extension(f)[0] != "unknown"]
    if not files:
        raise FileNotFoundError(f"no book files ({BOOK_FILES}) under {data}")
    clean = clean or CleanConfig()
    source = SourceConfig(text_field=text_field)
    out = BookRows(length)
    for url in files:
        for record in iter_file_records(portable_url(url), source):
            if isinstance(record, Reject):  # an unreadable record or file, with its reason
                out.skipped.append({"source": record.source, "id": record.id, "reason": record.reason,
                                    "detail": record.detail})
                continue
            try:
                text = clean_text(record.text, clean)
            except Rejected as err:
                out.skipped.append({"source": record.source, "id": record.id, "reason": err.reason.value,
                                    "detail": err.detail})
                continue
            ids = encode_long(tokenizer, text, bos_id)
            full = len(ids) // length
            if not full:
                out.skipped.append({"source": record.source, "id": record.id, "reason": "too_short",
                                    "detail": f"{len(ids)} tokens < --length {length}"})
                continue
            out.books += 1
            for w in range(full):
                out.windows.append(ids[w * length: (w + 1) * length])
                out.origins.append((record.source, record.id, w * length))
    if not out.windows:
        why = "; ".join(f"{s['id']}: {s['reason']} ({s['detail']})" for s in out.skipped[:3])
        if not out.skipped:  # not one record: empty files
            raise ValueError(f"{data} holds no books, no text to score: "
                             f"{'the file is empty' if len(files) == 1 else f'its {len(files)} book files are empty'}")
        if all(s["reason"] == Reason.EMPTY.value for s in out.skipped):
            raise ValueError(f"{data} holds no books, no text to score: {len(out.skipped)} empty "
                             f"record{'s' if len(out.skipped) > 1 else ''} ({why})")
        raise ValueError(f"no book under {data} gives a row of {length} tokens ({why})")
    return out
