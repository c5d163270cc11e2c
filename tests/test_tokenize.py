"""The demo tokenizer (a real LLaMA-style SentencePiece model), loading, and where texts are cut.
Every tokenizer family against its reference library: tests/test_tokenizer_families.py."""

from __future__ import annotations

import hashlib

import pytest
import sentencepiece as spm
from hypothesis import given
from hypothesis import strategies as st
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from curation.text import CleanConfig, clean_text
from curation.tokenize import (
    CutRule,
    TextTokenizer,
    TokenizerLoadError,
    cut_positions,
    encode_long,
    load_tokenizer,
    resolve_package_path,
    split_for_encoding,
)
from tests.conftest import DEMO_TOKENIZER


@pytest.fixture(scope="module")
def demo_sp():
    return spm.SentencePieceProcessor(model_file=str(resolve_package_path(DEMO_TOKENIZER)))


def test_demo_tokenizer_is_llama_shaped(demo_tokenizer):
    tok, info = demo_tokenizer
    assert (info.vocab_size, info.bos_id, info.eos_id) == (32000, 1, 2)
    # Shards name the tokenizer by the .model file's own sha256.
    assert info.sha256 == hashlib.sha256(resolve_package_path(DEMO_TOKENIZER).read_bytes()).hexdigest()
    assert isinstance(tok, TextTokenizer) and tok.family == "sentencepiece-bpe"


def test_demo_encodes_with_sentencepiece_itself(demo_tokenizer, demo_sp, sample_books):
    """Every paragraph, runs of spaces included (where a converted fast tokenizer differs)."""
    tok, _ = demo_tokenizer
    text = clean_text(next(b["text"] for b in sample_books if b["id"] == "prideprejudice"), CleanConfig())
    paragraphs = [p for p in text.split("\n\n") if p.strip()][:400] + ["  two  spaces", " lead", "tab\t\tx", "a   b"]
    assert any("  " in p for p in paragraphs)
    assert [tok.encode(p, add_special_tokens=False).ids for p in paragraphs] == demo_sp.encode(paragraphs)
    assert [e.ids for e in tok.encode_batch(paragraphs, add_special_tokens=False)] == demo_sp.encode(paragraphs)
    with pytest.raises(TypeError, match="encodes plain texts with sentencepiece"):
        tok.encode_batch(paragraphs, is_pretokenized=False)


def test_control_tokens_are_ids_in_prompts_and_text_in_documents(demo_tokenizer, demo_sp):
    """A chat template renders `<s>`/`</s>`: `encode` makes them ids and encodes each stretch
    between them with sentencepiece; a document (`encode_long`) is sentencepiece's own encode,
    where such strings stay text (a book cannot forge an end of document)."""
    tok, info = demo_tokenizer
    prompt = "[INST] Who? [/INST] Emma </s><s>[INST] Where? [/INST]"
    expected = demo_sp.encode("[INST] Who? [/INST] Emma ") + [info.eos_id, info.bos_id] + demo_sp.encode("[INST] Where? [/INST]")
    assert tok.encode(prompt, add_special_tokens=False).ids == expected
    assert tok.encode_batch([prompt, "</s>", ""])[1:] == [type(tok.encode(""))([info.eos_id]), tok.encode("")]
    assert tok.encode("</s>").ids == [info.eos_id] and tok.encode("").ids == []
    document = "The end.</s> Or not: <s>, <unk>."
    assert encode_long(tok, document, piece_chars=8).tolist() == demo_sp.encode(document)
    assert info.eos_id not in demo_sp.encode(document)


@given(
    st.lists(st.sampled_from(["Emma", "loved", "her", "father", ",", ".", "中文", "42", "\n"]), min_size=1, max_size=8),
    st.lists(st.sampled_from(["loved", "[/INST]", "Who", "?", "  ", " ", "\t", "é"]), min_size=1, max_size=6),
)
def test_a_continuation_has_the_ids_it_gets_inside_the_whole_text(demo_tokenizer, demo_sp, context, words):
    """A prompt piece opening with a space, laid after encoded text that ends in a word: the same
    ids as inside one encode of the two (SentencePiece's dummy prefix is that space)."""
    tok, _ = demo_tokenizer
    left = " ".join(context).rstrip() or "Emma"
    if left[-1].isspace():
        left += "x"
    right = " " + "".join(words)
    assert demo_sp.encode(left) + tok.encode_continuation(right) == demo_sp.encode(left + right)


def test_continuation_examples(demo_tokenizer):
    tok, info = demo_tokenizer
    mark = tok.token_to_id("\u2581")
    assert tok.encode(" loved").ids == [mark, tok.token_to_id("\u2581loved")]
    assert tok.encode_continuation(" loved") == [tok.token_to_id("\u2581loved")]
    assert tok.encode_continuation(" ") == [mark]
    assert tok.encode_continuation(" </s>") == [mark, info.eos_id]
    assert tok.encode_continuation("\n\nQ") == tok.encode("\n\nQ").ids[1:]  # the lone mark dropped
    assert tok.encode_continuation("") == []


