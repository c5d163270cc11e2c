"""A job's output folder inside its input folder is not read back as input by the next job.

A folder input skips the longctx job outputs below it (a folder holding a job manifest, or our
rejects/ layout, or the running job's own output), one logged line each; a file or glob the
user names is still read as given, and read = kept + rejected stays exact.
"""

from __future__ import annotations

import gzip
import json
import logging
import shutil

import pytest

from pipelines.config import BooksConfig
from pipelines.launch import run_books
from tests.conftest import DEMO_TOKENIZER, SAMPLE_BOOKS

IN_MEMORY = ["--runner=DirectRunner", "--direct_running_mode=in_memory"]
STAGES = ["tiny=4096:0-"]


def _corpus(folder, sample_books):
    """One book and one unreadable line: the first job writes a shard, rejects/ and manifest.json."""
    folder.mkdir()
    lines = [json.dumps({"id": "b0", "text": sample_books[0]["text"]}), '{"id": "broken", "text": ']
    (folder / "books.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def _run(inputs, output, **extra):
    config = BooksConfig.model_validate({"inputs": inputs, "output": str(output), "tokenizer": DEMO_TOKENIZER,
                                         "stages": STAGES, **extra})
    return run_books(config, IN_MEMORY)


def _rejects(output, manifest):
    return [json.loads(line) for name in manifest["rejects"] for line in (output / name).read_text().splitlines()]


def test_second_job_does_not_read_the_first_jobs_output_inside_its_input(tmp_path, sample_books, caplog):
    data = _corpus(tmp_path / "d", sample_books)
    first = _run([str(data)], data / "out1")
    assert (first["read"], first["kept"], first["rejected_total"]) == (2, 1, 1)
    assert (data / "out1" / "manifest.json").is_file() and list((data / "out1" / "rejects").glob("*.jsonl"))

    caplog.set_level(logging.INFO, logger="longctx")
    # Only the second job's lines: an earlier test may have left the longctx logger at INFO, and the
    # first job's own line ("skipped d/out1, this job's output") would then be here too.
    caplog.clear()
    second = _run([str(data)], data / "out2")
    # Only the corpus was read: not out1/manifest.json, not out1/rejects/*.jsonl.
    assert (second["read"], second["kept"], second["rejected_total"]) == (2, 1, 1)
    assert second["read"] == second["kept"] + second["rejected_total"]
    assert {r["source"] for r in _rejects(data / "out2", second)} == {str(data / "books.jsonl")}
    messages = [r.getMessage() for r in caplog.records]
    assert not [m for m in messages if "read " in m and "out1/" in m], messages
    skipped = [m for m in messages if "skipped" in m and "out1" in m]
    assert skipped and all("a longctx job's output (manifest.json)" in m for m in skipped), messages
    assert len(set(skipped)) == 1  # one line for the folder, logged by the launcher's check

    # A third job sees both earlier outputs as outputs, and its own output dir as its own.
    third = _run([str(data)], data / "out3", overwrite=True)
    assert (third["read"], third["kept"], third["rejected_total"]) == (2, 1, 1)


def test_a_killed_jobs_rejects_without_manifest_are_skipped_too(tmp_path, sample_books):
    data = _corpus(tmp_path / "d", sample_books)
    _run([str(data)], data / "out1")
    (data / "out1" / "manifest.json").unlink()  # as if the job was killed before its manifest
    second = _run([str(data)], tmp_path / "elsewhere")
    assert (second["read"], second["kept"], second["rejected_total"]) == (2, 1, 1)


def test_named_files_and_globs_are_read_as_given(tmp_path, sample_books):
    data = _corpus(tmp_path / "d", sample_books)
    first = _run([str(data)], data / "out1")
    [rejects_file] = first["rejects"]
    # The user names the earlier run's rejects file itself: it is read (its one line is a record
    # without a text field), besides the corpus.
    named = _run([str(data / "books.jsonl"), str(data / "out1" / rejects_file)], tmp_path / "o2")
    assert (named["read"], named["kept"], named["rejected_total"]) == (3, 1, 2)
    globbed = _run([str(data / "out1" / "rejects" / "*.jsonl")], tmp_path / "o3")
    assert globbed["read"] == 1 and globbed["read"] == globbed["kept"] + globbed["rejected_total"]


def test_a_user_file_named_manifest_json_is_still_an_input(tmp_path, sample_books):
    data = tmp_path / "d"
    (data / "sub").mkdir(parents=True)
    (data / "sub" / "manifest.json").write_text(json.dumps({"id": "m", "text": sample_books[1]["text"]}) + "\n")
    manifest = _run([str(data)], tmp_path / "out")
    assert (manifest["read"], manifest["kept"]) == (1, 1)


def test_a_folder_holding_only_job_outputs_is_refused_in_one_line(tmp_path, sample_books, capsys):
    from tests.conftest import cli_error

    data = _corpus(tmp_path / "d", sample_books)
    _run([str(data / "books.jsonl")], data / "out1")
    (data / "books.jsonl").unlink()
    lines = cli_error(["books", "--input", str(data), "--output", str(tmp_path / "o"), "--tokenizer", DEMO_TOKENIZER,
                       "--stages", *STAGES], capsys)
    assert lines[-1].startswith("longctx books: error: input ")
    assert lines[-1].endswith("matched no files (skipped 1 longctx job output folder under it)")


def test_sample_books_folder_with_an_output_inside(tmp_path):
    """The sample corpus plus a finished job's output beside it in one folder: same counts."""
    data = tmp_path / "corpus"
    data.mkdir()
    shutil.copy(SAMPLE_BOOKS, data / SAMPLE_BOOKS.name)
    with gzip.open(SAMPLE_BOOKS, "rt") as fh:
        books = sum(1 for _ in fh)
    first = _run([str(data)], data / "job")
    again = _run([str(data)], tmp_path / "job2")
    assert first["read"] == again["read"] == books
    assert (first["kept"], first["rejected"]) == (again["kept"], again["rejected"])


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(pytest.main([__file__]))
