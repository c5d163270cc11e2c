"""A hub id as tokenizer with the hub out of reach fails at once with one line, instead of a
minute of retries printed twice (issue 19). No network is touched: HF_HUB_OFFLINE, or an endpoint
on a closed local port set through the hub library's own HF_ENDPOINT."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO


@pytest.mark.parametrize("env, why", [({"HF_HUB_OFFLINE": "1"}, "(HF_HUB_OFFLINE is set)"),
                                      ({"HF_ENDPOINT": "http://127.0.0.1:9"}, "(http://127.0.0.1:9 cannot be reached: ")])
def test_an_unreachable_hub_id_is_one_line_at_once(env, why, tmp_path):
    environ = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "JAX_PLATFORMS": "cpu", **env}
    environ.pop("HF_HUB_OFFLINE" if "HF_ENDPOINT" in env else "HF_ENDPOINT", None)
    (tmp_path / "x.jsonl").write_text('{"text": "A book."}\n')  # inputs are checked first: this one exists
    done = subprocess.run([sys.executable, "-m", "longctx", "books", "--input", str(tmp_path / "x.jsonl"), "--output", str(tmp_path / "o"),
                           "--tokenizer", "someorg/some-model"], capture_output=True, text=True, env=environ, cwd=REPO,
                          timeout=120)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert lines[0].startswith("usage: longctx books ")
    assert lines[-1].startswith("longctx books: error: tokenizer 'someorg/some-model': this hub id could not be fetched " + why)
    assert lines[-1].endswith("pass a local path (tokenizer.json, a .model file or a folder) or a package:DIST/path spec")
    # Nothing but the usage block and that line: no retry warnings (they came twice, for ~50 s).
    assert "Retrying" not in done.stderr and all(line.startswith(("usage: ", " ")) for line in lines[:-1])
