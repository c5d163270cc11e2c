"""Blockwise RingAttention on 8 host devices: speed against dense attention, memory per device.

Two questions, answered on CPU so anyone can rerun them:
1. What does the ring cost against dense attention at equal length? fwd+bwd of sum(out * cot),
   best of n runs after compilation, for the ring (sp=8), `attention_reference` (dense, fp32) and
   `jax.nn.dot_product_attention` (XLA implementation). On one CPU the 8 "devices" share the same
   cores, so this measures overhead, not the speed-up of real sequence parallelism.
2. Does the per-device memory grow linearly with sequence length? The compiled per-device
   program's temporary buffers (`memory_analysis().temp_size_in_bytes`) as the length doubles at a
   fixed device count, next to the dense versions (quadratic). Compile only: nothing this size runs.

    python benchmarks/ring_attention.py [--time-seq 2048] [--repeats 5] [--max-mem-seq 65536]
"""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

if __package__ in (None, ""):  # run as `python benchmarks/ring_attention.py`: the repo root, for `benchmarks.*`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh  # noqa: E402

from benchmarks.harness import best_of, mib  # noqa: E402
from training.ring_attention import (  # noqa: E402
    attention_reference,
    load_balance_permutation,
    ring_attention_sharded,
)

HEADS, HEAD_DIM, BATCH = 4, 64, 1


def fwd_bwd(attn):
    """jit of (out, dq, dk, dv) for the loss sum(out * cot): what a training step pays."""
    def run(q, k, v, cot):
        out, vjp = jax.vjp(attn, q, k, v)
        return out, vjp(cot)

    return jax.jit(run)


def implementations(mesh: Mesh, chunk: int, variants: bool = False) -> dict:
    """The ring first (the memory table reads it as the subject); `variants` adds the ring without
    load balancing, striped, and non-causal, to show the skipped blocks above the diagonal."""
    ring = lambda **kw: lambda q, k, v: ring_attention_sharded(q, k, v, mesh, q_chunk=chunk, kv_chunk=chunk, **kw)
    impls = {"ring (sp=8, zigzag)": ring(load_balance="zigzag")}
    if variants:
        impls.update({"ring (sp=8, striped)": ring(load_balance="striped"),
                      "ring (sp=8, no balancing)": ring(load_balance=None),
                      "ring (sp=8, non-causal)": ring(causal=False)})
    impls.update({
        "dense reference": lambda q, k, v: attention_reference(q, k, v),
        "jax.nn.dot_product_attention": lambda q, k, v: jax.nn.dot_product_attention(
            q, k, v, is_causal=True, implementation="xla"),
    })
    return impls


def shapes(seq: int) -> list[jax.ShapeDtypeStruct]:
    s = jax.ShapeDtypeStruct((BATCH, seq, HEADS, HEAD_DIM), jnp.float32)
    return [s, s, s, s]


def time_all(mesh: Mesh, seq: int, chunk: int, repeats: int) -> list[tuple[str, float, float]]:
    rng = np.random.default_rng(0)
    args = [jnp.asarray(rng.standard_normal(s.shape), jnp.float32) for s in shapes(seq)]
    rows = []
    for name, attn in implementations(mesh, chunk, variants=True).items():
        fn = fwd_bwd(attn)
        t0 = time.perf_counter()
        compiled = fn.lower(*args).compile()
        compile_s = time.perf_counter() - t0
        jax.block_until_ready(compiled(*args))  # warm-up
        best, _ = best_of(lambda: jax.block_until_ready(compiled(*args)), repeats)  # called at once: this iteration's `compiled`
        rows.append((name, best, compile_s))
    return rows


