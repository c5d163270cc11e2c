"""`longctx eval niah` and `eval ruler` with an --hf-model: a torch --device this machine cannot
use and an --out that is a file are refused in one line before the model loads (they were
tracebacks: torch's RuntimeError from model.to(device), FileExistsError when results were written)."""

from __future__ import annotations

import pytest

from tests.conftest import cli_error
from tests.test_probe41_loss_flags import make_gpt2

EVALS = {"niah": ["--lengths", "256", "--depths", "50"], "ruler": ["--lengths", "1k", "--tasks", "vt", "--samples", "1"]}


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory) -> str:
    return make_gpt2(tmp_path_factory.mktemp("gpt2"))


@pytest.mark.parametrize("command", sorted(EVALS))
def test_a_device_torch_cannot_use_is_one_line(gpt2_folder, tmp_path, capsys, command):
    out = tmp_path / "o"
    lines = cli_error(["eval", command, "--hf-model", gpt2_folder, *EVALS[command], "--device", "bogus", "--out", str(out)],
                      capsys)
    assert lines[-1].startswith(f"longctx eval {command}: error: --device 'bogus' cannot be used on this machine"), lines[-1]
    assert not out.exists()


@pytest.mark.parametrize("command", sorted(EVALS))
def test_out_that_is_a_file_is_one_line(gpt2_folder, tmp_path, capsys, command):
    out = tmp_path / "taken.txt"
    out.write_text("not a folder")
    lines = cli_error(["eval", command, "--hf-model", gpt2_folder, *EVALS[command], "--out", str(out)], capsys)
    assert lines[-1] == f"longctx eval {command}: error: --out {out}: not a folder", lines[-1]
    assert out.read_text() == "not a folder"
