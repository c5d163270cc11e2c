"""Settings that cannot work stop a job before it starts, in one line and with exit code 2: a
path that matches nothing, a VQGAN that is not there, impossible numbers, malformed inline YAML.
Each case here once failed only inside the running pipeline, after a traceback, or with a raw
YAML traceback and exit code 1."""

from __future__ import annotations

import json

import pytest

from tests.conftest import DEMO_TOKENIZER, REPO, cli_error


def _one_line_error(argv: list[str], capsys) -> str:
    return cli_error(argv, capsys)[-1]

@pytest.fixture
def books(tmp_path):
    folder = tmp_path / "books"
    folder.mkdir()
    (folder / "a.jsonl").write_text(json.dumps({"id": "a", "text": "A short book. " * 50}) + "\n")
    return folder


def _books(books, out, *extra: str) -> list[str]:
    return ["books", "--input", str(books), "--output", str(out), "--tokenizer", DEMO_TOKENIZER,
            "--stages", "tiny=512:10", *extra]


@pytest.mark.parametrize("missing", ["nothing.jsonl", "nowhere/*.jsonl"])
def test_an_input_that_matches_nothing_is_refused_before_anything_is_written(tmp_path, capsys, missing):
    out = tmp_path / "out"
    argv = ["books", "--input", str(tmp_path / missing), "--output", str(out), "--tokenizer", DEMO_TOKENIZER]
    line = _one_line_error(argv, capsys)
    assert line == f"longctx books: error: input {str(tmp_path / missing)!r} matched no files"
    assert not out.exists()


def test_evaluation_files_that_match_nothing_are_refused(books, tmp_path, capsys):
    line = _one_line_error(_books(books, tmp_path / "out", "--decontaminate", str(tmp_path / "eval.jsonl")), capsys)
    assert line == f"longctx books: error: decontaminate {str(tmp_path / 'eval.jsonl')!r} matched no files"


@pytest.mark.parametrize(("flags", "message"), [
    (["--sample", "0"], "sample: Input should be greater than or equal to 1"),
    (["--sample", "-1"], "sample: Input should be greater than or equal to 1"),
    (["--quality", "{max_dup_lines: 0.5"], "quality: not valid YAML (expected ',' or '}'"),
    (["--quality", "[1,2"], "quality: not valid YAML (expected ',' or ']'"),
    (["--pack-group-tokens", "0"], "pack_group_tokens: Input should be greater than 0"),
])
def test_impossible_books_settings(books, tmp_path, capsys, flags, message):
    line = _one_line_error(_books(books, tmp_path / "out", *flags), capsys)
    assert line.startswith(f"longctx books: error: {message}"), line


@pytest.mark.parametrize(("flags", "message"), [
    (["--chunk-tokens", "300"], "chunk sizes must be chunk_min_tokens <= chunk_tokens <= chunk_max_tokens, got 500 <= 300 <= 1500"),
    (["--chunk-max-tokens", "10"], "chunk sizes must be chunk_min_tokens <= chunk_tokens <= chunk_max_tokens, got 500 <= 1000 <= 10"),
    (["--min-grounding", "1.5"], "min_grounding: Input should be less than or equal to 1"),
])
def test_impossible_qa_settings(books, tmp_path, capsys, flags, message):
    argv = ["qa", "--backend", "extractive", "--input", str(books), "--output", str(tmp_path / "out"),
            "--tokenizer", DEMO_TOKENIZER, "--stages", "tiny=2048:1", *flags]
    assert _one_line_error(argv, capsys).startswith(f"longctx qa: error: {message}")


@pytest.fixture
def manifest(tmp_path):
    path = tmp_path / "videos.jsonl"
    path.write_text(json.dumps({"video": "clip.mp4", "text": "A clip."}) + "\n")
    return path


