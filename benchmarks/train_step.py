"""Training-step throughput and MFU of the project's own train step, on synthetic token batches.

What is timed is exactly what `longctx train` runs per step: `training.train.make_train_step`
(forward, next-token loss, backward, global-norm clip, AdamW from `build_optimizer`), jitted with
the same in/out shardings and state donation as `train()`. The batch is random token ids shaped
`[grad_accum=1, batch, seq]` with segment_ids all 1, positions `arange(seq)` and loss_mask ones,
so no shards are needed. Each preset is compiled once (ahead of time, from abstract shapes, so the
compiled program's memory can be checked against the machine's available RAM before anything is
allocated), run once as a warm-up, then timed `--steps` times (block_until_ready); best and median.

MFU = model FLOPs per step (`flops_per_token` x tokens: 6 x matmul params + causal attention; remat
recomputation is NOT counted, as usual for MFU) / best step time / peak. The peak is `--peak-flops`
(per device, as `TrainConfig.peak_flops_per_device`) or, by default, measured in the same run: the
best of 5 of a 2048 x 2048 @ 2048 x 2048 `jnp.dot` in the model's compute dtype, i.e. the machine's
practical matmul peak through XLA, not a datasheet number.

    python benchmarks/train_step.py [--presets toy,1b] [--seq N] [--batch N] [--attention dense|ring]
                                    [--mesh dp=1,fsdp=1,tp=1,sp=1] [--steps 3] [--peak-flops F]

Per-preset defaults (used where --seq/--batch/--dtype/--param-dtype/--remat are not given) fit a
24 GiB, 2-core CPU: toy seq 512 x batch 8, fp32; 1b seq 256 x batch 1, bf16 params, Adam moments
and compute, no remat. With fp32 params the compiled 1b step needs 20.5 GiB (params, grads and two
Adam moments at 4.4 GB each, plus temporaries), too close to the ~22 GiB available; at 256 tokens
the activations are small, so remat only adds recompute (HLO FLOPs 2.11 T with "full" vs 1.73 T;
on the shared 2-core box the measured step times of the two could not be told apart).
The script refuses to run a preset whose compiled program needs more than the available memory
(or --mem-limit-gib; a tiny limit makes it a compile-only memory check) and says so.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python benchmarks/train_step.py`: the repo root, for `benchmarks.*`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# No JAX in the harness: XLA_FLAGS below is still set before JAX is first imported.
from benchmarks.harness import best_of, mem_available_bytes, si  # noqa: E402

DEFAULTS = {
    # preset: (seq, batch, compute dtype, param dtype, remat, timed steps)
    "toy": (512, 8, "float32", "float32", "none", 5),
    "tiny": (512, 4, "float32", "float32", "none", 5),
    "1b": (256, 1, "bfloat16", "bfloat16", "none", 2),
    "llama2-7b": (128, 1, "bfloat16", "bfloat16", "full", 2),
}
AXES = ("dp", "fsdp", "tp", "sp")


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default="toy,1b", help="comma-separated model presets (training/model.py)")
    ap.add_argument("--seq", type=int, default=None, help="sequence length (default: per preset, see DEFAULTS)")
    ap.add_argument("--batch", type=int, default=None, help="global batch rows per step (default: per preset)")
    ap.add_argument("--dtype", default=None, help="compute dtype (default: per preset)")
    ap.add_argument("--param-dtype", default=None, help="parameter (and Adam moment) dtype (default: per preset)")
    ap.add_argument("--remat", default=None, choices=("none", "full", "dots_saveable"), help="default: per preset")
    ap.add_argument("--attention", default="dense", choices=("dense", "ring"))
    ap.add_argument("--chunk", type=int, default=512, help="ring attention q/kv chunk (clipped to the local length)")
    ap.add_argument("--mesh", default="dp=1,fsdp=1,tp=1,sp=1", help="device mesh; >1 device forces that many host devices")
    ap.add_argument("--steps", type=int, default=None, help="timed steps after the warm-up step, best-of-N (default: per preset)")
    ap.add_argument("--peak-flops", type=float, default=None, help="peak FLOP/s per device; default: measured matmul reference")
    ap.add_argument("--mem-limit-gib", type=float, default=None, help="refuse programs needing more (default: MemAvailable)")
    args = ap.parse_args(argv)
    args.presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    return args


def mesh_devices(spec: str) -> int:
    """Devices the mesh asks for, parsed without jax (XLA_FLAGS must be set before jax is imported).
    A -1 axis ("the rest") counts as 1 here: on CPU there is one device unless we force more."""
    total = 1
    for part in spec.split(","):
        name, _, value = part.partition("=")
        if name.strip() not in AXES:
            sys.exit(f"bad mesh entry {part!r}: expected AXIS=N with AXIS in {AXES}")
        total *= max(int(value), 1)
    return total


ARGS = parse_args() if __name__ == "__main__" else None
if ARGS is not None and mesh_devices(ARGS.mesh) > 1:
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count={mesh_devices(ARGS.mesh)}").strip()

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from training.config import TrainConfig
from training.mesh import BATCH_AXES, make_mesh
from training.model import (
    LlamaModel,
    ModelConfig,
    count_params,
    flops_per_token,
    init_params,
)
from training.loss import loss_weights
from training.step import build_optimizer, init_opt_state, make_attention, make_train_step, param_shardings
from training.train import check_fits

GiB = 2**30


def matmul_reference(dtype: str, n: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of the best of `repeats` n x n @ n x n jnp.dot (after a warm-up): the practical peak."""
    ka, kb = jax.random.split(jax.random.key(0))
    a = jax.random.normal(ka, (n, n), jnp.dtype(dtype))
    b = jax.random.normal(kb, (n, n), jnp.dtype(dtype))
    dot = jax.jit(jnp.dot)
    dot(a, b).block_until_ready()
    best, _ = best_of(lambda: dot(a, b).block_until_ready(), repeats)
    return 2 * n**3 / best