def ring_work(seq: int, n: int, chunk: int, scheme, causal: bool = True) -> tuple[int, int]:
    """(total, critical path) of computed (query chunk, key chunk) pairs, the skipping rule replayed.

    Ring steps run in lockstep (each waits for its ppermute), so a step lasts as long as its busiest
    device: the critical path sums that maximum over steps. It is what load balancing shortens, and
    unlike wall time on a shared CPU it is deterministic."""
    perm = load_balance_permutation(seq, n, scheme if causal else None)
    pos = (np.arange(seq) if perm is None else perm).reshape(n, -1, chunk)  # [device, chunk, token]
    lo, hi = pos.min(-1), pos.max(-1)
    total = critical = 0
    for step in range(n):
        per_device = []
        for d in range(n):
            src = (d - step) % n
            visible = hi[d][:, None] >= lo[src][None, :] if causal else np.ones((pos.shape[1],) * 2, bool)
            per_device.append(int(visible.sum()))
        total += sum(per_device)
        critical += max(per_device)
    return total, critical


def temp_bytes(attn, seq: int) -> int | None:
    analysis = fwd_bwd(attn).lower(*shapes(seq)).compile().memory_analysis()
    return None if analysis is None else int(analysis.temp_size_in_bytes)


def memory_table(mesh: Mesh, seqs: list[int], chunk: int, dense_max: int) -> list[tuple[int, dict]]:
    rows = []
    for seq in seqs:
        row = {}
        for name, attn in implementations(mesh, chunk).items():
            row[name] = temp_bytes(attn, seq) if name.startswith("ring") or seq <= dense_max else None
        rows.append((seq, row))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--time-seq", type=int, default=2048)
    ap.add_argument("--chunk", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--min-mem-seq", type=int, default=2048)
    ap.add_argument("--max-mem-seq", type=int, default=65536)
    ap.add_argument("--dense-max-seq", type=int, default=16384, help="longest length compiled for the dense ones")
    args = ap.parse_args()
    mesh = Mesh(np.array(jax.devices()[:8]), ("sp",))
    print(f"devices: {len(jax.devices())} x {jax.devices()[0].platform}; jax {jax.__version__}; "
          f"batch {BATCH}, heads {HEADS}, head_dim {HEAD_DIM}, fp32, causal, chunk {args.chunk}")

    print(f"\nfwd+bwd at seq {args.time_seq} (best of {args.repeats}, after compile)")
    print("| implementation | best ms | compile s |\n|---|---:|---:|")
    for name, best, compile_s in time_all(mesh, args.time_seq, args.chunk, args.repeats):
        print(f"| {name} | {best * 1e3:,.1f} | {compile_s:.1f} |")

    chunk_pairs = (args.time_seq // 8 // args.chunk) ** 2 * 8 * 8
    print(f"\ncomputed (q chunk, kv chunk) pairs at seq {args.time_seq}, sp=8, chunk {args.chunk} "
          f"(dense would be {chunk_pairs}); critical path = sum over ring steps of the busiest device")
    print("| variant | total pairs | critical path | vs non-causal |\n|---|---:|---:|---:|")
    full = ring_work(args.time_seq, 8, args.chunk, None, causal=False)[1]
    for name, scheme, causal in (("zigzag", "zigzag", True), ("striped", "striped", True),
                                 ("no balancing", None, True), ("non-causal", None, False)):
        total, critical = ring_work(args.time_seq, 8, args.chunk, scheme, causal)
        print(f"| {name} | {total} | {critical} | {critical / full:.2f} |")

    seqs = []
    s = args.min_mem_seq
    while s <= args.max_mem_seq:
        seqs.append(s)
        s *= 2
    if not seqs:
        return
    rows = memory_table(mesh, seqs, args.chunk, args.dense_max_seq)
    names = list(rows[0][1])
    print("\nfwd+bwd temp memory per device program (MiB, compiled memory_analysis), growth per doubling")
    print("| seq | " + " | ".join(f"{n} | x" for n in names) + " |")
    print("|---:|" + "---:|---:|" * len(names))
    prev = {}
    for seq, row in rows:
        cells = []
        for n in names:
            b, p = row[n], prev.get(n)
            cells += [mib(b), "-" if b is None or not p else f"{b / p:.2f}"]
            prev[n] = b
        print(f"| {seq:,} | " + " | ".join(cells) + " |")
    ring = [row[names[0]] for _, row in rows]
    if all(ring):
        growth = [b / a for a, b in zip(ring, ring[1:])]
        print(f"\nring growth per doubling: max {max(growth):.2f}x (goal <= 2.1x)")


if __name__ == "__main__":
    main()
