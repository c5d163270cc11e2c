"""QA synthesis on real books and the real demo tokenizer: chunking, prompts, output parsing,
the model-free extractive generator, and assembly into loss-masked chat examples."""

from __future__ import annotations

import itertools
import json
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from curation.packing import pack_segments
from curation.text import CleanConfig, clean_text
from curation.tokenize import encode_long
from qa_synth.assemble import ChatFormat, assemble_examples, example_to_segment
from qa_synth.chunking import boundary_table, chunk_tokens, make_chunks
from qa_synth.extractive import BLANK, extractive_qa
from qa_synth.parse import (
    InvalidQA,
    QAPair,
    QA_REASONS,
    QuestionDeduper,
    grounding,
    parse_qa,
    validate,
)
from qa_synth.prompts import DEFAULT_TEMPLATE, PromptTemplate, chat_prompt

BOOK_CHARS = 150_000  # two book openings: ~40K tokens each, enough for many 1K chunks

LLAMA2_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}<<SYS>>\n{{ m['content'] }}\n<</SYS>>\n\n"
    "{% elif m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]{% else %} {{ m['content'] }} {{ eos_token }}"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}{% endif %}"
)


@pytest.fixture(scope="module")
def tok(demo_tokenizer):
    return demo_tokenizer[0]


@pytest.fixture(scope="module")
def info(demo_tokenizer):
    return demo_tokenizer[1]


@pytest.fixture(scope="module")
def books(sample_books, tok, info):
    """(id, uid, tokens with BOS/EOS) of two real books, as the books pipeline encodes them."""
    out = []
    for i, book in enumerate(sample_books[:2]):
        text = clean_text(book["text"], CleanConfig())[:BOOK_CHARS]
        out.append((book["id"], f"uid{i}", encode_long(tok, text, info.bos_id, info.eos_id)))
    return out


@pytest.fixture(scope="module")
def chunks(books, tok, info):
    return {uid: make_chunks(bid, uid, toks, tok, strip_ids=(info.bos_id, info.eos_id)) for bid, uid, toks in books}


@pytest.fixture(scope="module")
def qa_items(chunks):
    """(chunk, pair) for every chunk whose extractive QA passes validation and dedup, with one
    chunk per book dropped, as a rejected generator output would be."""
    dedup = QuestionDeduper()
    items = []
    for book_chunks in chunks.values():
        for chunk in book_chunks:
            if chunk.index == 5:
                continue
            try:
                pair = validate(parse_qa(extractive_qa(chunk.text, chunk.key)), chunk.text)
                dedup.check(chunk.book_uid, pair.question)
            except InvalidQA:
                continue
            items.append((chunk, pair))
    return items


@pytest.fixture(scope="module")
def hf_tokenizer(tok):
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")
    hf.chat_template = LLAMA2_TEMPLATE
    return hf


# ---------------------------------------------------------------- chunking


def test_real_book_chunks_cover_the_book_in_bounds(books, chunks, tok, info):
    newline = boundary_table(tok).newline
    for _, uid, toks in books:
        book_chunks = chunks[uid]
        assert len(book_chunks) > 20
        assert np.array_equal(np.concatenate([c.tokens for c in book_chunks]), toks[1:-1])
        assert all(c.tokens.dtype == np.int32 for c in book_chunks)
        assert [c.index for c in book_chunks] == list(range(len(book_chunks)))
        assert book_chunks[0].start == 1  # after the BOS, which no chunk carries
        for prev, c in itertools.pairwise(book_chunks):
            assert c.start == prev.end
        for c in book_chunks[:-1]:
            assert 500 <= len(c.tokens) <= 1500
            assert newline[c.tokens[-1]], "a hard-wrapped book always has a line end to cut at"
            assert info.bos_id not in c.tokens and info.eos_id not in c.tokens
        lengths = [len(c.tokens) for c in book_chunks]
        assert 800 <= np.mean(lengths) <= 1200
        for c in book_chunks[:3]:
            assert c.text == tok.decode(c.tokens.tolist())


