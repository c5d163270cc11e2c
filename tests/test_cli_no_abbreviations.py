"""No command takes an abbreviated flag: `longctx train --glob 4` set global_batch (argparse's
prefix matching), while the data jobs refuse abbreviations as Beam does. A prefix of a flag is an
unknown flag now, refused with the usage and one error line, exit code 2."""

from __future__ import annotations

import pytest

from tests.conftest import cli_error


@pytest.mark.parametrize("argv, error", [
    (["train", "--glob", "4", "--data", "x", "--out", "y"], "longctx train: error: unrecognized arguments: --glob 4"),
    (["inspect", "out", "--no-plot"], "longctx inspect: error: unrecognized arguments: --no-plot"),
    # A prefix of a required flag does not stand for it: the flag is still missing.
    (["train-stages", "--pl", "plan.yaml"], "longctx train-stages: error: the following arguments are required: --plan"),
    (["generate", "--check", "ckpt", "--prompt", "hi"],
     "longctx generate: error: the following arguments are required: --checkpoint"),
    (["plan", "--conf", "configs/train/stage-32k.yaml"], "longctx plan: error: one of the arguments --config --plan is required"),
    (["eval", "niah", "--checkp", "ckpt", "--out", "o"],
     "longctx eval niah: error: one of the arguments --checkpoint --hf-model --endpoint is required"),
    (["convert", "--from", "hf", "--out", "o"], "longctx convert: error: one of the arguments --from-hf --to-hf is required"),
])
def test_an_abbreviated_flag_is_refused(argv, error, capsys):
    assert cli_error(argv, capsys)[-1] == error
