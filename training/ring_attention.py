"""Blockwise RingAttention: exact attention over a sequence sharded across devices.

Why this exists: at 128K-1M tokens neither the `[seq, seq]` score matrix nor even a whole
sequence's keys/values fit on one device. Following the Large World Model paper (arXiv 2402.08268),
each device keeps its block of queries while key/value blocks travel around a ring of devices
(`lax.ppermute` over the sequence mesh axis). Inside a device the work is split again into query
chunks x key chunks, merged with an online softmax (running max and sum in fp32), so memory is
linear in the sequence length. The result is exact, not an approximation.

The backward pass is written by hand (`jax.custom_vjp`): the forward saves only its output and
the per-row logsumexp; the backward recomputes the scores chunk by chunk while the key/value blocks
and their gradient accumulators travel around the same ring. Autodiff through the forward would
keep every chunk's probabilities alive and lose the linear memory.

Causal masks make the work uneven: with contiguous blocks, device 0 sees one visible block and
the last device sees all of them. `load_balance="zigzag"` gives device i the chunks i and 2n-1-i of
the sequence (2n chunks); `"striped"` (Striped Attention, arXiv 2311.09431) gives it tokens
i, i+n, i+2n, ... . Either way every device does the same causal work per ring step. The
reordering is a ppermute/all_to_all between neighbours (nobody gathers the sequence) and is undone
on the way out; the causal mask always compares the original token positions, which travel with
the blocks. Skipping is decided per (query chunk, key chunk) from those positions, so zigzag (whose
chunks are contiguous runs) skips exactly the blocks above the diagonal, while striped chunks span
the whole sequence and skip fewer: zigzag is the default.

Public API:
- `attention_reference`: dense fp32 softmax attention, the ground truth for tests.
- `blockwise_attention`: single-device, chunked, linear memory.
- `ring_attention_shard`: the per-device function, to call inside `jax.shard_map`.
- `ring_attention_sharded`: global arrays in and out; builds the `shard_map` for a mesh.
- `load_balance_permutation`: the token order a load-balancing scheme uses (a data loader can
  apply it once up front); `load_balance_shard` / `load_balance_positions` do the same reordering
  inside `shard_map` with collectives.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

LoadBalance = Literal["zigzag", "striped"] | None
Array = jax.Array

# ----------------------------------------------------------------------------------------------
# Dense reference
# ----------------------------------------------------------------------------------------------


def _check_shapes(q: Array, k: Array, v: Array) -> None:
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(f"q, k, v must be [batch, seq, heads, head_dim]; got {q.shape}, {k.shape}, {v.shape}")
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape; got {k.shape} and {v.shape}")
    if q.shape[0] != k.shape[0] or q.shape[3] != k.shape[3]:
        raise ValueError(f"q and k disagree on batch or head_dim: {q.shape} vs {k.shape}")
    if q.shape[2] % k.shape[2]:
        raise ValueError(f"query heads ({q.shape[2]}) must be a multiple of key/value heads ({k.shape[2]})")


def _mask(causal: bool, seg_q: Array | None, seg_kv: Array | None, pos_q: Array, pos_kv: Array) -> Array | None:
    """Boolean mask broadcastable to scores `[batch, kv_heads, group, q, kv]`; None when nothing is masked."""
    mask = None
    if causal:
        mask = (pos_q[:, None] >= pos_kv[None, :])[None]
    if seg_q is not None:
        same = seg_q[:, :, None] == seg_kv[:, None, :]
        mask = same if mask is None else mask & same
    return None if mask is None else mask[:, None, None]


def _group_heads(q: Array, kv_heads: int) -> Array:
    """`[b, s, h, d]` -> `[b, kv_heads, group, s, d]`: query heads that share a key/value head sit together."""
    b, s, h, d = q.shape
    return q.reshape(b, s, kv_heads, h // kv_heads, d).transpose(0, 2, 3, 1, 4)


def attention_reference(
    q: Array,
    k: Array,
    v: Array,
    *,
    segment_ids: Array | None = None,
    causal: bool = True,
    q_positions: Array | None = None,
    kv_positions: Array | None = None,
    kv_segment_ids: Array | None = None,
    scale: float | None = None,
) -> Array:
    """Dense masked softmax attention in fp32; the ground truth the blockwise versions are tested against.

    q `[batch, seq_q, heads, head_dim]`, k/v `[batch, seq_kv, kv_heads, head_dim]` (GQA when
    kv_heads < heads). Tokens attend only to tokens of the same segment id (`segment_ids`
    `[batch, seq]`, applied to keys too unless `kv_segment_ids` is given); padding (id 0) is a
    segment like any other. The causal mask compares positions (default: index in the sequence).
    Rows with no visible key give 0, not NaN. Output has q's dtype.
    """
    _check_shapes(q, k, v)
    b, sq, h, d = q.shape
    kvh = k.shape[2]
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    pos_q = jnp.arange(sq) if q_positions is None else q_positions
    pos_kv = jnp.arange(k.shape[1]) if kv_positions is None else kv_positions
    seg_kv = segment_ids if kv_segment_ids is None else kv_segment_ids
    qg = _group_heads(q.astype(jnp.float32), kvh)
    kt = k.astype(jnp.float32).transpose(0, 2, 1, 3)
    vt = v.astype(jnp.float32).transpose(0, 2, 1, 3)
    s = jnp.einsum("bhgqd,bhkd->bhgqk", qg, kt) * scale
    mask = _mask(causal, segment_ids, seg_kv, pos_q, pos_kv)
    if mask is not None:
        s = jnp.where(mask, s, -jnp.inf)
    m = jnp.max(s, axis=-1, keepdims=True)
    m = jnp.where(jnp.isfinite(m), m, 0.0)
    p = jnp.exp(s - m)
    l = jnp.sum(p, axis=-1, keepdims=True)
    out = jnp.einsum("bhgqk,bhkd->bhgqd", p, vt) / jnp.where(l > 0, l, 1.0)
    return out.transpose(0, 3, 1, 2, 4).reshape(b, sq, h, d).astype(q.dtype)


# ----------------------------------------------------------------------------------------------
# Chunked layout helpers
# ----------------------------------------------------------------------------------------------


def _chunk_q(x: Array, kv_heads: int, c: int) -> Array:
    """`[b, L, h, d]` -> `[L/c, b, kv_heads, group, c, d]`."""
    b, L, h, d = x.shape
    x = x.reshape(b, L // c, c, kv_heads, h // kv_heads, d)
    return x.transpose(1, 0, 3, 4, 2, 5)


def _unchunk_q(x: Array) -> Array:
    n, b, kvh, g, c, d = x.shape
    return x.transpose(1, 0, 4, 2, 3, 5).reshape(b, n * c, kvh * g, d)


def _chunk_kv(x: Array, c: int) -> Array:
    """`[b, L, kv_heads, d]` -> `[L/c, b, kv_heads, c, d]`."""
    b, L, h, d = x.shape
    return x.reshape(b, L // c, c, h, d).transpose(1, 0, 3, 2, 4)


def _unchunk_kv(x: Array) -> Array:
    n, b, h, c, d = x.shape
    return x.transpose(1, 0, 3, 2, 4).reshape(b, n * c, h, d)


def _chunk_seg(s: Array | None, c: int) -> Array | None:
    """`[b, L]` -> `[L/c, b, c]`."""
    if s is None:
        return None
    b, L = s.shape
    return s.reshape(b, L // c, c).transpose(1, 0, 2)


def _chunk_pos(p: Array, c: int) -> Array:
    return p.reshape(-1, c)


# ----------------------------------------------------------------------------------------------
# Per-device blockwise kernels (query chunks x key chunks)
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Config:
    axis_name: str | None
    causal: bool
    q_chunk: int
    kv_chunk: int
    scale: float


def _visible(pos_q: Array, pos_kv: Array) -> Array:
    """False when a causal mask hides every (query, key) pair of these blocks: the work can be skipped."""
    return jnp.max(pos_q) >= jnp.min(pos_kv)


def _skip_unless_visible(cfg: _Config, pos_q: Array, pos_kv: Array, compute, carry):
    """Run `compute(carry)` only when some pair is visible; otherwise return `carry` without matmuls."""
    if not cfg.causal:
        return compute(carry)
    return lax.cond(_visible(pos_q, pos_kv), compute, lambda c: c, carry)


def _scores(cfg: _Config, q_c, k_c, sq_c, sk_c, pq_c, pk_c) -> tuple[Array, Array | None]:
    s = jnp.einsum("bhgqd,bhkd->bhgqk", q_c, k_c, preferred_element_type=jnp.float32) * cfg.scale
    mask = _mask(cfg.causal, sq_c, sk_c, pq_c, pk_c)
    return s, mask


def _online_update(cfg: _Config, stats, q_c, k_c, v_c, sq_c, sk_c, pq_c, pk_c):
    """Fold one key chunk into the running (output, max, sum) of one query chunk, all fp32."""
    o, m, l = stats
    s, mask = _scores(cfg, q_c, k_c, sq_c, sk_c, pq_c, pk_c)
    if mask is not None:
        s = jnp.where(mask, s, -jnp.inf)
    m_new = jnp.maximum(m, jnp.max(s, axis=-1))
    m_safe = jnp.where(jnp.isfinite(m_new), m_new, 0.0)  # rows with nothing visible yet: no NaN
    p = jnp.exp(s - m_safe[..., None])
    alpha = jnp.exp(m - m_safe)
    l = alpha * l + jnp.sum(p, axis=-1)
    pv = jnp.einsum("bhgqk,bhkd->bhgqd", p.astype(v_c.dtype), v_c, preferred_element_type=jnp.float32)
    return alpha[..., None] * o + pv, m_new, l


def _fwd_block(cfg: _Config, q_ch, seg_q, pos_q, stats, kv):
    """Attend all local query chunks to one key/value block (local or received over the ring)."""
    k_ch, v_ch, seg_kv, pos_kv = kv

    def per_query_chunk(xs):
        q_c, o_c, m_c, l_c, sq_c, pq_c = xs

        def per_key_chunk(st, ys):
            k_c, v_c, sk_c, pk_c = ys
            update = lambda st: _online_update(cfg, st, q_c, k_c, v_c, sq_c, sk_c, pq_c, pk_c)
            return _skip_unless_visible(cfg, pq_c, pk_c, update, st), None

        st, _ = lax.scan(per_key_chunk, (o_c, m_c, l_c), (k_ch, v_ch, seg_kv, pos_kv))
        return st

    def run(stats):
        o, m, l = stats
        return lax.map(per_query_chunk, (q_ch, o, m, l, seg_q, pos_q))

    return _skip_unless_visible(cfg, pos_q, pos_kv, run, stats)


def _bwd_chunk(cfg: _Config, grads, q_c, k_c, v_c, do_c, lse_c, delta_c, sq_c, sk_c, pq_c, pk_c):
    """Gradient contributions of one (query chunk, key chunk) pair, recomputing its probabilities."""
    dq_c, dk_c, dv_c = grads
    s, mask = _scores(cfg, q_c, k_c, sq_c, sk_c, pq_c, pk_c)
    p = jnp.exp(s - lse_c[..., None])
    if mask is not None:
        p = jnp.where(mask, p, 0.0)
    f32 = jnp.float32
    dv_c = dv_c + jnp.einsum("bhgqk,bhgqd->bhkd", p.astype(do_c.dtype), do_c, preferred_element_type=f32)
    dp = jnp.einsum("bhgqd,bhkd->bhgqk", do_c, v_c, preferred_element_type=f32)
    ds = (p * (dp - delta_c[..., None]) * cfg.scale).astype(q_c.dtype)
    dq_c = dq_c + jnp.einsum("bhgqk,bhkd->bhgqd", ds, k_c, preferred_element_type=f32)
    dk_c = dk_c + jnp.einsum("bhgqk,bhgqd->bhkd", ds, q_c, preferred_element_type=f32)
    return dq_c, dk_c, dv_c


def _bwd_block(cfg: _Config, q_side, dq, kv, dkv):
    """Accumulate dq (local) and dk/dv (travelling with their block) for one key/value block."""
    q_ch, do_ch, lse, delta, seg_q, pos_q = q_side
    k_ch, v_ch, seg_kv, pos_kv = kv

    def per_key_chunk(dq, ys):
        k_c, v_c, dk_c, dv_c, sk_c, pk_c = ys

        def per_query_chunk(dkv_c, xs):
            q_c, do_c, lse_c, delta_c, dq_c, sq_c, pq_c = xs
            grad = lambda g: _bwd_chunk(cfg, g, q_c, k_c, v_c, do_c, lse_c, delta_c, sq_c, sk_c, pq_c, pk_c)
            dq_c, dk_c, dv_c = _skip_unless_visible(cfg, pq_c, pk_c, grad, (dq_c, *dkv_c))
            return (dk_c, dv_c), dq_c

        (dk_c, dv_c), dq = lax.scan(per_query_chunk, (dk_c, dv_c), (q_ch, do_ch, lse, delta, dq, seg_q, pos_q))
        return dq, (dk_c, dv_c)

    def run(carry):
        dq, (dk, dv) = carry
        dq, dkv = lax.scan(per_key_chunk, dq, (k_ch, v_ch, dk, dv, seg_kv, pos_kv))
        return dq, dkv

    return _skip_unless_visible(cfg, pos_q, pos_kv, run, (dq, dkv))


# ----------------------------------------------------------------------------------------------
# The ring: forward and backward with a custom VJP
# ----------------------------------------------------------------------------------------------


def _rotate(tree, axis_name: str):
    """Send every array to the next device on the ring (device i -> i+1)."""
    n = lax.axis_size(axis_name)
    perm = [(i, (i + 1) % n) for i in range(n)]
    return jax.tree.map(lambda x: lax.ppermute(x, axis_name, perm), tree)


def _vma(*xs) -> frozenset:
    """Mesh axes over which any of `xs` varies inside `shard_map` (empty outside it)."""
    axes = frozenset()
    for x in jax.tree.leaves(xs):
        aval = jax.typeof(x)
        if hasattr(aval, "manual_axis_type"):  # JAX >= 0.9
            axes |= aval.manual_axis_type.varying
        else:
            axes |= getattr(aval, "vma", frozenset())
    return axes


def _varying(tree, axes: frozenset):
    """Mark fresh accumulators as varying over `axes`, as their updates will be; `shard_map`'s
    type check wants loop carries and `cond` branches to agree."""
    def cast(x):
        missing = tuple(sorted(axes - _vma(x)))
        return lax.pcast(x, missing, to="varying") if missing else x

    return jax.tree.map(cast, tree)


def _ring_steps(cfg: _Config) -> int:
    return 1 if cfg.axis_name is None else lax.axis_size(cfg.axis_name)


def _prepare(cfg: _Config, q, k, v, seg_q, seg_kv, pos_q, pos_kv):
    kvh = k.shape[2]
    q_side = (_chunk_q(q, kvh, cfg.q_chunk), _chunk_seg(seg_q, cfg.q_chunk), _chunk_pos(pos_q, cfg.q_chunk))
    kv = (_chunk_kv(k, cfg.kv_chunk), _chunk_kv(v, cfg.kv_chunk), _chunk_seg(seg_kv, cfg.kv_chunk),
          _chunk_pos(pos_kv, cfg.kv_chunk))
    return q_side, kv


def _forward(cfg: _Config, q, k, v, seg_q, seg_kv, pos_q, pos_kv):
    (q_ch, sq, pq), kv = _prepare(cfg, q, k, v, seg_q, seg_kv, pos_q, pos_kv)
    stat_shape = q_ch.shape[:-1]
    stats = (jnp.zeros(q_ch.shape, jnp.float32), jnp.full(stat_shape, -jnp.inf, jnp.float32),
             jnp.zeros(stat_shape, jnp.float32))
    stats = _varying(stats, _vma(q, k, v, seg_q, seg_kv, pos_q, pos_kv))
    step = partial(_fwd_block, cfg, q_ch, sq, pq)
    n = _ring_steps(cfg)
    if n > 1:
        def body(carry, _):
            stats, kv = carry
            nxt = _rotate(kv, cfg.axis_name)  # issued before the compute so the two can overlap
            return (step(stats, kv), nxt), None

        (stats, kv), _ = lax.scan(body, (stats, kv), length=n - 1)
    o, m, l = step(stats, kv)
    out = jnp.where(l[..., None] > 0, o / jnp.where(l > 0, l, 1.0)[..., None], 0.0)
    lse = jnp.where(l > 0, m + jnp.log(jnp.where(l > 0, l, 1.0)), jnp.inf)  # +inf: p = 0 in the backward
    return _unchunk_q(out).astype(q.dtype), lse


def _backward(cfg: _Config, res, do):
    q, k, v, seg_q, seg_kv, pos_q, pos_kv, out, lse = res
    (q_ch, sq, pq), kv = _prepare(cfg, q, k, v, seg_q, seg_kv, pos_q, pos_kv)
    kvh = k.shape[2]
    do_ch = _chunk_q(do.astype(q.dtype), kvh, cfg.q_chunk)
    out_ch = _chunk_q(out, kvh, cfg.q_chunk)
    delta = jnp.sum(do_ch.astype(jnp.float32) * out_ch.astype(jnp.float32), axis=-1)
    q_side = (q_ch, do_ch, lse, delta, sq, pq)
    dq = jnp.zeros(q_ch.shape, jnp.float32)
    dkv = (jnp.zeros(kv[0].shape, jnp.float32), jnp.zeros(kv[1].shape, jnp.float32))
    dq, dkv = _varying((dq, dkv), _vma(q, k, v, seg_q, seg_kv, pos_q, pos_kv, do))
    step = partial(_bwd_block, cfg, q_side)
    n = _ring_steps(cfg)
    if n > 1:
        def body(carry, _):
            dq, kv, dkv = carry
            nxt = _rotate(kv, cfg.axis_name)
            dq, dkv = step(dq, kv, dkv)
            return (dq, nxt, _rotate(dkv, cfg.axis_name)), None  # gradients travel with their block

        (dq, kv, dkv), _ = lax.scan(body, (dq, kv, dkv), length=n - 1)
    dq, dkv = step(dq, kv, dkv)
    if n > 1:
        dkv = _rotate(dkv, cfg.axis_name)  # one last hop brings each block's gradient home
    dk, dv = (_unchunk_kv(x) for x in dkv)
    return (_unchunk_q(dq).astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None, None, None, None)


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def _attention_core(cfg: _Config, q, k, v, seg_q, seg_kv, pos_q, pos_kv):
    return _forward(cfg, q, k, v, seg_q, seg_kv, pos_q, pos_kv)[0]


def _core_fwd(cfg: _Config, q, k, v, seg_q, seg_kv, pos_q, pos_kv):
    out, lse = _forward(cfg, q, k, v, seg_q, seg_kv, pos_q, pos_kv)
    return out, (q, k, v, seg_q, seg_kv, pos_q, pos_kv, out, lse)


_attention_core.defvjp(_core_fwd, _backward)


def _make_config(q, k, v, axis_name, causal, q_chunk, kv_chunk, scale) -> _Config:
    _check_shapes(q, k, v)
    lq, lk = q.shape[1], k.shape[1]
    q_chunk, kv_chunk = min(q_chunk, lq), min(kv_chunk, lk)
    if q_chunk < 1 or lq % q_chunk:
        raise ValueError(f"local query length {lq} must be divisible by q_chunk={q_chunk}")
    if kv_chunk < 1 or lk % kv_chunk:
        raise ValueError(f"local key/value length {lk} must be divisible by kv_chunk={kv_chunk}")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    return _Config(axis_name, bool(causal), q_chunk, kv_chunk, scale)


def blockwise_attention(
    q: Array,
    k: Array,
    v: Array,
    *,
    segment_ids: Array | None = None,
    kv_segment_ids: Array | None = None,
    causal: bool = True,
    q_positions: Array | None = None,
    kv_positions: Array | None = None,
    q_chunk: int = 512,
    kv_chunk: int = 512,
    scale: float | None = None,
) -> Array:
    """Single-device exact attention with memory linear in sequence length (same semantics as
    `attention_reference`). Chunks larger than the sequence are clipped to it."""
    cfg = _make_config(q, k, v, None, causal, q_chunk, kv_chunk, scale)
    pos_q = jnp.arange(q.shape[1], dtype=jnp.int32) if q_positions is None else q_positions
    pos_kv = jnp.arange(k.shape[1], dtype=jnp.int32) if kv_positions is None else kv_positions
    seg_kv = segment_ids if kv_segment_ids is None else kv_segment_ids
    return _attention_core(cfg, q, k, v, segment_ids, seg_kv, pos_q, pos_kv)


def ring_attention_shard(
    q: Array,
    k: Array,
    v: Array,
    segment_ids_q: Array | None = None,
    segment_ids_kv: Array | None = None,
    q_positions: Array | None = None,
    kv_positions: Array | None = None,
    *,
    axis_name: str,
    causal: bool = True,
    q_chunk: int = 512,
    kv_chunk: int = 512,
    scale: float | None = None,
) -> Array:
    """Ring attention for one device's block; call inside `jax.shard_map` with the sequence sharded
    over `axis_name`.

    q `[b, Lq, h, d]` is this device's query block, k/v `[b, Lk, kv_heads, d]` its key/value block,
    segment ids `[b, L]` and positions `[L]` (global token positions, used for the causal mask) for
    each. Positions default to contiguous blocks (`axis_index * L + arange(L)`); pass them when the
    sequence was reordered for load balancing. Key/value blocks, their segment ids and positions go
    around the ring once; the backward pass (custom VJP) sends dk/dv around with them.
    """
    cfg = _make_config(q, k, v, axis_name, causal, q_chunk, kv_chunk, scale)
    idx = lax.axis_index(axis_name)
    if q_positions is None:
        q_positions = idx * q.shape[1] + jnp.arange(q.shape[1], dtype=jnp.int32)
    if kv_positions is None:
        kv_positions = idx * k.shape[1] + jnp.arange(k.shape[1], dtype=jnp.int32)
    if segment_ids_kv is None:
        segment_ids_kv = segment_ids_q
    elif segment_ids_q is None:
        raise ValueError("segment_ids_kv given without segment_ids_q")
    return _attention_core(cfg, q, k, v, segment_ids_q, segment_ids_kv, q_positions, kv_positions)


# ----------------------------------------------------------------------------------------------
# Global entry point
# ----------------------------------------------------------------------------------------------


def load_balance_permutation(seq_len: int, num_devices: int, scheme: LoadBalance) -> np.ndarray | None:
    """Token order such that contiguous sharding gives every device equal causal work.

    Returns `perm` with `reordered = x[:, perm]` (so `perm[j]` is the original position of slot j),
    or None when no reordering is needed. zigzag: 2n chunks, device i holds chunks i and 2n-1-i.
    striped: device i holds tokens i, i+n, i+2n, ... A data loader can apply it once up front;
    `ring_attention_sharded` does the same reordering on sharded arrays with `load_balance_shard`.
    """
    _check_balance(seq_len, num_devices, scheme)
    if scheme is None or num_devices == 1:
        return None
    if scheme == "zigzag":
        chunks = np.arange(seq_len).reshape(2 * num_devices, -1)
        order = [c for i in range(num_devices) for c in (i, 2 * num_devices - 1 - i)]
        return chunks[order].reshape(-1)
    return np.arange(seq_len).reshape(-1, num_devices).T.reshape(-1)


def _check_balance(seq_len: int, n: int, scheme: LoadBalance) -> None:
    if scheme not in ("zigzag", "striped", None):
        raise ValueError(f"load_balance must be 'zigzag', 'striped' or None; got {scheme!r}")
    if n == 1:
        return
    if scheme == "zigzag" and seq_len % (2 * n):
        raise ValueError(f"zigzag load balancing needs seq ({seq_len}) divisible by 2 x sp = {2 * n}")
    if scheme == "striped" and seq_len % (n * n):
        raise ValueError(f"striped load balancing needs seq ({seq_len}) divisible by sp x sp = {n * n}")


def _zigzag_shard(x: Array, axis_name: str, inverse: bool) -> Array:
    """Contiguous chunks (2d, 2d+1) on device d <-> zigzag chunks (d, 2n-1-d), with two ppermutes.

    Each device holds one even and one odd chunk in both layouts, so the even chunks travel in one
    ppermute and the odd ones in another; only the slot they land in depends on the device."""
    n, d = lax.axis_size(axis_name), lax.axis_index(axis_name)
    home = lambda c: c if c < n else 2 * n - 1 - c  # the device that holds chunk c in zigzag order
    first, second = jnp.split(x, 2, axis=1)
    d_even = (d % 2 == 0)
    if not inverse:
        even = lax.ppermute(first, axis_name, [(i, home(2 * i)) for i in range(n)])
        odd = lax.ppermute(second, axis_name, [(i, home(2 * i + 1)) for i in range(n)])
        slot0, slot1 = jnp.where(d_even, even, odd), jnp.where(d_even, odd, even)  # chunk d comes first
        return jnp.concatenate([slot0, slot1], axis=1)
    even_chunk = lambda j: j if j % 2 == 0 else 2 * n - 1 - j  # the even chunk device j holds
    odd_chunk = lambda j: 2 * n - 1 - j if j % 2 == 0 else j
    even = jnp.where(d_even, first, second)
    odd = jnp.where(d_even, second, first)
    even = lax.ppermute(even, axis_name, [(j, even_chunk(j) // 2) for j in range(n)])
    odd = lax.ppermute(odd, axis_name, [(j, odd_chunk(j) // 2) for j in range(n)])
    return jnp.concatenate([even, odd], axis=1)


def _striped_shard(x: Array, axis_name: str, inverse: bool) -> Array:
    """Contiguous blocks <-> stripes (device r holds tokens r, r+n, ...) with one all_to_all."""
    n = lax.axis_size(axis_name)
    b, L, rest = x.shape[0], x.shape[1], x.shape[2:]
    if not inverse:
        y = x.reshape(b, L // n, n, *rest)  # [b, a, r]: token a*n + r of this block goes to device r
        return lax.all_to_all(y, axis_name, 2, 1, tiled=True).reshape(b, L, *rest)
    y = x.reshape(b, n, L // n, *rest)  # [b, source block, a]
    y = lax.all_to_all(y, axis_name, 1, 1, tiled=True)  # [b, stripe r, a]
    return jnp.swapaxes(y, 1, 2).reshape(b, L, *rest)


def load_balance_shard(x: Array, axis_name: str, scheme: LoadBalance, *, inverse: bool = False) -> Array:
    """Inside `shard_map`: turn contiguous sequence blocks `[batch, L, ...]` into the load-balanced
    layout (or back with `inverse=True`) using point-to-point collectives, so no device ever holds
    the whole sequence. Equivalent to `x[:, load_balance_permutation(...)]` on the global array."""
    if scheme is None or lax.axis_size(axis_name) == 1:
        return x
    if scheme == "zigzag":
        return _zigzag_shard(x, axis_name, inverse)
    if scheme == "striped":
        return _striped_shard(x, axis_name, inverse)
    raise ValueError(f"load_balance must be 'zigzag', 'striped' or None; got {scheme!r}")


def load_balance_positions(local_len: int, axis_name: str, scheme: LoadBalance) -> Array:
    """Inside `shard_map`: original sequence positions of this device's tokens in the given layout."""
    n, d = lax.axis_size(axis_name), lax.axis_index(axis_name)
    if scheme is None or n == 1:
        return d * local_len + jnp.arange(local_len, dtype=jnp.int32)
    if scheme == "zigzag":
        c = local_len // 2
        r = jnp.arange(c, dtype=jnp.int32)
        return jnp.concatenate([d * c + r, (2 * n - 1 - d) * c + r])
    return jnp.arange(local_len, dtype=jnp.int32) * n + d


