"""Blockwise RingAttention against dense attention, on 8 CPU devices (set in conftest.py).

Every comparison runs the real sharded computation, forward and gradients, and checks it against
`attention_reference` (dense, fp32, autodiff) at fp32 relative error <= 1e-5.
"""

from __future__ import annotations

import re
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from training.ring_attention import (
    attention_reference,
    blockwise_attention,
    load_balance_permutation,
    load_balance_positions,
    load_balance_shard,
    ring_attention_shard,
    ring_attention_sharded,
)

TOL = 1e-5


def _mesh(shape: tuple[int, ...], axes: tuple[str, ...]) -> Mesh:
    n = int(np.prod(shape))
    return Mesh(np.array(jax.devices()[:n]).reshape(shape), axes)


def _packed_segments(rng: np.random.Generator, batch: int, seq: int) -> np.ndarray:
    """Rows of packed documents (ids 1, 2, ...) of random lengths, then padding (id 0)."""
    rows = []
    for _ in range(batch):
        row, doc = [], 1
        while len(row) < seq:
            row += [doc] * int(rng.integers(1, seq // 2))
            doc += 1
        row = row[:seq]
        pad = int(rng.integers(0, seq // 4))
        rows.append(row[: seq - pad] + [0] * pad)
    return np.asarray(rows, np.int32)


def _inputs(seed: int, batch: int, seq: int, heads: int, kv_heads: int, head_dim: int, segments: bool,
            dtype=jnp.float32):
    """Random q, k, v, output cotangent and (optionally) packed segment ids; numpy keeps it compile-free."""
    rng = np.random.default_rng(seed)
    normal = lambda h: jnp.asarray(rng.standard_normal((batch, seq, h, head_dim)), dtype)
    q, k, v = normal(heads), normal(kv_heads), normal(kv_heads)
    cot = jnp.asarray(rng.standard_normal((batch, seq, heads, head_dim)), jnp.float32)
    seg = jnp.asarray(_packed_segments(rng, batch, seq)) if segments else None
    return q, k, v, cot, seg


def _value_and_grads(attn, q, k, v, cot):
    """Output and d(sum(out * cot))/d(q, k, v), compiled together."""
    def run(q, k, v):
        out, vjp = jax.vjp(attn, q, k, v)
        return out, vjp(cot.astype(out.dtype))

    return jax.jit(run)(q, k, v)


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def _assert_close(got, want, tol: float) -> None:
    (out, grads), (ref_out, ref_grads) = got, want
    errors = {"out": _rel(out, ref_out)}
    errors.update({f"d{n}": _rel(g, r) for n, g, r in zip("qkv", grads, ref_grads)})
    assert all(np.isfinite(list(errors.values()))), errors
    assert max(errors.values()) <= tol, errors


# (mesh shape, mesh axes, batch, seq, heads, kv_heads, head_dim, q_chunk, kv_chunk, causal, segments, load_balance)
CASES = [
    pytest.param((1,), ("sp",), 2, 24, 2, 2, 8, 3, 8, True, True, "zigzag", id="sp1-causal-seg"),
    pytest.param((2,), ("sp",), 1, 60, 4, 2, 8, 5, 3, True, False, "zigzag", id="sp2-causal-gqa-zigzag"),
    pytest.param((4,), ("sp",), 2, 48, 4, 1, 8, 3, 4, True, True, "striped", id="sp4-causal-seg-mqa-striped"),
    pytest.param((4,), ("sp",), 1, 40, 2, 2, 16, 5, 10, True, True, None, id="sp4-causal-seg-unbalanced"),
    pytest.param((8,), ("sp",), 2, 48, 4, 2, 8, 3, 6, True, True, "zigzag", id="sp8-causal-seg-gqa-zigzag"),
    pytest.param((8,), ("sp",), 1, 64, 2, 2, 8, 8, 4, True, False, None, id="sp8-causal-unbalanced"),
    pytest.param((8,), ("sp",), 1, 64, 4, 2, 8, 8, 4, True, False, "striped", id="sp8-causal-striped"),
    pytest.param((4,), ("sp",), 2, 40, 4, 2, 8, 5, 10, False, True, "zigzag", id="sp4-noncausal-seg"),
    pytest.param((8,), ("sp",), 1, 24, 2, 1, 8, 3, 3, False, False, None, id="sp8-noncausal"),
    pytest.param((2, 1, 2, 2), ("dp", "fsdp", "tp", "sp"), 2, 36, 4, 2, 8, 3, 9, True, True, "zigzag",
                 id="dp2-tp2-sp2-causal-seg"),
    pytest.param((1, 2, 1, 4), ("dp", "fsdp", "tp", "sp"), 2, 48, 2, 2, 8, 3, 4, True, True, "striped",
                 id="fsdp2-sp4-causal-seg"),
    pytest.param((2, 4), ("dp", "sp"), 2, 32, 4, 4, 8, 8, 4, False, True, None, id="dp2-sp4-noncausal-seg"),
]


@pytest.mark.parametrize("shape,axes,batch,seq,heads,kv_heads,head_dim,q_chunk,kv_chunk,causal,segments,lb", CASES)
def test_ring_matches_dense(shape, axes, batch, seq, heads, kv_heads, head_dim, q_chunk, kv_chunk, causal,
                            segments, lb):
    mesh = _mesh(shape, axes)
    q, k, v, cot, seg = _inputs(seq + heads, batch, seq, heads, kv_heads, head_dim, segments)
    ring = lambda q, k, v: ring_attention_sharded(q, k, v, mesh, segment_ids=seg, causal=causal, q_chunk=q_chunk,
                                                  kv_chunk=kv_chunk, load_balance=lb)
    dense = lambda q, k, v: attention_reference(q, k, v, segment_ids=seg, causal=causal)
    _assert_close(_value_and_grads(ring, q, k, v, cot), _value_and_grads(dense, q, k, v, cot), TOL)


def test_shard_function_inside_user_shard_map():
    """`ring_attention_shard` used directly: contiguous blocks, default positions, caller's own specs."""
    mesh = _mesh((4,), ("sp",))
    q, k, v, cot, _ = _inputs(11, 1, 32, 2, 1, 8, False)
    spec = P(None, "sp")
    shard = partial(ring_attention_shard, axis_name="sp", causal=True, q_chunk=4, kv_chunk=8)
    ring = jax.shard_map(lambda q, k, v: shard(q, k, v), mesh=mesh, in_specs=(spec, spec, spec), out_specs=spec)
    dense = lambda q, k, v: attention_reference(q, k, v)
    _assert_close(_value_and_grads(ring, q, k, v, cot), _value_and_grads(dense, q, k, v, cot), TOL)


def test_ring_bf16_matches_fp32_reference():
    """bf16 inputs, fp32 accumulation: within bf16 rounding of the fp32 answer; output stays bf16."""
    mesh = _mesh((8,), ("sp",))
    q, k, v, cot, seg = _inputs(7, 2, 64, 4, 2, 16, True, dtype=jnp.bfloat16)
    ring = lambda q, k, v: ring_attention_sharded(q, k, v, mesh, segment_ids=seg, q_chunk=4, kv_chunk=8)
    out, grads = _value_and_grads(ring, q, k, v, cot)
    assert out.dtype == jnp.bfloat16 and all(g.dtype == jnp.bfloat16 for g in grads)
    up = [x.astype(jnp.float32) for x in (q, k, v)]
    dense = lambda q, k, v: attention_reference(q, k, v, segment_ids=seg)
    _assert_close((out, grads), _value_and_grads(dense, *up, cot), 1e-2)


def test_blockwise_single_device_matches_dense_and_stays_blockwise():
    q, k, v, cot, seg = _inputs(3, 2, 40, 4, 2, 8, True)
    block = lambda q, k, v: blockwise_attention(q, k, v, segment_ids=seg, q_chunk=8, kv_chunk=5)
    dense = lambda q, k, v: attention_reference(q, k, v, segment_ids=seg)
    _assert_close(_value_and_grads(block, q, k, v, cot), _value_and_grads(dense, q, k, v, cot), TOL)
    # Neither the forward nor the custom backward ever materialises a [seq, seq] array.
    jaxpr = str(jax.make_jaxpr(jax.grad(lambda q, k, v: jnp.sum(block(q, k, v) * cot), argnums=(0, 1, 2)))(q, k, v))
    assert "8,5]" in jaxpr and not re.search(r"\b40,40\b", jaxpr)


def test_rows_without_visible_keys_give_zero_not_nan():
    q, k, v, cot, _ = _inputs(5, 1, 12, 2, 2, 8, False)
    seg_q = jnp.asarray([[1] * 6 + [2] * 6], jnp.int32)
    seg_kv = jnp.asarray([[1] * 6 + [3] * 6], jnp.int32)  # no key of segment 2: the last 6 rows see nothing
    kw = dict(segment_ids=seg_q, kv_segment_ids=seg_kv, causal=False)
    block = lambda q, k, v: blockwise_attention(q, k, v, q_chunk=4, kv_chunk=3, **kw)
    dense = lambda q, k, v: attention_reference(q, k, v, **kw)
    got, want = _value_and_grads(block, q, k, v, cot), _value_and_grads(dense, q, k, v, cot)
    _assert_close(got, want, TOL)
    np.testing.assert_array_equal(np.asarray(got[0][:, 6:]), 0.0)
    np.testing.assert_array_equal(np.asarray(got[1][0][:, 6:]), 0.0)  # dq of those rows


@pytest.mark.parametrize("scheme", ["zigzag", "striped"])
def test_in_shard_reordering_matches_permutation(scheme):
    """The collective reordering inside shard_map equals the global permutation, and inverts."""
    mesh = _mesh((4,), ("sp",))
    x = jnp.arange(2 * 32 * 3).reshape(2, 32, 3)
    spec = P(None, "sp")

    def there_and_back(x):
        y = load_balance_shard(x, "sp", scheme)
        return y, load_balance_positions(8, "sp", scheme)[None], load_balance_shard(y, "sp", scheme, inverse=True)

    y, pos, back = jax.jit(jax.shard_map(there_and_back, mesh=mesh, in_specs=spec, out_specs=spec))(x)
    perm = load_balance_permutation(32, 4, scheme)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(x)[:, perm])
    np.testing.assert_array_equal(np.asarray(pos)[0], perm)
    np.testing.assert_array_equal(np.asarray(back), np.asarray(x))


@pytest.mark.parametrize("scheme", ["zigzag", "striped"])
def test_prebalanced_input_gives_the_permuted_output_and_gradients(scheme):
    """A sequence already laid out in load-balance order (once, by the trainer) attends exactly as
    the exchanging path does, in that order, forward and backward, with packed segments."""
    mesh = _mesh((2, 4), ("fsdp", "sp"))
    q, k, v, cot, seg = _inputs(7, 2, 64, 4, 2, 16, segments=True)
    perm = load_balance_permutation(64, 4, scheme)
    common = dict(causal=True, axis_name="sp", q_chunk=8, kv_chunk=8, load_balance=scheme)
    plain = partial(ring_attention_sharded, mesh=mesh, segment_ids=seg, **common)
    pre = partial(ring_attention_sharded, mesh=mesh, segment_ids=seg[:, perm], prebalanced=True, **common)
    want_out, want_grads = _value_and_grads(plain, q, k, v, cot)
    got_out, got_grads = _value_and_grads(pre, q[:, perm], k[:, perm], v[:, perm], cot[:, perm])
    _assert_close((got_out, got_grads), (want_out[:, perm], tuple(g[:, perm] for g in want_grads)), TOL)
    # Without the original positions the same blocks would be masked as if contiguous: not equal.
    wrong = partial(ring_attention_sharded, mesh=mesh, segment_ids=seg[:, perm], **{**common, "load_balance": None})
    assert _rel(jax.jit(wrong)(q[:, perm], k[:, perm], v[:, perm]), want_out[:, perm]) > 1e-2


@pytest.mark.parametrize("segments", [True, False], ids=["seg", "noseg"])
def test_token_order_given_as_data_masks_by_it(segments):
    """The trainer passes the balanced layout's original token indices (`token_order`) instead of
    letting each device derive them: the same attention and gradients as the exchanging path,
    in that order, with or without segment ids."""
    mesh = _mesh((2, 4), ("fsdp", "sp"))
    q, k, v, cot, seg = _inputs(8, 2, 64, 4, 2, 16, segments=segments)
    perm = load_balance_permutation(64, 4, "zigzag")
    common = dict(causal=True, axis_name="sp", q_chunk=8, kv_chunk=8, load_balance="zigzag")
    plain = partial(ring_attention_sharded, mesh=mesh, segment_ids=seg, **common)
    given = partial(ring_attention_sharded, mesh=mesh, segment_ids=None if seg is None else seg[:, perm],
                    token_order=jnp.asarray(perm, jnp.int32), **common)
    want_out, want_grads = _value_and_grads(plain, q, k, v, cot)
    got_out, got_grads = _value_and_grads(given, q[:, perm], k[:, perm], v[:, perm], cot[:, perm])
    _assert_close((got_out, got_grads), (want_out[:, perm], tuple(g[:, perm] for g in want_grads)), TOL)


def _causal_pairs_per_device(seq: int, n: int, scheme) -> list[int]:
    perm = load_balance_permutation(seq, n, scheme)
    pos = np.arange(seq) if perm is None else perm
    return [int(np.sum(block[:, None] >= pos[None, :])) for block in pos.reshape(n, -1)]


def test_load_balancing_equalises_causal_work():
    for scheme in ("zigzag", "striped"):
        perm = load_balance_permutation(64, 8, scheme)
        assert sorted(perm.tolist()) == list(range(64))
        work = _causal_pairs_per_device(64, 8, scheme)
        assert max(work) - min(work) <= 64, (scheme, work)  # striped: at most one token per row apart
    unbalanced = _causal_pairs_per_device(64, 8, None)
    assert max(unbalanced) > 10 * min(unbalanced)
    assert len(set(_causal_pairs_per_device(64, 8, "zigzag"))) == 1  # zigzag is exactly even


@pytest.mark.parametrize("shape,axes,seq,kwargs,match", [
    ((4,), ("sp",), 50, {}, r"50 must be divisible by the 'sp' axis size 4"),
    ((4,), ("sp",), 48, {"q_chunk": 5}, r"divisible by sp size x q_chunk = 4 x 5"),
    ((4,), ("sp",), 48, {"kv_chunk": 7}, r"kv_chunk"),
    ((8,), ("sp",), 40, {"load_balance": "zigzag", "q_chunk": 5, "kv_chunk": 5}, r"zigzag.*divisible by 2 x sp = 16"),
    ((4,), ("sp",), 40, {"load_balance": "striped", "q_chunk": 5}, r"striped.*divisible by sp x sp = 16"),
    ((8,), ("dp",), 48, {}, r"no sequence axis 'sp'"),
    ((4,), ("sp",), 48, {"implementation": "cudnn"}, r"cudnn.*sp == 1"),
])
def test_clear_errors(shape, axes, seq, kwargs, match):
    mesh = _mesh(shape, axes)
    q, k, v, _, _ = _inputs(0, 1, seq, 2, 2, 8, False)
    with pytest.raises(ValueError, match=match):
        ring_attention_sharded(q, k, v, mesh, **kwargs)
