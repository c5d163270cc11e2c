"""Greedy (or sampled) decoding from a params checkpoint, with a KV cache, for `longctx generate`
and the needle-in-a-haystack evaluation (evals/niah.py).

Two compiled programs per model and buffer size:
- prefill: one forward pass over a fixed buffer (the prompt, then room for the new tokens) that
  fills every layer's KV cache (`Attention._cached_attention`) and picks the first new token from
  the last prompt position. Only that position's logits are computed: at 32K tokens the full
  [seq, vocab] logits would be gigabytes. Causal attention keeps the padding after the prompt
  invisible to it.
- step: one token in, its keys/values written at its position, the next token out.

Long prompts: pass a `mesh` with an `sp` axis (training/mesh.py). The prefill then runs ring
attention over `sp` with the buffer sharded along the sequence, exactly as training does, and the
cache stays sharded over `sp` along the sequence; decoding steps are plain jitted functions of
those sharded arrays, which GSPMD partitions (each device scores its slice of the cache).
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from curation.vision_layout import CODES_PER_FRAME
from training.mesh import BATCH_AXES, batch_sharding
from training.model import LlamaModel, ModelConfig, output_kernel, param_partition_specs, vision_output_kernel
from training.vision import model_vision_vocab
from training.ring_attention import ring_attention_sharded


def _pick(logits: jax.Array, key: jax.Array, temperature: jax.Array) -> jax.Array:
    """Greedy at temperature 0, else a sample; temperature is traced, so one program serves both."""
    logits = logits.astype(jnp.float32)
    sample = jax.random.categorical(key, logits / jnp.maximum(temperature, 1e-6))
    return jnp.where(temperature > 0, sample, jnp.argmax(logits))


def buffer_length(total: int, sp: int | None = None, chunk: int = 512) -> int:
    """The prefill buffer for `total` tokens. Dense attention (sp None) takes any length; ring
    attention needs 2 x sp equal zigzag halves when sp > 1, and each device's block a whole number
    of chunks once it is longer than one chunk."""
    if sp is None:
        return total
    unit = 2 * sp if sp > 1 else 1
    if math.ceil(total / unit) * unit // sp > chunk:
        unit = math.lcm(unit, sp * chunk)
    return math.ceil(total / unit) * unit


@functools.lru_cache(maxsize=16)
def decoding_programs(config: ModelConfig, mesh: Mesh | None, q_chunk: int, kv_chunk: int):
    """(prefill, step), jitted once per model/mesh; jax.jit recompiles per buffer size by itself.

    prefill(params, buffer [1, L], vision_buffer [1, L], last, key, temperature) -> ((text, vision) picks, cache);
    step(params, cache, token, token_is_vision, position, key, temperature) -> ((text, vision) picks, cache).
    With a mesh the cache is sharded over sp along the sequence.
    """
    model = LlamaModel(config.with_(remat="none"))  # no backward pass here: nothing to rematerialise
    attention_fn, cache_sharding = None, None  # without a mesh: the model's dense attention, one device
    if mesh is not None:
        def ring(q, k, v, segment_ids):  # as the trainer's (training/train.py make_attention)
            return ring_attention_sharded(q, k, v, mesh, segment_ids=segment_ids, causal=True, axis_name="sp",
                                          q_chunk=q_chunk, kv_chunk=kv_chunk)

        attention_fn = ring
        cache_sharding = NamedSharding(mesh, P(BATCH_AXES, "sp", None, None))  # [batch, seq, kv_heads, head_dim]

    vocab = model_vision_vocab(config)

    def picks(params, h, key, temperature):
        """(next text token, next vision token) from hidden states [hidden]: the caller knows which
        modality comes next. A vision pick is always a VQGAN code (never <eof>/<eov>: the caller
        places those), as an id of the vocabulary the model embeds it with."""
        h = h.astype(jnp.float32)
        text_logits = h @ output_kernel(config, params).astype(jnp.float32)
        text = _pick(text_logits, key, temperature)
        if vocab is None:
            return text, text
        head = vision_output_kernel(config, params)
        vision_logits = text_logits if head is None else h @ head.astype(jnp.float32)
        ids = jnp.arange(vision_logits.shape[-1])
        is_code = (ids >= vocab.offset) & (ids < vocab.offset + vocab.codebook_size)
        return text, _pick(jnp.where(is_code, vision_logits, -jnp.inf), key, temperature)

    def prefill(params, buffer, vision_buffer, last, key, temperature):
        positions = jnp.arange(buffer.shape[1], dtype=jnp.int32)[None]
        hidden, variables = model.apply({"params": params}, buffer, positions, None, vision_buffer, attention_fn=attention_fn,
                                        return_hidden=True, mutable=["cache"])
        h = jax.lax.dynamic_index_in_dim(hidden[0], last, keepdims=False)
        return picks(params, h, key, temperature), variables["cache"]

    def step(params, cache, token, token_is_vision, position, key, temperature):
        hidden, variables = model.apply({"params": params, "cache": cache}, token[None, None], position[None, None],
                                        None, token_is_vision[None, None], return_hidden=True, mutable=["cache"])
        return picks(params, hidden[0, -1], key, temperature), variables["cache"]

    out = None if cache_sharding is None else (None, cache_sharding)
    # The step donates the old cache: decoding then updates it in place instead of copying it.
    return jax.jit(prefill, out_shardings=out), jax.jit(step, out_shardings=out, donate_argnums=1)


def place_params(params: Any, mesh: Mesh) -> Any:
    """Params laid out on the mesh by the training rules (replicated over sp)."""
    specs = param_partition_specs(params, mesh)
    return jax.tree.map(lambda x, spec: jax.device_put(x, NamedSharding(mesh, spec)), params, specs)


class _Decoder:
    """One generation: the prompt prefilled into the KV cache, then one token in, one pick out."""

    def __init__(self, config: ModelConfig, params: Any, prompt_ids: Sequence[int], prompt_vision_mask: Sequence[int] | None,
                 new_tokens: int, temperature: float, seed: int, mesh: Mesh | None, q_chunk: int, kv_chunk: int):
        if not prompt_ids:
            raise ValueError("generation needs at least one prompt token")
        if prompt_vision_mask is not None and len(prompt_vision_mask) != len(prompt_ids):
            raise ValueError(f"prompt_vision_mask has {len(prompt_vision_mask)} entries for {len(prompt_ids)} prompt ids")
        n = len(prompt_ids)
        sp = None if mesh is None else mesh.shape["sp"]
        # The last new token is never fed back, so the cache needs n + new_tokens - 1 slots.
        length = buffer_length(n + new_tokens - 1, sp, math.lcm(q_chunk, kv_chunk))
        buffer, vision = np.zeros((1, length), np.int32), np.zeros((1, length), np.int32)
        buffer[0, :n] = prompt_ids
        if prompt_vision_mask is not None:
            vision[0, :n] = prompt_vision_mask
        prefill, self._step = decoding_programs(config, mesh, q_chunk, kv_chunk)
        self.temperature = jnp.float32(temperature)
        buffer, vision = jnp.asarray(buffer), jnp.asarray(vision)
        if mesh is not None:
            buffer, vision = (jax.device_put(x, batch_sharding(mesh)) for x in (buffer, vision))
            if not all(isinstance(getattr(x, "sharding", None), NamedSharding) and x.sharding.mesh == mesh
                       for x in jax.tree.leaves(params)):
                params = place_params(params, mesh)
        self.params, self.position = params, n
        self.key = jax.random.key(seed)
        self.key, sub = jax.random.split(self.key)  # the same key sequence as one split per step from the seed
        # Under the mesh the model's activation sharding constraints apply (as in training).
        with contextlib.nullcontext() if mesh is None else jax.set_mesh(mesh):
            self.picks, self.cache = prefill(params, buffer, vision, n - 1, sub, self.temperature)

    def text(self) -> int:
        return int(self.picks[0])

    def vision(self) -> int:
        return int(self.picks[1])

    def feed(self, token: int, is_vision: bool = False) -> None:
        self.key, sub = jax.random.split(self.key)
        self.picks, self.cache = self._step(self.params, self.cache, jnp.int32(token), jnp.int32(is_vision),
                                            jnp.int32(self.position), sub, self.temperature)
        self.position += 1


def generate(config: ModelConfig, params: Any, prompt_ids: Sequence[int], max_new_tokens: int,
             temperature: float = 0.0, seed: int = 0, eos_id: int | Sequence[int] | None = None, *,
             prompt_vision_mask: Sequence[int] | None = None, mesh: Mesh | None = None,
             q_chunk: int = 512, kv_chunk: int = 512) -> list[int]:
    """New text token ids after `prompt_ids` (greedy when temperature == 0), stopping after an `eos_id`.

    `prompt_vision_mask` marks a vision-language prompt's vision tokens (as in the shards). With
    `mesh` (an `sp` axis; see module docstring) the prompt is prefilled with ring attention
    sequence-parallel over sp and the KV cache is sharded over sp; params are placed on the mesh
    (call `place_params` once beforehand to avoid re-placing them on every call).
    """
    if max_new_tokens <= 0:
        return []
    stop = set() if eos_id is None else {eos_id} if isinstance(eos_id, int) else set(eos_id)
    decoder = _Decoder(config, params, prompt_ids, prompt_vision_mask, max_new_tokens, temperature, seed, mesh, q_chunk, kv_chunk)
    new = [decoder.text()]
    while len(new) < max_new_tokens and new[-1] not in stop:
        decoder.feed(new[-1])
        new.append(decoder.text())
    return new


def generate_frames(config: ModelConfig, params: Any, prompt_ids: Sequence[int], num_frames: int,
                    temperature: float = 0.0, seed: int = 0, *, prompt_vision_mask: Sequence[int] | None = None,
                    mesh: Mesh | None = None, q_chunk: int = 512, kv_chunk: int = 512) -> np.ndarray:
    """Sample `num_frames` frames of VQGAN codes after a prompt that ends where a vision block
    starts (its `<vision>` marker): 256 codes from the vision head, then `<eof>` forced (`<eov>`
    after the last frame) and fed back as the layout has it, so every 257th token is a frame end.
    Returns codes [num_frames, 16, 16] in [0, codebook_size), for the VQGAN decoder."""
    vocab = model_vision_vocab(config)
    if vocab is None:
        raise ValueError("a text-only model cannot generate vision tokens (its config has no vision_layout)")
    if num_frames < 1:
        raise ValueError("num_frames must be at least 1")
    decoder = _Decoder(config, params, prompt_ids, prompt_vision_mask, num_frames * (CODES_PER_FRAME + 1), temperature,
                       seed, mesh, q_chunk, kv_chunk)
    frames = np.zeros((num_frames, CODES_PER_FRAME), np.int32)
    for f in range(num_frames):
        for i in range(CODES_PER_FRAME):
            token = decoder.vision()
            frames[f, i] = token - vocab.offset
            decoder.feed(token, is_vision=True)
        if f + 1 < num_frames:  # the <eov> after the last frame is never fed: nothing follows it here
            decoder.feed(vocab.eof, is_vision=True)
    side = int(math.isqrt(CODES_PER_FRAME))
    return frames.reshape(num_frames, side, side)
