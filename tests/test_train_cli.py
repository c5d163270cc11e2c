"""`longctx train`, `convert` and `generate` from the command line, on real shards."""

from __future__ import annotations

import jax
import numpy as np

from pipelines.cli import main
from tests.conftest import DEMO_TOKENIZER
from training import checkpoint as ckpt


def test_train_convert_generate_round_trip(book_shards, tmp_path, capsys):
    run = tmp_path / "run"
    code = main(["train", "--data", str(book_shards / "s128"), "--out", str(run), "--seq-len", "128",
                 "--global-batch", "2", "--steps", "3", "--mesh", "dp=1,fsdp=1,tp=1,sp=2", "--q-chunk", "32",
                 "--kv-chunk", "32", "--no-progress", "--rope-theta", "1e6"])
    assert code == 0
    assert "longctx train" in capsys.readouterr().out
    final = run / "checkpoints" / "final"
    config, params = ckpt.load_params(final)
    assert config.rope_theta == 1e6

    hf_dir = tmp_path / "hf"
    assert main(["convert", "--to-hf", str(final), "--out", str(hf_dir)]) == 0
    back = tmp_path / "back"
    assert main(["convert", "--from-hf", str(hf_dir), "--out", str(back)]) == 0
    config2, params2 = ckpt.load_params(back)
    assert config2.rope_theta == 1e6 and config2.num_layers == config.num_layers
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(params2)):
        assert np.array_equal(np.asarray(a), np.asarray(b))

    capsys.readouterr()
    assert main(["generate", "--checkpoint", str(back), "--prompt", "It is a truth", "--tokenizer", DEMO_TOKENIZER,
                 "--max-new-tokens", "5"]) == 0
    printed = capsys.readouterr().out
    ids = [int(x) for x in printed.split("new token ids:")[1].split()[0].split(",")]
    assert len(ids) == 5 and all(0 <= i < 32000 for i in ids)
    # Greedy decoding is deterministic and the same from the HF export as from the checkpoint.
    assert main(["generate", "--checkpoint", str(hf_dir), "--prompt", "It is a truth", "--tokenizer", DEMO_TOKENIZER,
                 "--max-new-tokens", "5"]) == 0
    assert f"new token ids: {','.join(map(str, ids))}" in capsys.readouterr().out


def test_train_refuses_unknown_flags(capsys):
    try:
        main(["train", "--no-such-flag", "1"])
    except SystemExit as err:
        assert err.code == 2
    assert "unrecognized arguments: --no-such-flag" in capsys.readouterr().err
