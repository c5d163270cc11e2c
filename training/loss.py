"""The training loss, on its own: next-token targets inside packed documents, the chunked
cross-entropy (full-sequence logits never exist), per-modality sums and their weighting. Pure
functions of arrays; the train step (training/step.py) and evaluation use them."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from training.config import TrainConfig
from training.model import ModelConfig


def next_token_targets(batch: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(targets, weights, is_vision): predict token t+1 at t, only inside one packed document and
    where the target's loss_mask is on; is_vision says the target is a vision token (its vision_mask)."""
    ids, seg = batch["input_ids"], batch["segment_ids"]
    same_doc = (jnp.roll(seg, -1, axis=1) == seg) & (seg > 0)
    weight = jnp.roll(batch["loss_mask"], -1, axis=1) * same_doc
    vision = batch.get("vision_mask")
    is_vision = jnp.zeros(ids.shape, bool) if vision is None else jnp.roll(vision, -1, axis=1) > 0
    return jnp.roll(ids, -1, axis=1), weight.at[:, -1].set(0.0), is_vision


def next_token_nll(hidden: jax.Array, kernel: jax.Array, batch: dict[str, jax.Array] | None, chunk: int, sp: int = 1,
                   vision_kernel: jax.Array | None = None,
                   targets: tuple[jax.Array, jax.Array, jax.Array] | None = None) -> tuple[jax.Array, jax.Array]:
    """Summed weighted cross-entropy and summed weights, per modality of the predicted token:
    two arrays [2] = (text, vision).

    A vision target is scored by `vision_kernel` (the separate vision head) and a text target by
    `kernel`; with a unified vocabulary (no vision_kernel) one head scores both and vision_mask only
    splits the sums. The output layer runs `chunk` positions (per sequence shard) at a time under
    `jax.checkpoint`, so only one chunk's fp32 logits exist in the forward or backward pass: at 1M
    tokens, full logits would be 128 GiB. The sequence is split as [sp, local] so each step stays
    on its shard. `targets`: `next_token_targets` computed beforehand (in sequence order, then laid
    out like `hidden`, e.g. in the ring's load-balance order); else computed here from `batch`.
    """
    targets, weight, is_vision = next_token_targets(batch) if targets is None else targets
    b, t, h = hidden.shape
    local = t // sp
    chunk = min(chunk, local)
    n = local // chunk

    def split(x):  # [b, t, ...] -> [n, b, sp, chunk, ...]
        return jnp.moveaxis(x.reshape(b, sp, n, chunk, *x.shape[2:]), 2, 0)

    def nll(h_c, head, t_c):
        logits = jnp.einsum("bsch,hv->bscv", h_c, head.astype(h_c.dtype), preferred_element_type=jnp.float32)
        return jax.nn.logsumexp(logits, axis=-1) - jnp.take_along_axis(logits, t_c[..., None], axis=-1)[..., 0]

    def head_nll(head, h_c, t_c, needed):
        # A chunk with no scored target of this head's modality (most chunks of a video row for the
        # 32K-wide text head) skips its matmul: lax.map runs chunks one by one, so cond really branches.
        return jax.lax.cond(needed, lambda: nll(h_c, head, t_c), lambda: jnp.zeros(t_c.shape, jnp.float32))

    @jax.checkpoint
    def chunk_nll(h_c, t_c, v_c, w_c):
        if vision_kernel is None:
            return nll(h_c, kernel, t_c)
        # Each head only sees ids of its own vocabulary; the other positions' values are discarded.
        scored = w_c > 0
        text = head_nll(kernel, h_c, jnp.where(v_c, 0, t_c), jnp.any(scored & ~v_c))
        vision = head_nll(vision_kernel, h_c, jnp.where(v_c, t_c, 0), jnp.any(scored & v_c))
        return jnp.where(v_c, vision, text)

    w, v = split(weight), split(is_vision)
    per_token = jax.lax.map(lambda xs: chunk_nll(*xs), (split(hidden), split(targets), v, w))
    sums = jnp.stack([(per_token * w * ~v).sum(), (per_token * w * v).sum()])
    counts = jnp.stack([(w * ~v).sum(), (w * v).sum()])
    return sums, counts


def next_token_loss(hidden: jax.Array, kernel: jax.Array, batch: dict[str, jax.Array], chunk: int, sp: int = 1) -> tuple[jax.Array, jax.Array]:
    """Mean cross-entropy over all scored positions of a text model, and their count."""
    sums, counts = next_token_nll(hidden, kernel, batch, chunk, sp)
    return sums.sum() / jnp.maximum(counts.sum(), 1.0), counts.sum()


def weighted_loss(sums: jax.Array, counts: jax.Array, weights: tuple[float, float] | None) -> jax.Array:
    """The training loss from per-modality sums: a text model's mean over every scored position
    (weights None), or `w_text * text + w_vision * vision` with each term averaged over its own
    positions (LWM: 0.5 / 0.5; a term without positions in the batch contributes 0). Linear in
    `sums`: sums of micro-batches divided by the whole batch's counts add up to the batch's loss."""
    means = sums / jnp.maximum(counts, 1.0)
    return sums.sum() / jnp.maximum(counts.sum(), 1.0) if weights is None else weights[0] * means[0] + weights[1] * means[1]


def combine_losses(sums: jax.Array, counts: jax.Array, weights: tuple[float, float] | None) -> dict[str, jax.Array]:
    """The loss (see weighted_loss) and its parts, as logged."""
    means = sums / jnp.maximum(counts, 1.0)
    return {"loss": weighted_loss(sums, counts, weights), "text_loss": means[0], "vision_loss": means[1],
            "scored_tokens": counts.sum(), "vision_tokens": counts[1]}


def scored_counts(batch: dict[str, jax.Array]) -> jax.Array:
    """[2] = (text, vision) scored next-token targets of a batch: the loss's denominators, known
    before the forward pass (they depend on the masks only)."""
    _, weight, is_vision = next_token_targets(batch)
    return jnp.stack([(weight * ~is_vision).sum(), (weight * is_vision).sum()])


def loss_weights(config: TrainConfig, model: ModelConfig) -> tuple[float, float] | None:
    if model.vision_layout == "none":
        return None
    text = 0.5 if config.text_loss_weight is None else config.text_loss_weight
    vision = 0.5 if config.vision_loss_weight is None else config.vision_loss_weight
    return (text, vision)
