"""The same records read from another folder give the same rows: packing, QA turn order and
`--sample` key on what the records hold, not on where they lie (curation/exact_duplicates.py)."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

from pipelines.config import BooksConfig, QAConfig
from pipelines.launch import run_books, run_qa
from tests.conftest import DEMO_TOKENIZER, SAMPLE_BOOKS, stage_rows

IN_MEMORY = ["--runner=DirectRunner", "--direct_running_mode=in_memory"]


def _books() -> list[dict]:
    return [json.loads(line) for line in gzip.open(SAMPLE_BOOKS, "rt").read().splitlines()]


def _corpus(folder: Path) -> Path:
    """Four novels in three files: ids given, an id left to its place (`b.jsonl:1`), a plain-text book."""
    books = _books()
    folder.mkdir(parents=True)
    (folder / "a.jsonl").write_text("".join(json.dumps(b) + "\n" for b in books[2:4]))
    (folder / "b.jsonl").write_text(json.dumps({"text": books[1]["text"]}) + "\n")
    (folder / "c.txt").write_text(books[5]["text"])
    return folder


def _moved(tmp_path: Path) -> tuple[Path, Path]:
    """The corpus, and the same files copied to a folder with another name at another depth."""
    first = _corpus(tmp_path / "first")
    moved = tmp_path / "z" / "moved" / "elsewhere"
    shutil.copytree(first, moved)
    return first, moved


def test_books_rows_do_not_depend_on_the_folder(tmp_path):
    first, moved = _moved(tmp_path)

    def books(folder: Path, out: str, **kw) -> tuple[Path, dict]:
        config = BooksConfig.model_validate({
            "inputs": [str(folder)], "output": str(tmp_path / out), "tokenizer": DEMO_TOKENIZER,
            # Small packing groups: the group hash decides which documents are packed together.
            "stages": ["1k=1024:1-", "8k=8192:1-"], "pack_group_tokens": 150_000, "shard_target_bytes": 1 << 20, **kw,
        })
        return tmp_path / out, run_books(config, IN_MEMORY)

    out_a, one = books(first, "a")
    out_b, two = books(moved, "b")
    assert one["read"] == two["read"] == one["kept"] == 4
    rows_a, rows_b = stage_rows(out_a, one), stage_rows(out_b, two)
    assert sum(len(v[0]) for shards in rows_a.values() for v in shards) > 500
    assert rows_a == rows_b
    ids = {i for shards in rows_a.values() for view in shards for row in view[0] for i in row}
    assert ids == {_books()[2]["id"], _books()[3]["id"], "b.jsonl:1", "c.txt"}  # no folder in any id

    # --sample picks the same records from either folder.
    sample_a, sampled_a = books(first, "sa", sample=2)
    sample_b, sampled_b = books(moved, "sb", sample=2)
    assert sampled_a["read"] == sampled_b["read"] == 2
    assert stage_rows(sample_a, sampled_a) == stage_rows(sample_b, sampled_b)


def test_qa_rows_do_not_depend_on_the_folder(tmp_path):
    first, moved = _moved(tmp_path)
    for folder in (first, moved):  # keep two short novels: the extractive QA run is quick
        (folder / "b.jsonl").unlink()
        (folder / "c.txt").unlink()

    def qa(folder: Path, out: str) -> tuple[Path, dict]:
        config = QAConfig.model_validate({
            "inputs": [str(folder)], "output": str(tmp_path / out), "tokenizer": DEMO_TOKENIZER,
            "stages": ["q4k=4096:0-"], "backend": "extractive", "qa_order": "shuffled",
        })
        return tmp_path / out, run_qa(config, IN_MEMORY)

    out_a, one = qa(first, "a")
    out_b, two = qa(moved, "b")
    assert one["kept"] == two["kept"] == 2
    rows_a = stage_rows(out_a, one)
    assert len(rows_a["q4k"]) >= 1 and rows_a == stage_rows(out_b, two)
