"""The demo tokenizer (a real LLaMA-style SentencePiece model) and long-text encoding."""

from __future__ import annotations

import pytest
import sentencepiece as spm
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from curation.text import CleanConfig, clean_text
from curation.tokenize import TokenizerLoadError, encode_long, load_tokenizer, resolve_package_path, split_for_encoding
from tests.conftest import DEMO_TOKENIZER


def test_demo_tokenizer_is_llama_shaped(demo_tokenizer):
    tok, info = demo_tokenizer
    assert (info.vocab_size, info.bos_id, info.eos_id) == (32000, 1, 2)
    assert len(info.sha256) == 64


def test_conversion_matches_sentencepiece_ids(demo_tokenizer, sample_books):
    """Same ids as the original model wherever the text has no run of spaces (SentencePiece then
    uses its whitespace-run pieces; the fast tokenizer spells each space, and still round-trips)."""
    tok, _ = demo_tokenizer
    sp = spm.SentencePieceProcessor(model_file=str(resolve_package_path(DEMO_TOKENIZER)))
    text = clean_text(next(b["text"] for b in sample_books if b["id"] == "prideprejudice"), CleanConfig())
    paragraphs = [p for p in text.split("\n\n") if "  " not in p and p.strip()][:400]
    for p in paragraphs:
        assert tok.encode(p, add_special_tokens=False).ids == sp.encode(p)


def test_long_encode_equals_whole_encode_and_round_trips(demo_tokenizer, sample_books):
    tok, info = demo_tokenizer
    text = clean_text(next(b["text"] for b in sample_books if b["id"] == "mobydick"), CleanConfig())
    ids = encode_long(tok, text, info.bos_id, info.eos_id, piece_chars=10_000)
    assert len(split_for_encoding(text, 10_000)) > 100
    assert ids[0] == 1 and ids[-1] == 2
    assert ids[1:-1].tolist() == tok.encode(text, add_special_tokens=False).ids
    assert tok.decode(ids[1:-1].tolist()) == text


def test_split_keeps_text_without_spaces_whole():
    assert split_for_encoding("x" * 100, 10) == ["x" * 100]
    pieces = split_for_encoding("ab cd  ef gh", 4)
    assert "".join(pieces) == "ab cd  ef gh"
    assert all(not p.startswith("  ") for p in pieces)


def test_a_trained_tokenizer_json_loads(tmp_path, sample_books):
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=500, special_tokens=["<unk>", "<s>", "</s>"])
    tok.train_from_iterator([b["text"][:20000] for b in sample_books], trainer)
    tok.save(str(tmp_path / "tokenizer.json"))
    loaded, info = load_tokenizer(str(tmp_path))  # a folder holding tokenizer.json
    assert (info.bos_id, info.eos_id, info.vocab_size) == (1, 2, loaded.get_vocab_size())
    text = "It is a truth universally acknowledged, " * 50
    ids = encode_long(loaded, text, None, None, piece_chars=64)
    assert ids.tolist() == loaded.encode(text).ids


def test_missing_tokenizer_says_why(tmp_path):
    with pytest.raises(TokenizerLoadError, match="no tokenizer.json"):
        load_tokenizer(str(tmp_path))
    with pytest.raises(TokenizerLoadError, match="not installed"):
        load_tokenizer("package:no_such_dist_xyz/tokenizer.model")


def test_remote_tokenizer_is_fetched_through_fsspec(tmp_path, demo_tokenizer):
    import fsspec

    tok, info = demo_tokenizer
    fsspec.filesystem("memory").pipe("/toks/tokenizer.json", tok.to_str().encode())
    remote, remote_info = load_tokenizer("memory://toks/tokenizer.json")
    assert remote.encode("Call me Ishmael.").ids == tok.encode("Call me Ishmael.").ids
    assert remote_info.vocab_size == 32000 and remote_info.bos_id == 1
    with pytest.raises(TokenizerLoadError, match="does not exist"):
        load_tokenizer("memory://toks/missing.json")
