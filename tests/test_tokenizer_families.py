"""Every tokenizer family a user brings gives its reference library's ids, however `encode_long`
cuts the text: on the seven whole sample novels and on generated texts with runs of spaces,
tabs, newlines, leading spaces, added tokens and non-Latin scripts.

References: `sentencepiece` for a `.model`; one whole-text `Tokenizer.encode` for a
`tokenizer.json`; `tiktoken` for files converted from tiktoken ranks; `AutoTokenizer` for a model
folder. The GPT-2 ranks come from the openai-whisper sdist (`make install` installs it).
"""

from __future__ import annotations

import io
import json
import logging

import pytest
import sentencepiece as spm
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import AddedToken, Regex, Tokenizer, pre_tokenizers

from curation.text import CleanConfig, clean_text
from curation.tokenize import (
    WORD_SPLIT_PATTERNS,
    CutRule,
    TextTokenizer,
    encode_long,
    load_tokenizer,
    resolve_package_path,
    split_for_encoding,
)
from tests.conftest import DEMO_TOKENIZER

GPT2_RANKS = "package:whisper/assets/gpt2.tiktoken"
# Small pieces: ~2,600 cuts over the seven novels, so every family is tested at many boundaries.
PIECE_CHARS = 2_000


# ---------------------------------------------------------------------------------------------
# Module fixtures: the novels, and one tokenizer per family (each converted once)
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def novels(sample_books) -> list[str]:
    """The seven novels, cleaned as the books pipeline cleans them."""
    return [clean_text(b["text"], CleanConfig()) for b in sample_books]


@pytest.fixture(scope="module")
def demo():
    tok, info = load_tokenizer(DEMO_TOKENIZER)
    sp = spm.SentencePieceProcessor(model_file=str(resolve_package_path(DEMO_TOKENIZER)))
    return tok, info, sp


@pytest.fixture(scope="module")
def llama2_json(demo, tmp_path_factory) -> str:
    """The official LLaMA-2 `tokenizer.json` layout over the demo vocabulary: no pre-tokenizer,
    normalizer Prepend("▁") + Replace(" ", "▁"), byte-fallback BPE."""
    tok, _, _ = demo
    spec = json.loads(tok.to_str())
    assert spec["pre_tokenizer"] is None
    assert [n["type"] for n in spec["normalizer"]["normalizers"]] == ["Prepend", "Replace"]
    path = tmp_path_factory.mktemp("llama2") / "tokenizer.json"
    path.write_text(tok.to_str())
    return str(path)


def _with_layout(base_json: str, normalizer, pre_tokenizer) -> Tokenizer:
    tok = Tokenizer.from_str(base_json)
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
    return tok


@pytest.fixture(scope="module")
def metaspace_json(llama2_json, tmp_path_factory) -> str:
    """The layout transformers' LlamaTokenizer builds (no normalizer, Metaspace prepending "▁"
    to the first section only, no split)."""
    tok = _with_layout(Tokenizer.from_file(llama2_json).to_str(), None,
                       pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False))
    path = tmp_path_factory.mktemp("metaspace") / "tokenizer.json"
    tok.save(str(path))
    return str(path)


@pytest.fixture(scope="module")
def gpt2_ranks() -> str:
    try:
        return str(resolve_package_path(GPT2_RANKS))
    except Exception as err:  # a clear message instead of a skip: CI must run these tests
        raise AssertionError(f"{err}; the GPT-2 ranks ship in the openai-whisper sdist (see `make install`)") from None


@pytest.fixture(scope="module")
def gpt2_json(gpt2_ranks, tmp_path_factory) -> str:
    """GPT-2 ranks converted by transformers' TikTokenConverter (Split(GPT-2 pattern) +
    ByteLevel without regex, ignore_merges BPE), with `<|endoftext|>` as id 50256."""
    from transformers.convert_slow_tokenizer import TikTokenConverter

    tok = TikTokenConverter(vocab_file=gpt2_ranks, pattern=WORD_SPLIT_PATTERNS["gpt2"],
                            extra_special_tokens=["<|endoftext|>"]).converted()
    assert tok.token_to_id("<|endoftext|>") == 50256
    path = tmp_path_factory.mktemp("gpt2") / "tokenizer.json"
    tok.save(str(path))
    return str(path)


