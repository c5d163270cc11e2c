"""What makes a text LLaMA a vision-language one (LWM): the vision vocabulary it reads, the shard
metadata it accepts, and how a text checkpoint grows the new tables.

Layouts (as `curation/vision_layout.py` writes them):
- separate: vision ids 0..8447 in their own table and head (8192 codes, `<eof>` 8192, `<eov>` 8193);
- unified: the text vocabulary T, then 8196 ids (codes, `<eof>`, `<eov>`, `<vision>`, `</vision>`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import jax
import jax.numpy as jnp

from curation.shards import ShardMetadata
from curation.vision_layout import DEFAULT_VISION_VOCAB, UNIFIED_EXTRA, Vocab, vision_vocab, vocab_metadata
from training.model import ModelConfig

VisionInit = Literal["normal", "text_mean"]


def with_vision(model: ModelConfig, layout: str) -> ModelConfig:
    """`model` given a vision vocabulary in `layout` (a text model grows one; a vision model must match)."""
    if layout == model.vision_layout:
        return model
    if model.vision_layout != "none":
        raise ValueError(f"the model already has a {model.vision_layout!r} vision vocabulary; cannot switch to {layout!r}")
    if layout == "separate":
        return model.with_(vision_layout="separate", vision_vocab_size=DEFAULT_VISION_VOCAB.size)
    if layout == "unified":
        return model.with_(vision_layout="unified", vision_vocab_size=UNIFIED_EXTRA, vocab_size=model.vocab_size + UNIFIED_EXTRA)
    raise ValueError(f"unknown vision layout {layout!r}")


def model_vision_vocab(model: ModelConfig) -> Vocab | None:
    """The vision vocabulary the model reads and writes (None for a text-only model)."""
    if model.vision_layout == "none":
        return None
    text_vocab = model.vocab_size - (model.vision_vocab_size if model.vision_layout == "unified" else 0)
    return vision_vocab(model.vision_layout, text_vocab)


def expected_vision_metadata(model: ModelConfig) -> dict[str, Any] | None:
    """The `longctx.vision` shard metadata the model accepts: what the vision pipelines write for
    the model's vocabulary (`curation.vision_layout.vocab_metadata`)."""
    v = model_vision_vocab(model)
    return None if v is None else vocab_metadata(v)


def vision_problems(shard: ShardMetadata, expected: Mapping[str, Any] | None) -> list[str]:
    """Why a shard's vision layout does not fit the model (empty when it does, or when the shard is text)."""
    found = shard.vision
    if found is None:
        return []
    if expected is None:
        return [f"shards hold {found.get('layout')!r} vision tokens but the model is text-only (set vision_layout)"]
    return [f"vision {key} {found.get(key)!r} != model's {value!r}" for key, value in expected.items() if found.get(key) != value]


def grow_vision_params(params: dict[str, Any], text: ModelConfig, vision: ModelConfig, rng: jax.Array,
                       init: VisionInit = "normal") -> dict[str, Any]:
    """A text model's params -> the vision model's: every text weight kept as it is, the new vision
    rows (separate: `vision_embed`, `vision_head`; unified: rows of `embed_tokens` / columns of
    `lm_head` past the text vocabulary) initialised as `init` says:

    - `normal`: N(0, initializer_range), like a fresh model;
    - `text_mean`: embeddings at the mean text embedding (plus that noise) and head columns at the
      mean text column, so vision tokens start near "an average token" rather than far from all.

    So the vision model's text logits on a pure-text input equal the text model's.
    """
    if text.vision_layout != "none" or vision.vision_layout == "none":
        raise ValueError("grow_vision_params turns a text-only model into a vision-language one")
    n = vision.vision_vocab_size
    k_embed, k_head = jax.random.split(rng)
    out = dict(params)
    embed = params["embed_tokens"]["embedding"]
    head = None if text.tie_embeddings else params["lm_head"]["kernel"]

    def new(key, shape, mean):
        noise = vision.initializer_range * jax.random.normal(key, shape, jnp.float32)
        return (noise + (mean if init == "text_mean" else 0.0)).astype(embed.dtype)

    new_embed = new(k_embed, (n, embed.shape[1]), embed.astype(jnp.float32).mean(0, keepdims=True))
    if vision.vision_layout == "separate":
        out["vision_embed"] = {"embedding": new_embed}
        if head is None:  # tied text embeddings: the vision head still is its own matrix
            head = embed.T
        out["vision_head"] = {"kernel": new(k_head, (head.shape[0], n), head.astype(jnp.float32).mean(1, keepdims=True))}
        return out
    out["embed_tokens"] = {"embedding": jnp.concatenate([embed, new_embed], axis=0)}
    if head is not None:
        new_head = new(k_head, (head.shape[0], n), head.astype(jnp.float32).mean(1, keepdims=True))
        out["lm_head"] = {"kernel": jnp.concatenate([head, new_head], axis=1)}
    return out