def test_long_encode_equals_sentencepiece_and_round_trips(demo_tokenizer, demo_sp, sample_books):
    tok, info = demo_tokenizer
    text = clean_text(next(b["text"] for b in sample_books if b["id"] == "mobydick"), CleanConfig())
    ids = encode_long(tok, text, info.bos_id, info.eos_id, piece_chars=10_000)
    assert len(tok.pieces(text, 10_000)) > 100
    assert ids[0] == 1 and ids[-1] == 2
    assert ids[1:-1].tolist() == demo_sp.encode(text)
    assert tok.decode(ids[1:-1].tolist()) == text == demo_sp.decode(ids[1:-1].tolist())


def test_cuts_fall_on_single_spaces_between_words():
    assert split_for_encoding("x" * 100, 10) == ["x" * 100]
    text = "ab cd  ef gh \tij kl"
    pieces = split_for_encoding(text, 4)
    assert "".join(pieces) == text and len(pieces) > 1
    for cut in cut_positions(text, 4):
        assert text[cut] == " " and not text[cut - 1].isspace() and not text[cut + 1].isspace()
    # A family whose tokenizer prepends the space mark itself: later pieces drop their space.
    dropped = split_for_encoding(text, 4, CutRule(drop_space=True))
    assert " ".join(dropped) == text and not any(p.startswith(" ") for p in dropped)
    # The space marker written literally before a space would join it: no cut there.
    assert cut_positions("aa\u2581 bb cc", 4, CutRule(marker="\u2581").allows) == [6]
    with pytest.raises(ValueError, match="piece_chars"):
        cut_positions(text, 1)


def test_cuts_keep_off_added_tokens():
    rule = CutRule(avoid=("<mask>",))
    text = "one two<mask> three <mask>four five"
    allowed = [c for c in range(len(text)) if rule.allows(text, c)]
    assert allowed == [3, 30]  # not right after "<mask>" (an rstrip would eat the space), not before one


@given(st.text(alphabet=" \t\nab\u2581", max_size=60), st.integers(2, 12), st.booleans())
def test_pieces_are_the_text(text, piece_chars, drop_space):
    rule = CutRule(drop_space=drop_space, marker="\u2581")
    cuts = cut_positions(text, piece_chars, rule.allows)
    assert cuts == sorted(set(cuts)) and all(rule.allows(text, c) for c in cuts)
    pieces = split_for_encoding(text, piece_chars, rule)
    assert (" " if drop_space else "").join(pieces) == text


def test_a_trained_tokenizer_json_loads(tmp_path, sample_books):
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=500, special_tokens=["<unk>", "<s>", "</s>"])
    tok.train_from_iterator([b["text"][:20000] for b in sample_books], trainer)
    tok.save(str(tmp_path / "tokenizer.json"))
    loaded, info = load_tokenizer(str(tmp_path))  # a folder holding tokenizer.json
    assert (info.bos_id, info.eos_id, info.vocab_size) == (1, 2, loaded.get_vocab_size())
    assert info.sha256 == hashlib.sha256((tmp_path / "tokenizer.json").read_bytes()).hexdigest()
    assert loaded.family == "word-split"
    text = "It is a truth universally acknowledged, " * 50
    ids = encode_long(loaded, text, None, None, piece_chars=64)
    assert ids.tolist() == loaded.encode(text).ids == tok.encode(text).ids
    assert encode_long(tok, text, piece_chars=64).tolist() == ids.tolist()  # a raw Tokenizer works too


def test_missing_or_wrong_tokenizer_says_why(tmp_path):
    with pytest.raises(TokenizerLoadError, match="no tokenizer.json"):
        load_tokenizer(str(tmp_path))
    with pytest.raises(TokenizerLoadError, match="not installed"):
        load_tokenizer("package:no_such_dist_xyz/tokenizer.model")
    (tmp_path / "words.model").write_text("not a model")
    with pytest.raises(TokenizerLoadError, match="neither a tokenizer.json nor a SentencePiece model"):
        load_tokenizer(str(tmp_path / "words.model"))


def test_remote_tokenizer_is_fetched_through_fsspec(tmp_path, demo_tokenizer):
    import fsspec

    tok, info = demo_tokenizer
    fsspec.filesystem("memory").pipe("/toks/tokenizer.json", tok.to_str().encode())
    remote, remote_info = load_tokenizer("memory://toks/tokenizer.json")
    assert remote.encode("Call me Ishmael.").ids == tok.encode("Call me Ishmael.").ids
    assert remote_info.vocab_size == 32000 and remote_info.bos_id == 1
    assert remote.family == "legacy-prepend"  # the demo's fast conversion has LLaMA-2's layout
    with pytest.raises(TokenizerLoadError, match="does not exist"):
        load_tokenizer("memory://toks/missing.json")