def _tiktoken(gpt2_ranks: str, pattern: str):
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe

    return tiktoken.Encoding(name=f"gpt2-ranks-{pattern[:8]}", pat_str=pattern,
                             mergeable_ranks=load_tiktoken_bpe(gpt2_ranks), special_tokens={"<|endoftext|>": 50256})


@pytest.fixture(scope="module")
def llama3_layout(gpt2_json) -> Tokenizer:
    """The LLaMA-3 layout (cl100k split pattern, then byte-level characters) over the GPT-2 ranks."""
    return _with_layout(Tokenizer.from_file(gpt2_json).to_str(), None, pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(WORD_SPLIT_PATTERNS["cl100k/llama3"]), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ]))


@pytest.fixture(scope="module")
def gpt2_model_folder(gpt2_json, tmp_path_factory):
    """A transformers model folder in GPT-2's original files (vocab.json, merges.txt,
    tokenizer_config.json): no tokenizer.json, so `load_tokenizer` goes through AutoTokenizer."""
    spec = json.loads(Tokenizer.from_file(gpt2_json).to_str())
    folder = tmp_path_factory.mktemp("gpt2-model")
    vocab = dict(spec["model"]["vocab"], **{"<|endoftext|>": 50256})
    (folder / "vocab.json").write_text(json.dumps(vocab))
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "GPT2Tokenizer", "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>", "add_prefix_space": False}))
    from transformers import AutoTokenizer

    return str(folder), AutoTokenizer.from_pretrained(str(folder))


def _whole(tok: Tokenizer, texts: list[str]) -> list[list[int]]:
    return [e.ids for e in tok.encode_batch_fast(texts, add_special_tokens=False)]


def _ours(tok, texts: list[str], piece_chars: int = PIECE_CHARS) -> list[list[int]]:
    return [encode_long(tok, t, piece_chars=piece_chars).tolist() for t in texts]


def _assert_same(ours: list[list[int]], reference: list[list[int]]) -> None:
    for k, (a, b) in enumerate(zip(ours, reference, strict=True)):
        if a != b:
            at = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            raise AssertionError(f"novel {k}: {len(a)} ids vs {len(b)} reference ids, first difference at id {at}")


# ---------------------------------------------------------------------------------------------
# Whole novels, one test per family
# ---------------------------------------------------------------------------------------------


def test_sentencepiece_model_gives_sentencepiece_ids(demo, novels):
    tok, info, sp = demo
    assert tok.family == "sentencepiece-bpe" and tok.plan.rule.drop_space
    reference = sp.encode(novels)
    ours = [encode_long(tok, t, info.bos_id, info.eos_id, PIECE_CHARS).tolist() for t in novels]
    assert all(ids[0] == info.bos_id and ids[-1] == info.eos_id for ids in ours)
    _assert_same([ids[1:-1] for ids in ours], reference)
    assert sum(len(tok.pieces(t, PIECE_CHARS)) for t in novels) > 2_000


def test_llama2_legacy_tokenizer_json_gives_whole_text_ids(llama2_json, novels):
    tok, _ = load_tokenizer(llama2_json)
    assert tok.family == "legacy-prepend" and tok.plan.rule.drop_space and tok.plan.rule.marker == "▁"
    _assert_same(_ours(tok, novels), _whole(Tokenizer.from_file(llama2_json), novels))


def test_metaspace_tokenizer_json_gives_whole_text_ids(metaspace_json, novels):
    tok, _ = load_tokenizer(metaspace_json)
    assert tok.family == "one-word" and not tok.plan.rule.drop_space
    _assert_same(_ours(tok, novels), _whole(Tokenizer.from_file(metaspace_json), novels))


def test_tiktoken_converted_gpt2_gives_tiktoken_ids(gpt2_json, gpt2_ranks, novels):
    tok, info = load_tokenizer(gpt2_json)
    assert tok.family == "word-split" and info.eos_id == 50256
    # tiktoken is the reference of a converted file (the generated-text test below also checks
    # the file's own whole-text encode against it).
    reference = _tiktoken(gpt2_ranks, WORD_SPLIT_PATTERNS["gpt2"]).encode_ordinary_batch(novels, num_threads=2)
    _assert_same(_ours(tok, novels), reference)


