"""Greedy (or sampled) decoding from a params checkpoint, for smoke tests and `longctx generate`.

Without a KV cache: every step reruns the fixed-size buffer (prompt + new tokens), so one
compiled program serves the whole generation. Causal attention makes the padding after the
current position invisible to it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from training.model import LlamaModel, ModelConfig


def generate(config: ModelConfig, params, prompt_ids: list[int], max_new_tokens: int,
             temperature: float = 0.0, seed: int = 0, eos_id: int | None = None) -> list[int]:
    """New token ids after `prompt_ids` (greedy when temperature == 0)."""
    if not prompt_ids:
        raise ValueError("generation needs at least one prompt token")
    total = len(prompt_ids) + max_new_tokens
    model = LlamaModel(config)

    @jax.jit
    def next_token(params, buffer, length, key):
        positions = jnp.arange(total, dtype=jnp.int32)[None]
        logits = model.apply({"params": params}, buffer[None], positions, jnp.ones((1, total), jnp.int32))
        last = logits[0, length - 1].astype(jnp.float32)
        if temperature > 0:
            return jax.random.categorical(key, last / temperature)
        return jnp.argmax(last)

    buffer = np.zeros(total, np.int32)
    buffer[: len(prompt_ids)] = prompt_ids
    key = jax.random.key(seed)
    new = []
    for i in range(max_new_tokens):
        key, sub = jax.random.split(key)
        length = len(prompt_ids) + i
        token = int(next_token(params, jnp.asarray(buffer), length, sub))
        buffer[length] = token
        new.append(token)
        if eos_id is not None and token == eos_id:
            break
    return new
