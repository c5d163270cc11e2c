"""A refused command prints its usage and one error line; a usage longer than a few lines (a data
job's ~60 flags filled 30 lines above the error) is cut to a pointer to --help, so the line that
says what is wrong is not buried. --help still prints the whole usage; short usages stay whole."""

from __future__ import annotations

import pytest

from longctx.cli import main
from tests.conftest import cli_error


@pytest.mark.parametrize("command", ["books", "qa", "video", "images", "train"])
def test_a_long_usage_is_one_line_pointing_to_help(command, capsys):
    lines = cli_error([command, "--no-such-flag"], capsys)
    assert lines[0] == f"usage: longctx {command} [flags ...]  (every flag: longctx {command} --help)"
    assert len(lines) == 2 and lines[1].startswith(f"longctx {command}: error: ")


def test_help_still_shows_every_flag(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["books", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    usage = out[: out.index("\n\n")]
    assert usage.startswith("usage: longctx books [-h]") and "--min-chars MIN_CHARS" in usage and usage.count("\n") > 8


def test_a_short_usage_stays_whole(capsys):
    lines = cli_error(["convert", "--to-hf", "x"], capsys)
    assert lines[0].startswith("usage: longctx convert [-h] (--from-hf FROM_HF | --to-hf TO_HF) --out OUT")
    assert lines[-1] == "longctx convert: error: the following arguments are required: --out"
