"""A job that writes no shard ends with `WARNING: no shard written: all N records were rejected
(...)`, naming every reason with its count (the largest first): it named only the top 3, and a
reason such as `low_quality:stop_words 1` went unsaid. Past MAX_REASONS_NAMED the rest are counted."""

from __future__ import annotations

import json

from pipelines.summary import MAX_REASONS_NAMED, no_shard_warning, reason_list
from tests.conftest import DEMO_TOKENIZER


def test_every_reason_is_named_when_all_records_are_rejected(tmp_path, capsys):
    from longctx.cli import main

    lines = [
        json.dumps({"id": "no-text-1", "body": "x"}),
        json.dumps({"id": "no-text-2", "body": "y"}),
        json.dumps({"id": "nul", "text": "some\x00binary\x00stuff" * 10}),
        json.dumps({"id": "empty", "text": "   \n\t  "}),
        '{"id": "malformed", "text": "unterminated',
        json.dumps({"id": "number", "text": 42}),
        json.dumps({"id": "no-stop-words", "text": "Apples bananas cherries dates elderberries figs grapes melons."}),
    ]
    books = tmp_path / "books.jsonl"
    books.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    code = main(["books", "--input", str(books), "--output", str(out), "--tokenizer", DEMO_TOKENIZER, "--stages", "t=64:0-"])
    printed = " ".join(capsys.readouterr().out.split())  # the console wraps long lines
    manifest = json.loads((out / "manifest.json").read_text())
    assert code == 1 and manifest["kept"] == 0
    assert manifest["rejected"] == {"missing_field": 2, "binary": 1, "empty": 1, "malformed_json": 1, "wrong_type": 1,
                                    "low_quality:stop_words": 1}
    expected = ("no shard written: all 7 records were rejected (missing_field 2, binary 1, empty 1, low_quality:stop_words 1, "
                "malformed_json 1, wrong_type 1)")
    assert no_shard_warning(manifest) == expected
    assert f"WARNING: {expected}" in printed


def test_past_the_limit_the_rest_are_counted():
    rejected = {f"reason_{i:02d}": 20 - i for i in range(MAX_REASONS_NAMED + 3)}
    text = reason_list(rejected)
    assert text.startswith("reason_00 20, reason_01 19, ") and text.endswith(f"reason_{MAX_REASONS_NAMED - 1:02d} "
                                                                                f"{21 - MAX_REASONS_NAMED} and 3 more")
    assert text.count(",") == MAX_REASONS_NAMED - 1
