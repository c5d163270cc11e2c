"""The front door as a new user meets it: errors name the subcommand's usage, --help shows
defaults and the train-stages plan schema, and a job folder passed as --data is refused before
anything is written (issue 19)."""

from __future__ import annotations

import json

from curation.packing import RowArrays
from curation.shards import write_shard
from longctx.cli import _parser
from tests.conftest import cli_error


def _error(argv: list[str], capsys) -> list[str]:
    return cli_error(argv, capsys)

def test_an_error_prints_the_subcommands_usage_and_one_line(tmp_path, capsys):
    # A run error (train's own check), an unknown flag, and a nested command's error.
    lines = _error(["train", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "r"), "--global-batch", "3",
                    "--grad-accum", "2"], capsys)
    assert lines[0].startswith("usage: longctx train "), lines
    assert lines[-1].startswith("longctx train: error: ") and "global_batch 3" in lines[-1]
    lines = _error(["generate", "--checkpoint", "c", "--prompt", "hi", "--no-such"], capsys)
    assert lines[0].startswith("usage: longctx generate ") and lines[-1] == "longctx generate: error: unrecognized arguments: --no-such"
    lines = _error(["eval", "niah", "--checkpoint", str(tmp_path / "none"), "--out", str(tmp_path / "o"),
                    "--lengths", "1k", "--bogus", "1"], capsys)
    assert lines[0].startswith("usage: longctx eval niah "), lines
    lines = _error(["books", "--output", "x", "--tokenizer", "t"], capsys)
    assert lines[0].startswith("usage: longctx books ") and lines[-1].startswith("longctx books: error: missing required")


def _help(*command: str) -> str:
    parser = _parser()
    for action in parser._actions:  # the subcommand's own parser, as `longctx CMD --help` prints it
        if getattr(action, "choices", None) and command[0] in (action.choices or {}):
            sub = action.choices[command[0]]
            for nested in sub._actions:
                if len(command) > 1 and getattr(nested, "choices", None) and command[1] in (nested.choices or {}):
                    sub = nested.choices[command[1]]
            return " ".join(sub.format_help().split())
    raise AssertionError(command)


def test_help_shows_defaults_of_config_flags_and_plain_flags():
    books = _help("books")
    assert "[config key: min_tail_tokens] (default: 1024)" in books
    assert "[config key: stages] (default: 32k)" in books
    assert "[config key: add_bos] (default: on)" in books and "[config key: overwrite] (default: off)" in books
    assert "[config key: shard_target_bytes] (default: 268,435,456)" in books
    assert "(default: None)" not in books  # a flag with no default says nothing rather than "None"
    train = _help("train")
    assert "[config key: seq_len] (default: 4096)" in train and "[config key: lr] (default: 0.0003)" in train
    generate = _help("generate")
    # Flags a mode may refuse when given default to None, and say their effective default in words.
    assert "tokens to generate (default 32; not with --generate-vision)" in generate and "0 = greedy (default: 0.0)" in generate
    assert "(default: None)" not in generate
    niah = _help("eval", "niah")
    assert "ring attention query/key chunk (--checkpoint) (default: 512)" in niah
    assert "(default 16 + 12 per asked needle)" in niah and "needle) (default" not in niah  # said once


def test_train_stages_help_documents_the_plan():
    text = _help("train-stages")
    for key in ("out:", "init_from:", "topology:", "base:", "stages:", "name:", "data:", "overrides:", "eval:"):
        assert key in text, key
    assert "configs/train/lwm-text.yaml" in text


def _stage(folder, stage: str) -> None:
    rows = RowArrays.empty(4, 64)
    rows.segment_ids[:], rows.loss_mask[:] = 1, 1.0
    rows.doc_ids, rows.doc_starts = [["d"]] * 4, [[0]] * 4
    write_shard(str(folder), stage, 0, 1, rows, {"tokenizer": {"sha256": "ab" * 32, "vocab_size": 32000}})


def test_a_job_folder_as_data_names_its_stages_and_leaves_no_run_folder(tmp_path, capsys):
    job = tmp_path / "qa"
    _stage(job, "32k")
    _stage(job, "128k")
    (job / "manifest.json").write_text(json.dumps({"stages": {"32k": {"shards": []}, "128k": {"shards": []}}}))
    run = tmp_path / "run"
    lines = _error(["train", "--data", str(job), "--out", str(run), "--seq-len", "64", "--global-batch", "2",
                    "--mesh", "dp=1,fsdp=1,tp=1,sp=1", "--no-progress"], capsys)
    assert lines[-1] == (f"longctx train: error: {job} is a job output; pass one of its stage folders: "
                         f"{job}/32k, {job}/128k")
    assert not run.exists()
    # Without a manifest the stage folders holding shards are named; a missing folder is one line too.
    (job / "manifest.json").unlink()
    lines = _error(["train", "--data", str(job), "--out", str(run), "--seq-len", "64", "--global-batch", "2"], capsys)
    assert lines[-1].endswith(f"pass one of its stage folders: {job}/128k, {job}/32k")
    lines = _error(["train", "--data", str(tmp_path / "nope"), "--out", str(run), "--seq-len", "64"], capsys)
    assert lines[-1] == (f"longctx train: error: data folder {tmp_path / 'nope'} does not exist: pass a stage folder "
                         "of a data job's output, e.g. out/books/4k")
    assert not run.exists()


def test_configs_point_only_at_documents_in_the_repo():
    import re

    from tests.conftest import REPO

    for path in sorted((REPO / "configs").rglob("*.yaml")):
        for name in re.findall(r"\b([\w./-]+\.md)\b", path.read_text()):
            assert (REPO / name).is_file(), f"{path.relative_to(REPO)} points at {name}, which is not in the repo"
