"""Impossible `longctx eval` and `longctx generate` flags stop the command in one line with exit
code 2, naming the flag and what to pass instead, where they used to end in a traceback, a nan
mean or a silent fallback to a default: --chunk 0, --samples 0, --max-new-tokens 0, prompt ids
that are empty, not numbers or outside the vocabulary, a negative or nan temperature, and an
eval report of a summary.json that lacks what the report reads."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import pytest

from tests.conftest import DEMO_TOKENIZER, cli_error, write_toy_stage
from training import checkpoint as ckpt
from training.model import ModelConfig, init_params


@pytest.fixture(scope="module")
def final(tmp_path_factory) -> Path:
    """A params checkpoint of a tiny model with the demo tokenizer's 32000 ids (random weights)."""
    config = ModelConfig(num_layers=1, hidden_size=16, intermediate_size=32, num_heads=2, num_kv_heads=1, vocab_size=32000)
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: rng.normal(0, 0.02, s.shape).astype(np.float32),
                          jax.eval_shape(lambda: init_params(config, jax.random.key(0))))
    return ckpt.save_params(tmp_path_factory.mktemp("flags") / "final", config, params)


def _error(argv: list[str], capsys) -> str:
    return cli_error(argv, capsys)[-1]


EVAL_FLAGS = [
    ("niah", ["--chunk", "0"], "--chunk must be at least 1, got 0"),
    ("ruler", ["--chunk", "0"], "--chunk must be at least 1, got 0"),
    ("niah", ["--max-new-tokens", "0"], "--max-new-tokens must be at least 1, got 0"),
    ("niah", ["--max-new-tokens", "-1"], "--max-new-tokens must be at least 1, got -1"),
    ("ruler", ["--max-new-tokens", "0"], "--max-new-tokens must be at least 1, got 0"),
    ("niah", ["--samples", "0"], "--samples must be at least 1, got 0"),
    ("niah", ["--samples", "-1"], "--samples must be at least 1, got -1"),
]


@pytest.mark.parametrize("command, flags, said", EVAL_FLAGS)
def test_eval_count_flags_below_one_are_refused(command, flags, said, final, tmp_path, capsys):
    extra = ["--tasks", "niah_single_1", "--samples", "1"] if command == "ruler" and "--samples" not in flags else []
    line = _error(["eval", command, "--checkpoint", str(final), "--tokenizer", DEMO_TOKENIZER, "--lengths", "256",
                   "--out", str(tmp_path / "o"), *extra, *flags], capsys)
    assert line == f"longctx eval {command}: error: {said}"
    assert not (tmp_path / "o").exists()  # refused before anything ran


def test_loss_by_position_chunk_zero_names_the_flag(final, tmp_path, capsys):
    stage = write_toy_stage(tmp_path / "data", vocab=32000)
    line = _error(["eval", "loss-by-position", "--checkpoint", str(final), "--data", stage, "--rows", "1",
                   "--chunk", "0", "--out", str(tmp_path / "o")], capsys)
    assert line == "longctx eval loss-by-position: error: --chunk must be at least 1, got 0"


def test_niah_grid_refuses_no_answer_tokens_instead_of_the_default():
    """run_grid's None is the default answer length; 0 used to fall back to it silently."""
    from evals import niah

    with pytest.raises(ValueError, match="max_new_tokens must be at least 1, got 0"):
        next(niah.run_grid(None, None, None, [256], [50], max_new_tokens=0))
    with pytest.raises(ValueError, match="samples must be at least 1, got 0"):
        next(niah.run_grid(None, None, None, [256], [50], samples=0))


@pytest.mark.parametrize("flags, said", [
    (["--prompt-ids", ""], "--prompt-ids '' names no token id: give comma-separated ids such as 1,450,4996"),
    (["--prompt-ids", " , "], "--prompt-ids ' , ' names no token id: give comma-separated ids such as 1,450,4996"),
    (["--prompt-ids", "1,2,x"], "--prompt-ids '1,2,x': 'x' is not a token id; give comma-separated whole numbers "
                                "such as 1,450,4996"),
    (["--prompt-ids", "1,99999"], "--prompt-ids: token id 99999 is outside the model's vocabulary; give ids in [0, 32000)"),
    (["--prompt-ids", "1,2", "--temperature", "-1"], "--temperature must be a finite number >= 0 (0 = greedy), got -1.0"),
    (["--prompt-ids", "1,2", "--temperature", "nan"], "--temperature must be a finite number >= 0 (0 = greedy), got nan"),
    (["--prompt-ids", "1,2", "--temperature", "inf"], "--temperature must be a finite number >= 0 (0 = greedy), got inf"),
])
def test_generate_refuses_prompts_and_temperatures_it_cannot_use(flags, said, final, capsys):
    line = _error(["generate", "--checkpoint", str(final), "--max-new-tokens", "2", *flags], capsys)
    assert line == f"longctx generate: error: {said}"


def test_generate_ids_are_in_the_vocabulary(final, capsys):
    from longctx.cli import main

    for ids, bad in (("1,32000", 32000), ("1,-5", -5)):
        line = _error(["generate", "--checkpoint", str(final), "--prompt-ids", ids, "--max-new-tokens", "2"], capsys)
        assert line == f"longctx generate: error: --prompt-ids: token id {bad} is outside the model's vocabulary; give ids in [0, 32000)"
    # Both ends of the vocabulary are ids, sampled or not.
    assert main(["generate", "--checkpoint", str(final), "--prompt-ids", "0, 31999", "--max-new-tokens", "2",
                 "--temperature", "0.5"]) == 0
    assert capsys.readouterr().out.startswith("new token ids: ")


def test_generate_refuses_an_empty_prompt_without_bos(final, capsys):
    from longctx.cli import main

    line = _error(["generate", "--checkpoint", str(final), "--prompt", "", "--tokenizer", DEMO_TOKENIZER, "--no-bos",
                   "--max-new-tokens", "2"], capsys)
    assert line == "longctx generate: error: --prompt '' gives no tokens and --no-bos adds no BOS: give some prompt text"
    # With BOS the empty prompt is one token, and runs.
    assert main(["generate", "--checkpoint", str(final), "--prompt", "", "--tokenizer", DEMO_TOKENIZER,
                 "--max-new-tokens", "2"]) == 0


@pytest.mark.parametrize("name, content, said", [
    ("summary.json", {"tasks": 5}, "not a complete eval ruler output: 'tasks' must map each task to its scores by length"),
    ("summary.json", {"tasks": {"niah_single_1": {"256": 50.0}}}, "not a complete eval ruler output: no 'average' or "
                                                                    "'threshold' field; pass the folder `longctx eval ruler` wrote"),
    ("summary.json", {"tasks": {}, "average": {"256": "high"}, "threshold": 85.6},
     "not a complete eval ruler output: 'average' must map each length to a score"),
    ("loss_by_position.json", {"buckets": [{"start": 1}]},
     "not a complete eval loss-by-position output: 'buckets' must be a list of"),
])
def test_report_names_the_file_and_what_it_lacks(name, content, said, tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / name).write_text(json.dumps(content))
    line = _error(["eval", "report", str(tmp_path / "run"), "--out", str(tmp_path / "report")], capsys)
    assert line.startswith("longctx eval report: error: ") and f"{name}: {said}" in line, line
