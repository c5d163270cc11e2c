"""Greedy (or sampled) decoding from a params checkpoint, with a KV cache, for `longctx generate`
and the evaluations (evals/generators.py), one prompt or a batch of prompts of different lengths.

Two compiled programs per model, batch size and buffer size:
- prefill: one forward pass over a fixed buffer [batch, L] (each prompt from position 0, then room
  for the new tokens: rows are padded on the right) that fills every layer's KV cache
  (`Attention._cached_attention`) and picks each row's first new token from its last prompt
  position. Only those positions' logits are computed: at 32K tokens the full [seq, vocab] logits
  would be gigabytes. Causal attention keeps the padding after a prompt invisible to it.
- step: one token per row in, its keys/values written at that row's own position (rows of
  different prompt lengths decode at different positions), the next token per row out.
Greedy answers of a batch are each row's answer alone (tests/test_batched_decode.py).

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

from curation.units import byte_size
from curation.vision_layout import CODES_PER_FRAME
from training.mesh import BATCH_AXES, batch_sharding, data_parallel_size
from training.model import LlamaModel, ModelConfig, output_kernel, param_partition_specs, vision_output_kernel
from training.vision import model_vision_vocab
from training.ring_attention import ring_attention_sharded


def _pick(logits: jax.Array, key: jax.Array, temperature: jax.Array) -> jax.Array:
    """Greedy at temperature 0, else a sample, per row of logits [..., vocab]; temperature is
    traced, so one program serves both."""
    logits = logits.astype(jnp.float32)
    sample = jax.random.categorical(key, logits / jnp.maximum(temperature, 1e-6))
    return jnp.where(temperature > 0, sample, jnp.argmax(logits, axis=-1))


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
def decoding_programs(config: ModelConfig, mesh: Mesh | None, q_chunk: int, kv_chunk: int,
                      codebook_size: int | None = None):
    """(prefill, step), jitted once per model/mesh; jax.jit recompiles per batch and buffer size by itself.
    `codebook_size`: vision picks are codes below it (a VQGAN whose codebook is smaller than the
    model's can decode them); None: every code of the model's vision vocabulary.

    prefill(params, buffer [B, L], vision_buffer [B, L], last [B], key, temperature) -> ((text [B], vision [B]) picks, cache);
    step(params, cache, tokens [B], tokens_are_vision [B], positions [B], key, temperature) -> ((text, vision) picks, cache).
    Each row of the buffer holds one prompt from position 0, padded on the right; `last` is each
    row's last prompt index and `positions` each row's own decoding position. With a mesh the
    cache is sharded over sp along the sequence.
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
        """(next text tokens, next vision tokens) [B] from hidden states [B, hidden]: the caller knows
        which modality comes next. A vision pick is always a VQGAN code (never <eof>/<eov>: the
        caller places those), as an id of the vocabulary the model embeds it with."""
        h = h.astype(jnp.float32)
        text_logits = h @ output_kernel(config, params).astype(jnp.float32)
        text = _pick(text_logits, key, temperature)
        if vocab is None:
            return text, text
        head = vision_output_kernel(config, params)
        vision_logits = text_logits if head is None else h @ head.astype(jnp.float32)
        ids = jnp.arange(vision_logits.shape[-1])
        codes = vocab.codebook_size if codebook_size is None else min(codebook_size, vocab.codebook_size)
        is_code = (ids >= vocab.offset) & (ids < vocab.offset + codes)
        return text, _pick(jnp.where(is_code, vision_logits, -jnp.inf), key, temperature)

    def prefill(params, buffer, vision_buffer, last, key, temperature):
        # Every row counts its positions from 0; causal attention keeps each row's right padding
        # invisible to its prompt, so rows of different lengths share one buffer.
        positions = jnp.broadcast_to(jnp.arange(buffer.shape[1], dtype=jnp.int32), buffer.shape)
        hidden, variables = model.apply({"params": params}, buffer, positions, None, vision_buffer, attention_fn=attention_fn,
                                        return_hidden=True, mutable=["cache"])
        h = hidden[jnp.arange(buffer.shape[0]), last]  # [B, hidden]: each row's last prompt token
        return picks(params, h, key, temperature), variables["cache"]

    def step(params, cache, tokens, tokens_are_vision, positions, key, temperature):
        hidden, variables = model.apply({"params": params, "cache": cache}, tokens[:, None], positions[:, None],
                                        None, tokens_are_vision[:, None], return_hidden=True, mutable=["cache"])
        return picks(params, hidden[:, -1], key, temperature), variables["cache"]

    out = None if cache_sharding is None else (None, cache_sharding)
    # The step donates the old cache: decoding then updates it in place instead of copying it.
    return jax.jit(prefill, out_shardings=out), jax.jit(step, out_shardings=out, donate_argnums=1)


def place_params(params: Any, mesh: Mesh) -> Any:
    """Params laid out on the mesh by the training rules (replicated over sp)."""
    specs = param_partition_specs(params, mesh)
    return jax.tree.map(lambda x, spec: jax.device_put(x, NamedSharding(mesh, spec)), params, specs)


# Positions are int32 (the buffer's arange, each row's decoding position): the last one a decoder
# can write is 2**31 - 1.
MAX_POSITIONS = 2**31 - 1


def device_memory_bytes(device: Any = None) -> int | None:
    """What one device can hold: its allocator's limit (GPU, TPU), or for a CPU device this
    machine's physical memory; None where neither is known."""
    device = device or jax.local_devices()[0]
    try:
        stats = device.memory_stats() or {}
    except Exception:  # noqa: BLE001  (backends differ: CPU raises or returns None)
        stats = {}
    if stats.get("bytes_limit"):
        return int(stats["bytes_limit"])
    if device.platform == "cpu":
        import os

        try:
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            return None
    return None


def decode_bytes(config: ModelConfig, prompt_tokens: int, new_tokens: int, rows: int = 1) -> dict[str, int]:
    """A floor on what decoding holds at once on its one device without a mesh (`generate` with
    mesh=None, as `longctx generate` runs): the params; the KV cache `_Decoder` allocates, a slot
    per position of its buffer (L = prompt + new - 1 per row) for keys and values of every layer,
    in the compute dtype; and the prefill's dense attention scores over that whole buffer, one
    layer's at a time (rows x heads x L x L, float32). Activations and the probabilities come on
    top: a request over this floor cannot run."""
    from training.model import init_params

    length = prompt_tokens + new_tokens - 1
    abstract = jax.eval_shape(lambda: init_params(config, jax.random.key(0)))
    params = sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(abstract))
    cache = 2 * config.num_layers * rows * length * config.num_kv_heads * config.head_dim * jnp.dtype(config.dtype).itemsize
    scores = rows * config.num_heads * length * length * 4
    return {"params": int(params), "kv_cache": int(cache), "prefill_scores": int(scores)}


