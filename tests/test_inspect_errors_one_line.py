"""`longctx inspect`'s user errors are reported as every command reports them: the usage block and
one line `longctx inspect: error: MSG` on stderr, exit code 2, nothing on stdout. Found by a probe:
"nothing to inspect", `--stage nope` and `--row 99` were red text on stdout wrapped over two
lines; a manifest listing missing shards told the user to set the trainer's
`allow_unfinished_data`; a manifest of an unknown `kind` (5, "audio") was inspected as books; and
`--vqgan` on a books output was silently ignored."""

from __future__ import annotations

import json

import pytest

from longctx.cli import main
from tests.conftest import cli_error, write_toy_stage

PREFIX = "longctx inspect: error: "


def _error(argv: list[str], capsys) -> str:
    """The one error line of a refused `longctx ARGV` (usage above it, exit code 2), without its prefix."""
    lines = cli_error(argv, capsys)
    assert lines[-1].startswith(PREFIX), lines
    assert sum("error:" in line for line in lines) == 1, lines  # the message is one line, not wrapped
    return lines[-1][len(PREFIX):]


@pytest.fixture()
def output(tmp_path):
    """A books output folder without Beam: one stage of two shards (4 rows each) and a manifest
    that agrees with them, as tests/test_probe41_inspect_manifest.py builds it."""
    from curation.shards import read_shard

    out = tmp_path / "out"
    write_toy_stage(out, name="s64", length=64, shards=2, rows=4)
    entries = [{"path": f"s64/{p.name}", "rows": read_shard(str(p)).num_rows, "tokens": 4 * 64}
               for p in sorted((out / "s64").iterdir())]
    manifest = {"kind": "books", "read": 8, "kept": 8, "rejected": {}, "rejected_total": 0, "tokens_in": 512,
                "tokens_out": 512, "dropped_tail_tokens": 0, "rejects": [],
                "stages": {"s64": {"length": 64, "min_tokens": 0, "max_tokens": None, "rows": 8, "tokens": 512,
                                   "shards": entries}}}
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out, manifest


# ----------------------------------------------------------------------------------------------
# 1. Nothing to inspect, a stage or row that is not there, flags a training run does not take
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("what", ["missing", "file", "empty"])
def test_nothing_to_inspect_is_one_line_on_stderr(tmp_path, capsys, what):
    target = tmp_path / what
    if what == "file":
        target.write_text("not an output\n")
    elif what == "empty":
        target.mkdir()
    expected = {
        "missing": f"{target}: no such folder, so nothing to inspect",
        "file": f"{target} is a file, not a folder",
        "empty": f"{target} has no manifest.json (a data job's output) and no config.yaml + metrics.jsonl",
    }[what]
    message = _error(["inspect", str(target), "--no-plots"], capsys)
    assert message.startswith(expected), message
    # Nothing on stdout: the refusal is stderr's alone.
    with pytest.raises(SystemExit):
        main(["inspect", str(target), "--no-plots"])
    assert capsys.readouterr().out == ""


def test_a_stage_or_row_that_is_not_there_is_one_line(output, tmp_path, capsys):
    out, _ = output
    assert _error(["inspect", str(out), "--no-plots", "--stage", "nope"], capsys) == f"no stage 'nope' in {out}; stages are s64"
    for row in ("8", "99", "-1"):
        assert _error(["inspect", str(out), "--no-plots", "--stage", "s64", "--row", row], capsys) == (
            f"--row {row}: stage s64 has 8 rows (0 to 7)")
    # The refusals come before any work: no plot was written.
    assert _error(["inspect", str(out), "--plots", str(tmp_path / "plots"), "--row", "99"], capsys).startswith("--row 99")
    assert not (tmp_path / "plots").exists()