def test_without_newlines_cuts_fall_at_sentence_ends_else_at_max(sample_books, tok):
    text = " ".join(clean_text(sample_books[0]["text"], CleanConfig())[:40_000].split())
    toks = encode_long(tok, text)
    spans = chunk_tokens(toks, tok, 300, 150, 450)
    for start, end in spans[:-1]:
        assert tok.decode(toks[start:end].tolist()).rstrip().endswith((".", "!", "?", '"', "'")), (start, end)
    words = encode_long(tok, " ".join(["word"] * 3000))
    spans = chunk_tokens(words, tok, 300, 150, 450)
    assert [e - s for s, e in spans[:-1]] == [450] * (len(spans) - 1)
    assert sum(e - s for s, e in spans) == len(words)


def test_chunking_degenerate_inputs(tok):
    assert chunk_tokens(np.zeros(0, np.int32), tok) == []
    assert chunk_tokens(np.array([5, 6, 7], np.int32), tok) == [(0, 3)]
    assert make_chunks("b", "u", np.array([1, 2], np.int32), tok, strip_ids=(1, 2)) == []
    with pytest.raises(ValueError):
        chunk_tokens(np.arange(10), tok, target=10, min_tokens=20, max_tokens=30)


@settings(max_examples=80, deadline=None)
@given(data=st.data())
def test_chunk_invariants_on_random_tokens(tok, data):
    nl, dot = tok.token_to_id("<0x0A>"), tok.token_to_id(".")
    alphabet = st.one_of(st.sampled_from([nl, dot]), st.integers(3, 31_999), st.integers(3, 31_999))
    toks = np.array(data.draw(st.lists(alphabet, max_size=3000)), np.int32)
    min_tokens = data.draw(st.integers(1, 200))
    target = data.draw(st.integers(min_tokens, 300))
    max_tokens = data.draw(st.integers(target, 400))
    table = boundary_table(tok)
    spans = chunk_tokens(toks, tok, target, min_tokens, max_tokens)
    assert np.array_equal(np.concatenate([toks[s:e] for s, e in spans]) if spans else toks[:0], toks)
    assert all(s0 == e1 for (s0, _), (_, e1) in zip(spans[1:], spans))
    n = len(toks)
    for start, end in spans[:-1]:
        assert min_tokens <= end - start <= max_tokens
        tail_adjusted = n - (start + max_tokens) < min_tokens
        is_boundary = table.newline[toks[end - 1]] or table.sentence_end[toks[end - 1]] or table.closer[toks[end - 1]]
        assert is_boundary or end - start == max_tokens or (tail_adjusted and end == n - min_tokens)
        if not tail_adjusted and table.newline[toks[start + min_tokens - 1 : start + max_tokens]].any():
            assert table.newline[toks[end - 1]], "a paragraph end in the window wins over any other cut"
    if spans:
        assert spans[-1][1] == n and spans[-1][1] - spans[-1][0] <= max_tokens


# ---------------------------------------------------------------- prompts


def test_prompt_template_renders_and_checks_fields():
    passage = 'He said {"question": x} and left.'
    prompt = PromptTemplate().render(passage)
    assert passage in prompt and '{"question": "...", "answer": "..."}' in prompt
    assert PromptTemplate("Q about: {passage}").render("abc") == "Q about: abc"
    for bad in ("no field", "{passage} {other}", "{passage", "{} {passage}"):
        with pytest.raises(ValueError):
            PromptTemplate(bad)
    assert "{passage}" in DEFAULT_TEMPLATE


def test_chat_prompt_uses_the_generator_template(hf_tokenizer, tok):
    from transformers import PreTrainedTokenizerFast

    assert chat_prompt(None, "hello") == "hello"
    wrapped = chat_prompt(hf_tokenizer, "hello there")
    assert wrapped == "<s>[INST] hello there [/INST]"
    bare = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")
    assert chat_prompt(bare, "hello") == "hello"  # a base model: plain completion


