"""`--decontaminate FILE` whose documents hold no word n-gram at the configured size (an empty file,
or only documents shorter than the n-gram) decontaminated nothing and the job ran as if the flag
had not been given. It stops in one line, saying how many documents were read, and writes no
manifest."""

from __future__ import annotations

import json

import pytest

from curation.decontaminate import NoEvaluationNgrams, build_index, eval_ngrams
from tests.conftest import DEMO_TOKENIZER, cli_error


@pytest.fixture
def common(tmp_path):
    books = tmp_path / "books.jsonl"
    books.write_text(json.dumps({"id": "a", "text": "The whale and the sea were all the sailor knew of the world. " * 20}) + "\n")
    return ["books", "--input", str(books), "--output", str(tmp_path / "out"), "--tokenizer", DEMO_TOKENIZER, "--stages", "t=64:0-"]


def test_an_empty_evaluation_file_is_refused(common, tmp_path, capsys):
    evals = tmp_path / "evals.jsonl"
    evals.write_text("")
    line = cli_error([*common, "--decontaminate", str(evals)], capsys)[-1]
    assert line == ("longctx books: error: decontaminate: no evaluation document was read (the files hold no record), so "
                    "nothing could be found contaminated: give evaluation documents of at least 13 words, or a smaller "
                    "--decontaminate-ngram")
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_evaluation_documents_shorter_than_the_ngram_are_refused(common, tmp_path, capsys):
    evals = tmp_path / "evals.jsonl"
    evals.write_text("".join(json.dumps({"id": f"q{i}", "text": "the whale and the sea"}) + "\n" for i in range(3)))
    line = cli_error([*common, "--decontaminate", str(evals), "--decontaminate-ngram", "8"], capsys)[-1]
    assert line == ("longctx books: error: decontaminate: 3 evaluation documents were read and none holds a word 8-gram (each "
                    "has fewer than 8 words), so nothing could be found contaminated: give evaluation documents of at least "
                    "8 words, or a smaller --decontaminate-ngram")
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_one_document_with_an_ngram_is_enough():
    index = build_index([("short", eval_ngrams("the whale", 3)), ("long", eval_ngrams("the whale and the sea", 3))], 3)
    assert index.names == ("long",) and int(index.sizes[0]) == 3
    with pytest.raises(NoEvaluationNgrams, match="1 evaluation document was read and none holds a word 3-gram"):
        build_index([("short", eval_ngrams("the whale", 3))], 3)
