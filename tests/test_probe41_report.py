"""`longctx eval report`: an --out that is a file, and a loss_by_position.json whose bucket edges
are not whole numbers, are refused in one line (both were tracebacks: FileExistsError, and a
TypeError while drawing the curve)."""

from __future__ import annotations

import json

from tests.conftest import cli_error


def _loss_folder(folder, buckets, loss=1.5):
    folder.mkdir(parents=True)
    (folder / "loss_by_position.json").write_text(json.dumps({"buckets": buckets, "loss": loss}))
    return folder


GOOD = [{"start": 1, "end": 2, "tokens": 3, "loss": 2.0}, {"start": 2, "end": 4, "tokens": 5, "loss": 1.0}]


def test_out_that_is_a_file_is_one_line(tmp_path, capsys):
    run = _loss_folder(tmp_path / "run", GOOD)
    out = tmp_path / "report.png"
    out.write_bytes(b"not a folder")
    lines = cli_error(["eval", "report", str(run), "--out", str(out)], capsys)
    assert lines[-1].startswith("longctx eval report: error: --out ") and "not a folder" in lines[-1], lines[-1]
    assert out.read_bytes() == b"not a folder"


def test_bucket_edges_written_as_text_are_refused(tmp_path, capsys):
    run = _loss_folder(tmp_path / "run", [{"start": "1", "end": "2", "tokens": 3, "loss": 2.0}])
    lines = cli_error(["eval", "report", str(run), "--out", str(tmp_path / "report")], capsys)
    assert lines[-1].startswith("longctx eval report: error: ") and "'buckets'" in lines[-1], lines[-1]
    assert not (tmp_path / "report").exists()


def test_good_folders_still_report(tmp_path, capsys):
    from longctx.cli import main

    run = _loss_folder(tmp_path / "run", GOOD)
    assert main(["eval", "report", str(run), "--out", str(tmp_path / "report")]) == 0
    assert (tmp_path / "report" / "loss_by_position.png").is_file()
