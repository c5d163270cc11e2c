"""`longctx inspect` on a manifest.json whose counts are damaged (a hand edit, another tool's
file): one line naming the file and the key, exit code 2 (they were an AttributeError or a
TypeError traceback, or Python's "Cannot specify ',' with 's'")."""

from __future__ import annotations

import json

import pytest

from tests.conftest import cli_error, write_toy_stage


@pytest.fixture()
def output(tmp_path):
    """A books-like output folder: one stage of two shards and a manifest that agrees with them."""
    from curation.shards import read_shard

    stage = write_toy_stage(tmp_path / "out", name="s64", length=64, shards=2, rows=4)
    shards = sorted(p for p in (tmp_path / "out" / "s64").iterdir())
    entries = [{"path": f"s64/{p.name}", "rows": read_shard(str(p)).num_rows, "tokens": 4 * 64} for p in shards]
    manifest = {"kind": "books", "read": 8, "kept": 8, "rejected": {}, "rejected_total": 0, "tokens_in": 512,
                "tokens_out": 512, "dropped_tail_tokens": 0, "rejects": [],
                "stages": {"s64": {"length": 64, "min_tokens": 0, "max_tokens": None, "rows": 8, "tokens": 512,
                                   "shards": entries}}}
    (tmp_path / "out" / "manifest.json").write_text(json.dumps(manifest))
    assert stage.endswith("s64")
    return tmp_path / "out", manifest


@pytest.mark.parametrize("key, value, said", [
    ("rejected", "lots", "'rejected'"),
    ("rejected", {"too_short": "two"}, "'rejected'"),
    ("rejects", 5, "'rejects'"),
    ("rejects", [5], "'rejects'"),
    ("read", "many", "'read'"),
    ("tokens_out", 1.5, "'tokens_out'"),
    ("chunks", {"read": 3}, "'chunks'"),
    ("chunks", "some", "'chunks'"),
])
def test_damaged_counts_are_one_line(output, capsys, key, value, said):
    out, manifest = output
    (out / "manifest.json").write_text(json.dumps({**manifest, key: value}))
    lines = cli_error(["inspect", str(out), "--no-plots"], capsys)
    assert lines[-1].startswith("longctx inspect: error: ") and "is not a job manifest" in lines[-1], lines[-1]
    assert said in lines[-1], lines[-1]


def test_the_undamaged_manifest_is_inspected(output, capsys):
    from longctx.cli import main

    out, _ = output
    assert main(["inspect", str(out), "--no-plots"]) == 0
    assert "read 8 = kept 8 + rejected 0" in capsys.readouterr().out