def test_llama3_layout_gives_tiktoken_ids(llama3_layout, gpt2_ranks, novels):
    tok = TextTokenizer.from_fast(llama3_layout)
    assert tok.family == "word-split"
    reference = _tiktoken(gpt2_ranks, WORD_SPLIT_PATTERNS["cl100k/llama3"]).encode_ordinary_batch(novels, num_threads=2)
    _assert_same(_ours(tok, novels), reference)


def test_model_folder_gives_autotokenizer_ids(gpt2_model_folder, novels):
    """A loading route, not a family (its byte-level layout is tested on all seven above): the two
    shortest novels, against AutoTokenizer's own (slower) batch encode."""
    folder, hf = gpt2_model_folder
    tok, info = load_tokenizer(folder)
    assert tok.family == "word-split" and info.eos_id == 50256
    shortest = sorted(novels, key=len)[:2]
    _assert_same(_ours(tok, shortest), hf(shortest, add_special_tokens=False)["input_ids"])


# ---------------------------------------------------------------------------------------------
# Generated texts, cut into tiny pieces
# ---------------------------------------------------------------------------------------------

ATOMS = [
    " ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", " \n", "\t ", "\u00a0", "\u3000",
    "the", "Emma", "walked", "I", "a", "'s", "n't", "'LL", "42", "3.14", "1999", ",", ".", "!?", "—", "“", "”", "(", ")",
    "中文", "日本語の", "Привет", "мир", "مرحبا", "हिन्दी", "한국어", "e\u0301", "é", "😀", "🇫🇷",
    "▁", "▁▁", "Ġ", "<s>", "</s>", "<unk>", "<|endoftext|>", "<mask>",
]
texts = st.tuples(
    st.sampled_from(["", " ", "  ", "\n", "\t ", "\u3000"]),
    st.lists(st.one_of(st.sampled_from(ATOMS), st.text(max_size=3)), max_size=50),
).map(lambda t: t[0] + "".join(t[1]))

FAMILIES = ["sentencepiece", "llama2-legacy", "metaspace-first", "metaspace-split", "gpt2-tiktoken",
            "llama3-layout", "model-folder", "added-tokens-strip"]


@pytest.fixture(scope="module")
def families(demo, llama2_json, metaspace_json, gpt2_json, gpt2_ranks, llama3_layout, gpt2_model_folder):
    """name -> (our tokenizer, reference encoder of one text)."""
    tok, _, sp = demo
    out = {"sentencepiece": (tok, sp.encode)}
    for name, path in (("llama2-legacy", llama2_json), ("metaspace-first", metaspace_json)):
        ref = Tokenizer.from_file(path)
        out[name] = (load_tokenizer(path)[0], lambda t, ref=ref: ref.encode(t, add_special_tokens=False).ids)
    split = _with_layout(Tokenizer.from_file(llama2_json).to_str(), None,
                         pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True))
    out["metaspace-split"] = (TextTokenizer.from_fast(split), lambda t: split.encode(t, add_special_tokens=False).ids)
    gpt2 = Tokenizer.from_file(gpt2_json)
    enc = _tiktoken(gpt2_ranks, WORD_SPLIT_PATTERNS["gpt2"])

    def gpt2_reference(text: str) -> list[int]:
        ids = gpt2.encode(text, add_special_tokens=False).ids
        if "<|endoftext|>" not in text:  # tiktoken's encode_ordinary has no special tokens
            assert ids == enc.encode_ordinary(text)
        return ids

    out["gpt2-tiktoken"] = (load_tokenizer(gpt2_json)[0], gpt2_reference)
    out["llama3-layout"] = (TextTokenizer.from_fast(llama3_layout),
                            lambda t: llama3_layout.encode(t, add_special_tokens=False).ids)
    folder, hf = gpt2_model_folder
    out["model-folder"] = (load_tokenizer(folder)[0], lambda t: hf(t, add_special_tokens=False)["input_ids"])
    stripping = Tokenizer.from_file(gpt2_json)
    stripping.add_special_tokens([AddedToken("<mask>", lstrip=True, rstrip=True, special=True)])
    stripping.add_tokens([AddedToken("Emma", single_word=True), AddedToken(" the", normalized=False)])
    out["added-tokens-strip"] = (TextTokenizer.from_fast(stripping),
                                 lambda t: stripping.encode(t, add_special_tokens=False).ids)
    assert sorted(out) == sorted(FAMILIES)
    return out


