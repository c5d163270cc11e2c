"""The end of a data job, as a new user sees it: tokens in counts the no_stage books, a job that
writes no shard says so and ends non-zero, and the last line names only folders that exist."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import pytest
from rich.console import Console

from curation.text import CleanConfig, clean_text
from curation.tokenize import encode_long
from pipelines.config import BooksConfig
from pipelines.launch import run_books
from pipelines.summary import print_summary
from tests.conftest import DEMO_TOKENIZER, SAMPLE_BOOKS

BEAM = ["--runner=DirectRunner", "--direct_running_mode=in_memory"]


def _two_books(folder: Path) -> tuple[Path, list[dict]]:
    """The first two sample novels (over 100K tokens each) as a JSONL input."""
    with gzip.open(SAMPLE_BOOKS, "rt", encoding="utf-8") as fh:
        books = [json.loads(next(fh)) for _ in range(2)]
    path = folder / "books.jsonl"
    path.write_text("".join(json.dumps({"id": b["id"], "text": b["text"]}) + "\n" for b in books))
    return path, books


def _printed(manifest: dict, output: str) -> tuple[int, str]:
    console = Console(record=True, width=200)
    status = print_summary(manifest, output, console)
    # What a reader sees: rich's box-drawing characters removed, whitespace collapsed.
    return status, " ".join(re.sub(r"[│┃┏┓┗┛┡┩┣┫━─╇╈┳┻╋└┘┌┐├┤┼┴┬]", " ", console.export_text()).split())


@pytest.fixture(scope="module")
def no_shard_job(tmp_path_factory):
    """The README's txt example window (tiny=4096:1000-20000) over real novels: every book is no_stage."""
    folder = tmp_path_factory.mktemp("no-shard")
    path, books = _two_books(folder)
    config = BooksConfig.model_validate({"inputs": [str(path)], "output": str(folder / "out"), "tokenizer": DEMO_TOKENIZER,
                                         "stages": ["tiny=4096:1000-20000"]})
    return run_books(config, BEAM), folder / "out", books


def test_tokens_in_counts_the_no_stage_books(no_shard_job, demo_tokenizer):
    manifest, out, books = no_shard_job
    assert manifest["kept"] == 0 and manifest["rejected"] == {"no_stage": 2}
    tok, info = demo_tokenizer
    lengths = [len(encode_long(tok, clean_text(b["text"], CleanConfig()), info.bos_id, info.eos_id)) for b in books]
    assert all(n > 20_000 for n in lengths)
    # The label says "kept + no_stage": the books' own token counts, not 0.
    assert manifest["tokens_in"] == sum(lengths)
    status, text = _printed(manifest, str(out))
    assert f"tokens in (kept + no_stage) {sum(lengths):,}" in text


def test_a_job_that_writes_no_shard_says_so_and_fails(no_shard_job):
    manifest, out, _ = no_shard_job
    assert not list(out.glob("*/train-*.arrow"))
    status, text = _printed(manifest, str(out))
    assert status == 1
    assert ("WARNING: no shard written: all 2 records were rejected (no_stage 2); no stage window holds them: "
            "the rejects state each document's token count, widen --stages") in text
    # Rejects spread over up to `reject_files` (8) files by a stable hash of source and id.
    files = sorted(p.name for p in (out / "rejects").glob("rejects-*-of-00008.jsonl"))
    assert files and sorted(manifest["rejects"]) == [f"rejects/{name}" for name in files]
    plural = "" if len(files) == 1 else "s"
    assert f"0 shards, rejects in rejects/ ({len(files)} file{plural}), manifest.json in " in text
    lines = [json.loads(line) for name in files for line in (out / "rejects" / name).read_text().splitlines()]
    assert sorted(r["reason"] for r in lines) == ["no_stage", "no_stage"] and all(r["tokens"] > 0 for r in lines)


def test_the_last_line_names_only_what_exists(tmp_path):
    path, books = _two_books(tmp_path)
    out = tmp_path / "out"
    config = BooksConfig.model_validate({"inputs": [str(path)], "output": str(out), "tokenizer": DEMO_TOKENIZER,
                                         "stages": ["s8k=8192:1000-"]})
    manifest = run_books(config, BEAM)
    assert manifest["rejected_total"] == 0 and manifest["stages"]["s8k"]["shards"]
    status, text = _printed(manifest, str(out))
    assert status == 0 and "WARNING" not in text
    # Nothing was rejected, so no rejects/ folder was made: the summary must not send the user there.
    assert not (out / "rejects").exists()
    assert "1 shard in s8k/, no rejects, manifest.json in " in text
    assert "s8k 8,192 1K-inf" in text


def test_training_runs_are_git_ignored():
    """`longctx train --out runs/...` (the README's and configs' default) must not show up in git status."""
    import shutil
    import subprocess

    from tests.conftest import REPO

    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    checked = subprocess.run(["git", "check-ignore", "-q", "runs/stage-32k/metrics.jsonl"], cwd=REPO)
    assert checked.returncode == 0
