"""Encoding one distinct unit at a time (curation/word_encoding.py) gives exactly sentencepiece's
ids of the whole text: units are the cut rule's, simple units are joined and split back right,
a wrong split is caught by the guard, and long texts go block by block."""

from __future__ import annotations

import numpy as np
import pytest
import sentencepiece as spm
from hypothesis import given, settings
from hypothesis import strategies as st

from curation import word_encoding
from curation.text import CleanConfig, clean_text
from curation.tokenize import SPACE_MARK, CutRule, Plan, TextTokenizer, encode_long, resolve_package_path
from curation.word_encoding import encode_by_units, encode_distinct, split_units
from tests.conftest import DEMO_TOKENIZER

RULE = CutRule(drop_space=True, marker=SPACE_MARK)

ATOMS = [" ", "  ", "\t", "\n", " \n", "\n ", "\u00a0", "\u3000", "\u2028", "the", "Emma", "walked", "I", "a",
         "'s", ",", ".", "—", "“", "中文", "Привет", "e\u0301", "😀", "▁", "▁▁", "a▁", "<s>", "</s>"]
texts = st.lists(st.one_of(st.sampled_from(ATOMS), st.text(max_size=3)), max_size=60).map("".join)


@pytest.fixture(scope="module")
def demo_sp():
    return spm.SentencePieceProcessor(model_file=str(resolve_package_path(DEMO_TOKENIZER)))


@pytest.fixture(scope="module")
def mark_starts(demo_sp) -> np.ndarray:
    return np.array([demo_sp.id_to_piece(i).startswith(SPACE_MARK) for i in range(demo_sp.get_piece_size())])


def is_simple(unit: str) -> bool:
    """The definition (module docstring): no space or space mark inside, no whitespace at either end."""
    return bool(unit) and " " not in unit and SPACE_MARK not in unit and not unit[0].isspace() and not unit[-1].isspace()


def reference_units(text: str) -> list[str]:
    """The text cut at every space the rule allows, each space dropped: one `allows` per space."""
    cuts = [i for i, c in enumerate(text) if c == " " and RULE.allows(text, i)]
    bounds = [-1, *cuts, len(text)]
    return [text[a + 1 : b] for a, b in zip(bounds, bounds[1:])]


@settings(max_examples=300)
@given(text=texts)
def test_units_are_the_cut_rules(text):
    units = split_units(text, SPACE_MARK)
    distinct = [units.text(c) for c in range(len(units))]
    assert [distinct[c] for c in units.codes] == reference_units(text)
    assert units.simple.tolist() == [is_simple(u) for u in distinct]
    assert units.chars.tolist() == [len(u) for u in distinct]
    used = sorted(set(units.codes.tolist()))
    assert units.joined(np.array(used)) == " ".join(distinct[c] for c in used)


def test_a_text_that_is_not_utf8_is_left_to_the_reference_encoder(demo_tokenizer, demo_sp):
    """A lone surrogate cannot be cut into UTF-8 units; `encode_long` hands such a text to
    sentencepiece, which refuses it just as it refuses the whole text (the pipeline then rejects
    the document as tokenizer_error)."""
    tok, _ = demo_tokenizer
    text = "a broken \ud800 surrogate"
    with pytest.raises(UnicodeEncodeError):
        split_units(text, SPACE_MARK)
    with pytest.raises(RuntimeError):
        demo_sp.encode(text)
    with pytest.raises(TypeError, match="must be str"):  # sentencepiece's batch encode of the pieces
        encode_long(tok, text)


@settings(max_examples=150)
@given(text=texts, piece_chars=st.sampled_from([1, 8, 64, 4096]))
def test_generated_texts_give_sentencepiece_ids(demo_tokenizer, demo_sp, text, piece_chars):
    tok, _ = demo_tokenizer
    assert tok.by_units(text)  # a SentencePiece model: always by units (control tokens stay text)
    assert encode_long(tok, text, piece_chars=piece_chars).tolist() == demo_sp.encode(text)


def test_a_novel_gives_sentencepiece_ids_block_by_block(demo_tokenizer, demo_sp, sample_books, monkeypatch):
    tok, info = demo_tokenizer
    text = clean_text(sample_books[3]["text"], CleanConfig())
    reference = demo_sp.encode(text)
    assert encode_long(tok, text).tolist() == reference
    monkeypatch.setattr(word_encoding, "BLOCK_CHARS", 5_000)  # ~100 blocks, each cut by the rule
    ids = encode_long(tok, text, info.bos_id, info.eos_id, piece_chars=500)
    assert ids.dtype == np.int32 and ids.tolist() == [info.bos_id, *reference, info.eos_id]


def test_distinct_units_are_encoded_once_joined(demo_sp, mark_starts):
    """Repeated words are encoded once: the batches sentencepiece sees hold each distinct simple
    unit once, joined by spaces; the units that are not simple come alone."""
    calls: list[list[str]] = []

    def encode(strings: list[str]) -> list[list[int]]:
        calls.append(list(strings))
        return demo_sp.encode(strings)

    text = "the cat saw the dog  and the cat \n ran"
    ids = encode_by_units(text, SPACE_MARK, mark_starts, encode, piece_chars=1000)
    assert ids.tolist() == demo_sp.encode(text)
    assert calls == [["the cat saw"], ["dog  and", "cat \n ran"]]


def test_a_wrong_split_falls_back_to_one_unit_at_a_time(demo_sp, mark_starts):
    """The guard: when the marked tokens do not match the units of a joined text (here a table
    that marks no token), those units are encoded alone and the ids stay right."""
    text = "It was the best of times, it was the worst of times"
    units = split_units(text, SPACE_MARK)
    no_marks = np.zeros_like(mark_starts)
    encoded = encode_distinct(units, no_marks, demo_sp.encode, piece_chars=1000)
    assert word_encoding.gather(units.codes, encoded).tolist() == demo_sp.encode(text)
    good = encode_distinct(units, mark_starts, demo_sp.encode, piece_chars=1000)
    assert good.lengths.tolist() == encoded.lengths.tolist()


def test_a_text_holding_an_added_token_of_a_fast_tokenizer_is_not_cut_into_units(demo_tokenizer):
    tok, _ = demo_tokenizer

    def with_rule(rule: CutRule) -> TextTokenizer:
        return TextTokenizer(tok.backend, Plan("test", rule, "test"), "test", sentencepiece=tok._sp)

    legacy = with_rule(CutRule(drop_space=True, marker=SPACE_MARK, avoid=("<s>",)))
    assert legacy.by_units("plain words") and not legacy.by_units("words <s> here")
    # An added token holding a space could form across a join: never by units.
    assert not with_rule(CutRule(drop_space=True, marker=SPACE_MARK, avoid=("a b",))).by_units("plain words")
    # A family that keeps the space in the later piece (GPT-2's) is encoded piece by piece.
    assert not with_rule(CutRule(drop_space=False)).by_units("plain words")
