"""A --checkpoint / --init-from that names no model (a run folder, a data folder, a missing path, a
hub id out of reach), a tokenizer other than the one the checkpoint's training data was made with,
and impossible generate / eval flags stop the command with one line and exit code 2, the same for
`train --init-from`, `generate` and the evals (training.hf.resolve_model and
check_checkpoint_tokenizer are the one check they share)."""

from __future__ import annotations

import shutil
from pathlib import Path

import jax
import numpy as np
import pytest
import yaml

from curation.tokenize import resolve_package_path
from longctx.cli import main
from tests.conftest import DEMO_TOKENIZER, cli_error, write_toy_stage
from training import checkpoint as ckpt
from training.model import ModelConfig, init_params

OTHER_TOKENIZER = "package:mistral_common/data/mistral_instruct_tokenizer_240216.model.v2"  # other ids for the same text


@pytest.fixture(scope="module")
def run(book_shards, tmp_path_factory) -> Path:
    """A run folder as the trainer leaves it (config.yaml naming the demo-tokenizer shards,
    checkpoints/final) around a tiny one-layer model with random weights (nothing is trained)."""
    run = tmp_path_factory.mktemp("paths") / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({"data": str(book_shards / "s128")}))
    config = ModelConfig(num_layers=1, hidden_size=16, intermediate_size=32, num_heads=2, num_kv_heads=1, vocab_size=32000,
                         max_position_embeddings=4096)
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: rng.normal(0, 0.02, s.shape).astype(np.float32),
                          jax.eval_shape(lambda: init_params(config, jax.random.key(0))))
    ckpt.save_params(run / "checkpoints" / "final", config, params)
    return run


@pytest.fixture
def hub_offline(monkeypatch):
    """The hub out of reach without touching the network (what hub_unreachable reads first)."""
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)


def _error(argv: list[str], capsys) -> str:
    return cli_error(argv, capsys)[-1]

def _bad_paths(run: Path, book_shards: Path, tmp_path: Path) -> list[tuple[str, str]]:
    """(--checkpoint / --init-from value, the text its one line holds)."""
    return [
        (str(run), f"{str(run)!r} is a training run; pass its checkpoint: {run}/checkpoints/final"),
        (str(book_shards / "s128"), f"{str(book_shards / 's128')!r} is a data folder, not a checkpoint"),
        (str(book_shards), f"{str(book_shards)!r} is a data folder, not a checkpoint"),
        (str(tmp_path / "runs" / "nothing" / "checkpoints" / "final"), "is not a model directory: no such folder"),
        ("nowhere/final", "'nowhere/final': no such folder, and as a Hugging Face hub id it could not be fetched "
                          "(HF_HUB_OFFLINE is set) and is not in the local Hugging Face cache"),
    ]


def test_train_init_from_names_what_it_got(run, book_shards, tmp_path, capsys, hub_offline):
    for value, said in _bad_paths(run, book_shards, tmp_path):
        line = _error(["train", "--data", str(book_shards / "s128"), "--out", str(tmp_path / "out"), "--init-from", value,
                       "--steps", "1", "--seq-len", "128", "--global-batch", "1", "--attention", "dense",
                       "--mesh", "dp=1,fsdp=1,tp=1,sp=1", "--no-progress"], capsys)
        assert line.startswith("longctx train: error: ") and said in line, line


def test_generate_checkpoint_names_what_it_got(run, book_shards, tmp_path, capsys, hub_offline):
    for value, said in _bad_paths(run, book_shards, tmp_path):
        line = _error(["generate", "--checkpoint", value, "--prompt", "It is", "--tokenizer", DEMO_TOKENIZER,
                       "--max-new-tokens", "3"], capsys)
        assert line.startswith("longctx generate: error: ") and said in line, line


