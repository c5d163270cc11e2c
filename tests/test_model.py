"""The Flax LLaMA against transformers' LlamaForCausalLM, packing masks, remat, sizes and sharding specs."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from training.hf import export_hf_llama, load_hf_llama
from training.mesh import parse_state_axes
from training.model import (
    LlamaModel,
    ModelConfig,
    count_params,
    dense_attention,
    flops_per_token,
    init_params,
    param_partition_specs,
)


@pytest.fixture
def hf():
    """(torch, transformers); only the conversion tests need a CPU torch, the rest run without it."""
    return pytest.importorskip("torch"), pytest.importorskip("transformers")


SMALL = dict(num_layers=2, hidden_size=64, num_heads=4, num_kv_heads=2, intermediate_size=128, vocab_size=512)
LLAMA3_SCALING = dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                      original_max_position_embeddings=64)  # with head_dim 16: high, medium and low bands all occur
VARIANTS = {
    "plain": {},
    "tied": dict(tie_word_embeddings=True),
    "llama3": dict(rope_scaling=LLAMA3_SCALING, max_position_embeddings=512),
    "linear": dict(rope_scaling=dict(rope_type="linear", factor=4.0)),
}
SEQ = 24


@functools.lru_cache(maxsize=None)
def _forward(config: ModelConfig):
    # One compiled program per config and shape: much faster than op-by-op eager dispatch.
    return jax.jit(lambda params, ids, pos, seg: LlamaModel(config).apply({"params": params}, ids, pos, seg))


def run_ours(config: ModelConfig, params, ids: np.ndarray, positions=None, segment_ids=None) -> np.ndarray:
    if positions is None:
        positions = np.broadcast_to(np.arange(ids.shape[1], dtype=np.int32), ids.shape)
    return np.asarray(_forward(config)(params, ids, positions, segment_ids))


def run_hf(model, ids: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.from_numpy(ids.astype(np.int64))).logits.float().numpy()


def assert_logits_close(ours: np.ndarray, ref: np.ndarray) -> None:
    err = np.abs(ours - ref).max()
    scale = np.abs(ref).max()
    assert scale > 1.0, "logits too small for the comparison to mean anything"
    assert err <= 1e-4 and err / scale <= 1e-5, (err, scale)  # measured: ~1e-5 abs, ~2e-6 rel


def random_params(config: ModelConfig, seed: int, std: float = 0.2):
    """Random weights (norm gains near 1) from the abstract shapes: no init program to compile."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(lambda: init_params(config, jax.random.key(0)))
    return jax.tree_util.tree_map(
        lambda x: (rng.standard_normal(x.shape) * std + (x.ndim == 1)).astype(np.float32), shapes)


def random_ids(rng: np.random.Generator, vocab: int, batch: int = 2, seq: int = SEQ) -> np.ndarray:
    return rng.integers(0, vocab, (batch, seq), dtype=np.int32)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_load_hf_llama_matches_transformers(tmp_path, variant, hf):
    torch, transformers = hf
    torch.manual_seed(0)
    hf_config = transformers.LlamaConfig(
        num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=128, vocab_size=512, rope_theta=10000.0, **VARIANTS[variant])
    model = transformers.LlamaForCausalLM(hf_config).float().eval()
    with torch.no_grad():
        # Large weights make attention peaky (RoPE errors show) and random norm gains catch swapped norms.
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.2 if p.ndim == 2 else 1 + 0.2 * torch.randn_like(p))
    model.save_pretrained(tmp_path, safe_serialization=True)

    config, params = load_hf_llama(tmp_path)
    assert config.tie_embeddings == (variant == "tied") and ("lm_head" in params) != config.tie_embeddings
    assert (config.rope_scaling or {}).get("rope_type") == VARIANTS[variant].get("rope_scaling", {}).get("rope_type")
    ids = random_ids(np.random.default_rng(0), 512)
    ref = run_hf(model, ids)
    assert_logits_close(run_ours(config, params, ids), ref)
    if variant == "plain":  # the comparison is sensitive to positions, i.e. RoPE is really exercised
        assert np.abs(run_ours(config, params, ids, positions=np.zeros_like(ids)) - ref).max() > 1e-2


