"""Damaged outputs stop a command with one line and exit code 2, never a traceback: a truncated
shard (found when it is opened, before training or evaluating starts), a manifest.json that is
not a job's, a training run's config.yaml that is not YAML, a tokenizer that cannot be loaded."""

from __future__ import annotations

import json
import shutil

import pytest

from curation.shards import read_shard, read_shard_headers
from tests.conftest import cli_error

SHARD = "s128/train-00000-of-00001.arrow"


def _error(argv: list[str], capsys) -> list[str]:
    return cli_error(argv, capsys)

@pytest.fixture
def job(book_shards, tmp_path):
    """A copy of the session's books job (the fixture itself is never damaged)."""
    out = tmp_path / "books"
    shutil.copytree(book_shards, out)
    return out


def _truncate(path, size: int) -> None:
    data = path.read_bytes()
    assert len(data) > size
    path.write_bytes(data[:size])


@pytest.mark.parametrize("size", [100_000, 500_000])
def test_a_truncated_shard_is_refused_when_opened(job, size):
    shard = job / SHARD
    whole = shard.stat().st_size
    header = read_shard_headers([str(shard)])[0]
    assert header.body_end <= whole  # an intact shard opens
    _truncate(shard, size)
    for read in (lambda: read_shard_headers([str(job / "s256" / "train-00000-of-00001.arrow"), str(shard)]),
                 lambda: read_shard(str(shard))):
        with pytest.raises(ValueError, match="is truncated") as err:
            read()
        message = str(err.value)
        assert message.startswith(f"{shard} is truncated: {size:,} bytes") and f"{header.body_end:,}" in message
        assert "\n" not in message
    # What the trainer opens (StageData.open) takes the same check, before any row is read.
    from training.data import StageData

    with pytest.raises(ValueError, match=f"{shard} is truncated"):
        StageData.open(str(job / "s128"))


def test_a_truncated_shard_is_one_line_in_eval_and_inspect(job, tmp_path, capsys):
    shard = job / SHARD
    _truncate(shard, 500_000)
    lines = _error(["eval", "loss-by-position", "--checkpoint", str(tmp_path / "no-checkpoint"), "--data", str(job / "s128"),
                    "--out", str(tmp_path / "eval")], capsys)
    assert lines[-1].startswith(f"longctx eval loss-by-position: error: {shard} is truncated: 500,000 bytes"), lines
    lines = _error(["inspect", str(job), "--no-plots"], capsys)
    assert lines[-1].startswith(f"longctx inspect: error: {shard} is truncated: 500,000 bytes"), lines
    # Garbage bytes from the start are named too (pyarrow's own message does not name the file).
    shard.write_bytes(b"\x07" * 4096)
    lines = _error(["inspect", str(job), "--no-plots"], capsys)
    assert lines[-1].startswith(f"longctx inspect: error: {shard} is not a shard"), lines


@pytest.mark.parametrize("text, reason", [
    ('{"read": 7, garbage', "not valid JSON (Expecting property name enclosed in double quotes at line 1 column 13)"),
    ("[1,2]", "it holds a JSON array, not an object"),
    ("{}", 'no "stages"'),
    ('{"stages": [1]}', 'its "stages" is a JSON array, not an object'),
    ('{"stages": {"s128": 3}}', "stage 's128' is a JSON number, not an object"),
    ('{"stages": {"s128": {"length": 128}}}', "stage 's128' has no integer 'rows'"),
])
def test_a_manifest_that_is_not_a_jobs_is_one_line(job, capsys, text, reason):
    (job / "manifest.json").write_text(text)
    lines = _error(["inspect", str(job), "--no-plots"], capsys)
    assert lines[-1] == f"longctx inspect: error: {job}/manifest.json is not a job manifest: {reason}"


def test_a_run_config_that_is_not_yaml_is_one_line(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("model: [\n")
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 2.5}) + "\n")
    lines = _error(["inspect", str(run), "--no-plots"], capsys)
    assert lines[-1] == (f"longctx inspect: error: {run}/config.yaml:2:1: not valid YAML "
                         "(expected the node content, but found '<stream end>')")


def test_a_tokenizer_that_cannot_be_loaded_is_one_line(book_shards, tmp_path, capsys):
    bad = tmp_path / "bad.model"
    bad.write_bytes(b"not a tokenizer")
    lines = _error(["inspect", str(book_shards), "--no-plots", "--stage", "s128", "--row", "0", "--tokenizer", str(bad)], capsys)
    assert lines[-1].startswith(f"longctx inspect: error: tokenizer '{bad}': "), lines
    assert "SentencePiece" in lines[-1]
