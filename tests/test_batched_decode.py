"""Batched greedy decoding (training/generate.py generate_batch, evals/generators.py): prompts of
different lengths in one batch give each row exactly the tokens it gets alone, for our JAX decoder
(one device and ring prefill over sp) and for transformers (left padding); each row stops at its
own end-of-answer id; the RULER runner and the NIAH grid batch a cell's samples with the same records."""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest

from evals.generators import FlaxGenerator, HFGenerator, generate_all, trim_at_eos
from tests.test_generate import CONFIG, random_params
from training.generate import generate, generate_batch
from training.mesh import make_mesh

NEW = 10
# Lengths 5, 37 and 20: each row's last prompt token, and so each row's decoding position, differs.
PROMPTS = [[int(t) for t in np.random.default_rng(seed).integers(0, 256, n)] for seed, n in ((1, 5), (2, 37), (3, 20))]


@functools.lru_cache(maxsize=None)
def _params():
    return random_params(CONFIG)


@functools.lru_cache(maxsize=None)
def _alone() -> tuple[tuple[int, ...], ...]:
    return tuple(tuple(generate(CONFIG, _params(), p, NEW)) for p in PROMPTS)


def test_jax_batch_equals_one_at_a_time():
    alone = [list(a) for a in _alone()]
    assert len({tuple(a) for a in alone}) == 3 and all(len(set(a)) > 3 for a in alone)  # a varied random model
    assert generate_batch(CONFIG, _params(), PROMPTS, NEW) == alone
    # Another order and a repeated prompt: rows do not see each other.
    assert generate_batch(CONFIG, _params(), [PROMPTS[2], PROMPTS[0], PROMPTS[2]], NEW) == [alone[2], alone[0], alone[2]]


def test_jax_rows_stop_at_their_own_eos():
    alone = [list(a) for a in _alone()]
    eos = alone[1][2]  # the middle row's third token: it stops there, the others run on (unless they meet it)
    expected = [trim_at_eos(generate(CONFIG, _params(), p, NEW, eos_id=eos), [eos]) for p in PROMPTS]
    assert expected[1] == alone[1][:3]
    assert generate_batch(CONFIG, _params(), PROMPTS, NEW, eos_id=eos) == expected
    assert max(len(e) for e in expected) > 3  # a row did run past the stopped one
    assert generate_batch(CONFIG, _params(), PROMPTS, 0) == [[], [], []]
    with pytest.raises(ValueError, match="at least one prompt token"):
        generate_batch(CONFIG, _params(), [PROMPTS[0], []], NEW)


@pytest.mark.parametrize("sp", [2])
def test_jax_batch_with_ring_prefill_over_sp(sp):
    """Ring-attention prefill of a right-padded batch (chunks of 4: several ring steps), the cache
    sharded over sp, each row decoding at its own position: the single-device answers."""
    mesh = make_mesh(f"sp={sp}")
    assert generate_batch(CONFIG, _params(), PROMPTS, NEW, mesh=mesh, q_chunk=4, kv_chunk=4) == [list(a) for a in _alone()]


def test_flax_generator_batches_through_generate_all():
    generator = FlaxGenerator(CONFIG, _params(), eos_ids=(), sp=1, name="toy")
    alone = [list(a) for a in _alone()]
    assert generate_all(generator, PROMPTS, NEW) == alone
    assert generator.generate(PROMPTS[1], NEW) == alone[1]


def test_trim_at_eos():
    assert trim_at_eos([4, 9, 2, 9], [9]) == [4, 9]
    assert trim_at_eos([4, 5], [9]) == [4, 5]
    assert trim_at_eos([4, 5], []) == [4, 5]


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    """A small random transformers LLaMA saved as a model folder (no download): wide weights, so
    its greedy tokens vary."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         initializer_range=0.3, eos_token_id=None, bos_token_id=None, pad_token_id=None)
    folder = tmp_path_factory.mktemp("hf") / "tiny-llama"
    LlamaForCausalLM(config).save_pretrained(folder)
    return str(folder)


def test_hf_batch_equals_one_at_a_time(hf_folder):
    """Left padding with an attention mask: every row's answer is its answer alone, with and
    without an end-of-answer id that stops one row early."""
    generator = HFGenerator(hf_folder, name="tiny")
    alone = [generator.generate(p, NEW) for p in PROMPTS]
    assert all(len(a) == NEW for a in alone) and len({tuple(a) for a in alone}) == 3
    assert generator.generate_batch(PROMPTS, NEW) == alone
    generator.eos_ids = (alone[1][2],)
    stopped = [generator.generate(p, NEW) for p in PROMPTS]
    assert stopped[1] == alone[1][:3]
    assert generator.generate_batch(PROMPTS, NEW) == stopped


def test_ruler_runner_batches_a_cells_samples_with_the_same_records(tmp_path):
    """`run_suite` with batch_size 2 (3 samples: batches of 2 and 1 per cell) writes the records
    one-at-a-time decoding writes, prediction for prediction."""
    from evals import niah
    from evals.generators import load_niah_tokenizer
    from evals.common import PromptBuilder
    from evals.runner import GeneratorBackend, run_suite
    from evals.tasks import build_tasks
    from tests.conftest import DEMO_TOKENIZER
    from tests.test_niah import TOY, toy_params

    tokenizer = load_niah_tokenizer(DEMO_TOKENIZER)
    builder = PromptBuilder(tokenizer, niah.PromptFrame.for_tokenizer(tokenizer))
    tasks = build_tasks(["niah_single_1", "niah_multikey_1"], book_words=20_000)
    backend = GeneratorBackend(FlaxGenerator(TOY, toy_params(), tokenizer.eos_ids, name="toy"), tokenizer)
    rows = {}
    for size in (1, 2):
        run_suite(backend, builder, tasks, [512], 3, tmp_path / str(size), max_new_tokens=6, batch_size=size)
        rows[size] = [json.loads(line) for line in (tmp_path / str(size) / "results.jsonl").read_text().splitlines()]
    key = lambda r: (r["task"], r["sample"], r["prediction"], r["score"], r["prompt_tokens"])  # noqa: E731
    assert len(rows[2]) == 6 and [key(r) for r in rows[2]] == [key(r) for r in rows[1]]
    assert any(r["prediction"] for r in rows[2])


def test_niah_grid_batches_a_cells_samples_with_the_same_records():
    from evals import niah
    from evals.generators import load_niah_tokenizer
    from evals.haystack import Haystack, read_texts
    from tests.conftest import DEMO_TOKENIZER, SAMPLE_BOOKS
    from tests.test_niah import TOY, toy_params

    tokenizer = load_niah_tokenizer(DEMO_TOKENIZER)
    haystack = Haystack.from_texts([next(read_texts(str(SAMPLE_BOOKS)))[:20_000]], tokenizer)
    generator = FlaxGenerator(TOY, toy_params(), tokenizer.eos_ids, name="toy")
    grid = lambda size: [(r.depth, r.sample, r.answer, r.expected) for r in niah.run_grid(  # noqa: E731
        generator, tokenizer, haystack, [256], [0, 100], samples=3, max_new_tokens=6, batch_size=size)]
    one = grid(1)
    assert len(one) == 6 and grid(2) == one
    with pytest.raises(ValueError, match="batch size"):
        grid(0)