def check_decode_fits(config: ModelConfig, prompt_tokens: int, new_tokens: int, rows: int = 1,
                      memory_bytes: int | None = None, what: str | None = None) -> None:
    """Refuse, with a one-line ValueError, a decode (no mesh) that cannot run: more positions than
    int32 positions address, or more bytes than one device holds (`decode_bytes`'s floor against
    `memory_bytes`, default `device_memory_bytes()`; no memory check where that is unknown).
    Call it before the weights load: it needs the ModelConfig only. `what` names the request in
    the message (default: the token counts)."""
    what = what or f"decoding {prompt_tokens:,} prompt + {new_tokens:,} new tokens"
    length = prompt_tokens + new_tokens - 1
    if length > MAX_POSITIONS:
        raise ValueError(f"{what}: {length:,} positions, but positions are int32 (at most {MAX_POSITIONS:,}): "
                         "ask for fewer new tokens")
    memory = device_memory_bytes() if memory_bytes is None else memory_bytes
    if memory is None:
        return
    parts = decode_bytes(config, prompt_tokens, new_tokens, rows)
    needed = sum(parts.values())
    if needed > memory:
        raise ValueError(f"{what} needs at least {needed:,} bytes ({byte_size(needed)}) on one device (KV cache "
                         f"{byte_size(parts['kv_cache'])}, prefill attention scores {byte_size(parts['prefill_scores'])}, "
                         f"params {byte_size(parts['params'])}), but it holds {byte_size(memory)}: ask for fewer new tokens")