@pytest.mark.parametrize("tied", [False, True])
def test_export_hf_llama_loads_in_transformers(tmp_path, tied, hf):
    _, transformers = hf
    config = ModelConfig(**SMALL, tie_embeddings=tied, rope_theta=5e5, rope_scaling=LLAMA3_SCALING,
                         max_position_embeddings=512, rms_norm_eps=1e-6)
    params = random_params(config, 1)
    export_hf_llama(config, params, tmp_path)

    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).float().eval()
    assert model.config.tie_word_embeddings == tied
    ids = random_ids(np.random.default_rng(1), 512)
    assert_logits_close(run_ours(config, params, ids), run_hf(model, ids))

    # And back: the export reloads to the same config and parameters; bf16 survives the round trip.
    config2, params2 = load_hf_llama(tmp_path)
    assert config2 == config
    jax.tree_util.tree_map(np.testing.assert_array_equal, params2, params)
    export_hf_llama(config, params, tmp_path / "bf16", dtype="bfloat16")
    _, params_bf16 = load_hf_llama(tmp_path / "bf16", dtype="bfloat16")
    q = params_bf16["layers_1"]["self_attn"]["q_proj"]["kernel"]
    assert q.dtype == jnp.bfloat16
    np.testing.assert_array_equal(q, np.asarray(params["layers_1"]["self_attn"]["q_proj"]["kernel"], jnp.bfloat16))


def test_load_hf_llama_missing_path_is_clear():
    with pytest.raises(FileNotFoundError, match="not a model directory"):
        load_hf_llama("./no-such-checkpoint")


def test_segment_ids_make_packed_documents_independent():
    config = ModelConfig(**SMALL)
    params = random_params(config, 0)
    rng = np.random.default_rng(2)
    doc_a, doc_b = random_ids(rng, 512, 1, 5), random_ids(rng, 512, 1, 11)
    packed = np.concatenate([doc_a, doc_b], axis=1)
    positions = np.concatenate([np.arange(5), np.arange(11)])[None].astype(np.int32)
    segments = np.array([[1] * 5 + [2] * 11], np.int32)

    logits = run_ours(config, params, packed, positions, segments)
    np.testing.assert_allclose(logits[:, :5], run_ours(config, params, doc_a), atol=1e-5)
    np.testing.assert_allclose(logits[:, 5:], run_ours(config, params, doc_b), atol=1e-5)
    # Without the mask doc B sees doc A: the test above is not vacuous.
    leaky = run_ours(config, params, packed, positions)
    assert np.abs(leaky[:, 5:] - logits[:, 5:]).max() > 1e-3


def test_a_reordered_row_with_its_token_order_gives_the_same_logits():
    """The trainer lays a row out in the ring's load-balanced order and passes each token's original
    index (`token_order`): every token's logits are then those of the row in its own order, for the
    scanned layers too."""
    config = ModelConfig(**SMALL)
    params = random_params(config, 4, std=0.05)
    rng = np.random.default_rng(4)
    ids = random_ids(rng, 512, 2, 16)
    positions = np.broadcast_to(np.concatenate([np.arange(6), np.arange(10)]), ids.shape).astype(np.int32)
    segments = np.broadcast_to(np.array([1] * 6 + [2] * 10, np.int32), ids.shape)
    perm = rng.permutation(16)
    reference = run_ours(config, params, ids, positions, segments)
    for scan in (False, True):
        model = LlamaModel(config.with_(scan_layers=scan))
        logits = model.apply({"params": params}, ids[:, perm], positions[:, perm], segments[:, perm],
                             token_order=jnp.asarray(perm, jnp.int32))
        np.testing.assert_allclose(np.asarray(logits), reference[:, perm], atol=1e-5)
    # Without the order the permuted row is masked as laid out, which is another model: not vacuous.
    unordered = LlamaModel(config).apply({"params": params}, ids[:, perm], positions[:, perm], segments[:, perm])
    assert np.abs(np.asarray(unordered) - reference[:, perm]).max() > 1e-3