def _axis_size(mesh: Mesh, names: tuple[str, ...]) -> int:
    return int(np.prod([mesh.shape[a] for a in names])) if names else 1


def _use_fused(implementation: str, q: Array, sp: int, segment_ids) -> bool:
    """cuDNN's fused kernel can take the whole attention when there is no ring (sp == 1) and no
    segment mask; it cannot merge partial results across ring steps."""
    if implementation not in ("auto", "blockwise", "cudnn"):
        raise ValueError(f"implementation must be 'auto', 'blockwise' or 'cudnn'; got {implementation!r}")
    applicable = sp == 1 and segment_ids is None
    if implementation == "cudnn" and not applicable:
        raise ValueError("implementation='cudnn' needs sp == 1 and no segment_ids; use 'blockwise' or 'auto'")
    if implementation == "auto":
        return applicable and jax.default_backend() == "gpu" and q.dtype in (jnp.bfloat16, jnp.float16)
    return implementation == "cudnn"


def _validate_layout(q: Array, k: Array, segment_ids, mesh: Mesh, axis_name: str, b_axes: tuple[str, ...],
                     h_axis: str | None, q_chunk: int, kv_chunk: int) -> None:
    """Clear errors for shapes the mesh cannot split evenly, before shard_map reports them obscurely."""
    batch, seq, heads, _ = q.shape
    if segment_ids is not None and segment_ids.shape != q.shape[:2]:
        raise ValueError(f"segment_ids must be [batch, seq] = {q.shape[:2]}; got {segment_ids.shape}")
    if k.shape[1] != seq:
        raise ValueError(f"self-attention needs equal q and k/v lengths; got {seq} and {k.shape[1]}")
    dp = _axis_size(mesh, b_axes)
    if batch % dp:
        raise ValueError(f"batch {batch} must be divisible by the batch axes {b_axes} (size {dp})")
    tp = mesh.shape[h_axis] if h_axis else 1
    if heads % tp or k.shape[2] % tp:
        raise ValueError(f"heads ({heads}) and kv_heads ({k.shape[2]}) must be divisible by {h_axis} size {tp}")
    sp = mesh.shape[axis_name]
    if seq % sp:
        raise ValueError(f"sequence length {seq} must be divisible by the {axis_name!r} axis size {sp}")
    local = seq // sp
    for name, c in (("q_chunk", q_chunk), ("kv_chunk", kv_chunk)):
        if c < 1 or local % min(c, local):
            raise ValueError(f"sequence length {seq} must be divisible by {axis_name} size x {name} "
                             f"= {sp} x {c}: the local length {local} is not a multiple of {name}")