# ---------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    "raw, question, answer",
    [
        ('{"question": "Who came?", "answer": "Emma"}', "Who came?", "Emma"),
        ('Sure! Here it is:\n{"question": "Who came?", "answer": "Emma"}\nHope this helps.', "Who came?", "Emma"),
        ('```json\n{\n  "question": "Who came?",\n  "answer": "Emma"\n}\n```', "Who came?", "Emma"),
        ('{"Question": "Who came?", "ANSWER": " Emma "}', "Who came?", "Emma"),
        ('{"q": "Which year?", "a": 1816}', "Which year?", "1816"),
        ('{"note": "x"} then {"question": "Who came?", "answer": "Emma"}', "Who came?", "Emma"),
        ("Question: Who came\nto dinner?\nAnswer: Emma Woodhouse\n\nI hope that helps.", "Who came to dinner?", "Emma Woodhouse"),
        ("**Q:** Who came?\n**A:** Emma", "Who came?", "Emma"),
    ],
)
def test_parse_accepts_what_models_write(raw, question, answer):
    assert parse_qa(raw) == QAPair(question, answer)


@pytest.mark.parametrize(
    "raw, reason",
    [
        ('{"question": "Who came?", "answer": "Em', "unparsable"),
        ('```json\n{\n  "question": "Who came?",\n  "answer": "Emma"\n', "unparsable"),
        ('{"pregunta": "¿Quién vino?", "respuesta": "Emma"}', "unparsable"),
        ('{"question": "Who came?"}', "unparsable"),
        ('{"question": "Who came?", "answer": ["Emma", "Harriet"]}', "unparsable"),
        ('["Who came?", "Emma"]', "unparsable"),
        ("I cannot write a question about this passage.", "unparsable"),
        ("", "unparsable"),
        (None, "unparsable"),
        (b'{"question": "Who?", "answer": "Emma"}', "unparsable"),
        ('{"question": "  ", "answer": "Emma"}', "empty_question"),
        ('{"question": "Who came?", "answer": ""}', "empty_answer"),
        ("Question: Who came?\nAnswer:", "empty_answer"),
        # JSON lets a model write half an emoji: a lone surrogate no tokenizer can encode.
        ('{"question": "Who smiled \\ud83d?", "answer": "Emma"}', "invalid_unicode"),
        ('{"question": "Who came?", "answer": "Emma \\udc80"}', "invalid_unicode"),
    ],
)
def test_parse_rejects_with_reason(raw, reason):
    with pytest.raises(InvalidQA) as err:
        parse_qa(raw)
    assert err.value.reason == reason


@pytest.mark.parametrize(
    "raw",
    [
        "blah " * 500_000 + '{"question": "Who came?", "answer": "Emma"}',  # the object is past the cap
        "{" * 200_000,
        '{"question": ' + "[" * 100_000,
        '{"question": "' + "x" * 1_000_000,
        '{"a": 1} ' * 50_000,
    ],
)
def test_parse_huge_outputs_fail_fast(raw):
    # Bounded work without timing anything: only the first MAX_RAW_CHARS characters are read, so a
    # valid pair appended past them never changes the verdict.
    for text in (raw, raw + '{"question": "Who came?", "answer": "Emma"}'):
        with pytest.raises(InvalidQA) as err:
            parse_qa(text)
        assert err.value.reason == "unparsable"


def test_reasons_are_exactly_the_documented_ones():
    assert {r.value for r in QA_REASONS} == {
        "unparsable", "empty_question", "empty_answer", "answer_too_long", "answer_not_grounded", "duplicate_question",
        "invalid_unicode",
    }


def test_parse_keeps_surrogate_pairs_that_make_a_character():
    assert parse_qa('{"question": "Who smiled \\ud83d\\ude00?", "answer": "Emma"}').question == "Who smiled \U0001f600?"


def test_validate_grounding_length_and_duplicates(tok):
    chunk = "Emma Woodhouse, handsome, clever, and rich, had lived twenty-one years with her father at Hartfield."
    ok = QAPair("Where did Emma live?", "At Hartfield, with her father")
    assert validate(ok, chunk) is ok
    assert grounding("the fathers", chunk) == 1.0  # plural tolerated, stopwords ignored
    cases = [
        (QAPair("Where?", "In London with Mr. Knightley"), {}, "answer_not_grounded"),
        (QAPair("Did she?", "Yes"), {}, "answer_not_grounded"),  # no content word to check
        (QAPair("Who?", "Emma " * 70), {}, "answer_too_long"),
        (QAPair("Who?", "Emma Woodhouse of Hartfield"), {"max_answer_words": 3}, "answer_too_long"),
        (QAPair("Who?", "Emma Woodhouse"), {"max_answer_tokens": 2, "tok": tok}, "answer_too_long"),
        (QAPair("Where?", "Hartfield in London"), {"min_grounding": 0.9}, "answer_not_grounded"),
    ]
    for pair, options, reason in cases:
        with pytest.raises(InvalidQA) as err:
            validate(pair, chunk, **options)
        assert err.value.reason == reason, pair
    assert validate(QAPair("Where?", "Hartfield in London"), chunk, min_grounding=0.5)

    dedup = QuestionDeduper()
    dedup.check("book-a", "Who is Emma's father?")
    dedup.check("book-b", "Who is Emma's father?")  # another book: a new question there
    with pytest.raises(InvalidQA) as err:
        dedup.check("book-a", "  who is EMMA'S father ")
    assert err.value.reason == "duplicate_question"
    assert dedup.seen("book-a") == 1