def test_pluggable_attention_and_remat_agree():
    config = ModelConfig(**{**SMALL, "num_layers": 1})  # remat wraps each layer; one keeps compiles short
    params = random_params(config, 3, std=0.05)
    ids = jnp.asarray(random_ids(np.random.default_rng(3), 512, 2, 16))
    pos = jnp.broadcast_to(jnp.arange(16, dtype=jnp.int32), ids.shape)
    seg = jnp.asarray(np.repeat([[1, 1, 2, 2]], 2, 0).repeat(4, 1), jnp.int32)
    calls = []

    def spy_attention(q, k, v, segment_ids):
        calls.append((q.shape, k.shape))
        return dense_attention(q, k, v, segment_ids)

    @functools.partial(jax.jit, static_argnums=(1, 2))
    def loss(p, cfg, attention_fn=None):
        logits = LlamaModel(cfg).apply({"params": p}, ids, pos, seg, attention_fn=attention_fn)
        return -jnp.mean(jax.nn.log_softmax(logits)[..., 0])

    grad_fn = jax.jit(jax.value_and_grad(loss), static_argnums=(1,))
    ref_loss, ref_grads = grad_fn(params, config)
    spy_loss = loss(params, config, spy_attention)
    assert calls == [((2, 16, 4, 16), (2, 16, 2, 16))] and spy_loss == ref_loss
    for remat in ("full", "dots_saveable"):
        jaxpr = str(jax.make_jaxpr(loss, static_argnums=(1,))(params, config.with_(remat=remat)))
        assert "remat" in jaxpr  # the layer really is wrapped in jax.checkpoint
        value, grads = grad_fn(params, config.with_(remat=remat))
        np.testing.assert_allclose(value, ref_loss, rtol=1e-6)
        jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), grads, ref_grads)


def test_bf16_compute_keeps_fp32_logits():
    config = ModelConfig(**SMALL, dtype="bfloat16")
    params = random_params(config, 4, std=0.05)
    ids = random_ids(np.random.default_rng(4), 512, 1, 8)
    logits = run_ours(config, params, ids)
    assert logits.dtype == np.float32
    np.testing.assert_allclose(logits, run_ours(config.with_(dtype="float32"), params, ids), atol=5e-2)


def test_param_counts_and_flops():
    abstract = lambda cfg: jax.eval_shape(lambda: init_params(cfg, jax.random.key(0)))  # noqa: E731
    llama2 = ModelConfig.preset("llama2-7b")
    assert count_params(abstract(llama2)) == 6_738_415_616
    assert 1.0e9 < count_params(abstract(ModelConfig.preset("1b"))) < 1.2e9
    # GQA: only K/V shrink. toy: 2 x (q 64x64 + k,v 64x32 + o 64x64 + mlp 3x64x172 + 2 norms) + 2 x 32000x64 + norm
    assert count_params(abstract(ModelConfig.preset("toy"))) == 2 * (4096 * 2 + 2048 * 2 + 3 * 64 * 172 + 128) \
        + 2 * 32000 * 64 + 64
    # 6N over the matmul weights (all but the embedding table and norms) plus the causal attention term.
    n_matmul = 6_738_415_616 - 32000 * 4096 - (2 * 32 + 1) * 4096
    assert flops_per_token(llama2, 4096) == 6 * n_matmul + 6 * 32 * 4096 * 4096
    assert flops_per_token(llama2, 4096, causal=False) == 6 * n_matmul + 12 * 32 * 4096 * 4096


def test_config_round_trips_and_presets():
    config = ModelConfig.preset("tiny", rope_scaling={"type": "linear", "factor": 2})
    assert ModelConfig.from_dict(config.to_dict()) == config
    assert config.to_dict()["rope_scaling"] == {"rope_type": "linear", "factor": 2}
    assert hash(config) == hash(ModelConfig.from_dict(config.to_dict()))  # usable as a jit static argument
    assert config.with_(hidden_size=512).head_dim == 64 and config.with_(rope_theta=1e6).rope_theta == 1e6
    with pytest.raises(ValueError, match="unknown ModelConfig fields"):
        ModelConfig.from_dict({"hidden": 3})
    with pytest.raises(NotImplementedError):
        ModelConfig(rope_scaling={"rope_type": "yarn", "factor": 4})


@pytest.mark.parametrize("preset", ["toy", "llama2-7b"])
def test_partition_specs_are_valid(preset):
    params = jax.eval_shape(lambda: init_params(ModelConfig.preset(preset), jax.random.key(0)))
    specs = param_partition_specs(params)
    flat = jax.tree_util.tree_leaves_with_path(specs, is_leaf=lambda x: isinstance(x, P))
    assert len(flat) == len(jax.tree_util.tree_leaves(params))
    for (path, spec), leaf in zip(flat, jax.tree_util.tree_leaves(params)):
        assert isinstance(spec, P) and len(spec) == leaf.ndim, path
        names = [a for entry in spec if entry is not None for a in ((entry,) if isinstance(entry, str) else entry)]
        assert len(names) == len(set(names)) and set(names) <= {"dp", "fsdp", "tp", "sp"}, (path, spec)
    # Default: ZeRO-3 over fsdp x sp (training.mesh.STATE_AXES), as LWM shards over its sequence devices.
    zero = ("fsdp", "sp")
    layer = specs["layers_0"]
    assert layer["self_attn"]["q_proj"]["kernel"] == P(zero, "tp")
    assert layer["self_attn"]["o_proj"]["kernel"] == P("tp", zero)
    assert layer["mlp"]["up_proj"]["kernel"] == P(zero, "tp")
    assert layer["mlp"]["down_proj"]["kernel"] == P("tp", zero)
    assert specs["embed_tokens"]["embedding"] == P("tp", zero) and specs["lm_head"]["kernel"] == P(zero, "tp")
    assert specs["norm"]["scale"] == P(None)
    fsdp_only = param_partition_specs(params, fsdp_axes=parse_state_axes("fsdp"))
    assert fsdp_only["layers_0"]["mlp"]["down_proj"]["kernel"] == P("tp", "fsdp")


