"""`longctx generate --max-new-tokens 100000000` was an out-of-memory traceback: the decoder
prefills a buffer of prompt + new tokens (dense attention scores heads x L x L) and allocates a
KV cache slot per position. Such a request is refused in one line, with the bytes it needs,
before the weights load; positions past int32 are refused whatever the memory."""

from __future__ import annotations

import json

import jax
import pytest

from longctx.cli import main
from tests.conftest import cli_error
from training import checkpoint as ckpt
from training.generate import MAX_POSITIONS, _Decoder, check_decode_fits, decode_bytes
from training.model import ModelConfig, init_params

TOY = ModelConfig.preset("toy")


@pytest.fixture(scope="module")
def toy_params():
    return init_params(TOY, jax.random.key(0))


def test_an_impossible_length_is_one_line_before_the_weights_load(tmp_path, capsys, toy_params):
    # A checkpoint whose params folder is empty: only its model.json can be read, so the refusal
    # comes before any weight is.
    hollow = tmp_path / "hollow"
    (hollow / "params").mkdir(parents=True)
    (hollow / "model.json").write_text(json.dumps(TOY.to_dict()))
    line = cli_error(["generate", "--checkpoint", str(hollow), "--prompt-ids", "1,2,3",
                      "--max-new-tokens", "100000000"], capsys)[-1]
    assert line.startswith("longctx generate: error: --max-new-tokens 100000000 after a 3-token prompt needs at least "
                           "160,000,057,616,748,864 bytes (142.1 PiB) on one device (KV cache 47.7 GiB, prefill "
                           "attention scores 142.1 PiB, params 16.0 MiB), but it holds "), line
    assert line.endswith(": ask for fewer new tokens")
    line = cli_error(["generate", "--checkpoint", str(hollow), "--prompt-ids", "1,2,3",
                      "--max-new-tokens", str(MAX_POSITIONS)], capsys)[-1]
    assert line == ("longctx generate: error: --max-new-tokens 2147483647 after a 3-token prompt: 2,147,483,649 "
                    "positions, but positions are int32 (at most 2,147,483,647): ask for fewer new tokens")
    # A request that fits still decodes (a real checkpoint).
    ckpt.save_params(tmp_path / "toy", TOY, toy_params)
    capsys.readouterr()
    assert main(["generate", "--checkpoint", str(tmp_path / "toy"), "--prompt-ids", "1,2,3", "--max-new-tokens", "4"]) == 0
    ids = capsys.readouterr().out.strip().splitlines()[-1].removeprefix("new token ids: ").split(",")
    assert len(ids) == 4


def test_the_floor_counts_what_the_decoder_allocates(toy_params):
    """decode_bytes' KV cache and params are the decoder's own arrays, byte for byte."""
    decoder = _Decoder(TOY, toy_params, [[1, 2, 3]], None, 6, 0.0, 0, None, 512, 512)
    parts = decode_bytes(TOY, 3, 6)
    assert parts["kv_cache"] == sum(x.nbytes for x in jax.tree.leaves(decoder.cache))
    assert parts["params"] == sum(x.nbytes for x in jax.tree.leaves(toy_params))
    length = 3 + 6 - 1  # the buffer: the last new token is never fed back
    assert parts["prefill_scores"] == TOY.num_heads * length * length * 4


def test_the_check_judges_against_the_memory_it_is_given():
    needed = sum(decode_bytes(TOY, 10, 100).values())
    check_decode_fits(TOY, 10, 100, memory_bytes=needed)  # fits exactly: no error
    with pytest.raises(ValueError) as err:
        check_decode_fits(TOY, 10, 100, memory_bytes=needed - 1)
    message = str(err.value)
    assert message.startswith(f"decoding 10 prompt + 100 new tokens needs at least {needed:,} bytes") and "\n" not in message