@pytest.mark.parametrize("command", ["niah", "ruler", "loss-by-position"])
def test_eval_checkpoint_names_what_it_got(command, run, book_shards, tmp_path, capsys, hub_offline):
    extra = {"niah": ["--tokenizer", DEMO_TOKENIZER, "--lengths", "256"],
             "ruler": ["--tokenizer", DEMO_TOKENIZER, "--lengths", "256", "--tasks", "niah_single_1", "--samples", "1"],
             "loss-by-position": ["--data", str(book_shards / "s128"), "--rows", "1"]}[command]
    for value, said in _bad_paths(run, book_shards, tmp_path):
        line = _error(["eval", command, "--checkpoint", value, "--out", str(tmp_path / "o"), *extra], capsys)
        assert line.startswith(f"longctx eval {command}: error: ") and said in line, line


@pytest.mark.parametrize("count", ["0", "-2"])
def test_generate_refuses_no_new_tokens(count, run, capsys):
    line = _error(["generate", "--checkpoint", str(run / "checkpoints" / "final"), "--prompt", "It is",
                   "--tokenizer", DEMO_TOKENIZER, "--max-new-tokens", count], capsys)
    assert line == f"longctx generate: error: --max-new-tokens must be at least 1, got {count}"


MISMATCH = f"tokenizer {OTHER_TOKENIZER!r} is not the one the training data was made with ({DEMO_TOKENIZER!r})"


def test_generate_refuses_another_tokenizer_than_the_datas(run, tmp_path, capsys):
    final = str(run / "checkpoints" / "final")
    line = _error(["generate", "--checkpoint", final, "--prompt", "It is", "--tokenizer", OTHER_TOKENIZER,
                   "--max-new-tokens", "2"], capsys)
    assert line.startswith(f"longctx generate: error: {MISMATCH}"), line
    # The same file under another name is the same tokenizer (compared by sha256): it runs.
    copy = tmp_path / "tokenizer.model"
    shutil.copy(resolve_package_path(DEMO_TOKENIZER), copy)
    capsys.readouterr()
    assert main(["generate", "--checkpoint", final, "--prompt", "It is", "--tokenizer", str(copy), "--max-new-tokens", "2"]) == 0
    assert "new token ids:" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["niah", "ruler"])
def test_evals_refuse_another_tokenizer_than_the_datas(command, run, tmp_path, capsys):
    extra = ["--tasks", "niah_single_1", "--samples", "1"] if command == "ruler" else []
    line = _error(["eval", command, "--checkpoint", str(run / "checkpoints" / "final"), "--tokenizer", OTHER_TOKENIZER,
                   "--lengths", "256", "--out", str(tmp_path / "o"), *extra], capsys)
    assert line.startswith(f"longctx eval {command}: error: {MISMATCH}"), line


def test_loss_by_position_refuses_shards_of_another_tokenizer(run, tmp_path, capsys):
    toy = write_toy_stage(tmp_path / "toy", vocab=1000)  # records the tokenizer "toy", sha256 abab...
    line = _error(["eval", "loss-by-position", "--checkpoint", str(run / "checkpoints" / "final"), "--data", toy,
                   "--rows", "1", "--out", str(tmp_path / "o")], capsys)
    assert line.startswith(f"longctx eval loss-by-position: error: --data {toy} was made with tokenizer 'toy' "
                           "(sha256 abababababab), not the one the checkpoint's training data was made with"), line


def test_loss_by_position_refuses_another_tokenizer_for_raw_books(run, sample_books, tmp_path, capsys):
    books = tmp_path / "books.jsonl"
    books.write_text('{"text": "It is a truth universally acknowledged. ' + "Word " * 300 + '"}\n')
    line = _error(["eval", "loss-by-position", "--checkpoint", str(run / "checkpoints" / "final"), "--data", str(books),
                   "--length", "64", "--tokenizer", OTHER_TOKENIZER, "--rows", "1", "--out", str(tmp_path / "o")], capsys)
    assert line.startswith(f"longctx eval loss-by-position: error: {MISMATCH}"), line