def peak_rss() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def synthetic_batch(batch: int, seq: int, vocab: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    shape = (1, batch, seq)  # [grad_accum, batch, seq]
    return {
        "input_ids": rng.integers(0, vocab, shape, dtype=np.int32),
        "segment_ids": np.ones(shape, np.int32),
        "positions": np.broadcast_to(np.arange(seq, dtype=np.int32), shape).copy(),
        "loss_mask": np.ones(shape, np.float32),
    }


def bench_preset(name: str, args: argparse.Namespace, peaks: dict[str, float], mem_limit: float) -> dict:
    seq0, batch0, dtype0, pdtype0, remat0, steps0 = DEFAULTS.get(name, (512, 1, "float32", "float32", "none", 3))
    seq, batch = args.seq or seq0, args.batch or batch0
    dtype, pdtype, remat = args.dtype or dtype0, args.param_dtype or pdtype0, args.remat or remat0
    steps = args.steps or steps0
    config = TrainConfig(model=name, seq_len=seq, global_batch=batch, grad_accum=1, steps=1000, mesh=args.mesh,
                         attention=args.attention, q_chunk=args.chunk, kv_chunk=args.chunk, progress=False)
    mesh = make_mesh(config.mesh)
    model_cfg = ModelConfig.preset(name).with_(dtype=dtype, param_dtype=pdtype, remat=remat,
                                               max_position_embeddings=max(seq, ModelConfig.preset(name).max_position_embeddings))
    check_fits(config, model_cfg, mesh)
    row = {"preset": name, "seq": seq, "batch": batch, "dtype": dtype, "param_dtype": pdtype, "remat": remat,
           "attention": args.attention, "devices": mesh.size, "tokens": batch * seq}

    # Abstract state with the trainer's shardings: compile (and check memory) before allocating.
    model = LlamaModel(model_cfg)
    optimizer = build_optimizer(config)
    replicated = NamedSharding(mesh, PartitionSpec())
    pshard = param_shardings(model_cfg, mesh)
    abstract_params = jax.eval_shape(lambda: init_params(model_cfg, jax.random.key(0)))
    abstract_params = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_params, pshard)
    abstract_state = jax.eval_shape(
        lambda p: {"params": p, "opt_state": optimizer.init(p), "step": jnp.zeros((), jnp.int32)}, abstract_params)
    row["params"] = count_params(abstract_params)
    batch_sharding = NamedSharding(mesh, PartitionSpec(None, BATCH_AXES, "sp"))
    host = synthetic_batch(batch, seq, model_cfg.vocab_size)
    abstract_batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=batch_sharding) for k, v in host.items()}

    # The step train() runs: its loss chunking, sp split and loss weights, and its attention.
    step = make_train_step(model, optimizer, make_attention(config, mesh), config.grad_accum, config.loss_chunk,
                           mesh.shape["sp"], loss_weights(config, model_cfg))
    state_shardings = {
        "params": pshard,
        "opt_state": _opt_shardings(optimizer, abstract_params, replicated),
        "step": replicated,
    }
    step_fn = jax.jit(step, in_shardings=(state_shardings, batch_sharding), out_shardings=(state_shardings, None),
                      donate_argnums=0)
    t0 = time.perf_counter()
    with jax.set_mesh(mesh):  # the model's activation sharding constraints act under the mesh (as in train())
        compiled = step_fn.lower(abstract_state, abstract_batch).compile()
    row["compile_s"] = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    need = None
    if mem is not None:
        need = mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes + mem.temp_size_in_bytes
        row.update(state_gib=mem.argument_size_in_bytes / GiB, temp_gib=mem.temp_size_in_bytes / GiB, need_gib=need / GiB)
    try:
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        row["hlo_flops"] = float(cost.get("flops", float("nan"))) * mesh.size
    except (AttributeError, KeyError, TypeError, NotImplementedError, RuntimeError):  # best-effort, backend-dependent
        row["hlo_flops"] = float("nan")
    if need is not None and need * mesh.size > mem_limit:
        row["skipped"] = f"compiled step needs {need * mesh.size / GiB:.1f} GiB > limit {mem_limit / GiB:.1f} GiB"
        return row

    t0 = time.perf_counter()
    params = init_params(model_cfg, jax.random.key(0), out_shardings=pshard)
    state = {"params": params, "opt_state": init_opt_state(optimizer, params, replicated),
             "step": jax.device_put(jnp.zeros((), jnp.int32), replicated)}
    device_batch = jax.device_put(host, batch_sharding)
    jax.block_until_ready((state, device_batch))
    row["init_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    state, metrics = compiled(state, device_batch)
    jax.block_until_ready((state, metrics))
    row["first_step_s"] = time.perf_counter() - t0
    times = []
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for _ in range(steps):
        t0 = time.perf_counter()
        state, metrics = compiled(state, device_batch)
        jax.block_until_ready((state, metrics))
        times.append(time.perf_counter() - t0)
    # CPU seconds this process got per wall second while timing: on a shared box, how many of the
    # cores the steps actually had (other jobs' load shows up here, not only in the step time).
    row["cores"] = (time.process_time() - cpu0) / (time.perf_counter() - wall0)
    row["steps"] = steps
    row["loss"] = float(metrics["loss"])
    row["best_s"], row["median_s"] = min(times), statistics.median(times)
    row["tok_s"] = row["tokens"] / row["best_s"]
    row["model_flops"] = flops_per_token(model_cfg, seq) * row["tokens"]
    row["achieved"] = row["model_flops"] / row["best_s"]
    if args.peak_flops:
        row["peak"] = args.peak_flops * mesh.size
        row["peak_src"] = "--peak-flops x devices"
    else:
        # Host "devices" share the same cores, so the whole-machine matmul reference is the peak.
        row["peak"] = peaks[dtype]
        row["peak_src"] = f"{dtype} matmul reference"
    row["mfu"] = row["achieved"] / row["peak"]
    row["rss_gib"] = peak_rss() / GiB
    del state, params
    return row


def _opt_shardings(optimizer, abstract_params, replicated):
    """Optimiser-state shardings as `init_opt_state` lays them out: moments like their params,
    scalars (counts) replicated."""
    import optax

    abstract = jax.eval_shape(optimizer.init, abstract_params)
    return optax.tree_map_params(optimizer, lambda _, p: p.sharding, abstract, abstract_params,
                                 transform_non_params=lambda _: replicated)


def main(args: argparse.Namespace) -> None:
    t_start = time.perf_counter()
    devs = jax.devices()
    print(f"jax {jax.__version__}; {len(devs)} x {devs[0].platform} ({devs[0].device_kind}); mesh {args.mesh}; "
          f"attention {args.attention}; XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
    dtypes = sorted({args.dtype or DEFAULTS.get(p, (0, 0, "float32"))[2] for p in args.presets} | {"float32"})
    # The reference is taken before and after the presets (other load on a shared machine moves it);
    # the higher of the two is the practical peak used for MFU.
    before = {dt: matmul_reference(dt) for dt in dtypes}
    mem_limit = args.mem_limit_gib * GiB if args.mem_limit_gib else mem_available_bytes()
    print(f"memory limit for a compiled step: {mem_limit / GiB:.1f} GiB (MemAvailable unless --mem-limit-gib)")

    rows = []
    peaks = before  # replaced by max(before, after) once the second reference is taken
    for name in args.presets:
        t0 = time.perf_counter()
        row = bench_preset(name, args, peaks, mem_limit)
        row["wall_s"] = time.perf_counter() - t0
        rows.append(row)
        status = row.get("skipped") or (f"init {row['init_s']:.1f} s, first step {row['first_step_s']:.1f} s, "
                                         f"best {row['best_s'] * 1e3:,.1f} ms, loss {row['loss']:.3f}")
        print(f"  {name}: compiled in {row['compile_s']:.1f} s; {status}; preset wall {row['wall_s']:.1f} s", flush=True)
    after = {dt: matmul_reference(dt) for dt in dtypes}
    peaks = {dt: max(before[dt], after[dt]) for dt in dtypes}
    print("\nmatmul reference (2048x2048 @ 2048x2048 jnp.dot, best of 5), before / after the presets:")
    for dt in dtypes:
        print(f"  {dt:>9}: {si(before[dt])}FLOP/s / {si(after[dt])}FLOP/s -> peak {si(peaks[dt])}FLOP/s")
    for row in rows:
        if "skipped" in row or args.peak_flops:
            continue
        row["peak"] = peaks[row["dtype"]]
        row["mfu"] = row["achieved"] / row["peak"]
    if args.peak_flops:
        print(f"  --peak-flops {si(args.peak_flops)}FLOP/s per device is used for MFU; "
              f"measured fp32 reference / given peak = {peaks['float32'] / args.peak_flops:.3f}")

    print("\ntrain step (make_train_step: fwd+bwd+clip+AdamW), grad_accum 1, best of N timed steps after compile + 1 warm-up step")
    print("| preset | params | seq x batch | dtype / params / remat | compile s | N | step ms best (median) | tokens/s "
          "| model FLOPs/step | HLO FLOPs/step | achieved FLOP/s | peak FLOP/s (source) | MFU | cores used while timed "
          "| compiled need GiB (per device) | peak RSS GiB |")
    print("|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|")
    for r in rows:
        head = (f"| {r['preset']} | {r['params'] / 1e6:,.1f} M | {r['seq']} x {r['batch']} | "
                f"{r['dtype']} / {r['param_dtype']} / {r['remat']} | {r['compile_s']:.1f} | ")
        need = f"{r['need_gib']:.2f}" if "need_gib" in r else "-"
        if "skipped" in r:
            print(head + f"- | skipped: {r['skipped']} | - | - | {si(r['hlo_flops'])} | - | - | - | - | {need} | - |")
            continue
        print(head + f"{r['steps']} | {r['best_s'] * 1e3:,.1f} ({r['median_s'] * 1e3:,.1f}) | {r['tok_s']:,.1f} | "
              f"{si(r['model_flops'])} | {si(r['hlo_flops'])} | {si(r['achieved'])}FLOP/s | "
              f"{si(r['peak'])}FLOP/s ({r['peak_src']}) | {r['mfu'] * 100:.1f}% | {r['cores']:.2f} of {os.cpu_count()} | {need} | {r['rss_gib']:.2f} |")
    print(f"\ntotal wall {time.perf_counter() - t_start:.1f} s. Model FLOPs = flops_per_token x tokens (no remat "
          "recompute); HLO FLOPs = XLA cost_analysis of the compiled step (includes recompute and the optimiser). "
          "peak RSS is the process high-water mark so far.")


if __name__ == "__main__":
    main(ARGS)
