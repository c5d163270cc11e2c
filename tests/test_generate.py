"""KV-cache decoding (training/generate.py) against full recomputation, and its sequence-parallel prefill."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from training.generate import buffer_length, decoding_programs, generate, place_params
from training.mesh import batch_sharding, make_mesh
from training.model import LlamaModel, ModelConfig, init_params

# A wide init makes a random model's next-token choices vary from step to step, so equal token
# lists mean equal computations, not one token repeated.
# GQA: 4 query heads share 2 key/value heads, as the cache stores them.
CONFIG = ModelConfig(num_layers=2, hidden_size=64, intermediate_size=128, num_heads=4, num_kv_heads=2, vocab_size=256,
                     initializer_range=0.3)
PROMPT = [int(t) for t in np.random.default_rng(0).integers(0, 256, 37)]  # odd length: the sp buffer is padded
NEW = 12  # one max_new_tokens throughout: one buffer size, so each program compiles once


def random_params(config: ModelConfig, seed: int = 1, std: float | None = None) -> dict:
    """Random weights drawn on the host (norm scales 1): XLA takes seconds to compile init_params'
    random initialisers on CPU, and the tests only need some random model."""
    rng = np.random.default_rng(seed)
    std = config.initializer_range if std is None else std
    shapes = jax.eval_shape(lambda: init_params(config, jax.random.key(0)))
    return jax.tree_util.tree_map_with_path(
        lambda path, s: np.ones(s.shape, np.float32) if path[-1].key == "scale"
        else rng.normal(0, std, s.shape).astype(np.float32), shapes)


@functools.lru_cache(maxsize=None)
def _params(config: ModelConfig):
    return random_params(config)


@functools.lru_cache(maxsize=None)
def _full_forward(config: ModelConfig):
    return jax.jit(lambda params, ids: LlamaModel(config).apply(
        {"params": params}, ids, jnp.arange(ids.shape[1], dtype=jnp.int32)[None]))


def recompute(config: ModelConfig, prompt: list[int], new: int, temperature: float = 0.0, seed: int = 0) -> list[int]:
    """The decoding this module replaced: rerun the whole fixed buffer every step, no cache."""
    params, forward = _params(config), _full_forward(config)
    buffer = np.zeros((1, len(prompt) + new), np.int32)
    buffer[0, : len(prompt)] = prompt
    key = jax.random.key(seed)
    for i in range(new):
        key, sub = jax.random.split(key)
        last = forward(params, jnp.asarray(buffer))[0, len(prompt) + i - 1]
        pick = jax.random.categorical(sub, last / temperature) if temperature > 0 else jnp.argmax(last)
        buffer[0, len(prompt) + i] = int(pick)
    return buffer[0, len(prompt):].tolist()


def test_kv_cache_matches_full_recomputation():
    expected = recompute(CONFIG, PROMPT, NEW)
    assert len(set(expected)) > 3  # a model that varies its output
    assert generate(CONFIG, _params(CONFIG), PROMPT, NEW) == expected


def test_sampling_with_cache_matches_recomputation():
    config = CONFIG
    sampled = generate(config, _params(config), PROMPT, NEW, temperature=1.0, seed=3)
    assert sampled == recompute(config, PROMPT, NEW, temperature=1.0, seed=3)
    assert sampled != generate(config, _params(config), PROMPT, NEW)  # really sampled


def test_eos_stops_and_edge_cases():
    config = CONFIG
    params = _params(config)
    first, second, *_ = generate(config, params, PROMPT, NEW)
    assert generate(config, params, PROMPT, NEW, eos_id=second) == [first, second]
    assert generate(config, params, PROMPT, NEW, eos_id=[7, first]) == [first]
    assert generate(config, params, PROMPT, 0) == []
    with pytest.raises(ValueError, match="at least one prompt token"):
        generate(config, params, [], 3)


def test_buffer_length():
    assert buffer_length(37) == 37  # dense attention: no padding
    assert buffer_length(37, sp=1, chunk=512) == 37  # one chunk: any length
    assert buffer_length(37, sp=4, chunk=512) == 40  # 2 x sp zigzag halves
    assert buffer_length(1000, sp=1, chunk=512) == 1024  # whole chunks once longer than one
    assert buffer_length(3000, sp=2, chunk=512) == 3072
    for total, sp, chunk in [(37, 2, 8), (37, 4, 8), (5000, 4, 512), (33, 8, 4)]:
        n = buffer_length(total, sp, chunk)
        local = n // sp
        assert n >= total and n % (2 * sp) == 0 and local % min(chunk, local) == 0


@pytest.mark.parametrize("sp", [2, 4])
def test_sequence_parallel_prefill_matches_single_device(sp):
    """Ring-attention prefill over sp devices (chunks of 4: several per device, several ring
    steps), then decoding with the cache sharded over sp: the same tokens as on one device."""
    config = CONFIG
    expected = generate(config, _params(config), PROMPT, NEW)
    assert generate(config, _params(config), PROMPT, NEW, mesh=make_mesh(f"sp={sp}"), q_chunk=4, kv_chunk=4) == expected


def test_cache_stays_sharded_over_sp():
    """Each device holds its quarter of the cache, and a decoding step never gathers the sequence."""
    config = CONFIG
    mesh = make_mesh("sp=4")
    params = place_params(_params(config), mesh)
    prefill, step = decoding_programs(config, mesh, 4, 4)
    length = buffer_length(len(PROMPT) + NEW - 1, 4, 4)  # the buffer of the sp=4 test above: compiled already
    buffer = jax.device_put(jnp.zeros((1, length), jnp.int32), batch_sharding(mesh))
    args = (jax.random.key(0), jnp.float32(0))
    (token, _), cache = prefill(params, buffer, jnp.zeros_like(buffer), jnp.array([10]), *args)
    k = cache["layers_0"]["self_attn"]["k"]
    assert k.shape == (1, length, 2, 16)
    assert {shard.data.shape for shard in k.addressable_shards} == {(1, length // 4, 2, 16)}
    text_only, position = jnp.zeros(1, jnp.int32), jnp.array([11], jnp.int32)
    assert "all-gather" not in step.lower(params, cache, token, text_only, position, *args).compile().as_text()
    _, cache = step(params, cache, token, text_only, position, *args)
    assert cache["layers_0"]["self_attn"]["k"].sharding.spec[1] == "sp"


# ----------------------------------------------------------------------------------------------
# Vision-language prompts and frames
# ----------------------------------------------------------------------------------------------


def _vision_prompt(vocab, rng, frames=1):
    from curation.vision_layout import layout_video

    start, end = ([7], [8]) if vocab.mode == "separate" else ([], [])
    tokens, vision, _ = layout_video([rng.integers(0, 8192, 256) for _ in range(frames)], [1, 5, 9], [11, 12], start, end, vocab)
    return tokens.tolist(), vision.tolist()


@pytest.mark.parametrize("layout", ["separate", "unified"])
def test_text_after_a_video_equals_full_recomputation(layout):
    from training.vision import model_vision_vocab, with_vision

    config = with_vision(CONFIG, layout)
    params = random_params(config)
    ids, vision = _vision_prompt(model_vision_vocab(config), np.random.default_rng(1))
    new = generate(config, params, ids, 6, prompt_vision_mask=vision)
    model = LlamaModel(config)
    seq, mask = list(ids), list(vision)
    for token in new:  # the old algorithm: the whole sequence again for every token
        out = model.apply({"params": params}, jnp.asarray([seq]), jnp.arange(len(seq))[None], None, jnp.asarray([mask]))
        text_logits = out[0] if isinstance(out, tuple) else out
        assert int(jnp.argmax(text_logits[0, -1])) == token
        seq.append(token)
        mask.append(0)


@pytest.mark.parametrize("layout", ["separate", "unified"])
def test_generated_frames_end_every_257th_token_and_follow_the_vision_head(layout):
    """Greedy frames: each code is the best code (never <eof>/<eov> or text) after the sequence so
    far, <eof> is fed after each frame but the last; one teacher-forced pass over the result checks
    every choice."""
    from training.generate import generate_frames
    from training.vision import model_vision_vocab, with_vision

    config = with_vision(CONFIG, layout)
    vocab = model_vision_vocab(config)
    params = random_params(config)
    prompt = [1, 5, 9] + ([7] if layout == "separate" else [vocab.vision_start])
    frames = generate_frames(config, params, prompt, 2)
    assert frames.shape == (2, 16, 16) and frames.min() >= 0 and frames.max() < vocab.codebook_size
    assert len(np.unique(frames)) > 20  # a wide random model's picks vary

    codes = frames.reshape(2, 256) + vocab.offset
    seq = prompt + codes[0].tolist() + [vocab.eof] + codes[1].tolist()
    mask = [0] * len(prompt) + [1] * (len(seq) - len(prompt))
    out = LlamaModel(config).apply({"params": params}, jnp.asarray([seq]), jnp.arange(len(seq))[None], None, jnp.asarray([mask]))
    logits = np.asarray(out[1] if isinstance(out, tuple) else out)[0]
    code_range = slice(vocab.offset, vocab.offset + vocab.codebook_size)
    chosen = logits[:, code_range].argmax(-1) + vocab.offset
    positions = [i for i in range(len(prompt), len(seq)) if seq[i] != vocab.eof]
    assert [seq[i] for i in positions] == [int(chosen[i - 1]) for i in positions]
    assert seq[len(prompt) + 256] == vocab.eof
