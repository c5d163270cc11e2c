"""`ModelConfig.scan_layers`: the decoder layers as one `jax.lax.scan` over a stacked view of the
per-layer params. Same losses and gradients as the Python loop (ring attention under a mesh,
packed segments, remat, a separate vision vocabulary), the same parameter tree, and a program
whose size does not grow with depth (what makes compile time flat in depth)."""

from __future__ import annotations

import collections
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from training.config import TrainConfig
from training.mesh import make_mesh
from training.model import LlamaModel, ModelConfig, init_params, param_partition_specs
from training.ring_attention import ring_attention_sharded
from training.step import build_optimizer, make_train_step

TOY = dict(vocab_size=256, scan_layers=True)  # the toy preset, scanned, with a small vocabulary (the output layer is not under test)


def _packed_rows(rng: np.random.Generator, vocab: int, batch: int, seq: int, cut: int):
    """Two documents per row (segments 1 and 2), positions restarting at the second one."""
    ids = jnp.asarray(rng.integers(0, vocab, (batch, seq)), jnp.int32)
    pos = jnp.asarray(np.broadcast_to(np.concatenate([np.arange(cut), np.arange(seq - cut)]), (batch, seq)), jnp.int32)
    seg = jnp.asarray(np.broadcast_to(np.repeat([1, 2], [cut, seq - cut]), (batch, seq)), jnp.int32)
    return ids, pos, seg


def _primitives(jaxpr: str) -> collections.Counter:
    """How often each primitive is applied in a printed jaxpr (nested jaxprs included);
    `remat2` is jax.checkpoint's primitive."""
    return collections.Counter(re.findall(r"= ([a-z_0-9]+)\[", jaxpr))


def _assert_same(got, want, rtol: float = 1e-6, atol: float = 1e-7) -> None:
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=atol, err_msg=jax.tree_util.keystr(path))


def test_scan_matches_loop_with_ring_attention_on_a_mesh():
    if jax.device_count() < 8:
        pytest.skip("needs 8 (host) devices; tests/conftest.py sets XLA_FLAGS for them")
    mesh = make_mesh("dp=1,fsdp=2,tp=1,sp=4")
    config = ModelConfig.preset("toy", **TOY, remat="full")  # 2 layers
    params = init_params(config, jax.random.key(0))
    params = jax.device_put(params, jax.tree.map(lambda s: NamedSharding(mesh, s), param_partition_specs(params, mesh)))
    ids, pos, seg = _packed_rows(np.random.default_rng(0), config.vocab_size, 2, 64, cut=40)

    def attention(q, k, v, segment_ids):
        return ring_attention_sharded(q, k, v, mesh, segment_ids=segment_ids, causal=True, axis_name="sp",
                                      q_chunk=8, kv_chunk=8, load_balance="zigzag")

    def loss(p, cfg):
        logits = LlamaModel(cfg).apply({"params": p}, ids, pos, seg, attention_fn=attention)
        return -jnp.mean(jax.nn.log_softmax(logits)[..., 3])

    run = jax.jit(jax.value_and_grad(loss), static_argnums=1)
    with jax.set_mesh(mesh):
        scanned_jaxpr = str(jax.make_jaxpr(loss, static_argnums=1)(params, config))
        looped_jaxpr = str(jax.make_jaxpr(loss, static_argnums=1)(params, config.with_(scan_layers=False)))
        scanned, looped = run(params, config), run(params, config.with_(scan_layers=False))
    # Scanned, the program holds one layer body: one remat-wrapped layer with one ring-attention
    # shard_map (the loop has two), and one layer's worth of activation sharding constraints
    # (each layer adds looped - scanned of them; the scanned count can only reach that with
    # the constraints inside the scan body).
    scanned_ops, looped_ops = _primitives(scanned_jaxpr), _primitives(looped_jaxpr)
    for op in ("remat2", "shard_map", "custom_vjp_call"):
        assert (scanned_ops[op], looped_ops[op]) == (1, 2), (op, scanned_ops, looped_ops)
    per_layer = looped_ops["sharding_constraint"] - scanned_ops["sharding_constraint"]
    assert per_layer > 0 and scanned_ops["sharding_constraint"] > per_layer, (scanned_ops, looped_ops)
    assert scanned_ops["scan"] == (looped_ops["scan"] / 2) + 1  # ring attention's own scans, + the layers'
    _assert_same(scanned, looped)
    # Every layer got its own gradient (not one shared, not zeros).
    q = [np.asarray(scanned[1][f"layers_{i}"]["self_attn"]["q_proj"]["kernel"]) for i in range(2)]
    assert all(np.abs(g).max() > 0 for g in q) and not np.allclose(q[0], q[1])


