"""--reject-files decides how rejects/ is laid out, but it was left out of the config hash: a rerun
with another count on a finished output said "already complete ... nothing to do" while rejects/
held the old count of files. It is hashed now (only when not the default, so that the outputs of
default runs keep their hash), so the rerun meets the "different config" refusal, and --overwrite
redoes the job with the new count."""

from __future__ import annotations

import json

from pipelines.config import BooksConfig, QAConfig
from tests.conftest import DEMO_TOKENIZER, cli_error


def test_the_count_is_in_the_hash_and_the_default_hash_is_unchanged():
    assert BooksConfig(reject_files=2).hash() != BooksConfig().hash()
    assert "reject_files" not in BooksConfig().data_config() and BooksConfig(reject_files=2).data_config()["reject_files"] == 2
    assert QAConfig(reject_files=3).hash() != QAConfig().hash()


def test_a_rerun_with_another_count_is_refused_and_overwrite_redoes_it(tmp_path, capsys, monkeypatch, sample_books):
    from longctx.cli import main

    monkeypatch.chdir(tmp_path)  # the output is named as given: out
    books = tmp_path / "books.jsonl"
    records = [{"id": f"bad-{i}", "body": "no text"} for i in range(12)]
    records.append({"id": "good", "text": sample_books[0]["text"][:20_000]})
    books.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "out"
    argv = ["books", "--input", str(books), "--output", "out", "--tokenizer", DEMO_TOKENIZER, "--stages", "t=64:0-"]
    assert main(argv) == 0
    first = sorted(p.name for p in (out / "rejects").iterdir())
    assert len(first) > 2 and all(name.endswith("-of-00008.jsonl") for name in first)
    line = cli_error([*argv, "--reject-files", "2"], capsys)[-1]
    assert line == ("longctx books: error: out holds a finished job made with a different config (reject_files: null -> 2): "
                    "pass --overwrite to redo it, or choose another --output")
    assert sorted(p.name for p in (out / "rejects").iterdir()) == first
    assert main([*argv, "--reject-files", "2", "--overwrite"]) == 0
    second = sorted(p.name for p in (out / "rejects").iterdir())
    assert second and len(second) <= 2 and all(name.endswith("-of-00002.jsonl") for name in second)
    assert main([*argv, "--reject-files", "2"]) == 0  # the same count: already complete