def ring_attention_sharded(
    q: Array,
    k: Array,
    v: Array,
    mesh: Mesh,
    *,
    segment_ids: Array | None = None,
    causal: bool = True,
    axis_name: str = "sp",
    q_chunk: int = 512,
    kv_chunk: int = 512,
    load_balance: LoadBalance = "zigzag",
    prebalanced: bool = False,
    token_order: Array | None = None,
    batch_axes: tuple[str, ...] = ("dp", "fsdp"),
    head_axis: str | None = "tp",
    scale: float | None = None,
    implementation: Literal["auto", "blockwise", "cudnn"] = "auto",
) -> Array:
    """Exact attention of global `[batch, seq, heads, head_dim]` arrays, sequence-parallel over
    `mesh[axis_name]`, batch over whichever of `batch_axes` the mesh has, heads over `head_axis`
    if present. k/v may have fewer heads (GQA). Returns `[batch, seq, heads, head_dim]` in q's dtype.

    With a causal mask each device's block is first exchanged for its load-balanced share
    (`load_balance`, with ppermute/all_to_all, never gathering the sequence) and the output is sent
    back. `prebalanced=True`: the caller already laid the sequence out in `load_balance` order
    (`load_balance_permutation`, once per step for the whole model, as the trainer does), so the
    blocks are used as they are, with the original token positions of that order, and the output
    stays in it: no exchange per attention layer.
    `token_order` `[seq]` int: each token's index in the row's original order, for a sequence the
    caller laid out itself (implies `prebalanced`); the causal mask then reads it instead of deriving
    the order from the device index. Why pass what could be computed: inside a `lax.scan` over
    layers, JAX hoists every value that depends only on loop constants out of the loop when it
    differentiates, and the causal masks of all chunk pairs would become one huge residual; order
    that arrives as data with the layer keeps them inside the loop.
    `implementation="auto"` uses cuDNN's fused kernel on GPU when the ring is trivial (sp == 1) and
    there are no segment ids; everywhere else the blockwise JAX path.
    """
    _check_shapes(q, k, v)
    if axis_name not in mesh.shape:
        raise ValueError(f"mesh has no sequence axis {axis_name!r}; its axes are {tuple(mesh.shape)}")
    b_axes = tuple(a for a in batch_axes if a in mesh.shape)
    h_axis = head_axis if head_axis in mesh.shape else None
    _validate_layout(q, k, segment_ids, mesh, axis_name, b_axes, h_axis, q_chunk, kv_chunk)
    seq, sp = q.shape[1], mesh.shape[axis_name]
    local = seq // sp

    balance = load_balance if causal else None  # without a causal mask the work is already even
    _check_balance(seq, sp, balance)
    if token_order is not None:
        if token_order.shape != (seq,):
            raise ValueError(f"token_order must be [seq] = ({seq},), got {token_order.shape}")
        prebalanced = True  # the caller's layout, whatever it is: no exchange

    b_spec = b_axes if b_axes else None
    x_spec, seg_spec = P(b_spec, axis_name, h_axis, None), P(b_spec, axis_name)

    if token_order is None and _use_fused(implementation, q, sp, segment_ids):
        def local_fn(q, k, v):
            return jax.nn.dot_product_attention(q, k, v, scale=scale, is_causal=causal, implementation="cudnn")
    else:
        exchange = balance is not None and not prebalanced

        def local_fn(q, k, v, seg=None, order=None):
            if exchange:
                q, k, v, seg = (None if x is None else load_balance_shard(x, axis_name, balance) for x in (q, k, v, seg))
            pos = load_balance_positions(local, axis_name, balance) if order is None else order.astype(jnp.int32)
            out = ring_attention_shard(q, k, v, seg, seg, pos, pos, axis_name=axis_name, causal=causal,
                                       q_chunk=q_chunk, kv_chunk=kv_chunk, scale=scale)
            return load_balance_shard(out, axis_name, balance, inverse=True) if exchange else out

    args, specs = [q, k, v], [x_spec, x_spec, x_spec]
    if segment_ids is not None or token_order is not None:
        args.append(segment_ids)
        specs.append(None if segment_ids is None else seg_spec)
    if token_order is not None:
        args.append(token_order)
        specs.append(P(axis_name))
    return jax.shard_map(local_fn, mesh=mesh, in_specs=tuple(specs), out_specs=x_spec)(*args)
