"""curation.units: the one parser of `32k`-style lengths and the one set of number formats (GiB,
percents, durations, `-` for a value not known) that stages, evaluation, plan, inspect and progress
lines share."""

from __future__ import annotations

import pytest

from curation import progress, stages
from curation.units import GiB, byte_size, duration, gib, number, parse_count, percent


@pytest.mark.parametrize("text, want", [
    ("4096", 4096), ("32k", 32 * 1024), ("32K", 32768), ("1m", 1024**2), ("1M", 1048576), (" 4k ", 4096),
    ("1.5k", 1536), ("0.5m", 512 * 1024), ("0", 0), (2048, 2048), ("1e3", 1000),
])
def test_parse_count_reads_lengths_as_people_type_them(text, want):
    assert parse_count(text) == want


@pytest.mark.parametrize("text, why", [
    ("", "expected a whole number"), ("k", "expected a whole number"), ("4kk", "expected a whole number"),
    ("four", "expected a whole number"), ("1/2k", "expected a whole number"), ("inf", "expected a whole number"),
    ("nan", "expected a whole number"), ("4g", "expected a whole number"), (True, "expected a whole number"),
    ("1.1k", "1126.4 is not a whole number"), ("-4k", "must be at least 0"), (-1, "must be at least 0"),
])
def test_parse_count_refuses_bad_input_on_one_line(text, why):
    with pytest.raises(ValueError, match=why) as err:
        parse_count(text)
    assert "\n" not in str(err.value) and repr(text) in str(err.value)


def test_parse_count_minimum():
    assert parse_count("1", minimum=1) == 1
    with pytest.raises(ValueError, match="'0': must be at least 1"):
        parse_count("0", minimum=1)


def test_stage_specs_parse_lengths_through_the_one_parser():
    assert stages.parse_count is parse_count
    stage = stages.parse_stage("tiny=4k:0-20k", {})
    assert (stage.length, stage.min_tokens, stage.max_tokens) == (4096, 0, 20480)


# Context lengths as the evaluations read them (parse_count(text, minimum=1)): fractions that come
# out whole, nothing below 1 token.
@pytest.mark.parametrize("text, want", [("4096", 4096), ("4k", 4096), ("1M", 1 << 20), ("1.5k", 1536),
                                        ("1000", 1000), (" 2k", 2048), ("0.25m", 1 << 18)])
def test_parse_count_reads_context_lengths(text, want):
    assert parse_count(text, minimum=1) == want


@pytest.mark.parametrize("text", ["0", "1.1k", "-4k", "k", "abc", "1/2k"])
def test_parse_count_refuses_bad_context_lengths(text):
    with pytest.raises(ValueError, match="bad count"):
        parse_count(text, minimum=1)


def test_number_formats_print_a_dash_for_unknown_values():
    assert [number(x) for x in (None, 1.23456, 0.0)] == ["-", "1.235", "0.000"]
    assert number(123456.7, ",.0f") == "123,457" and number(0.000123, ".3g") == "0.000123"
    assert [percent(x) for x in (None, 0.1234, 1.0, 0.0)] == ["-", "12.3%", "100.0%", "0.0%"]
    assert percent(0.98765, digits=2) == "98.77%"
    assert [gib(x) for x in (None, 0, GiB, int(95.5 * GiB), 1500 * GiB)] == ["-", "0.00", "1.00", "95.50", "1,500.00"]


def test_duration_and_the_progress_lines_that_use_it():
    assert [duration(s) for s in (0, 59.4, 61, 3600 + 7 * 60 + 5, -3)] == ["0s", "59s", "1m01s", "1h07m", "0s"]
    assert progress.progress_line("generated", "chunks", 40, 228, 360.0).endswith("ETA 28m12s, elapsed 6m00s")


@pytest.mark.parametrize("n, want", [(0, "0 bytes"), (1023, "1,023 bytes"), (1024, "1.0 KiB"), (1536 * 1024, "1.5 MiB"),
                                     (3 * GiB, "3.0 GiB"), (5 * 1024**5, "5.0 PiB"), (2048 * 1024**6, "2,048.0 EiB")])
def test_byte_size_picks_the_largest_unit_that_keeps_the_number_at_least_one(n, want):
    assert byte_size(n) == want
