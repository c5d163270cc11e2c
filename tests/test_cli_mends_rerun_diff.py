"""A rerun into a folder holding a finished job made with another config names what changed in
one line. Long values were cut at their 57th character on both sides, so two values differing
only further on printed the same (`"the_text_...` -> `"the_text_...`): now each side shows the
same window around where they first differ."""

from __future__ import annotations

import json

from pipelines.launch import shown_difference
from tests.conftest import DEMO_TOKENIZER, cli_error
from longctx.cli import main

# Two text fields with long names that differ only in their last character.
BASE = "the_text_of_the_book_as_the_publisher_sent_it_to_us_before_any_cleaning_v"
OLD, NEW = BASE + "1", BASE + "2"


def test_a_rerun_shows_where_two_long_values_differ(tmp_path, capsys):
    data = tmp_path / "in.jsonl"
    text = "It is a truth universally acknowledged, that a single man in possession of a good fortune. " * 40
    data.write_text(json.dumps({"id": "a", OLD: text, NEW: text}) + "\n")
    argv = ["books", "--input", str(data), "--output", str(tmp_path / "out"), "--tokenizer", DEMO_TOKENIZER,
            "--stages", "4k=4096:1-", "--no-near-duplicates", "--no-quality-filter", "--languages", ""]
    assert main([*argv, "--text-field", OLD]) == 0
    line = cli_error([*argv, "--text-field", NEW], capsys)[-1]
    shown = f'text_field: ...{BASE[-20:]}1" -> ...{BASE[-20:]}2"'
    assert line == (f"longctx books: error: {tmp_path / 'out'} holds a finished job made with a different config "
                    f"({shown}): pass --overwrite to redo it, or choose another --output")


def test_the_window_is_the_same_on_both_sides_and_short_values_stay_whole():
    old, new = json.dumps(OLD), json.dumps(NEW)
    a, b = shown_difference(old, new)
    assert a != b and a.endswith('1"') and b.endswith('2"') and len(a) <= 60 and len(b) <= 60
    # A difference in the middle of two long values: the window starts before it and ends in "...".
    middle_a, middle_b = "x" * 40 + "A" + "y" * 80, "x" * 40 + "B" + "y" * 80
    a, b = shown_difference(middle_a, middle_b)
    assert a == "..." + "x" * 20 + "A" + "y" * 33 + "..." and b == a.replace("A", "B") and len(a) == 60
    # Different lengths: the shorter one simply ends.
    a, b = shown_difference("z" * 70, "z" * 70 + "tail")
    assert (a, b) == ("..." + "z" * 20, "..." + "z" * 20 + "tail")
    # Short values are shown whole, as before ("min_chars: 1 -> 50").
    assert shown_difference("1", "50") == ("1", "50")
    assert shown_difference("z" * 60, "y" * 60) == ("z" * 60, "y" * 60)
