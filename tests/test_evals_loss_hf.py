"""Loss by position for transformers models (evals/hf_loss.py) and over raw books
(evals/loss_sources.py): a tiny random GPT-2 and LLaMA written with transformers, the sample novels,
the GPT-2 and Mistral (SentencePiece) tokenizers. Every loss is checked against transformers' own
computation or our JAX path, and every book row against the tokenizer on the cleaned text."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from curation.text import CleanConfig, clean_text
from curation.tokenize import encode_long, load_tokenizer, resolve_package_path
from evals.hf_loss import HFScorer, document_runs, hf_loss_by_position
from evals.loss_by_position import bucket_edges, loss_by_position
from evals.loss_sources import is_book_source, read_book_rows
from longctx.cli import main
from tests.conftest import write_toy_stage

GPT2_RANKS = "package:whisper/assets/gpt2.tiktoken"


@pytest.fixture(scope="module")
def gpt2_model(tmp_path_factory) -> str:
    """A randomly initialised 2-layer GPT-2 with the real GPT-2 tokenizer in its folder."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.convert_slow_tokenizer import TikTokenConverter

    from curation.tokenize import WORD_SPLIT_PATTERNS

    folder = tmp_path_factory.mktemp("gpt2-tiny")
    tok = TikTokenConverter(vocab_file=str(resolve_package_path(GPT2_RANKS)), pattern=WORD_SPLIT_PATTERNS["gpt2"],
                            extra_special_tokens=["<|endoftext|>"]).converted()
    tok.save(str(folder / "tokenizer.json"))
    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_embd=64, n_head=4, n_positions=512, vocab_size=50257, initializer_range=0.2)
    GPT2LMHeadModel(config).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def small_books(tmp_path_factory, sample_books) -> str:
    """Real book text, shortened: Moby-Dick's opening (BOM, CRLF, Gutenberg header: cleaning has
    work to do), Persuasion's, a book too short for a row and a record whose text is not text."""
    by_id = {b["id"]: b["text"] for b in sample_books}
    records = [{"id": "mobydick", "text": by_id["mobydick"][:30000]},
               {"id": "persuasion", "text": by_id["persuasion"][:12000]},
               {"id": "short", "text": by_id["emma"][:300]},
               {"id": "number", "text": 12345}]
    path = tmp_path_factory.mktemp("books") / "held-out.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in records)
    return str(path)


def test_book_rows_are_exact_windows_of_the_cleaned_books(small_books, sample_books, demo_tokenizer):
    tok, info = demo_tokenizer
    rows = read_book_rows(small_books, tok, 256, bos_id=info.bos_id)
    assert rows.books == 2 and rows.length == 256
    assert {s["id"]: s["reason"] for s in rows.skipped} == {"short": "too_short", "number": "wrong_type"}
    by_id = {b["id"]: b["text"] for b in sample_books}
    for book, chars in (("mobydick", 30000), ("persuasion", 12000)):
        text = clean_text(by_id[book][:chars], CleanConfig())
        ids = encode_long(tok, text, info.bos_id)
        mine = [w for w, (_, rid, _) in zip(rows.windows, rows.origins) if rid == book]
        assert len(mine) == len(ids) // 256 >= 2
        assert np.array_equal(np.concatenate(mine), ids[: len(mine) * 256])
        assert mine[0][0] == info.bos_id == 1
    moby = tok.decode(rows.windows[0].tolist())
    assert moby.startswith("Produced by Daniel Lazarus") and "\r" not in moby  # BOM, licence header, CRLF gone
    batch = rows.rows([0, rows.num_rows - 1])
    assert {k: v.shape for k, v in batch.items()} == {k: (2, 256) for k in batch}
    assert batch["positions"][1].tolist() == list(range(256)) and batch["segment_ids"].min() == 1
    again = read_book_rows(small_books, tok, 256, bos_id=info.bos_id)  # deterministic
    assert all(np.array_equal(a, b) for a, b in zip(rows.windows, again.windows))
    assert rows.origins == again.origins
    with pytest.raises(ValueError, match="no book .* gives a row of 100000 tokens"):
        read_book_rows(small_books, tok, 100000)


def test_book_source_detection(small_books, tmp_path):
    assert is_book_source(small_books) and is_book_source(str(tmp_path.parent / small_books.split("/")[-2]))
    stage = write_toy_stage(tmp_path / "out", rows=2)
    assert not is_book_source(stage) and not is_book_source(str(tmp_path / "out"))


def direct_token_nll(model, ids: np.ndarray, positions: np.ndarray | None = None) -> np.ndarray:
    """Per-token loss of predicting ids[t+1] at t, from transformers' own full forward, in float64."""
    import torch

    with torch.no_grad():
        kwargs = {} if positions is None else {"position_ids": torch.as_tensor(positions[None], dtype=torch.long)}
        logits = model(input_ids=torch.as_tensor(ids[None], dtype=torch.long), **kwargs).logits[0].double()
    logp = torch.log_softmax(logits, -1)
    return -logp[:-1].gather(-1, torch.as_tensor(ids[1:, None], dtype=torch.long))[:, 0].numpy()


