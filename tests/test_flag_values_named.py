"""A bad value given by a flag is not blamed on the --config file beside it (which may not even
hold the key): `train --config tiny.yaml --model tooy` said `tiny.yaml: model: unknown preset
'tooy'`. The line names the key and its value; a bad value in the file still names the file."""

from __future__ import annotations

from tests.conftest import cli_error

TINY = "configs/train/tiny-4k.yaml"


def test_a_flags_bad_value_is_not_blamed_on_the_config_file(capsys):
    line = cli_error(["train", "--config", TINY, "--model", "tooy", "--data", "d", "--out", "o"], capsys)[-1]
    assert line == ("longctx train: error: model: unknown preset 'tooy' (did you mean 'toy'?); "
                    "presets: toy, tiny, 1b, llama2-7b")
    line = cli_error(["books", "--config", "configs/books/demo.yaml", "--near-dup-threshold", "1.5"], capsys)[-1]
    assert line.startswith("longctx books: error: near_dup_threshold: "), line


def test_a_files_bad_value_is_named_by_the_file(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.yaml").write_text("model: tooy\nseq_len: 128\n")
    line = cli_error(["train", "--config", "c.yaml", "--data", "d", "--out", "o"], capsys)[-1]
    assert line.startswith("longctx train: error: c.yaml: model: unknown preset 'tooy'"), line