# ---------------------------------------------------------------- extractive generator


def test_extractive_is_deterministic_and_grounded(chunks):
    book_chunks = chunks["uid0"]
    outputs = [extractive_qa(c.text, c.key) for c in book_chunks]
    assert outputs == [extractive_qa(c.text, c.key) for c in book_chunks]
    assert len(set(outputs)) == len(outputs)
    flat = lambda s: " ".join(s.split())
    for chunk, raw in zip(book_chunks, outputs):
        pair = validate(parse_qa(raw), chunk.text)
        assert pair.question.startswith("Fill in the blank: ") and pair.question.count(BLANK) == 1
        filled = pair.question.removeprefix("Fill in the blank: ").replace(BLANK, pair.answer)
        assert filled in flat(chunk.text)
        assert grounding(pair.answer, chunk.text) == 1.0


def test_extractive_fixed_output_and_unusable_chunks():
    text = "It was a cold morning. Emma walked to Hartfield with her sister Isabella before noon."
    raw = extractive_qa(text, "book@3")
    # sha256-seeded, so the same in every process and Python version (hash() would not be).
    assert json.loads(raw) == {
        "question": "Fill in the blank: Emma walked to Hartfield with her sister ____ before noon.",
        "answer": "Isabella",
    }
    assert {json.loads(extractive_qa(text, f"book@{i}"))["answer"] for i in range(20)} == {"Hartfield", "Isabella"}
    for useless in ("", "   \n", "12 34 56 78 90 11 12.", "Too short.", "no sentence end at all here just words"):
        with pytest.raises(InvalidQA) as err:
            parse_qa(extractive_qa(useless, "k"))
        assert err.value.reason == "unparsable"


# ---------------------------------------------------------------- assembly


def _check_examples(examples, items, tok, info, length, plain=True):
    by_key = {(c.book_uid, c.index): (c, p) for c, p in items}
    for ex in examples:
        assert len(ex.tokens) <= length and ex.tokens.dtype == np.int32 and ex.loss_mask.dtype == np.float32
        assert len(ex.loss_mask) == len(ex.tokens) and ex.tokens[0] == info.bos_id
        run = [by_key[(ex.book_uid, ex.first_chunk + i)] for i in range(ex.num_chunks)]
        s, e = ex.context_span
        assert np.array_equal(ex.tokens[s:e], np.concatenate([c.tokens for c, _ in run]))
        assert ex.start == run[0][0].start and ex.book_id == run[0][0].book_id
        assert len(ex.pairs) == len(ex.answer_spans) == ex.num_chunks
        assert sorted(ex.pairs, key=repr) == sorted((p for _, p in run), key=repr)
        expected_mask = np.zeros(len(ex.tokens), np.float32)
        for (a, b), pair in zip(ex.answer_spans, ex.pairs):
            expected_mask[a:b] = 1.0
            text = tok.decode(ex.tokens[a:b].tolist(), skip_special_tokens=False)
            assert text.strip() == pair.answer + "</s>" or text.strip() == f"{pair.answer} </s>"
            assert ex.tokens[b - 1] == info.eos_id
        assert np.array_equal(ex.loss_mask, expected_mask)
        if plain:
            rest = tok.decode(ex.tokens[e:].tolist())
            assert rest.count("ASSISTANT:") == ex.num_chunks and rest.count("USER:") == ex.num_chunks - 1
            head = tok.decode(ex.tokens[:s].tolist())
            assert head.startswith("You are a helpful assistant. USER:")


