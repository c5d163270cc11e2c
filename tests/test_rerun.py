"""Reruns: a finished job is a no-op, --overwrite redoes it, a killed job reruns to the same bytes; --sample."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from curation.shards import read_shard
from pipelines.config import BooksConfig
from pipelines.launch import run_books
from tests.conftest import DEMO_TOKENIZER, REPO, SAMPLE_BOOKS

IN_MEMORY = ["--runner=DirectRunner", "--direct_running_mode=in_memory"]
STAGES = ["1k=1024:100000-400000"]


def _config(output: Path, **kw) -> BooksConfig:
    data = {"inputs": [str(SAMPLE_BOOKS)], "output": str(output), "tokenizer": DEMO_TOKENIZER, "stages": STAGES,
            "shard_target_bytes": 1 << 20}
    data.update(kw)
    return BooksConfig.model_validate(data)


def _files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file() and p.name != "manifest.json"}


def test_finished_job_is_a_no_op_unless_overwrite(tmp_path):
    out = tmp_path / "out"
    first = run_books(_config(out), IN_MEMORY)
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    again = run_books(_config(out), IN_MEMORY)
    assert again == first
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == stamps
    (out / "1k" / "train-99999-of-99999.arrow").write_bytes(b"stale")  # a leftover of some older run
    redone = run_books(_config(out, overwrite=True), IN_MEMORY)
    assert [s["sha256"] for s in redone["stages"]["1k"]["shards"]] == [s["sha256"] for s in first["stages"]["1k"]["shards"]]
    assert not (out / "1k" / "train-99999-of-99999.arrow").exists()


def test_killed_job_reruns_to_the_same_shards(tmp_path):
    reference = tmp_path / "reference"
    run_books(_config(reference), IN_MEMORY)
    expected = _files(reference)
    assert len([f for f in expected if f.endswith(".arrow")]) > 5

    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "longctx", "books", "--input", str(SAMPLE_BOOKS), "--output", str(out),
           "--tokenizer", DEMO_TOKENIZER, "--stages", STAGES[0], "--shard-target-bytes", str(1 << 20),
           "--direct_num_workers", "2", "--direct_running_mode", "multi_processing"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not list(out.glob("1k/*train-*")):
            time.sleep(0.005)
        os.killpg(proc.pid, signal.SIGKILL)  # the runner and its worker processes
    finally:
        proc.wait(timeout=30)
    assert list(out.glob("1k/*train-*")), "the job was killed before it wrote anything"
    assert not (out / "manifest.json").exists(), "the job finished before it could be killed"

    manifest = run_books(_config(out), IN_MEMORY)
    assert _files(out) == expected
    assert not [p for p in out.rglob(".*")]  # no temporary files left
    assert manifest["read"] == manifest["kept"] + manifest["rejected_total"] == 7


def test_sample_is_deterministic_and_accounted(tmp_path):
    lines = gzip.open(SAMPLE_BOOKS, "rt").read().splitlines()
    (tmp_path / "a.jsonl").write_text("\n".join(lines[:4]) + "\n")
    (tmp_path / "b.jsonl").write_text("\n".join(lines[4:]) + "\nnot json\n")
    one = run_books(_config(tmp_path / "s1", inputs=[str(tmp_path / "*.jsonl")], sample=3), IN_MEMORY)
    # The same records are sampled whatever the file order and parallelism.
    two = run_books(_config(tmp_path / "s2", inputs=[str(tmp_path / "b.jsonl"), str(tmp_path / "a.jsonl")], sample=3),
                    ["--direct_num_workers=2", "--direct_running_mode=multi_threading"])
    assert one["read"] == two["read"] == 3
    assert one["read"] == one["kept"] + one["rejected_total"]
    # (Shard bytes differ: the inputs are part of the config hash in their metadata; the rows do not.)
    rows = lambda out, m: [read_shard(str(out / s["path"])) for s in m["stages"]["1k"]["shards"]]  # noqa: E731
    for a, b in zip(rows(tmp_path / "s1", one), rows(tmp_path / "s2", two), strict=True):
        assert a.doc_ids == b.doc_ids and (a.arrays["input_ids"] == b.arrays["input_ids"]).all()
    assert one["config"]["sample"] == 3
    full = run_books(_config(tmp_path / "s3", inputs=[str(tmp_path / "*.jsonl")]), IN_MEMORY)
    assert full["read"] == 8 and full["rejected"] == {"malformed_json": 1}
    assert json.loads((tmp_path / "s1" / "manifest.json").read_text())["read"] == 3


def _small_config(tmp_path: Path, **kw) -> BooksConfig:
    lines = gzip.open(SAMPLE_BOOKS, "rt").read().splitlines()[3:4]  # one short novel
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    data = {"inputs": [str(tmp_path / "in.jsonl")], "output": str(tmp_path / "out"), "tokenizer": DEMO_TOKENIZER,
            "stages": ["4k=4096:1-"]}
    data.update(kw)
    return BooksConfig.model_validate(data)


def test_rerun_with_another_config_is_refused_naming_the_change(tmp_path, capsys):
    from longctx.cli import main
    from pipelines.launch import ConfigError

    first = run_books(_small_config(tmp_path), IN_MEMORY)
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "out").rglob("*") if p.is_file()}
    # The same config (inputs, output and all) is still a no-op.
    assert run_books(_small_config(tmp_path), IN_MEMORY) == first
    for change, named in (({"min_chars": 50}, "min_chars: 1 -> 50"), ({"stages": ["4k=4096:2-"]}, "stages:"),
                          ({"add_eos": False}, "add_eos: true -> false")):
        with pytest.raises(ConfigError, match="different config") as err:
            run_books(_small_config(tmp_path, **change), IN_MEMORY)
        assert named in str(err.value) and "--overwrite" in str(err.value) and "\n" not in str(err.value)
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "out").rglob("*") if p.is_file()} == stamps
    # The command line says it in one line, and prints no old summary.
    with pytest.raises(SystemExit) as exit_info:
        main(["books", "--input", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "out"),
              "--tokenizer", DEMO_TOKENIZER, "--stages", "4k=4096:1-", "--min-chars", "50"])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert "min_chars: 1 -> 50" in captured.err and "read" not in captured.out
    # --overwrite redoes it with the new config.
    redone = run_books(_small_config(tmp_path, min_chars=50, overwrite=True), IN_MEMORY)
    assert redone["config"]["min_chars"] == 50 and redone["config_hash"] != first["config_hash"]
    assert redone["read"] == redone["kept"] + redone["rejected_total"] == 1