@pytest.mark.parametrize("flags, said", [
    (["--lengths", ""], "--lengths '' names no length: give token counts such as 1k,2k,4k or 1k..32k:8"),
    (["--lengths", "abc"], "--lengths 'abc': bad count 'abc': expected a whole number"),
    (["--depths", "abc"], "--depths 'abc': not a count of depths spread evenly over 0..100 % (e.g. 5) or percents"),
    (["--depths", "10,x"], "--depths '10,x': not a count of depths"),
])
def test_niah_grid_flags_say_what_is_wrong(flags, said, run, tmp_path, capsys):
    line = _error(["eval", "niah", "--checkpoint", str(run / "checkpoints" / "final"), "--tokenizer", DEMO_TOKENIZER,
                   "--out", str(tmp_path / "o"), *flags], capsys)
    assert line.startswith(f"longctx eval niah: error: {said}"), line


def test_ruler_lengths_flag_says_what_is_wrong(run, tmp_path, capsys):
    line = _error(["eval", "ruler", "--checkpoint", str(run / "checkpoints" / "final"), "--tokenizer", DEMO_TOKENIZER,
                   "--lengths", " , ", "--tasks", "niah_single_1", "--out", str(tmp_path / "o")], capsys)
    assert line == "longctx eval ruler: error: --lengths ' , ' names no length: give token counts such as 1k,2k,4k or 1k..32k:8"


def test_a_tokenizer_with_the_same_vocabulary_but_another_file_is_refused(tmp_path):
    """v2 and v3 share vocabulary size and special ids but are other files: refused by sha256 (convert
    only warns there; a model run on text must not read it with other ids)."""
    from curation.packing import RowArrays
    from curation.shards import write_shard
    from curation.tokenize import load_tokenizer
    from training.hf import check_checkpoint_tokenizer

    v3 = "package:mistral_common/data/mistral_instruct_tokenizer_240323.model.v3"
    _, recorded = load_tokenizer(OTHER_TOKENIZER)
    _, given = load_tokenizer(v3)
    write_shard(str(tmp_path / "data"), "s8", 0, 1, RowArrays.empty(1, 8), {"tokenizer": recorded.as_metadata()})
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text(yaml.safe_dump({"data": str(tmp_path / "data" / "s8")}))
    final = tmp_path / "run" / "checkpoints" / "final"
    with pytest.raises(ValueError) as err:
        check_checkpoint_tokenizer(final, given, v3)
    assert str(err.value) == (f"tokenizer {v3!r} is not the one the training data was made with ({OTHER_TOKENIZER!r}) "
                              f"(sha256 {given.sha256[:12]} != {recorded.sha256[:12]}): its ids stand for other text; "
                              "pass --tokenizer with the data's tokenizer")
    check_checkpoint_tokenizer(final, recorded, OTHER_TOKENIZER)  # the data's own: no error


def test_train_init_from_refuses_data_of_another_tokenizer(run, tmp_path, capsys):
    toy = write_toy_stage(tmp_path / "toy", vocab=1000)  # records the tokenizer "toy": other text for the same ids
    line = _error(["train", "--data", toy, "--out", str(tmp_path / "out"), "--init-from", str(run / "checkpoints" / "final"),
                   "--steps", "1", "--seq-len", "64", "--global-batch", "1", "--attention", "dense",
                   "--mesh", "dp=1,fsdp=1,tp=1,sp=1", "--no-progress"], capsys)
    assert line.startswith(f"longctx train: error: --data {toy} was made with tokenizer 'toy' (sha256 abababababab), "
                           "not the one the checkpoint's training data was made with"), line
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_convert_from_hf_names_what_it_got(run, book_shards, tmp_path, capsys):
    line = _error(["convert", "--from-hf", str(book_shards / "s128"), "--out", str(tmp_path / "params")], capsys)
    assert line.startswith("longctx convert: error: ") and "is a data folder, not a checkpoint" in line, line
