"""`longctx eval niah` rerun into the same --out resumes as `eval ruler` does (evals/resume.py): the
cells already in results.jsonl are kept and not asked again, the others are appended, and the
table, CSV and heatmap cover the whole grid. A folder made with other settings (model, scoring,
format...) is refused by both commands in one line naming the setting; a damaged results line is
one line naming FILE:LINE. The model is a stub completions server on 127.0.0.1 (the one
tests/test_evals_endpoint.py and tests/test_progress_lines.py use), so no weights load."""

from __future__ import annotations

import csv
import json

from longctx.cli import main
from tests.conftest import DEMO_TOKENIZER, cli_error
from tests.test_evals_endpoint import Stub


def niah_argv(url: str, out, *extra: str) -> list[str]:
    return ["eval", "niah", "--endpoint", url, "--endpoint-model", "stub-model", "--tokenizer", DEMO_TOKENIZER,
            "--lengths", "512", "--depths", "0,50", "--out", str(out), *extra]


def ruler_argv(url: str, out, *extra: str) -> list[str]:
    return ["eval", "ruler", "--endpoint", url, "--endpoint-model", "stub-model", "--tokenizer", DEMO_TOKENIZER,
            "--tasks", "niah_single_1", "--lengths", "512", "--samples", "1", "--out", str(out), *extra]


def error_line(argv: list[str], capsys) -> str:
    """The command refused as a user mistake (exit code 2, usage, no traceback): its one error line."""
    lines = cli_error(argv, capsys)
    assert [line for line in lines if ": error: " in line] == lines[-1:], lines
    return lines[-1]


def answered(stub: Stub) -> int:
    return sum(r["path"] == "/v1/completions" for r in stub.requests)


def test_a_niah_rerun_keeps_the_cells_already_there_and_runs_the_rest(tmp_path, capsys):
    out = tmp_path / "niah"
    with Stub(lambda prompt: " 1234567") as stub:
        assert main(niah_argv(stub.url, out)) == 0
        assert answered(stub) == 2
        first = (out / "results.jsonl").read_text()
        assert [(r["length"], r["depth"], r["sample"]) for r in map(json.loads, first.splitlines())] == [
            (512, 0.0, 0), (512, 50.0, 0)]

        # The same command again: nothing is asked, nothing is rewritten.
        capsys.readouterr()
        assert main(niah_argv(stub.url, out)) == 0
        assert answered(stub) == 2
        assert (out / "results.jsonl").read_text() == first
        assert "stub-model: mean score 0.00 over 2 prompts" in capsys.readouterr().out

        # One more sample per cell: only the two new cells are asked; the old lines stay as they were.
        assert main(niah_argv(stub.url, out, "--samples", "2")) == 0
        assert answered(stub) == 4
    text = (out / "results.jsonl").read_text()
    assert text.startswith(first) and len(text.splitlines()) == 4
    new = [json.loads(line) for line in text.splitlines()[2:]]
    assert [(r["depth"], r["sample"], r["seed"]) for r in new] == [(0.0, 1, 0), (50.0, 1, 0)]
    printed = capsys.readouterr().out
    # The table and the CSV cover the whole grid, old cells and new, in grid order.
    assert "stub-model: mean score 0.00 over 4 prompts" in printed
    assert [line.strip() for line in printed.splitlines() if line.strip().startswith("scored ")][-1].startswith(
        "scored 2/2 cells")
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [(r["depth"], r["sample"]) for r in rows] == [("0.0", "0"), ("0.0", "1"), ("50.0", "0"), ("50.0", "1")]
    settings = json.loads((out / "settings.json").read_text())
    assert settings["eval"] == "niah" and settings["settings"]["model"] == "stub-model"


def test_niah_and_ruler_refuse_a_folder_made_with_other_settings(tmp_path, capsys):
    niah_out, ruler_out = tmp_path / "niah", tmp_path / "ruler"
    with Stub(lambda prompt: " 1234567") as stub:
        assert main(niah_argv(stub.url, niah_out)) == 0
        assert main(ruler_argv(stub.url, ruler_out)) == 0
        asked = answered(stub)
        niah_before, ruler_before = (niah_out / "results.jsonl").read_text(), (ruler_out / "results.jsonl").read_text()
        results = niah_out / "results.jsonl"
        for extra, said in ((["--scoring", "exact"], "scoring 'contains', this run has 'exact'"),
                            (["--format", "lwm"], "format 'longctx', this run has 'lwm'"),
                            (["--needles", "2"], "needles 1, this run has 2"),
                            (["--name", "other-model"], "model 'stub-model', this run has 'other-model'")):
            line = error_line(niah_argv(stub.url, niah_out, *extra), capsys)
            assert line.startswith(f"longctx eval niah: error: {results} was made with {said}: "), line
        line = error_line(ruler_argv(stub.url, ruler_out, "--name", "other-model"), capsys)
        assert line.startswith(
            f"longctx eval ruler: error: {ruler_out / 'results.jsonl'} was made with model 'stub-model', this run has "
            "'other-model': "), line
        line = error_line(ruler_argv(stub.url, ruler_out, "--max-new-tokens", "9"), capsys)
        assert "was made with max_new_tokens unset, this run has 9: " in line
        # One kind of eval's folder is not the other's.
        line = error_line(niah_argv(stub.url, ruler_out), capsys)
        assert line == (f"longctx eval niah: error: {ruler_out / 'results.jsonl'} holds `eval ruler` results, "
                             "not `eval niah`: write to another folder")
        assert answered(stub) == asked  # refused before any prompt was sent
    assert (niah_out / "results.jsonl").read_text() == niah_before
    assert (ruler_out / "results.jsonl").read_text() == ruler_before


def test_a_niah_folder_from_before_settings_were_recorded_is_checked_on_its_records(tmp_path, capsys):
    out = tmp_path / "niah"
    with Stub(lambda prompt: " 1234567") as stub:
        assert main(niah_argv(stub.url, out)) == 0
        (out / "settings.json").unlink()  # as an older version left the folder
        line = error_line(niah_argv(stub.url, out, "--name", "other-model"), capsys)
        assert "was made with model 'stub-model', this run has 'other-model'" in line
        assert main(niah_argv(stub.url, out)) == 0  # its records' settings are this run's: resumed
        assert answered(stub) == 2
    assert json.loads((out / "settings.json").read_text())["settings"]["scoring"] == "contains"


def test_a_damaged_niah_results_line_is_one_line_naming_it(tmp_path, capsys):
    out = tmp_path / "niah"
    with Stub(lambda prompt: " 1234567") as stub:
        assert main(niah_argv(stub.url, out)) == 0
        results = out / "results.jsonl"
        good = results.read_text()
        results.write_text(good + "{oops\n")
        line = error_line(niah_argv(stub.url, out), capsys)
        assert line.startswith(f"longctx eval niah: error: {results}:3: not a results record ("), line
        assert line.endswith("); fix or remove the line")
        record = json.loads(good.splitlines()[0])
        del record["score"]
        results.write_text(good + json.dumps(record) + "\n")
        line = error_line(niah_argv(stub.url, out), capsys)
        assert line == (f"longctx eval niah: error: {results}:3: not a results record (no field 'score'); "
                             "fix or remove the line")
        assert answered(stub) == 2
