"""`longctx eval loss-by-position`: a flag value that cannot work, an --out that is a file, a torch
--device this machine lacks and an --hf-model path that is not there are refused in one line
before any row is scored (they were tracebacks: ZeroDivisionError for --sp 0, FileExistsError after
the whole scoring for --out, torch's RuntimeError for --device, transformers' OSError for a missing
folder); and an --hf-model is not run on shards made with a tokenizer of another vocabulary (it
scored them as other text, with no word). --sp -1 made a negative ring chunk."""

from __future__ import annotations

import pytest

from tests.conftest import cli_error, write_toy_stage
from tests.test_niah import TOY, toy_params


@pytest.fixture(scope="module")
def toy_checkpoint(tmp_path_factory) -> str:
    from training import checkpoint as ckpt

    return str(ckpt.save_params(tmp_path_factory.mktemp("toy") / "toy", TOY, toy_params()))


@pytest.fixture(scope="module")
def stage(tmp_path_factory) -> str:
    return write_toy_stage(tmp_path_factory.mktemp("data"), length=64, vocab=1000, shards=1, rows=4)


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory) -> str:
    return make_gpt2(tmp_path_factory.mktemp("gpt2"))


def make_gpt2(folder) -> str:
    """A tiny random GPT-2 (50,257 ids) with the real GPT-2 tokenizer beside it, in `folder`."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.convert_slow_tokenizer import TikTokenConverter

    from curation.tokenize import WORD_SPLIT_PATTERNS, resolve_package_path

    tok = TikTokenConverter(vocab_file=str(resolve_package_path("package:whisper/assets/gpt2.tiktoken")),
                            pattern=WORD_SPLIT_PATTERNS["gpt2"], extra_special_tokens=["<|endoftext|>"]).converted()
    tok.save(str(folder / "tokenizer.json"))
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, n_positions=128, vocab_size=50257)).save_pretrained(folder)
    return str(folder)


def _loss(*args: str) -> list[str]:
    return ["eval", "loss-by-position", *args]


@pytest.mark.parametrize("sp", ["0", "-1"])
def test_sp_below_one_is_refused(toy_checkpoint, stage, tmp_path, capsys, sp):
    lines = cli_error(_loss("--checkpoint", toy_checkpoint, "--data", stage, "--rows", "1", "--sp", sp,
                            "--out", str(tmp_path / "o")), capsys)
    assert lines[-1] == f"longctx eval loss-by-position: error: --sp must be at least 1, got {sp}", lines[-1]
    assert not (tmp_path / "o").exists()


def test_out_that_is_a_file_is_refused_before_scoring(toy_checkpoint, stage, tmp_path, capsys):
    out = tmp_path / "taken"
    out.write_text("not a folder")
    lines = cli_error(_loss("--checkpoint", toy_checkpoint, "--data", stage, "--rows", "1", "--out", str(out)), capsys)
    assert lines[-1].startswith("longctx eval loss-by-position: error: --out ") and "not a folder" in lines[-1], lines[-1]
    assert "rows 1/1" not in capsys.readouterr().out  # nothing was scored
    assert out.read_text() == "not a folder"


@pytest.mark.parametrize("device", ["bogus", "cuda:99"])
def test_a_device_torch_cannot_use_is_refused(gpt2_folder, stage, tmp_path, capsys, device):
    lines = cli_error(_loss("--hf-model", gpt2_folder, "--data", stage, "--rows", "1", "--device", device,
                            "--out", str(tmp_path / "o")), capsys)
    assert lines[-1].startswith(f"longctx eval loss-by-position: error: --device {device!r}"), lines[-1]


def test_a_missing_hf_model_folder_is_one_line(stage, tmp_path, capsys):
    lines = cli_error(_loss("--hf-model", str(tmp_path / "no-model"), "--data", stage, "--out", str(tmp_path / "o")), capsys)
    assert lines[-1].startswith("longctx eval loss-by-position: error: --hf-model ") and "no such" in lines[-1], lines[-1]


def test_length_and_rows_are_said_as_their_flags(gpt2_folder, tmp_path, capsys):
    books = tmp_path / "books.jsonl"
    books.write_text('{"id": "a", "text": "Call me Ishmael. Some years ago, never mind how long precisely."}\n')
    lines = cli_error(_loss("--hf-model", gpt2_folder, "--data", str(books), "--length", "0", "--out", str(tmp_path / "o")), capsys)
    assert lines[-1].startswith("longctx eval loss-by-position: error: --length "), lines[-1]
    lines = cli_error(_loss("--hf-model", gpt2_folder, "--data", str(books), "--length", "16", "--rows", "0",
                            "--out", str(tmp_path / "o")), capsys)
    assert lines[-1].startswith("longctx eval loss-by-position: error: --rows "), lines[-1]


def test_hf_model_on_shards_of_another_vocabulary_is_refused(gpt2_folder, stage, tmp_path, capsys):
    # The toy shards record a 1,000-id tokenizer; GPT-2's ids 0..999 are other text.
    lines = cli_error(_loss("--hf-model", gpt2_folder, "--data", stage, "--rows", "1", "--out", str(tmp_path / "o")), capsys)
    assert lines[-1].startswith("longctx eval loss-by-position: error: ") and "vocab_size 50257 != 1000" in lines[-1], lines[-1]
    assert not (tmp_path / "o").exists()
