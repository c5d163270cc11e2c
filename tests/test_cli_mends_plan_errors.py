"""`longctx plan` refuses a setting as every other command does: the command's usage block, then
one line `longctx plan: error: ...` on stderr, exit code 2 (it printed `longctx plan: ...` on
stdout, wrapped at the console's width, with no `error:`)."""

from __future__ import annotations

import pytest

from tests.conftest import REPO, cli_error

TINY = str(REPO / "configs" / "train" / "tiny-4k.yaml")
PLAN = str(REPO / "configs" / "train" / "lwm-text.yaml")


@pytest.mark.parametrize("argv, message", [
    (["--config", TINY, "--set", "global_batch"], "--set 'global_batch': expected KEY=VALUE"),
    (["--config", TINY, "--set", "global_bach=2"], "--set global_bach=2: unknown key 'global_bach' (did you mean 'global_batch'?)"),
    (["--config", TINY, "--set", "global_batch=abc"],
     "--set global_batch=abc: global_batch: Input should be a valid integer, unable to parse string as an integer (got 'abc')"),
    (["--config", TINY, "--set", "model=tooy"],
     "--set model=tooy: model: unknown preset 'tooy' (did you mean 'toy'?); presets: toy, tiny, 1b, llama2-7b"),
    (["--config", "no-such-config.yaml"], "no-such-config.yaml does not exist"),
    (["--plan", PLAN, "--set", "global_bach=2"], "--set: unknown key 'global_bach' (did you mean 'global_batch'?)"),
    (["--config", TINY, "--stages", "zz"], "--stages ['zz']: the plan's stages are ['tiny-4k']"),
    (["--config", TINY, "--layers", "x"], "--layers 'x': expected N or N1,N2 (e.g. 2,4)"),
])
def test_plan_errors_are_the_house_one_liner(capsys, argv, message):
    lines = cli_error(["plan", *argv, "--estimate"], capsys)
    assert lines[0].startswith("usage: longctx plan "), lines
    assert lines[-1] == f"longctx plan: error: {message}"
    assert capsys.readouterr().out == ""  # nothing on stdout: the refusal is stderr's, as argparse's own


def test_plan_error_has_the_form_of_train_and_argparse_errors(capsys):
    """The same mistake reads the same in both commands, and as argparse's own refusals."""
    train = cli_error(["train", "--config", TINY, "--model", "tooy", "--data", "d", "--out", "o"], capsys)[-1]
    plan = cli_error(["plan", "--config", TINY, "--set", "model=tooy", "--estimate"], capsys)[-1]
    argparse_own = cli_error(["plan", "--config", TINY, "--no-such-flag"], capsys)[-1]
    assert train.startswith("longctx train: error: ") and plan.startswith("longctx plan: error: ")
    assert argparse_own.startswith("longctx plan: error: ")
    # plan names the --set that gave the value; the rest is the same (neither blames the --config file).
    assert train.removeprefix("longctx train: error: ") == plan.removeprefix("longctx plan: error: --set model=tooy: ")


def test_a_long_plan_error_is_one_line(capsys):
    """The console wrapped long errors at 120 columns; stderr keeps the line whole."""
    lines = cli_error(["plan", "--config", TINY, "--topology", "v9:1x1", "--estimate"], capsys)
    assert lines[-1].startswith("longctx plan: error: unknown target 'v9:1x1': ") and len(lines[-1]) > 120
    assert lines[-1].endswith("(generations ['v4', 'v5e', 'v5litepod', 'v5p', 'v6e'])")