@pytest.mark.parametrize("family", FAMILIES)
@settings(max_examples=150)
@given(text=texts, piece_chars=st.integers(2, 30))
def test_generated_texts_give_reference_ids_in_tiny_pieces(families, family, text, piece_chars):
    tok, reference = families[family]
    assert tok.plan.rule is not None, tok.plan.reason
    assert encode_long(tok, text, piece_chars=piece_chars).tolist() == reference(text)


# ---------------------------------------------------------------------------------------------
# What cannot be cut safely is encoded whole, said once
# ---------------------------------------------------------------------------------------------


def test_an_unchecked_split_pattern_is_encoded_whole_and_logged_once(gpt2_json, novels, caplog):
    tok = Tokenizer.from_file(gpt2_json)
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"\w+|[^\w\s]+|\s+"), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    with caplog.at_level(logging.WARNING, logger="curation.tokenize"):
        wrapped = TextTokenizer.from_fast(tok, "custom-split")
        text = novels[4][:50_000]
        ids = [encode_long(wrapped, text, piece_chars=100).tolist() for _ in range(3)]
    assert wrapped.plan.rule is None and "not one we checked" in wrapped.plan.reason
    assert wrapped.pieces(text, 100) == [text]
    assert ids[0] == tok.encode(text, add_special_tokens=False).ids
    assert [r.getMessage() for r in caplog.records].count(
        f"tokenizer custom-split: long texts are encoded whole, not in pieces ({wrapped.plan.reason})") == 1


def test_a_vocabulary_token_across_a_word_start_is_refused(llama2_json):
    """A merge "s" + "▁" would join the end of one word to the next word's space mark: cutting
    there changes the ids, so the layout is encoded whole."""
    spec = json.loads(Tokenizer.from_file(llama2_json).to_str())
    spec["model"]["vocab"]["s▁"] = len(spec["model"]["vocab"])
    spec["model"]["merges"].insert(0, ["s", "▁"])
    tok = Tokenizer.from_str(json.dumps(spec))
    wrapped = TextTokenizer.from_fast(tok)
    assert wrapped.plan.rule is None and "'s▁'" in wrapped.plan.reason
    text = "It was his and hers as it always was, this house of ours. " * 20
    whole = tok.encode(text, add_special_tokens=False).ids
    assert encode_long(wrapped, text, piece_chars=16).tolist() == whole
    # What the guard prevents: the same cuts as the LLaMA-2 layout would give other ids.
    naive = split_for_encoding(text, 16, CutRule(drop_space=True, marker="▁"))
    assert [i for p in naive for i in tok.encode(p, add_special_tokens=False).ids] != whole


def test_a_unigram_sentencepiece_model_is_encoded_whole(novels, tmp_path, caplog):
    """A unigram model with the nmt_nfkc character map: not proven safe to cut, so encoded whole,
    still by sentencepiece itself."""
    model = io.BytesIO()
    lines = [line for line in novels[3].split("\n") if line.strip()][:3000]
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=model, vocab_size=300,
                                   model_type="unigram", minloglevel=2)
    path = tmp_path / "unigram.model"
    path.write_bytes(model.getvalue())
    with caplog.at_level(logging.WARNING, logger="curation.tokenize"):
        tok, info = load_tokenizer(str(path))
    assert tok.family == "sentencepiece" and tok.plan.rule is None
    assert "model type 1 is not BPE" in tok.plan.reason and "maps characters" in tok.plan.reason
    assert sum("encoded whole" in r.getMessage() for r in caplog.records) == 1
    sp = spm.SentencePieceProcessor(model_file=str(path))
    text = novels[3][:100_000] + "  two  spaces\tand a tab "
    assert encode_long(tok, text, piece_chars=500).tolist() == sp.encode(text)
    assert info.vocab_size == 300