@pytest.mark.parametrize(("vqgan", "problem"), [
    ("nonexist", "no such folder"),
    ("./nowhere/vqgan", "no such folder"),
    (".", "no config.json in it"),
])
@pytest.mark.parametrize("command", ["video", "images"])
def test_a_vqgan_that_is_not_there_is_refused_before_the_inputs_are_read(manifest, tmp_path, capsys, command, vqgan, problem):
    argv = [command, "--input", str(manifest), "--output", str(tmp_path / "out"), "--tokenizer", DEMO_TOKENIZER,
            "--vqgan", vqgan, "--stages", "v=4096:0-", "--frame-size", "32"]
    line = _one_line_error(argv, capsys)
    assert line.startswith(f"longctx {command}: error: vqgan {vqgan!r}: {problem} (expected a diffusers VQModel folder")


@pytest.mark.parametrize(("flags", "message"), [
    (["--fps", "0"], "fps: Input should be greater than 0"),
    (["--fps", "-1"], "fps: Input should be greater than 0"),
    (["--max-frames", "0"], "max_frames: Input should be greater than or equal to 1"),
    (["--encode-batch", "0"], "encode_batch: Input should be greater than or equal to 1"),
    (["--frame-count", "0"], "frame_count: Input should be greater than or equal to 1"),
])
def test_impossible_video_settings(manifest, tmp_path, capsys, flags, message):
    argv = ["video", "--input", str(manifest), "--output", str(tmp_path / "out"), "--tokenizer", DEMO_TOKENIZER,
            "--vqgan", str(tmp_path), "--stages", "v=4096:0-", *flags]
    assert _one_line_error(argv, capsys).startswith(f"longctx video: error: {message}")


def test_a_malformed_plan_override_is_one_line(capsys):
    line = _one_line_error(["plan", "--config", str(REPO / "configs" / "train" / "tiny-4k.yaml"), "--set", "global_batch=[1,"], capsys)
    assert line == ("longctx plan: error: --set 'global_batch=[1,': not valid YAML "
                    "(expected the node content, but found '<stream end>')")


def _tokenizer_folder(folder, chat_template: str | None):
    """A small fast tokenizer saved as a model folder would hold it (tokenizer.json + tokenizer_config.json)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    folder.mkdir()
    tok = Tokenizer(models.WordLevel({"<unk>": 0, "<s>": 1, "</s>": 2, "a": 3}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(folder / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    if chat_template:
        config["chat_template"] = chat_template
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


def test_a_training_tokenizer_without_a_chat_template_is_refused_before_the_job(books, tmp_path, capsys):
    def qa(tokenizer: str) -> str:
        argv = ["qa", "--backend", "extractive", "--input", str(books), "--output", str(tmp_path / "out"),
                "--tokenizer", tokenizer, "--stages", "tiny=2048:1", "--chat-format", "tokenizer"]
        return _one_line_error(argv, capsys)

    # A bare SentencePiece model has no template (this once failed in every worker's setup, rc 1).
    assert qa(DEMO_TOKENIZER) == (f"longctx qa: error: chat_format 'tokenizer' needs the tokenizer's chat template, and "
                                  f"{DEMO_TOKENIZER!r} has no tokenizer_config.json beside it: pass a model folder (or hub "
                                  "id) with one, or use chat_format lwm")
    plain = _tokenizer_folder(tmp_path / "plain", None)
    assert qa(str(plain)) == f"longctx qa: error: chat_format 'tokenizer': the tokenizer {str(plain)!r} has no chat template; use chat_format lwm"
    (plain / "tokenizer_config.json").write_text("{not json")
    assert qa(str(plain)).startswith(f"longctx qa: error: chat_format 'tokenizer': cannot load the tokenizer {str(plain)!r} with transformers (")
    assert not (tmp_path / "out").exists()


def test_a_tokenizer_folder_with_a_chat_template_passes_the_check(tmp_path):
    from curation.chat_format import tokenizer_chat_format

    folder = _tokenizer_folder(tmp_path / "chat", "{% for m in messages %}{{ m['content'] }}{% endfor %}")
    fmt = tokenizer_chat_format(str(folder))
    assert fmt.hf_tokenizer.apply_chat_template([{"role": "user", "content": "a"}], tokenize=False) == "a"
