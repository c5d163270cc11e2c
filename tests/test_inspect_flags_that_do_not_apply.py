"""`longctx inspect` refuses a flag that nothing would use in the combination given, in the house
form (usage, one line `longctx inspect: error: MSG` on stderr, exit code 2), instead of ignoring
it. Found by a probe: `--vqgan PATH --no-plots` on a video output exited 0 without ever opening
PATH (the VQGAN only draws the frame grid, a PNG, and a `--row` prints its vision blocks without
it), and `--full` or `--tokenizer` without `--row` exited 0 with the same tables as without them
(they only shape the row `--row` prints; `--tokenizer` also decodes the text beside `--vqgan`'s
frame grid, so that combination stays allowed). A training run, which takes no `--row`, refuses
them too."""

from __future__ import annotations

import json
import re

import pytest

from longctx.cli import main
from tests.conftest import DEMO_TOKENIZER, cli_error, write_toy_stage

PREFIX = "longctx inspect: error: "


def _error(argv: list[str], capsys) -> str:
    """The one error line of a refused `longctx ARGV` (usage above it, exit code 2, nothing on
    stdout), without its prefix."""
    lines = cli_error(argv, capsys)  # takes stderr; stdout stays captured for the check below
    assert lines[-1].startswith(PREFIX), lines
    assert sum("error:" in line for line in lines) == 1, lines  # one line, not wrapped
    return lines[-1][len(PREFIX):]


def _write_output(out, kind: str, stage: str, length: int, vision: bool = False):
    """An output folder without Beam: one stage of two shards (4 one-document rows each, toy
    tokenizer record) and a manifest that agrees with them. `vision`: the shards carry a
    vision_mask column (all zero), so inspect treats the output as vision shards."""
    import numpy as np

    from curation.packing import RowArrays
    from curation.shards import read_shard, write_shard
    from tests.conftest import toy_rows

    if vision:
        rng = np.random.default_rng(0)
        meta = {"tokenizer": {"name": "toy", "sha256": "ab" * 32, "vocab_size": 1000, "bos_id": 1, "eos_id": 2, "pad_id": None}}
        for i in range(2):
            text = toy_rows(rng, 4, length, 1000, f"d{i}")
            rows = RowArrays.empty(4, length, with_vision=True)
            for name in ("input_ids", "segment_ids", "positions", "loss_mask"):
                getattr(rows, name)[:] = getattr(text, name)
            rows.doc_ids, rows.doc_starts = text.doc_ids, text.doc_starts
            write_shard(str(out), stage, i, 2, rows, meta)
    else:
        write_toy_stage(out, name=stage, length=length, shards=2, rows=4)
    entries = [{"path": f"{stage}/{p.name}", "rows": read_shard(str(p)).num_rows, "tokens": 4 * length}
               for p in sorted((out / stage).iterdir())]
    manifest = {"kind": kind, "read": 8, "kept": 8, "rejected": {}, "rejected_total": 0, "tokens_in": 8 * length,
                "tokens_out": 8 * length, "dropped_tail_tokens": 0, "rejects": [],
                "stages": {stage: {"length": length, "min_tokens": 0, "max_tokens": None, "rows": 8,
                                   "tokens": 8 * length, "shards": entries}}}
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


@pytest.fixture(scope="module")
def books(tmp_path_factory):
    """A books output of 1,024-token rows: longer than the 400 tokens a text run keeps without --full."""
    return _write_output(tmp_path_factory.mktemp("flags-books") / "out", "books", "s1k", 1024)


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return _write_output(tmp_path_factory.mktemp("flags-video") / "out", "video", "v64", 64, vision=True)