def test_hf_token_losses_equal_transformers_loss(gpt2_model, small_books):
    import torch

    tok, info = load_tokenizer(gpt2_model)
    assert info.bos_id is None  # GPT-2 puts nothing before a document
    rows = read_book_rows(small_books, tok, 128)
    batch = rows.rows([0, 5, rows.num_rows - 1])
    scorer = HFScorer(gpt2_model)
    assert scorer.chunked_head and scorer.vocab_size == 50257
    loss, weight, position = scorer(batch)
    assert weight[:, :-1].min() == 1 and weight[:, -1].max() == 0
    assert position[:, :-1].tolist() == [list(range(1, 128))] * 3
    for r in range(3):
        ids = torch.as_tensor(batch["input_ids"][r][None], dtype=torch.long)
        with torch.no_grad():
            expected = scorer.model(input_ids=ids, labels=ids).loss.item()
        assert (loss[r] * weight[r]).sum() / weight[r].sum() == pytest.approx(expected, abs=1e-5)
    scorer.chunked_head = False  # the full-logits path (for heads that do more than a matmul) agrees
    full, _, _ = scorer(batch)
    np.testing.assert_allclose(full[:, :-1], loss[:, :-1], atol=1e-5)


def test_hf_packed_documents_are_kept_apart(gpt2_model, small_books):
    """A packed row: no loss across the boundary, none on padding or masked targets, and each
    document's losses are those of the document run alone; positions from the shard are used."""
    tok, _ = load_tokenizer(gpt2_model)
    rows = read_book_rows(small_books, tok, 128)
    a, b = rows.windows[1][:40], rows.windows[2][:60]
    batch = {"input_ids": np.zeros((2, 128), np.int32), "segment_ids": np.zeros((2, 128), np.int32),
             "positions": np.zeros((2, 128), np.int32), "loss_mask": np.ones((2, 128), np.float32)}
    batch["input_ids"][0, :100] = np.concatenate([a, b])
    batch["segment_ids"][0, :100] = [1] * 40 + [2] * 60
    batch["positions"][0, :100] = np.r_[np.arange(40), np.arange(60)]
    batch["loss_mask"][0, 50] = 0  # target 50 (b's 10th token) is not scored
    batch["input_ids"][1] = rows.windows[3]  # one whole document beside it, with positions running on from 7
    batch["segment_ids"][1] = 1
    batch["positions"][1] = np.arange(7, 135)
    assert document_runs(batch["segment_ids"][0]) == [(0, 40), (40, 100)]
    scorer = HFScorer(gpt2_model)
    loss, weight, position = scorer(batch)
    expected_weight = np.zeros(128)
    expected_weight[:39] = 1
    expected_weight[40:99] = 1
    expected_weight[49] = 0
    assert weight[0].tolist() == expected_weight.tolist()
    np.testing.assert_allclose(loss[0, :39], direct_token_nll(scorer.model, a), atol=2e-5)
    np.testing.assert_allclose(loss[0, 40:99], direct_token_nll(scorer.model, b), atol=2e-5)
    np.testing.assert_allclose(loss[1, :127], direct_token_nll(scorer.model, rows.windows[3], np.arange(7, 135)),
                               atol=2e-5)
    assert position[0, 40:99].tolist() == list(range(1, 60))


def test_llama_hf_path_matches_jax_path_per_bucket(book_shards, tmp_path):
    """The same LLaMA weights through transformers (torch) and through our JAX model (converted on
    load) give the same bucket counts and means on a real stage."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from training.checkpoint import load_any_params
    from training.data import StageData

    torch.manual_seed(0)
    hf = LlamaConfig(vocab_size=32000, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, max_position_embeddings=256, initializer_range=0.2)
    LlamaForCausalLM(hf).save_pretrained(tmp_path / "llama")
    data = StageData.open(str(book_shards / "s128"))
    config, params = load_any_params(str(tmp_path / "llama"))
    ours = loss_by_position(config, params, data, rows=4, batch_rows=2)
    theirs = hf_loss_by_position(HFScorer(str(tmp_path / "llama")), data, rows=4, batch_rows=2)
    assert theirs["tokens"] == ours["tokens"] > 400 and theirs["rows"] == 4
    spread = [b["loss"] for b in theirs["buckets"]]
    assert max(spread) - min(spread) > 0.05  # the weights are large enough for the context to matter
    for mine, hers in zip(ours["buckets"], theirs["buckets"]):
        assert (mine["start"], mine["end"], mine["tokens"]) == (hers["start"], hers["end"], hers["tokens"])
        assert hers["loss"] == pytest.approx(mine["loss"], rel=1e-4)


def test_cli_scores_raw_books_with_an_hf_model(gpt2_model, small_books, tmp_path, capsys):
    out = tmp_path / "ppl"
    assert main(["eval", "loss-by-position", "--hf-model", gpt2_model, "--data", small_books, "--length", "128",
                 "--rows", "5", "--batch-rows", "2", "--out", str(out)]) == 0
    summary = json.loads((out / "loss_by_position.json").read_text())
    assert summary["source"] == "books" and summary["backend"] == "transformers" and summary["books"] == 2
    assert summary["seq_len"] == 128 and summary["rows"] == 5 and summary["tokens"] == 5 * 127
    assert [b["start"] for b in summary["buckets"]] == bucket_edges(128).tolist()[:-1]
    assert {s["id"] for s in summary["skipped"]} == {"short", "number"}
    lines = (out / "loss_by_position.csv").read_text().splitlines()
    assert lines[0] == "start,end,tokens,loss" and sum(int(x.split(",")[2]) for x in lines[1:]) == 5 * 127
    assert (out / "loss_by_position.png").stat().st_size > 1000
    assert "2 books -> " in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["eval", "loss-by-position", "--hf-model", gpt2_model, "--data", small_books, "--out", str(out)])
    assert "give --length" in capsys.readouterr().err
    stage = write_toy_stage(tmp_path / "stage", rows=2)
    with pytest.raises(SystemExit):
        main(["eval", "loss-by-position", "--hf-model", gpt2_model, "--data", stage, "--length", "64", "--out", str(out)])
    assert "for raw books" in capsys.readouterr().err
