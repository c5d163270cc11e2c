"""`longctx generate` echoes the prompt and prints the text, and says so when the new tokens are
only whitespace instead of printing blank lines (issue 19)."""

from __future__ import annotations

import jax
import numpy as np

from longctx.cli import main
from tests.conftest import DEMO_TOKENIZER
from training import checkpoint as ckpt
from training.model import ModelConfig, init_params

NEWLINE = 13  # <0x0A> in the demo SentencePiece tokenizer
IS = 278  # "is" in the demo tokenizer


def _always(token: int) -> dict:
    """A one-layer model that predicts `token` after anything: its layers add nothing (zero
    weights), so the last hidden state is the (all-ones) embedding, and only `token`'s column of
    the output head is non-zero."""
    config = ModelConfig(num_layers=1, hidden_size=16, intermediate_size=32, num_heads=2, num_kv_heads=2, vocab_size=32000)
    shapes = jax.eval_shape(lambda: init_params(config, jax.random.key(0)))

    def value(path, s):
        name = path[-2].key
        if path[-1].key == "scale" or name == "embed_tokens":
            return np.ones(s.shape, np.float32)
        array = np.zeros(s.shape, np.float32)
        if name == "lm_head":
            array[:, token] = 1.0
        return array

    return config, jax.tree_util.tree_map_with_path(value, shapes)


def test_generate_echoes_the_prompt_and_names_whitespace_output(tmp_path, capsys):
    for token, folder in ((NEWLINE, "newlines"), (IS, "text")):
        config, params = _always(token)
        ckpt.save_params(tmp_path / folder, config, params)
    capsys.readouterr()
    assert main(["generate", "--checkpoint", str(tmp_path / "newlines"), "--prompt", "It is a [truth]",
                 "--tokenizer", DEMO_TOKENIZER, "--max-new-tokens", "4"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["prompt: It is a [truth]", f"new token ids: {','.join([str(NEWLINE)] * 4)}",
                     "output: (the 4 new tokens decode to whitespace only: 4 newlines)"]
    assert main(["generate", "--checkpoint", str(tmp_path / "text"), "--prompt", "It is a truth",
                 "--tokenizer", DEMO_TOKENIZER, "--max-new-tokens", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "prompt: It is a truth" and lines[-1] == "output: isisis"
