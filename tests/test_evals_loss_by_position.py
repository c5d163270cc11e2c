"""`longctx eval loss-by-position` (evals/loss_by_position.py) on real shards of the sample books and
a toy checkpoint: bucket counts are the scored targets, bucket means are the full-sequence loss."""

from __future__ import annotations

import json

import numpy as np
import pytest

from evals.loss_by_position import bucket_edges, loss_by_position
from longctx.cli import main
from tests.test_niah import TOY, toy_params
from training import checkpoint as ckpt
from training.data import StageData


def reference_losses(params, batch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Independently of the evals code: full logits from the model's own dense attention, a
    float64 log-softmax in numpy, and the scored targets worked out from the shard columns."""
    from training.model import LlamaModel

    logits = LlamaModel(TOY).apply({"params": params}, batch["input_ids"], batch["positions"], batch["segment_ids"])
    logits = np.asarray(logits, np.float64)
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    ids, seg, mask, pos = batch["input_ids"], batch["segment_ids"], batch["loss_mask"], batch["positions"]
    loss = -np.take_along_axis(logp[:, :-1], ids[:, 1:, None], axis=-1)[..., 0]  # predict t+1 at t
    scored = (seg[:, 1:] == seg[:, :-1]) & (seg[:, :-1] > 0) & (mask[:, 1:] > 0)
    return loss, scored, pos[:, 1:]


def test_bucket_edges():
    assert bucket_edges(128).tolist() == [1, 2, 4, 8, 16, 32, 64, 128]
    assert bucket_edges(100).tolist() == [1, 2, 4, 8, 16, 32, 64, 100]
    assert bucket_edges(256, 64).tolist() == [1, 64, 128, 192, 256]
    with pytest.raises(ValueError, match="expected 'log' .* or a window width"):
        bucket_edges(128, "linear")


@pytest.mark.parametrize("buckets", ["log", 48])
def test_buckets_equal_direct_full_sequence_loss(book_shards, buckets):
    data = StageData.open(str(book_shards / "s128"))
    summary = loss_by_position(TOY, toy_params(), data, rows=6, batch_rows=4, buckets=buckets)
    picks = np.unique(np.linspace(0, data.num_rows - 1, 6).round().astype(np.int64))
    loss, scored, position = reference_losses(toy_params(), data.rows(picks))
    edges = bucket_edges(128, buckets)
    assert summary["rows"] == 6 and summary["tokens"] == int(scored.sum()) > 500
    assert sum(b["tokens"] for b in summary["buckets"]) == summary["tokens"]
    for bucket, lo, hi in zip(summary["buckets"], edges[:-1], edges[1:]):
        inside = scored & (position >= lo) & (position < hi)
        assert (bucket["start"], bucket["end"], bucket["tokens"]) == (lo, hi, int(inside.sum()))
        if inside.any():
            assert bucket["loss"] == pytest.approx(loss[inside].mean(), rel=2e-4)
        else:
            assert bucket["loss"] is None
    assert summary["loss"] == pytest.approx(loss[scored].mean(), rel=2e-4)
    # A random model over a 32000-token vocabulary: about ln(32000) everywhere.
    assert abs(summary["loss"] - np.log(32000)) < 1.0


def test_cli_writes_json_csv_and_plot(book_shards, tmp_path, capsys):
    checkpoint = ckpt.save_params(tmp_path / "toy", TOY, toy_params())
    out = tmp_path / "ppl"
    assert main(["eval", "loss-by-position", "--checkpoint", str(checkpoint), "--data", str(book_shards / "s256"),
                 "--rows", "3", "--batch-rows", "2", "--sp", "2", "--out", str(out)]) == 0
    summary = json.loads((out / "loss_by_position.json").read_text())
    assert summary["seq_len"] == 256 and summary["rows"] == 3
    assert [b["start"] for b in summary["buckets"]] == [1, 2, 4, 8, 16, 32, 64, 128]
    lines = (out / "loss_by_position.csv").read_text().splitlines()
    assert lines[0] == "start,end,tokens,loss" and len(lines) == 9
    assert sum(int(line.split(",")[2]) for line in lines[1:]) == summary["tokens"]
    from matplotlib.image import imread

    assert imread(out / "loss_by_position.png").shape[0] > 200
    assert "wrote" in capsys.readouterr().out
    with pytest.raises(SystemExit):  # a job folder instead of a stage folder
        main(["eval", "loss-by-position", "--checkpoint", str(checkpoint), "--data", str(tmp_path / "none"),
              "--out", str(out)])
    assert "no shards" in capsys.readouterr().err


def test_cli_checkpoint_on_raw_books(sample_books, demo_tokenizer, tmp_path):
    """Raw books through our JAX path: rows cut by evals.loss_sources, bucket means equal to the
    direct full-sequence loss of those very rows."""
    from evals.loss_sources import read_book_rows

    books = tmp_path / "held-out.jsonl"
    books.write_text("".join(json.dumps({"id": b["id"], "text": b["text"][:6000]}) + "\n" for b in sample_books[:3]))
    checkpoint = ckpt.save_params(tmp_path / "toy", TOY, toy_params())
    out = tmp_path / "ppl"
    assert main(["eval", "loss-by-position", "--checkpoint", str(checkpoint), "--data", str(books), "--length", "128",
                 "--tokenizer", "package:mistral_common/data/tokenizer.model.v1", "--rows", "4", "--batch-rows", "4",
                 "--out", str(out)]) == 0
    summary = json.loads((out / "loss_by_position.json").read_text())
    assert summary["source"] == "books" and summary["backend"] == "jax" and summary["books"] == 3 and summary["bos"]
    tok, info = demo_tokenizer
    rows = read_book_rows(str(books), tok, 128, bos_id=info.bos_id)
    picks = np.unique(np.linspace(0, rows.num_rows - 1, 4).round().astype(np.int64))
    loss, scored, position = reference_losses(toy_params(), rows.rows(picks))
    assert summary["tokens"] == int(scored.sum()) == 4 * 127
    for bucket in summary["buckets"]:
        inside = scored & (position >= bucket["start"]) & (position < bucket["end"])
        assert bucket["loss"] == pytest.approx(loss[inside].mean(), rel=2e-4)
