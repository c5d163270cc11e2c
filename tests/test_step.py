"""The train step lays a micro-batch out in the ring's load-balance order once, before the model;
its attention layers then exchange nothing for balance. The update equals the step whose every
attention layer reorders its blocks itself (the previous design), on packed documents."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from training.config import TrainConfig
from training.mesh import make_mesh
from training.model import LlamaModel, ModelConfig, init_params
from training.ring_attention import ring_attention_sharded
from training.step import RingAttention, build_optimizer, init_opt_state, make_attention, make_train_step, param_shardings


def _batch(rows: int, seq: int, vocab: int) -> dict[str, np.ndarray]:
    """[1, rows, seq] micro-batch of packed documents with restarting positions and padding."""
    rng = np.random.default_rng(3)
    ids = rng.integers(3, vocab, (rows, seq)).astype(np.int32)
    seg = np.zeros((rows, seq), np.int32)
    pos = np.zeros((rows, seq), np.int32)
    for r in range(rows):
        used = seq - int(rng.integers(0, seq // 4))
        cuts = [0, *sorted(rng.choice(np.arange(4, used - 4), 2, replace=False).tolist()), used]
        for d, (a, b) in enumerate(zip(cuts, cuts[1:]), start=1):
            seg[r, a:b], pos[r, a:b] = d, np.arange(b - a)
    mask = (seg > 0).astype(np.float32)
    return {k: v[None] for k, v in dict(input_ids=ids, positions=pos, segment_ids=seg, loss_mask=mask).items()}


def _per_layer_exchange(mesh, scheme):
    """The old attention: every layer reorders q/k/v into the balanced layout and back."""
    return lambda q, k, v, seg: ring_attention_sharded(q, k, v, mesh, segment_ids=seg, causal=True, axis_name="sp",
                                                       q_chunk=8, kv_chunk=8, load_balance=scheme)


@pytest.mark.parametrize("scheme", ["zigzag", "striped"])
def test_balancing_once_per_step_gives_the_same_update(scheme):
    mesh = make_mesh("dp=1,fsdp=2,tp=1,sp=4")
    model_cfg = ModelConfig.preset("toy").with_(num_layers=2, remat="full")
    config = TrainConfig(model="toy", seq_len=64, global_batch=2, q_chunk=8, kv_chunk=8, loss_chunk=8,
                         load_balance=scheme, attention="ring", mesh="dp=1,fsdp=2,tp=1,sp=4")
    once = make_attention(config, mesh)
    assert isinstance(once, RingAttention) and once.load_balance == scheme
    optimizer = build_optimizer(config)
    batch = jax.device_put(_batch(2, 64, model_cfg.vocab_size), NamedSharding(mesh, PartitionSpec(None, ("dp", "fsdp"), "sp")))

    replicated = NamedSharding(mesh, PartitionSpec())

    def run(attention):
        params = init_params(model_cfg, jax.random.key(0), out_shardings=param_shardings(model_cfg, mesh))
        state = {"params": params, "opt_state": init_opt_state(optimizer, params, replicated),
                 "step": jax.device_put(jnp.zeros((), jnp.int32), replicated)}
        step = make_train_step(LlamaModel(model_cfg), optimizer, attention, 1, 8, 4)
        with jax.set_mesh(mesh):
            lowered = jax.jit(step).lower(state, batch)
            new_state, metrics = jax.jit(step)(state, batch)
        return new_state["params"], metrics, lowered.as_text()

    params_once, metrics_once, text_once = run(once)
    params_each, metrics_each, text_each = run(_per_layer_exchange(mesh, scheme))
    np.testing.assert_allclose(float(metrics_once["loss"]), float(metrics_each["loss"]), rtol=1e-6)
    np.testing.assert_allclose(float(metrics_once["grad_norm"]), float(metrics_each["grad_norm"]), rtol=1e-5)
    for a, b in zip(jax.tree.leaves(params_once), jax.tree.leaves(params_each)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=2e-6)
    # The ring's own block rotation remains; the per-layer balance exchanges (ppermutes for zigzag,
    # all_to_all for striped: q, k, v, segments in, the output back; forward and backward) are gone.
    permutes = lambda text: text.count("collective_permute") + text.count("all_to_all")  # noqa: E731
    assert permutes(text_once) < permutes(text_each)