class _Decoder:
    """One batch of generations: the prompts prefilled into the KV cache (one row each, padded on
    the right), then one token per row in, one pick per row out, each row at its own position."""

    def __init__(self, config: ModelConfig, params: Any, prompts: Sequence[Sequence[int]],
                 vision_masks: Sequence[Sequence[int] | None] | None, new_tokens: int, temperature: float, seed: int,
                 mesh: Mesh | None, q_chunk: int, kv_chunk: int, codebook_size: int | None = None):
        if not prompts:
            raise ValueError("generation needs at least one prompt")
        if any(len(p) == 0 for p in prompts):
            raise ValueError("generation needs at least one prompt token")
        masks = list(vision_masks) if vision_masks is not None else [None] * len(prompts)
        for ids, mask in zip(prompts, masks):
            if mask is not None and len(mask) != len(ids):
                raise ValueError(f"prompt_vision_mask has {len(mask)} entries for {len(ids)} prompt ids")
        self.rows = len(prompts)
        lengths = np.array([len(p) for p in prompts], np.int32)
        sp = None if mesh is None else mesh.shape["sp"]
        # The last new token is never fed back, so the cache needs n + new_tokens - 1 slots per row.
        length = buffer_length(int(lengths.max()) + new_tokens - 1, sp, math.lcm(q_chunk, kv_chunk))
        # Under a mesh the batch is split over dp x fsdp: filler rows (a copy of the first prompt)
        # make it divisible; their picks are never read.
        width = 1 if mesh is None else data_parallel_size(mesh)
        batch = -(-self.rows // width) * width
        buffer, vision = np.zeros((batch, length), np.int32), np.zeros((batch, length), np.int32)
        lengths = np.concatenate([lengths, np.full(batch - self.rows, lengths[0], np.int32)])
        for row in range(batch):
            source = row if row < self.rows else 0
            buffer[row, : lengths[row]] = prompts[source]
            if masks[source] is not None:
                vision[row, : lengths[row]] = masks[source]
        prefill, self._step = decoding_programs(config, mesh, q_chunk, kv_chunk, codebook_size)
        self.temperature = jnp.float32(temperature)
        buffer, vision = jnp.asarray(buffer), jnp.asarray(vision)
        if mesh is not None:
            buffer, vision = (jax.device_put(x, batch_sharding(mesh)) for x in (buffer, vision))
            if not all(isinstance(getattr(x, "sharding", None), NamedSharding) and x.sharding.mesh == mesh
                       for x in jax.tree.leaves(params)):
                params = place_params(params, mesh)
        self.params, self.positions = params, lengths  # each row's next position: its prompt length, then +1 per step
        self.key = jax.random.key(seed)
        self.key, sub = jax.random.split(self.key)  # the same key sequence as one split per step from the seed
        # Under the mesh the model's activation sharding constraints apply (as in training).
        with contextlib.nullcontext() if mesh is None else jax.set_mesh(mesh):
            self.picks, self.cache = prefill(params, buffer, vision, jnp.asarray(lengths - 1), sub, self.temperature)

    def text(self) -> list[int]:
        """Each prompt's next text token."""
        return np.asarray(self.picks[0])[: self.rows].tolist()

    def vision(self) -> list[int]:
        return np.asarray(self.picks[1])[: self.rows].tolist()

    def feed(self, tokens: Sequence[int], is_vision: bool = False) -> None:
        """One token per prompt, written at each row's own next position."""
        batch = len(self.positions)
        fed = np.zeros(batch, np.int32)
        fed[: self.rows] = tokens
        self.key, sub = jax.random.split(self.key)
        # No mesh context here (as before batching): the step's layout follows its sharded inputs.
        self.picks, self.cache = self._step(self.params, self.cache, jnp.asarray(fed),
                                            jnp.full(batch, int(is_vision), jnp.int32),
                                            jnp.asarray(self.positions), sub, self.temperature)
        self.positions = self.positions + 1


def _stop_ids(eos_id: int | Sequence[int] | None) -> set[int]:
    return set() if eos_id is None else {eos_id} if isinstance(eos_id, int) else set(eos_id)


def generate_batch(config: ModelConfig, params: Any, prompts: Sequence[Sequence[int]], max_new_tokens: int,
                   temperature: float = 0.0, seed: int = 0, eos_id: int | Sequence[int] | None = None, *,
                   prompt_vision_masks: Sequence[Sequence[int] | None] | None = None, mesh: Mesh | None = None,
                   q_chunk: int = 512, kv_chunk: int = 512) -> list[list[int]]:
    """New text token ids after each prompt (prompts may differ in length), each row stopping after
    its first `eos_id`; decoding stops when every row has. Greedy (temperature 0) gives each row
    exactly what `generate` gives it alone. Sampling draws one key per step for the whole batch,
    so a sampled row depends on its batch. See `generate` for `mesh` and the chunks."""
    if max_new_tokens <= 0:
        return [[] for _ in prompts]
    stop = _stop_ids(eos_id)
    decoder = _Decoder(config, params, prompts, prompt_vision_masks, max_new_tokens, temperature, seed, mesh,
                       q_chunk, kv_chunk)
    new = [[token] for token in decoder.text()]
    running = [token not in stop for token in decoder.text()]
    for _ in range(max_new_tokens - 1):
        if not any(running):
            break
        decoder.feed([row[-1] for row in new])  # finished rows are fed too (one batch); their picks are dropped
        for row, token in enumerate(decoder.text()):
            if running[row]:
                new[row].append(token)
                running[row] = token not in stop
    return new


def generate(config: ModelConfig, params: Any, prompt_ids: Sequence[int], max_new_tokens: int,
             temperature: float = 0.0, seed: int = 0, eos_id: int | Sequence[int] | None = None, *,
             prompt_vision_mask: Sequence[int] | None = None, mesh: Mesh | None = None,
             q_chunk: int = 512, kv_chunk: int = 512) -> list[int]:
    """New text token ids after `prompt_ids` (greedy when temperature == 0), stopping after an `eos_id`:
    `generate_batch` with one prompt.

    `prompt_vision_mask` marks a vision-language prompt's vision tokens (as in the shards). With
    `mesh` (an `sp` axis; see module docstring) the prompt is prefilled with ring attention
    sequence-parallel over sp and the KV cache is sharded over sp; params are placed on the mesh
    (call `place_params` once beforehand to avoid re-placing them on every call).
    """
    if not prompt_ids:
        raise ValueError("generation needs at least one prompt token")
    return generate_batch(config, params, [prompt_ids], max_new_tokens, temperature, seed, eos_id,
                          prompt_vision_masks=[prompt_vision_mask], mesh=mesh, q_chunk=q_chunk, kv_chunk=kv_chunk)[0]


def generate_frames(config: ModelConfig, params: Any, prompt_ids: Sequence[int], num_frames: int,
                    temperature: float = 0.0, seed: int = 0, *, prompt_vision_mask: Sequence[int] | None = None,
                    mesh: Mesh | None = None, q_chunk: int = 512, kv_chunk: int = 512,
                    codebook_size: int | None = None) -> np.ndarray:
    """Sample `num_frames` frames of VQGAN codes after a prompt that ends where a vision block
    starts (its `<vision>` marker): 256 codes from the vision head, then `<eof>` forced (`<eov>`
    after the last frame) and fed back as the layout has it, so every 257th token is a frame end.
    Returns codes [num_frames, 16, 16] in [0, codebook_size), for the VQGAN decoder: the model's
    codebook, or `codebook_size` (the decoding VQGAN's) when that is smaller."""
    vocab = model_vision_vocab(config)
    if vocab is None:
        raise ValueError("a text-only model cannot generate vision tokens (its config has no vision_layout)")
    if num_frames < 1:
        raise ValueError("num_frames must be at least 1")
    decoder = _Decoder(config, params, [prompt_ids], [prompt_vision_mask], num_frames * (CODES_PER_FRAME + 1),
                       temperature, seed, mesh, q_chunk, kv_chunk, codebook_size)
    frames = np.zeros((num_frames, CODES_PER_FRAME), np.int32)
    for f in range(num_frames):
        for i in range(CODES_PER_FRAME):
            token = decoder.vision()[0]
            frames[f, i] = token - vocab.offset
            decoder.feed([token], is_vision=True)
        if f + 1 < num_frames:  # the <eov> after the last frame is never fed: nothing follows it here
            decoder.feed([vocab.eof], is_vision=True)
    side = int(math.isqrt(CODES_PER_FRAME))
    return frames.reshape(num_frames, side, side)