def test_data_flags_on_a_training_run_are_one_line(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("steps: 3\n")
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 2.5}) + "\n")
    assert main(["inspect", str(run), "--no-plots"]) == 0  # the run itself is inspected
    message = _error(["inspect", str(run), "--no-plots", "--stage", "s64", "--row", "0"], capsys)
    assert message.startswith(f"--row and --stage: {run} is a training run"), message


# ----------------------------------------------------------------------------------------------
# 2. Shards the manifest lists are missing: inspect's own advice, not the trainer's setting
# ----------------------------------------------------------------------------------------------


def test_missing_shards_are_named_with_inspects_advice(output, capsys):
    out, _ = output
    (out / "s64" / "train-00001-of-00002.arrow").unlink()
    message = _error(["inspect", str(out), "--no-plots"], capsys)
    assert message == (f"{out}: 1 of the 2 shards its manifest lists is missing (s64/train-00001-of-00002.arrow): the job "
                       "did not finish writing it, or it was moved or deleted; rerun the job with the same --output and "
                       "--overwrite to write it again (without --overwrite a rerun finds the manifest and does nothing)")
    assert "allow" not in message  # inspect has no --allow-unfinished-data
    (out / "s64" / "train-00000-of-00002.arrow").unlink()
    message = _error(["inspect", str(out), "--no-plots"], capsys)
    assert message.startswith(f"{out}: 2 of the 2 shards its manifest lists are missing "
                              "(s64/train-00000-of-00002.arrow, s64/train-00001-of-00002.arrow): "), message


def test_the_trainers_message_for_missing_shards_is_unchanged(output):
    """The shard reader the trainer shares still offers the trainer's setting (its own option)."""
    from curation.shards import UnfinishedDataError, stage_shard_urls

    out, _ = output
    (out / "s64" / "train-00001-of-00002.arrow").unlink()
    with pytest.raises(UnfinishedDataError) as err:
        stage_shard_urls(str(out), "s64")
    assert "allow_unfinished_data: true (--allow-unfinished-data)" in str(err.value)


# ----------------------------------------------------------------------------------------------
# 3. A manifest of a kind inspect does not know
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind, said", [(5, 'its "kind" is 5'), ("audio", "its \"kind\" is 'audio'"),
                                        (None, 'no "kind"'), (["books"], "its \"kind\" is ['books']")])
def test_an_unknown_kind_is_refused_naming_the_kinds(output, capsys, kind, said):
    out, manifest = output
    damaged = {k: v for k, v in manifest.items() if k != "kind"} | ({} if kind is None else {"kind": kind})
    (out / "manifest.json").write_text(json.dumps(damaged))
    message = _error(["inspect", str(out), "--no-plots"], capsys)
    assert message == (f"{out}/manifest.json is not a job manifest: {said}, not one of the kinds inspect reads "
                       "(books, qa, video, images)")


def test_the_kinds_inspect_reads_are_the_data_jobs():
    from inspection.output import KINDS
    from pipelines.jobs import DATA_JOBS

    assert sorted(KINDS) == sorted(DATA_JOBS)


# ----------------------------------------------------------------------------------------------
# 4. --vqgan on an output without vision rows
# ----------------------------------------------------------------------------------------------


def test_vqgan_on_a_books_job_is_refused(book_shards, tmp_path, capsys):
    """The session's real books job (conftest `book_shards`): no vision rows for a VQGAN to decode."""
    vqgan = tmp_path / "vqgan"
    plots = tmp_path / "plots"
    message = _error(["inspect", str(book_shards), "--vqgan", str(vqgan), "--plots", str(plots)], capsys)
    assert message == f"--vqgan {vqgan}: {book_shards} holds no vision rows (kind books)"
    assert not plots.exists()  # refused before any table or plot
    message = _error(["inspect", str(book_shards), "--no-plots", "--vqgan", str(vqgan), "--stage", "s128", "--row", "0"], capsys)
    assert message == f"--vqgan {vqgan}: {book_shards} holds no vision rows (kind books)"
