"""The train step and what it needs: the optimiser, the attention, the step function (micro-batches,
gradient accumulation, AdamW), its jitted form with fixed shardings, and the state's layout.
`train()` runs it, `longctx plan` compiles it ahead of time, the benchmark times it."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec

from training.config import TrainConfig
from training.loss import combine_losses, loss_weights, next_token_nll, next_token_targets, scored_counts, weighted_loss
from training.mesh import BATCH_AXES, parse_state_axes
from training.model import LlamaModel, ModelConfig, init_params, output_kernel, param_partition_specs, vision_output_kernel
from training.ring_attention import LoadBalance, load_balance_permutation, ring_attention_sharded


def micro_batch(config: TrainConfig) -> int:
    """Rows of one micro-batch: a step's global_batch rows run as grad_accum micro-batches."""
    return config.global_batch // config.grad_accum


def build_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    if config.schedule == "cosine":
        schedule = optax.warmup_cosine_decay_schedule(
            0.0, config.lr, max(config.warmup_steps, 1), max(config.steps, config.warmup_steps + 1), config.lr * config.end_lr_ratio
        )
    else:
        schedule = optax.join_schedules(
            [optax.linear_schedule(0.0, config.lr, max(config.warmup_steps, 1)), optax.constant_schedule(config.lr)],
            [max(config.warmup_steps, 1)],
        )
    decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)  # noqa: E731  (no decay on norms)
    return optax.chain(
        optax.clip_by_global_norm(config.grad_clip),
        optax.adamw(schedule, b1=config.b1, b2=config.b2, weight_decay=config.weight_decay, mask=decay_mask),
    )


class RingAttention:
    """The trainer's attention: Blockwise RingAttention over the mesh's `sp` axis, on a sequence the
    train step has already laid out in `load_balance` order (`make_train_step` reads the scheme
    from here, so the step and its attention cannot disagree)."""

    def __init__(self, mesh: jax.sharding.Mesh, q_chunk: int, kv_chunk: int, load_balance: LoadBalance):
        self.mesh, self.q_chunk, self.kv_chunk = mesh, q_chunk, kv_chunk
        self.load_balance = load_balance if mesh.shape["sp"] > 1 else None

    def __call__(self, q: jax.Array, k: jax.Array, v: jax.Array, segment_ids: jax.Array | None, *,
                 token_order: jax.Array | None = None) -> jax.Array:
        return ring_attention_sharded(q, k, v, self.mesh, segment_ids=segment_ids, causal=True, axis_name="sp",
                                      q_chunk=self.q_chunk, kv_chunk=self.kv_chunk, load_balance=self.load_balance,
                                      prebalanced=True, token_order=token_order)


def make_attention(config: TrainConfig, mesh: jax.sharding.Mesh) -> RingAttention | None:
    if config.attention == "dense":
        return None  # the model's own dense causal attention (segment-aware)
    return RingAttention(mesh, config.q_chunk, config.kv_chunk, None if config.load_balance == "none" else config.load_balance)