def _training_run(tmp_path):
    """A training run folder inspect reads: its config.yaml and one metrics line."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("steps: 3\n")
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 2.5}) + "\n")
    return run


def _flat(text: str) -> str:
    return re.sub(r"[\s│┃|]+", " ", text)


# ----------------------------------------------------------------------------------------------
# --vqgan with --no-plots: the frame grid is a PNG, so the VQGAN would never be opened
# ----------------------------------------------------------------------------------------------

VQGAN_MESSAGE = ("--vqgan {} needs the plots: it only draws the frame grid, a PNG, and --no-plots writes none "
                 "(--row prints a row's vision blocks without it)")


@pytest.mark.parametrize("row", [[], ["--stage", "v64", "--row", "0", "--tokenizer", DEMO_TOKENIZER]],
                         ids=["without-row", "with-row"])
def test_vqgan_with_no_plots_is_refused(video, tmp_path, capsys, row):
    # A path that does not exist: before the fix it was never opened, and the command exited 0.
    vqgan = tmp_path / "no-such-vqgan"
    assert _error(["inspect", str(video), "--no-plots", "--vqgan", str(vqgan), *row], capsys) == VQGAN_MESSAGE.format(vqgan)
    assert capsys.readouterr().out == ""  # refused before any table


# ----------------------------------------------------------------------------------------------
# --full without --row: it only shapes the printed row
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("plots", [True, False], ids=["plots", "no-plots"])
def test_full_without_row_is_refused(books, tmp_path, capsys, plots):
    folder = tmp_path / "plots"
    argv = ["inspect", str(books), "--full"] + (["--plots", str(folder)] if plots else ["--no-plots"])
    assert _error(argv, capsys) == "--full needs --row N: it prints one row whole"
    assert capsys.readouterr().out == ""
    assert not folder.exists()  # refused before any plot


# ----------------------------------------------------------------------------------------------
# --tokenizer without --row: nothing is decoded (unless --vqgan draws a vision output's grid)
# ----------------------------------------------------------------------------------------------


def test_tokenizer_without_row_is_refused_on_a_text_output(books, tmp_path, capsys):
    for mode in (["--no-plots"], ["--plots", str(tmp_path / "plots")]):
        assert _error(["inspect", str(books), "--tokenizer", DEMO_TOKENIZER, *mode], capsys) == (
            f"--tokenizer {DEMO_TOKENIZER} needs --row N: it decodes the text of the row --row prints")
        assert capsys.readouterr().out == ""
    assert not (tmp_path / "plots").exists()


def test_tokenizer_without_row_or_vqgan_is_refused_on_a_vision_output(video, tmp_path, capsys):
    plots = tmp_path / "plots"
    assert _error(["inspect", str(video), "--tokenizer", DEMO_TOKENIZER, "--plots", str(plots)], capsys) == (
        f"--tokenizer {DEMO_TOKENIZER} needs --row N or --vqgan PATH: it decodes the text of the row --row prints "
        "or of the frame grid --vqgan draws")
    assert not plots.exists()


def test_row_flags_on_a_training_run_are_refused(tmp_path, capsys):
    run = _training_run(tmp_path)
    assert _error(["inspect", str(run), "--no-plots", "--tokenizer", DEMO_TOKENIZER, "--full"], capsys) == (
        f"--tokenizer and --full: {run} is a training run; --row, --stage, --vqgan, --tokenizer and --full read a "
        "data job's shards")
    assert _error(["inspect", str(run), "--no-plots", "--full"], capsys).startswith(f"--full: {run} is a training run; ")


# ----------------------------------------------------------------------------------------------
# Controls: the combinations that do use the flags still work
# ----------------------------------------------------------------------------------------------


def test_full_and_tokenizer_with_row_still_work(books, capsys):
    capsys.readouterr()
    assert main(["inspect", str(books), "--no-plots", "--stage", "s1k", "--row", "1", "--tokenizer", DEMO_TOKENIZER]) == 0
    elided = _flat(capsys.readouterr().out)
    assert "row 1 of stage s1k" in elided and "1,024 tokens in 1 segment(s)" in elided
    assert "tokens not shown (--full)" in elided  # 1,024 tokens: head and tail only
    assert main(["inspect", str(books), "--no-plots", "--stage", "s1k", "--row", "1", "--tokenizer", DEMO_TOKENIZER,
                 "--full"]) == 0
    full = _flat(capsys.readouterr().out)
    assert "row 1 of stage s1k" in full and "positions loss content 0-1,024 trained " in full
    assert "tokens not shown" not in full


def test_tokenizer_with_vqgan_on_a_vision_output_is_not_refused(video, tmp_path, capsys):
    """--tokenizer decodes the text beside --vqgan's frame grid: allowed without --row. These toy
    shards hold no vision token, so the grid is skipped and says why (the VQGAN is never opened)."""
    plots = tmp_path / "plots"
    capsys.readouterr()
    assert main(["inspect", str(video), "--tokenizer", DEMO_TOKENIZER, "--vqgan", str(tmp_path / "vqgan"),
                 "--plots", str(plots)]) == 0
    assert "frame grid skipped: no row of stage v64 holds vision tokens" in _flat(capsys.readouterr().out)
    assert sorted(p.name for p in plots.glob("*.png")) == sorted(
        ["document_lengths.png", "tokens_per_stage.png", "docs_per_row.png", "loss_share.png"])


# ----------------------------------------------------------------------------------------------
# --plots DIR / --overwrite with --no-plots, and --stage with nothing that reads one stage
# (found by the twelfth session's probe: each exited 0 with the flag unused)
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("flags, named", [(["--plots", "PLOTS"], "--plots with --no-plots: it says"),
                                          (["--overwrite"], "--overwrite with --no-plots: it says"),
                                          (["--plots", "PLOTS", "--overwrite"], "--plots and --overwrite with --no-plots: they say")])
def test_plot_flags_with_no_plots_are_refused(books, tmp_path, capsys, flags, named):
    argv = [str(tmp_path / "plots") if flag == "PLOTS" else flag for flag in flags]
    message = _error(["inspect", str(books), "--no-plots", *argv], capsys)
    assert message == f"{named} where and how to write the PNGs, and --no-plots writes none"
    assert capsys.readouterr().out == "" and not (tmp_path / "plots").exists()


def test_plot_flags_with_no_plots_are_refused_on_a_training_run_too(tmp_path, capsys):
    run = _training_run(tmp_path)
    assert main(["inspect", str(run), "--no-plots"]) == 0  # a training run it reads
    capsys.readouterr()
    assert _error(["inspect", str(run), "--no-plots", "--overwrite"], capsys).startswith("--overwrite with --no-plots")


def test_stage_without_row_is_refused(books, video, capsys):
    assert _error(["inspect", str(books), "--no-plots", "--stage", "s1k"], capsys) == (
        "--stage s1k needs --row N: it picks the stage of the row --row prints; the tables and plots cover every stage")
    assert _error(["inspect", str(video), "--no-plots", "--stage", "v64"], capsys) == (
        "--stage v64 needs --row N or --vqgan PATH: it picks the stage of the row --row prints or of the frame grid "
        "--vqgan draws; the tables and plots cover every stage")
    # With --row it picks the row's stage, as before.
    assert main(["inspect", str(books), "--no-plots", "--stage", "s1k", "--row", "0", "--tokenizer", DEMO_TOKENIZER]) == 0
    assert "row 0" in _flat(capsys.readouterr().out)