def test_scan_matches_loop_with_a_separate_vision_vocabulary():
    config = ModelConfig.preset("toy", **TOY, vision_layout="separate", vision_vocab_size=96, remat="dots_saveable")
    params = init_params(config, jax.random.key(1))
    ids, pos, seg = _packed_rows(np.random.default_rng(1), 96, 2, 24, cut=10)
    vision_mask = jnp.asarray(np.broadcast_to((np.arange(24) % 3) == 0, (2, 24)), jnp.int32)

    def loss(p, cfg):
        text, vision = LlamaModel(cfg).apply({"params": p}, ids, pos, seg, vision_mask)
        return -jnp.mean(jax.nn.log_softmax(text)[..., 5]) - jnp.mean(jax.nn.log_softmax(vision)[..., 7])

    run = jax.jit(jax.value_and_grad(loss), static_argnums=1)
    scanned, looped = run(params, config), run(params, config.with_(scan_layers=False))
    _assert_same(scanned, looped)
    assert np.abs(np.asarray(scanned[1]["vision_embed"]["embedding"])).max() > 0


def test_scan_keeps_the_per_layer_parameter_tree():
    shapes = lambda cfg: jax.eval_shape(lambda: init_params(cfg, jax.random.key(0)))  # noqa: E731
    config = ModelConfig.preset("toy", **TOY, num_layers=3)
    assert config.scan_layers and not ModelConfig.preset("toy").scan_layers  # an option, off by default
    tree = shapes(config)
    assert jax.tree.structure(tree) == jax.tree.structure(shapes(config.with_(scan_layers=False)))
    assert sorted(k for k in tree if k.startswith("layers_")) == ["layers_0", "layers_1", "layers_2"]
    ids = jnp.zeros((1, 4), jnp.int32)
    # Under bf16 compute the stacked view holds the kernels in bf16 (half the copy), norms in fp32.
    bf16 = config.with_(dtype="bfloat16")
    jaxpr = str(jax.make_jaxpr(lambda p: LlamaModel(bf16).apply({"params": p}, ids, ids))(init_params(bf16, jax.random.key(0))))
    assert "bf16[3,64,172]" in jaxpr and "f32[3,64]" in jaxpr and "f32[3,64,172]" not in jaxpr
    short = {k: v for k, v in init_params(config, jax.random.key(0)).items() if k != "layers_2"}
    with pytest.raises(KeyError, match="params lack"):
        LlamaModel(config).apply({"params": short}, ids, ids)
    with pytest.raises(ValueError, match="scan_layers must be true or false"):
        ModelConfig.from_dict({**config.to_dict(), "scan_layers": "no"})


def _lowered(config: ModelConfig, with_optimizer: bool) -> str:
    """The StableHLO text of the trainer's step (or of the model's gradient alone), lowered from shapes."""
    params = jax.eval_shape(lambda: init_params(config, jax.random.key(0)))
    if not with_optimizer:
        def grad(p, ids):
            return jax.grad(lambda q: jnp.sum(LlamaModel(config).apply({"params": q}, ids, ids, ids, return_hidden=True)))(p)
        return jax.jit(grad).lower(params, jax.ShapeDtypeStruct((2, 32), jnp.int32)).as_text()
    tokens = jax.ShapeDtypeStruct((1, 2, 32), jnp.int32)
    batch = {"input_ids": tokens, "positions": tokens, "segment_ids": tokens,
             "loss_mask": jax.ShapeDtypeStruct((1, 2, 32), jnp.float32)}
    optimizer = build_optimizer(TrainConfig(seq_len=32, global_batch=2))
    state = {"params": params, "opt_state": jax.eval_shape(optimizer.init, params), "step": jax.ShapeDtypeStruct((), jnp.int32)}
    step = make_train_step(LlamaModel(config), optimizer, None, accum=1, loss_chunk=16)
    return jax.jit(step).lower(state, batch).as_text()


def test_lowered_program_does_not_grow_with_depth_under_scan():
    """Structural, not timed: XLA's compile time follows the program it is given. Looped, 8 layers
    lower to about 4x the text of 2. Scanned, the model's forward+backward grows only by the
    stacking of each layer's parameter leaves (a few ops per leaf, ~10% of a layer body), and
    the train step has the same matmuls at any depth; what still grows per layer there is the
    optimiser's elementwise update of each layer's leaves (the parameter tree stays per-layer)."""
    text = {(n, scan, opt): _lowered(ModelConfig.preset("toy", **{**TOY, "scan_layers": scan}, num_layers=n, remat="full"), opt)
            for n in (2, 8) for scan in (True, False) for opt in (False, True)}
    size = {key: len(t) for key, t in text.items()}
    growth = lambda scan, opt: size[8, scan, opt] - size[2, scan, opt]  # noqa: E731
    assert size[8, False, False] > 3 * size[2, False, False], size
    assert growth(True, False) < 0.15 * growth(False, False), size
    assert growth(True, True) < 0.7 * growth(False, True), size
    dots = {key: t.count("stablehlo.dot_general") for key, t in text.items()}
    assert dots[8, True, True] == dots[2, True, True] and dots[8, False, True] > 3 * dots[2, False, True], dots