def make_train_step(model: LlamaModel, optimizer, attention_fn, accum: int, loss_chunk: int = 1024, sp: int = 1,
                    weights: tuple[float, float] | None = None):
    """One optimiser step over a batch laid out as `accum` micro-batches, `[accum, rows, seq]`.
    `weights`: (text, vision) loss weights of a vision-language model (see combine_losses); None
    for a text model.

    Each micro-batch's loss sums are divided by the whole step's scored-token counts, so the summed
    micro-batch gradients are exactly the gradient of one batch of all the rows (same update for
    any `accum`, up to float summation order; a mean of per-micro-batch means would weight rows of
    a micro-batch with fewer scored tokens more).

    An `attention_fn` from `make_attention` carries the ring's `load_balance` scheme: the step then
    lays each micro-batch out in that order once, and the attention uses it as it is."""

    balance = getattr(attention_fn, "load_balance", None)

    def loss_fn(params, micro, totals):
        # Targets in sequence order; then, for a load-balanced ring, every per-token array is laid out
        # once in the ring's order (the model is order-free given positions and segment ids, and the
        # loss is a sum), so no attention layer exchanges blocks.
        targets = next_token_targets(micro)
        inputs = [micro["input_ids"], micro["positions"], micro["segment_ids"], micro.get("vision_mask")]
        seq = micro["input_ids"].shape[1]
        perm = None if balance is None else load_balance_permutation(seq, sp, balance)
        if perm is not None:
            order = lambda x: None if x is None else jnp.take(x, perm, axis=1)  # noqa: E731
            inputs, targets = [order(x) for x in inputs], tuple(order(x) for x in targets)
        # Our ring masks causally by each token's original index, given as data (see LlamaModel._scanned_layers).
        token_order = None
        if isinstance(attention_fn, RingAttention):
            token_order = jnp.asarray(np.arange(seq) if perm is None else perm, jnp.int32)
        hidden = model.apply({"params": params}, *inputs, attention_fn=attention_fn, token_order=token_order,
                             return_hidden=True)
        sums, _ = next_token_nll(hidden, output_kernel(model.config, params), None, loss_chunk, sp,
                                 vision_output_kernel(model.config, params), targets=targets)
        return weighted_loss(sums, totals, weights), sums

    def step(state, batch):
        if batch["input_ids"].shape[0] != accum:
            raise ValueError(f"batch has {batch['input_ids'].shape[0]} micro-batches, the step was made for {accum}")
        totals = jax.vmap(scored_counts)(batch).sum(axis=0)

        def micro_step(grads, micro):
            (_, sums), g = jax.value_and_grad(loss_fn, has_aux=True)(state["params"], micro, totals)
            return jax.tree.map(jnp.add, grads, g), sums

        zeros = jax.tree.map(jnp.zeros_like, state["params"])
        grads, sums = jax.lax.scan(micro_step, zeros, batch)
        updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        metrics = combine_losses(sums.sum(axis=0), totals, weights)
        metrics["grad_norm"] = optax.tree.norm(grads)
        return {"params": params, "opt_state": opt_state, "step": state["step"] + 1}, metrics

    return step


def step_batch_shape(config: TrainConfig) -> tuple[int, int, int]:
    """The global shape of one step's token arrays: [grad_accum, global_batch / grad_accum, seq_len]."""
    return (config.grad_accum, micro_batch(config), config.seq_len)


def jit_train_step(config: TrainConfig, model_cfg: ModelConfig, mesh: jax.sharding.Mesh, state_shardings: Any):
    """(jitted step, batch sharding): the step `train()` runs, its in/out shardings fixed (the
    state keeps its layout step after step, so one compile serves all) and the state donated.
    Lowering it with `jax.ShapeDtypeStruct`s of `step_batch_shape` compiles it ahead of time."""
    batch_sharding = NamedSharding(mesh, PartitionSpec(None, BATCH_AXES, "sp"))
    step = make_train_step(LlamaModel(model_cfg), build_optimizer(config), make_attention(config, mesh), config.grad_accum,
                           config.loss_chunk, mesh.shape["sp"], loss_weights(config, model_cfg))
    jitted = jax.jit(step, in_shardings=(state_shardings, batch_sharding), out_shardings=(state_shardings, None), donate_argnums=0)
    return jitted, batch_sharding


def split_micro_batches(host: dict[str, np.ndarray], accum: int) -> dict[str, np.ndarray]:
    """This host's rows of one step, [rows, seq] -> [accum, rows / accum, seq]: micro-batch i holds
    the i-th consecutive slice of the rows."""
    return {k: v.reshape(accum, v.shape[0] // accum, *v.shape[1:]) for k, v in host.items()}


def init_opt_state(optimizer, params, replicated: NamedSharding):
    """Optimiser state laid out like the params it tracks (moments), scalars replicated."""
    param_shardings = jax.tree.map(lambda p: p.sharding, params)
    abstract = jax.eval_shape(optimizer.init, params)
    shardings = optax.tree_map_params(
        optimizer, lambda _, sharding: sharding, abstract, param_shardings, transform_non_params=lambda _: replicated
    )
    return jax.jit(optimizer.init, out_shardings=shardings)(params)


def param_shardings(model: ModelConfig, mesh, state_axes: str | None = None):
    """Where each parameter lives: split over `state_axes` (config key; default fsdp x sp) and tp."""
    abstract = jax.eval_shape(lambda: init_params(model, jax.random.key(0)))
    specs = param_partition_specs(abstract, mesh, fsdp_axes=parse_state_axes(state_axes))
    return jax.tree.map(lambda spec: NamedSharding(mesh, spec), specs)


# Settings a resumed run may change freely: where the run lives (a resume restores the state, not
# init_from), how the same maths is laid out on the devices, what is logged or checked. Any other
# setting changes what the checkpoint's optimiser state and data position mean (lr, schedule,
# betas, clip, batch, length, steps, data, model...): see config_changes.
