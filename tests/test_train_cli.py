"""`longctx train`, `convert` and `generate` from the command line, on real shards."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from curation.packing import RowArrays
from curation.shards import write_shard
from longctx.cli import main
from tests.conftest import DEMO_TOKENIZER
from training import checkpoint as ckpt


def test_train_convert_generate_round_trip(book_shards, tmp_path, capsys):
    run = tmp_path / "run"
    code = main(["train", "--data", str(book_shards / "s128"), "--out", str(run), "--seq-len", "128",
                 "--global-batch", "2", "--steps", "3", "--mesh", "dp=1,fsdp=1,tp=2,sp=4", "--q-chunk", "32",
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


def test_train_says_what_is_wrong_with_the_data_or_the_run_in_one_line(tmp_path, capsys):
    rows = RowArrays.empty(4, 64)
    rows.segment_ids[:], rows.loss_mask[:] = 1, 1.0
    rows.doc_ids, rows.doc_starts = [["d"]] * 4, [[0]] * 4
    write_shard(str(tmp_path / "books"), "s64", 0, 3, rows, {"tokenizer": {"sha256": "ab" * 32, "vocab_size": 32000}})
    common = ["train", "--data", str(tmp_path / "books" / "s64"), "--out", str(tmp_path / "run"), "--seq-len", "64",
              "--global-batch", "2", "--mesh", "dp=1,fsdp=1,tp=1,sp=1", "--no-progress"]
    for extra, expected in (([], "only 1 of 3 shards (*-of-00003.arrow) are there"),
                            (["--resume-step", "3"], "resume_step 3: "),
                            (["--global-batch", "3", "--grad-accum", "2"], "global_batch 3 (rows per step) does not split")):
        with pytest.raises(SystemExit) as err:
            main(common + extra)
        assert err.value.code == 2
        message = capsys.readouterr().err.strip().splitlines()[-1]
        assert message.startswith("longctx train: error: ") and expected in message, message