def test_sharded_forward_matches_unsharded():
    if jax.device_count() < 8:
        pytest.skip("needs 8 (host) devices; tests/conftest.py sets XLA_FLAGS for them")
    mesh = Mesh(np.array(jax.devices()[:8]).reshape(1, 2, 2, 2), ("dp", "fsdp", "tp", "sp"))
    config = ModelConfig(**{**SMALL, "intermediate_size": 172, "vocab_size": 511})  # odd vocab: tp cannot split it
    params = random_params(config, 5)
    specs = param_partition_specs(params, mesh, fsdp_axes=("fsdp", "sp"))
    assert specs["embed_tokens"]["embedding"] == P(None, ("fsdp", "sp"))
    assert specs["layers_0"]["mlp"]["gate_proj"]["kernel"] == P(("fsdp", "sp"), "tp")
    sharded = jax.device_put(params, jax.tree_util.tree_map(lambda s: NamedSharding(mesh, s), specs))
    ids = random_ids(np.random.default_rng(5), 511, 2, 8)
    np.testing.assert_allclose(run_ours(config, sharded, ids), run_ours(config, params, ids), atol=1e-5)


def _global_buffers(hlo: str, batch: int, seq: int) -> list[str]:
    """Buffers of a partitioned program whose leading dims are the *global* [batch, seq]."""
    import re

    return re.findall(rf"\b(?:f32|bf16|s32)\[{batch},{seq}(?:,\d+)*\]", hlo)


def test_activations_stay_sharded_under_a_mesh():
    """Weights split over fsdp x sp pull XLA's sharding propagation into the weights' layout: without
    the model's activation constraints every device computed the whole global batch (the 7B step
    asked 87 GB of temporaries per v5p chip). Under `jax.set_mesh` the residual stream, q/k/v and
    the MLP stay split by batch (dp x fsdp) and sequence (sp), in the forward and the backward pass."""
    if jax.device_count() < 8:
        pytest.skip("needs 8 (host) devices; tests/conftest.py sets XLA_FLAGS for them")
    mesh = Mesh(np.array(jax.devices()[:8]).reshape(1, 2, 2, 2), ("dp", "fsdp", "tp", "sp"))
    config = ModelConfig(**{**SMALL, "intermediate_size": 256, "num_kv_heads": 4})
    params = random_params(config, 7)
    shardings = jax.tree_util.tree_map(lambda s: NamedSharding(mesh, s), param_partition_specs(params, mesh))
    sharded = jax.device_put(params, shardings)
    batch, seq = 4, 32
    ids = jax.device_put(random_ids(np.random.default_rng(7), config.vocab_size, batch, seq),
                         NamedSharding(mesh, P(("dp", "fsdp"), "sp")))
    positions = jax.device_put(np.broadcast_to(np.arange(seq, dtype=np.int32), (batch, seq)), ids.sharding)

    def loss(p, ids, pos):
        return jnp.mean(LlamaModel(config).apply({"params": p}, ids, pos) ** 2)

    step = jax.jit(jax.value_and_grad(loss))
    with jax.set_mesh(mesh):
        compiled = step.lower(sharded, ids, positions).compile()
        value, grads = compiled(sharded, ids, positions)
    assert _global_buffers(compiled.as_text(), batch, seq) == []
    ref_value, ref_grads = jax.jit(jax.value_and_grad(loss))(params, np.asarray(ids), np.asarray(positions))
    np.testing.assert_allclose(value, ref_value, rtol=1e-5)
    for got, want in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(ref_grads)):
        np.testing.assert_allclose(got, want, rtol=2e-4, atol=1e-6)