@pytest.mark.parametrize("length", [2048, 8192, 32768])
def test_assembled_examples_fit_and_mask_exactly_the_answers(qa_items, tok, info, length):
    counts = Counter()
    examples = assemble_examples(qa_items, tok, info, length, counts=counts)
    _check_examples(examples, qa_items, tok, info, length)
    assert counts["qa_chunks_used"] == len(qa_items) and counts["qa_chunks_too_long"] == 0
    assert counts["qa_examples"] == len(examples)
    for ex in examples:  # in order: turn i asks about chunk i
        assert [p for p in ex.pairs] == [
            next(p for c, p in qa_items if c.book_uid == ex.book_uid and c.index == ex.first_chunk + i)
            for i in range(ex.num_chunks)
        ]
        assert not (ex.first_chunk <= 5 < ex.first_chunk + ex.num_chunks), "context skips the missing chunk 5"
    if length == 32768:
        assert max(ex.num_chunks for ex in examples) >= 25  # ~32 chunks of ~1K tokens per 32K example
    assert len({(ex.book_uid, ex.first_chunk) for ex in examples}) == len(examples)


def test_shuffled_order_is_deterministic_and_a_permutation(qa_items, tok, info):
    a = assemble_examples(qa_items, tok, info, 8192, order="shuffled", seed=7)
    b = assemble_examples(qa_items, tok, info, 8192, order="shuffled", seed=7)
    in_order = assemble_examples(qa_items, tok, info, 8192)
    _check_examples(a, qa_items, tok, info, 8192)
    assert all(np.array_equal(x.tokens, y.tokens) for x, y in zip(a, b)) and len(a) == len(b)
    assert any(x.pairs != y.pairs for x, y in zip(a, in_order))
    with pytest.raises(ValueError):
        assemble_examples(qa_items, tok, info, 8192, order="random")


def test_chunks_too_long_for_the_length_are_counted_not_crashed(qa_items, tok, info):
    counts = Counter()
    assert assemble_examples(qa_items[:10], tok, info, 300, counts=counts) == []
    assert counts["qa_chunks_too_long"] == 10
    assert assemble_examples([], tok, info, 4096) == []


# Mistral-style: no system role (the system text joins the first user turn), no space before answers.
NO_SYSTEM_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system role') }}"
    "{% elif m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]{% else %}{{ m['content'] }}{{ eos_token }}"
    "{% endif %}{% endfor %}"
)


@pytest.mark.parametrize(
    "template, head",
    [
        (LLAMA2_TEMPLATE, "<s> <<SYS>>\nYou are a helpful assistant.\n<</SYS>>\n\n[INST] "),
        (NO_SYSTEM_TEMPLATE, "<s> [INST] You are a helpful assistant.\n\n"),
    ],
    ids=["llama2", "no_system_role"],
)
def test_hf_chat_template_of_the_training_tokenizer(qa_items, tok, info, template, head):
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")
    hf.chat_template = template
    items = qa_items[:12]
    examples = assemble_examples(items, tok, info, 4096, fmt=ChatFormat(hf_tokenizer=hf))
    _check_examples(examples, items, tok, info, 4096, plain=False)
    for ex in examples:
        text = tok.decode(ex.tokens.tolist(), skip_special_tokens=False)
        assert text.startswith(head) and text.count("[/INST]") == ex.num_chunks
        assert text.endswith("</s>") and text.count("</s>") == ex.num_chunks


def test_examples_become_packable_segments(qa_items, tok, info):
    examples = assemble_examples(qa_items, tok, info, 4096)
    segments = [example_to_segment(ex, "qa4k") for ex in examples]
    seg = segments[0]
    assert seg.ref.key == f"{examples[0].book_uid}@qa{examples[0].first_chunk}"
    assert (seg.ref.doc_id, seg.ref.start, seg.ref.length) == (examples[0].book_id, examples[0].start, len(examples[0]))
    assert seg.doc_uid == examples[0].book_uid and seg.stage == "qa4k"
    rows = pack_segments(segments, 4096)
    assert rows.loss_mask.sum() == sum(ex.loss_mask.sum() for ex in examples)
    assert (rows.segment_ids > 0).sum() == sum(len(ex) for ex in examples)
