"""`longctx plan`: a compiled memory proof of a training stage before any accelerator is rented.

For a train config (or every stage of a stage plan) this builds the real train step of
`training.train` (the model, AdamW from `build_optimizer`, ring attention over the chosen mesh, the
chunked loss, gradient accumulation), gives it abstract inputs (`jax.ShapeDtypeStruct`s carrying
the trainer's `NamedSharding`s: state over `training.mesh.STATE_AXES`, batch over dp x fsdp and sp)
and compiles it ahead of time for a target:

- a TPU slice, e.g. `v5p:4x4x8` (`jax.experimental.topologies`; needs `libtpu`, no TPU attached):
  XLA's own memory analysis of the program that slice would run;
- `local`: this machine's devices;
- a GPU cluster, e.g. `gpu:h100x64`: nothing to compile for here, so an analytic *estimate* from
  `estimate_memory` (the same shapes and shardings, a documented per-layer formula).

Per stage it reports per-device argument bytes (state + batch), temporaries, their total (the
peak the program needs), the device's HBM and whether it fits; the state's total size; the model
FLOPs of a step (`training.model.flops_per_token`: 6 x matmul params + causal attention, the MFU
convention) and the step time they take at a stated MFU. XLA's `cost_analysis()` FLOPs are reported
too (`hlo_flops_per_step`) but count each while-loop body once (the micro-batch scan, the loss
chunks, the ring steps all are loops), so they undercount a step and are not used for timing.

Compile time grows with depth (the layers are a Python loop), so `layers` can cut the model to a
few layers; with two depths (`--layers 2,4`) the per-device bytes of the full depth are
extrapolated linearly from the two compiles (state bytes are exact either way) and labelled so.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from curation.config_errors import read_config_yaml, top_level_keys, validation_line
from training.config import StagePlan, TrainConfig
from training.mesh import AXES, BATCH_AXES, SEQ_AXIS, STATE_AXES, parse_state_axes
from training.mesh import mesh_sizes as resolve_mesh_sizes

GiB = 1024**3
REMAT_ORDER = ("none", "dots_saveable", "full")  # least recompute first
# Extra forward work of a remat policy, as a fraction of a step's model FLOPs (forward = 1/3 of a step).
REMAT_RECOMPUTE = {"none": 1.0, "dots_saveable": 1.0 + 0.1, "full": 1.0 + 1.0 / 3.0}
JSON_KEYS = ("name", "seq_len", "devices", "mesh", "argument_bytes", "temp_bytes", "peak_bytes_per_device",
             "hbm_bytes_per_device", "fits", "state_bytes_total", "flops_per_step")


@dataclasses.dataclass(frozen=True)
class Chip:
    """Datasheet numbers of one accelerator (per chip / per GPU): HBM bytes, dense bf16 FLOP/s, and
    the bytes/s one device can move to the others in a collective (for the search's ranking)."""

    name: str
    hbm_bytes: int
    peak_flops: float
    link_bytes_per_s: float = 0.0


# Cloud TPU / NVIDIA datasheets. TPU HBM as Google states it (GiB); one JAX device per chip.
# Link: half the bidirectional inter-chip (ICI) bandwidth per chip.
TPU_CHIPS = {
    "v4": Chip("TPU v4", 32 * GiB, 275e12, 150e9),
    "v5e": Chip("TPU v5e", 16 * GiB, 197e12, 100e9),
    "v5litepod": Chip("TPU v5e", 16 * GiB, 197e12, 100e9),
    "v5p": Chip("TPU v5p", 95 * GiB, 459e12, 600e9),
    "v6e": Chip("TPU v6e", 32 * GiB, 918e12, 200e9),
}
# GPU memory as the driver reports it (nvidia-smi's total, about the marketed GB read as GiB).
# Link: one InfiniBand NIC per GPU (200/400/400/800 Gb/s), what collectives across nodes get.
GPUS = {
    "a100": Chip("A100 80GB", 80 * GiB, 312e12, 25e9),
    "h100": Chip("H100 SXM", 80 * GiB, 989e12, 50e9),
    "h200": Chip("H200", 140 * GiB, 989e12, 50e9),
    "b200": Chip("B200", 179 * GiB, 2250e12, 100e9),
}


class PlanError(ValueError):
    """A target, config or layout the planner cannot use; the message says why."""


# ----------------------------------------------------------------------------------------------
# Targets
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Target:
    spec: str
    kind: str  # "tpu" | "local" | "gpu"
    num_devices: int
    chip: Chip | None
    devices: list | None = None  # real or topology devices to compile for; None: analytic only

    @property
    def hbm_bytes(self) -> int | None:
        return self.chip.hbm_bytes if self.chip else None

    @property
    def compiles(self) -> bool:
        return self.devices is not None


def _local_chip(devices: list) -> Chip | None:
    """This machine's device: its reported memory limit, or for CPU devices the host's RAM shared out."""
    from training.train import PEAK_FLOPS

    kind = devices[0].device_kind
    peak = next((v for k, v in PEAK_FLOPS.items() if k in kind), 0.0)
    try:
        stats = devices[0].memory_stats() or {}
    except Exception:  # noqa: BLE001  (backends differ: CPU raises or returns None)
        stats = {}
    if "bytes_limit" in stats:
        return Chip(kind, int(stats["bytes_limit"]), peak)
    if devices[0].platform == "cpu":
        try:
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            return None
        return Chip(f"{kind} (host RAM / {len(devices)} devices)", total // len(devices), peak)
    return None


def resolve_target(spec: str, hbm_bytes: int | None = None) -> Target:
    """`local`, a TPU topology such as `v5p:4x4x8` (optionally `tpu:v5p:4x4x8`), or `gpu:h100x64`.
    `hbm_bytes` overrides the per-device memory the fit is judged against."""
    spec = spec.strip()
    if spec == "local":
        import jax

        devices = list(jax.devices())
        target = Target(spec, "local", len(devices), _local_chip(devices), devices)
    elif spec.startswith("gpu:"):
        name, _, count = spec[4:].lower().partition("x")
        if name not in GPUS or not count.isdigit() or int(count) < 1:
            raise PlanError(f"GPU target {spec!r}: expected gpu:NAMExCOUNT with NAME in {sorted(GPUS)}, e.g. gpu:h100x64")
        target = Target(spec, "gpu", int(count), GPUS[name])
    else:
        topology = spec.removeprefix("tpu:")
        generation = topology.split(":")[0].split("-")[0]
        if generation not in TPU_CHIPS:
            raise PlanError(f"unknown target {spec!r}: use local, gpu:h100x64, or a TPU topology such as "
                            f"v5p:4x4x8 (generations {sorted(TPU_CHIPS)})")
        devices = tpu_topology_devices(topology)
        target = Target(spec, "tpu", len(devices), TPU_CHIPS[generation], devices)
    if hbm_bytes is not None:
        base = target.chip or Chip(target.spec, 0, 0.0)
        target.chip = dataclasses.replace(base, hbm_bytes=int(hbm_bytes))
    return target


def tpu_topology_devices(topology: str) -> list:
    """The devices of a TPU slice, without a TPU: compile-only, through libtpu."""
    # libtpu takes a lock file per machine; compile-only use must not fail because another process
    # (a second `longctx plan`, a test) holds it. Read when libtpu loads, so only effective before.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    try:
        from jax.experimental import topologies

        return list(topologies.get_topology_desc(platform="tpu", topology_name=topology).devices)
    except (ImportError, RuntimeError, ValueError) as err:  # JaxRuntimeError is a RuntimeError
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise PlanError(f"cannot describe TPU topology {topology!r} ({first}); compiling for TPU needs libtpu "
                        "(pip install 'longctx[dev]' or libtpu matching jax)") from None


def libtpu_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("libtpu") is not None


# ----------------------------------------------------------------------------------------------
# Stages
# ----------------------------------------------------------------------------------------------


def load_stages(config_path: str | None = None, plan_path: str | None = None,
                overrides: dict[str, Any] | None = None) -> list[tuple[str, TrainConfig]]:
    """(name, config) of one train config YAML or of every stage of a stage plan YAML."""
    if bool(config_path) == bool(plan_path):
        raise PlanError("give a train config (--config) or a stage plan (--plan), one of them")
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    path = Path(config_path or plan_path)
    if not path.is_file():
        raise PlanError(f"{path} does not exist")
    try:
        data = read_config_yaml(path, "the plan" if plan_path else "the config") or {}
    except ValueError as err:  # unreadable, or not YAML: one line
        raise PlanError(str(err)) from None
    if not isinstance(data, dict):
        raise PlanError(f"{path} is not a YAML mapping")
    try:
        if config_path:
            return [(path.stem, TrainConfig.model_validate({**data, **overrides}))]
        plan = StagePlan.from_data(data)  # a mistake anywhere in the plan is one line
        return [(name, config.model_copy(update=overrides)) for name, config in plan.stage_configs()]
    except ValidationError as err:  # a train config's mistake, in one line too
        raise PlanError(f"{path}: {validation_line(err, known_keys=top_level_keys(TrainConfig))}") from None
    except ValueError as err:
        raise PlanError(f"{path}: {err}") from None


def mesh_sizes(spec: str, num_devices: int) -> dict[str, int]:
    """Axis sizes of a mesh spec on `num_devices` devices (the trainer's rules), using all of them."""
    try:
        sizes = resolve_mesh_sizes(spec, num_devices)
    except ValueError as err:
        raise PlanError(f"mesh {spec!r}: {err}") from None
    if math.prod(sizes.values()) != num_devices:
        raise PlanError(f"mesh {spec!r} = {sizes} uses {math.prod(sizes.values())} of the target's {num_devices} devices")
    return sizes


def mesh_string(sizes: dict[str, int]) -> str:
    return ",".join(f"{a}={sizes[a]}" for a in AXES)


def layout_problems(config: TrainConfig, model, sizes: dict[str, int]) -> list[str]:
    """Why this layout cannot run this stage (the trainer's `check_fits` rules, without a mesh)."""
    from training.step import micro_batch

    problems = []
    sp, dp, tp = sizes["sp"], sizes["dp"] * sizes["fsdp"], sizes["tp"]
    if config.global_batch % config.grad_accum:
        problems.append(f"global_batch {config.global_batch} does not split into grad_accum {config.grad_accum}")
    if config.seq_len % sp:
        return problems + [f"seq_len {config.seq_len} is not divisible by sp={sp}"]
    local = config.seq_len // sp
    chunks = [("loss_chunk", config.loss_chunk)] + ([("q_chunk", config.q_chunk), ("kv_chunk", config.kv_chunk)]
                                                   if config.attention == "ring" else [])
    problems += [f"local length {local} is not a multiple of {n}={c}" for n, c in chunks if local % min(c, local)]
    if config.attention == "ring" and config.load_balance == "zigzag" and sp > 1 and config.seq_len % (2 * sp):
        problems.append(f"zigzag needs seq_len divisible by 2 x sp = {2 * sp}")
    if config.attention == "ring" and config.load_balance == "striped" and sp > 1 and config.seq_len % (sp * sp):
        problems.append(f"striped needs seq_len divisible by sp x sp = {sp * sp}")
    if micro_batch(config) % dp:
        problems.append(f"micro-batch of {micro_batch(config)} rows is not divisible by dp x fsdp = {dp}")
    if model.num_heads % tp or model.num_kv_heads % tp:
        problems.append(f"heads {model.num_heads}/{model.num_kv_heads} are not divisible by tp={tp}")
    if config.attention == "dense" and sp > 1:
        problems.append("dense attention needs sp=1 (ring attention splits the sequence)")
    return problems


# ----------------------------------------------------------------------------------------------
# Abstract state and batch, with the trainer's shardings
# ----------------------------------------------------------------------------------------------

BATCH_DTYPES = {"input_ids": "int32", "segment_ids": "int32", "positions": "int32", "loss_mask": "float32",
                "vision_mask": "uint8"}


def _shard_bytes(shape: Sequence[int], itemsize: int, spec, sizes: dict[str, int]) -> int:
    """Bytes of one device's shard of an array laid out by `spec` on a mesh of these axis sizes."""
    shard = list(shape)
    for i, entry in enumerate(tuple(spec) + (None,) * (len(shape) - len(tuple(spec)))):
        axes = () if entry is None else ((entry,) if isinstance(entry, str) else tuple(entry))
        shard[i] = -(-shape[i] // math.prod(sizes[a] for a in axes)) if axes else shape[i]
    return math.prod(shard) * itemsize


@dataclasses.dataclass
class Abstract:
    """Shapes, dtypes and PartitionSpecs of a stage's step inputs, independent of devices."""

    params: Any  # ShapeDtypeStruct tree
    param_specs: Any
    opt_state: Any
    opt_specs: Any
    batch: dict[str, Any]  # name -> ShapeDtypeStruct [accum, rows, seq]
    batch_spec: Any
    sizes: dict[str, int]

    def state_bytes_per_device(self) -> int:
        import jax

        leaves = jax.tree.leaves(self.params) + jax.tree.leaves(self.opt_state)
        specs = jax.tree.leaves(self.param_specs, is_leaf=_is_spec) + jax.tree.leaves(self.opt_specs, is_leaf=_is_spec)
        return sum(_shard_bytes(x.shape, x.dtype.itemsize, s, self.sizes) for x, s in zip(leaves, specs)) + 4  # + step

    def state_bytes_total(self) -> int:
        import jax

        return sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves((self.params, self.opt_state))) + 4

    def batch_bytes_per_device(self) -> int:
        return sum(_shard_bytes(x.shape, x.dtype.itemsize, self.batch_spec, self.sizes) for x in self.batch.values())


def _is_spec(x) -> bool:
    from jax.sharding import PartitionSpec

    return isinstance(x, PartitionSpec)


# The TrainConfig keys build_optimizer reads: the optimiser state's structure depends on nothing else.
_OPTIMIZER_KEYS = ("lr", "warmup_steps", "schedule", "steps", "end_lr_ratio", "b1", "b2", "weight_decay", "grad_clip")


@functools.lru_cache(maxsize=16)
def _abstract_params(model) -> Any:
    """Parameter shapes of a model config (tracing a 7B init takes seconds: once per config)."""
    import jax

    from training.model import init_params

    return jax.eval_shape(lambda: init_params(model, jax.random.key(0)))


@functools.lru_cache(maxsize=16)
def _abstract_opt_state(model, optimizer_json: str) -> Any:
    import jax

    from training.step import build_optimizer

    config = TrainConfig.model_validate_json(optimizer_json)
    return jax.eval_shape(build_optimizer(config).init, _abstract_params(model))


def abstract_inputs(config: TrainConfig, model, sizes: dict[str, int], state_axes: tuple[str, ...] = STATE_AXES) -> Abstract:
    """The step's inputs as shapes and PartitionSpecs: params and AdamW moments laid out over
    `state_axes` (`training.model.param_partition_specs`), the batch `[grad_accum, rows, seq]`
    over (None, dp x fsdp, sp), exactly as `training.train.train` lays them out."""
    import jax
    import jax.numpy as jnp
    import optax
    from jax.sharding import AbstractMesh, PartitionSpec

    from training.model import param_partition_specs
    from training.step import build_optimizer, micro_batch

    mesh = AbstractMesh(tuple(sizes[a] for a in AXES), AXES)  # only .shape is read: divisibility of dims
    params = _abstract_params(model)
    specs = param_partition_specs(params, mesh, fsdp_axes=state_axes)
    optimizer = build_optimizer(config)
    opt_state = _abstract_opt_state(model, config.model_dump_json(include=set(_OPTIMIZER_KEYS)))
    opt_specs = optax.tree_map_params(optimizer, lambda _, spec: spec, opt_state, specs,
                                      transform_non_params=lambda _: PartitionSpec())
    shape = (config.grad_accum, micro_batch(config), config.seq_len)
    batch = {k: jax.ShapeDtypeStruct(shape, jnp.dtype(d)) for k, d in BATCH_DTYPES.items()}
    return Abstract(params, specs, opt_state, opt_specs, batch, PartitionSpec(None, BATCH_AXES, SEQ_AXIS), sizes)


# ----------------------------------------------------------------------------------------------
# Reports
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class StageReport:
    name: str
    target: str
    seq_len: int
    devices: int
    mesh: dict[str, int]
    remat: str
    global_batch: int
    grad_accum: int
    layers: int  # layers of the full model
    method: str  # "compiled" | "extrapolated" | "estimate"
    argument_bytes: int  # per device: state + batch
    output_bytes: int
    alias_bytes: int
    temp_bytes: int
    peak_bytes_per_device: int  # argument + output - alias + temp
    hbm_bytes_per_device: int | None
    fits: bool | None
    state_bytes_total: int
    state_bytes_per_device: int
    flops_per_step: float  # model FLOPs (6N + causal attention) x tokens of a step
    hlo_flops_per_step: float | None  # XLA cost_analysis x devices (while bodies counted once)
    tokens_per_step: int
    mfu: float
    step_seconds: float | None  # flops_per_step / (devices x peak x mfu)
    compile_seconds: float | None = None
    compiled_layers: tuple[int, ...] = ()
    # Per compile (depth, argument bytes, temp bytes): the points an extrapolation went through.
    compiled_points: tuple[tuple[int, int, int], ...] = ()
    xla_peak_bytes: int | None = None
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["compiled_layers"] = list(self.compiled_layers)
        out["compiled_points"] = [list(p) for p in self.compiled_points]
        return out


# An analytic estimate is only trusted to fit with this fraction of the device's memory to spare
# (its error against compiled TPU programs, see estimate_memory).
ESTIMATE_MARGIN = 0.3


def _fits(peak: int, hbm: int | None, spare: float = 0.0) -> bool | None:
    return None if hbm is None else peak <= hbm * (1.0 - spare)


def _model_flops(config: TrainConfig, model) -> tuple[float, int]:
    from training.model import flops_per_token

    tokens = config.global_batch * config.seq_len
    return flops_per_token(model, config.seq_len) * tokens, tokens


def _step_seconds(flops: float, target: Target, mfu: float) -> float | None:
    if not target.chip or not target.chip.peak_flops or mfu <= 0:
        return None
    return flops / (target.num_devices * target.chip.peak_flops * mfu)


# ----------------------------------------------------------------------------------------------
# Compiling
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Compiled:
    argument_bytes: int
    output_bytes: int
    alias_bytes: int
    temp_bytes: int
    xla_peak_bytes: int | None
    hlo_flops: float | None  # per device, as XLA counts
    seconds: float
    executable: Any = dataclasses.field(default=None, repr=False)  # jax's Compiled, for inspection


# One compile per (config, model, devices, layout) in a process: a report re-judged against another
# HBM size, or a search revisiting a layout, does not compile again.
_COMPILED: dict[tuple, Compiled] = {}


def compile_step(config: TrainConfig, model, devices: list, sizes: dict[str, int],
                 state_axes: tuple[str, ...] = STATE_AXES, compiler_options: dict[str, Any] | None = None) -> Compiled:
    """Lower and compile the trainer's real step for these devices from abstract inputs; nothing is
    allocated. Runs under `jax.set_mesh` so the model's activation constraints apply.
    `compiler_options`: XLA options for this compile (e.g. {"xla_dump_to": DIR} for buffer assignments)."""
    options = dict(compiler_options or {})
    key = (config.model_dump_json(), model, tuple((d.platform, d.device_kind, d.id) for d in devices),
           tuple(sorted(sizes.items())), tuple(state_axes), tuple(sorted((k, str(v)) for k, v in options.items())))
    if key not in _COMPILED:
        _COMPILED[key] = _compile_step(config, model, devices, sizes, state_axes, options)
    return _COMPILED[key]


def _compile_step(config: TrainConfig, model, devices: list, sizes: dict[str, int], state_axes: tuple[str, ...],
                  compiler_options: dict[str, Any]) -> Compiled:
    import jax
    from jax.sharding import NamedSharding

    from training.loss import loss_weights
    from training.mesh import make_mesh
    from training.model import LlamaModel
    from training.step import build_optimizer, make_attention, make_train_step

    mesh = make_mesh(mesh_string(sizes), devices)
    abstract = abstract_inputs(config, model, sizes, state_axes)
    named = lambda spec: NamedSharding(mesh, spec)  # noqa: E731
    params_sh = jax.tree.map(named, abstract.param_specs, is_leaf=_is_spec)
    opt_sh = jax.tree.map(named, abstract.opt_specs, is_leaf=_is_spec)
    replicated = named(jax.sharding.PartitionSpec())
    state_sh = {"params": params_sh, "opt_state": opt_sh, "step": replicated}
    batch_sh = named(abstract.batch_spec)
    with_sharding = lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s)  # noqa: E731
    state = {
        "params": jax.tree.map(with_sharding, abstract.params, params_sh),
        "opt_state": jax.tree.map(with_sharding, abstract.opt_state, opt_sh),
        "step": jax.ShapeDtypeStruct((), "int32", sharding=replicated),
    }
    batch = {k: with_sharding(v, batch_sh) for k, v in abstract.batch.items()}
    step = make_train_step(LlamaModel(model), build_optimizer(config), make_attention(config, mesh), config.grad_accum,
                           config.loss_chunk, sizes[SEQ_AXIS], loss_weights(config, model))
    # The trainer's jit: fixed in/out shardings, state donated (so outputs alias the arguments).
    jitted = jax.jit(step, in_shardings=(state_sh, batch_sh), out_shardings=(state_sh, None), donate_argnums=0)
    t0 = time.perf_counter()
    with jax.set_mesh(mesh):
        try:
            compiled = jitted.lower(state, batch).compile(compiler_options or None)
        except Exception as err:  # XLA refuses a program that cannot fit: that is the answer, not a crash
            over = _exhausted_temp_bytes(err)
            if over is None:
                raise
            args = sum(_device_bytes(x) for x in jax.tree.leaves((state, batch)))
            return Compiled(args, 0, 0, over, None, None, time.perf_counter() - t0, None)
    seconds = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    if mem is None:
        raise PlanError(f"the {devices[0].platform} backend gives no memory analysis of compiled programs")
    try:
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        hlo_flops = float(cost["flops"]) if cost and "flops" in cost else None
    except (KeyError, TypeError, NotImplementedError, RuntimeError):  # backend-dependent, best effort
        hlo_flops = None
    peak = getattr(mem, "peak_memory_in_bytes", None)
    return Compiled(int(mem.argument_size_in_bytes), int(mem.output_size_in_bytes), int(mem.alias_size_in_bytes),
                    int(mem.temp_size_in_bytes), int(peak) if peak else None, hlo_flops, seconds, compiled)


def _exhausted_temp_bytes(err: BaseException) -> int | None:
    """The temporaries XLA said it needed when it refused to compile for lack of HBM, e.g.
    "RESOURCE_EXHAUSTED: ... HLO temporaries (99.22G) exceeds available HBM (95.74G)"; else None."""
    import re

    match = re.search(r"RESOURCE_EXHAUSTED.*?temporaries \(([\d.]+)([KMGT])\)", str(err), re.S)
    if not match:
        return None
    return int(float(match[1]) * 1024 ** "KMGT".index(match[2]) * 1024)


def _device_bytes(x: Any) -> int:
    """Bytes of one device's shard of an abstract array that carries its sharding."""
    import numpy as np

    shape = x.sharding.shard_shape(x.shape) if getattr(x, "sharding", None) is not None else x.shape
    return int(math.prod(shape)) * np.dtype(x.dtype).itemsize


def plan_stage(name: str, config: TrainConfig, target: Target, *, mfu: float = 0.4, layers: Sequence[int] = (),
               state_axes: tuple[str, ...] = STATE_AXES, mesh: str | None = None, remat: str | None = None,
               grad_accum: int | None = None, estimate: bool = False) -> StageReport:
    """One stage on one target: compiled (exact, or extrapolated in depth) or estimated.

    `mesh` / `remat` / `grad_accum` override the config's; `layers` empty compiles the whole model, one depth
    compiles that many layers (the report is of that cut model), two depths extrapolate to the
    full depth. `estimate` (or a target without devices) uses `estimate_memory` instead."""
    from training.train import model_config_for

    update: dict[str, Any] = {}
    if mesh is not None:
        update["mesh"] = mesh
    if remat is not None:
        update["model_overrides"] = {**config.model_overrides, "remat": remat}
    if grad_accum is not None:
        update["grad_accum"] = grad_accum
    if update:
        config = config.model_copy(update=update)
    model = model_config_for(config)
    sizes = mesh_sizes(config.mesh, target.num_devices)
    problems = layout_problems(config, model, sizes)
    if problems:
        raise PlanError(f"stage {name} on mesh {mesh_string(sizes)}: " + "; ".join(problems))
    full_layers = model.num_layers
    layers = tuple(sorted(set(layers)))
    if len(layers) > 2 or any(n < 1 or n > full_layers for n in layers):
        raise PlanError(f"layers {layers}: give one depth (compile a cut model) or two (extrapolate to "
                        f"{full_layers}), each between 1 and {full_layers}")
    if len(layers) == 1:
        model = model.with_(num_layers=layers[0])
    flops, tokens = _model_flops(config, model)
    full_abstract = abstract_inputs(config, model, sizes, state_axes)
    common = dict(name=name, target=target.spec, seq_len=config.seq_len, devices=target.num_devices, mesh=sizes,
                  remat=model.remat, global_batch=config.global_batch, grad_accum=config.grad_accum,
                  layers=model.num_layers, hbm_bytes_per_device=target.hbm_bytes,
                  state_bytes_total=full_abstract.state_bytes_total(),
                  state_bytes_per_device=full_abstract.state_bytes_per_device(), flops_per_step=flops,
                  tokens_per_step=tokens, mfu=mfu, step_seconds=_step_seconds(flops, target, mfu))
    if estimate or not target.compiles:
        est = estimate_memory(config, model, sizes, state_axes)
        peak = est["argument_bytes"] + est["temp_bytes"]
        return StageReport(**common, method="estimate", argument_bytes=est["argument_bytes"], output_bytes=0,
                           alias_bytes=0, temp_bytes=est["temp_bytes"], peak_bytes_per_device=peak,
                           fits=_fits(peak, target.hbm_bytes, ESTIMATE_MARGIN), hlo_flops_per_step=None,
                           note=f"analytic, +-{ESTIMATE_MARGIN:.0%}: fits only with that much to spare")
    if len(layers) < 2:
        c = compile_step(config, model, target.devices, sizes, state_axes)
        peak = c.argument_bytes + c.output_bytes - c.alias_bytes + c.temp_bytes
        return StageReport(**common, method="compiled", argument_bytes=c.argument_bytes, output_bytes=c.output_bytes,
                           alias_bytes=c.alias_bytes, temp_bytes=c.temp_bytes, peak_bytes_per_device=peak,
                           fits=_fits(peak, target.hbm_bytes),
                           hlo_flops_per_step=None if c.hlo_flops is None else c.hlo_flops * target.num_devices,
                           compile_seconds=c.seconds, compiled_layers=(model.num_layers,), xla_peak_bytes=c.xla_peak_bytes,
                           note="" if model.num_layers == full_layers else f"{model.num_layers} of {full_layers} layers")
    runs = [compile_step(config, model.with_(num_layers=n), target.devices, sizes, state_axes) for n in layers]
    (n0, c0), (n1, c1) = zip(layers, runs)

    def extend(field: str) -> int:  # linear in depth through the two compiles
        a, b = getattr(c0, field), getattr(c1, field)
        return int(round(a + (b - a) * (full_layers - n0) / (n1 - n0)))

    out = {f: extend(f) for f in ("argument_bytes", "output_bytes", "alias_bytes", "temp_bytes")}
    peak = out["argument_bytes"] + out["output_bytes"] - out["alias_bytes"] + out["temp_bytes"]
    hlo = None if c0.hlo_flops is None or c1.hlo_flops is None else (
        c0.hlo_flops + (c1.hlo_flops - c0.hlo_flops) * (full_layers - n0) / (n1 - n0)) * target.num_devices
    return StageReport(**common, method="extrapolated", **out, peak_bytes_per_device=peak,
                       fits=_fits(peak, target.hbm_bytes), hlo_flops_per_step=hlo,
                       compile_seconds=c0.seconds + c1.seconds, compiled_layers=layers,
                       compiled_points=((n0, c0.argument_bytes, c0.temp_bytes), (n1, c1.argument_bytes, c1.temp_bytes)),
                       note=f"extrapolated to {full_layers} layers from compiles at {n0} and {n1}")


# ----------------------------------------------------------------------------------------------
# The analytic model (GPU targets, and the search's first ranking)
# ----------------------------------------------------------------------------------------------


def estimate_memory(config: TrainConfig, model, sizes: dict[str, int], state_axes: tuple[str, ...] = STATE_AXES) -> dict[str, int]:
    """Per-device bytes of a step from shapes alone: the arguments exactly (state and batch shards),
    the temporaries by a phase model checked against seven TPU v5p compiles of the LLaMA-2 7B step
    (1-4 layers, 4-64 chips: within about 30% of XLA's temporaries). A guide, not a proof: compile
    where possible.

    Notation per device: T = b x s tokens (rows x local length), h hidden, i MLP width, V vocab,
    a bytes of the compute dtype, t = tp, P one layer's weights / t.
    - persistent through the step: the gradient accumulator (params / state shards, fp32; AdamW
      updates the donated state in place) and per layer what the backward pass keeps. Remat "full"
      keeps the layer input and, as compiled, about 3.3 x T h a + 0.5 x P a per layer (ring
      attention blocks, gathered weights XLA reuses); "dots_saveable" adds the matmul outputs
      (T (3 h + 2 kv d + 3 i / t) a); "none" everything the backward reads (T (10 h + 6 i / t) a);
    - then the larger of two phases that never overlap:
      a layer's backward: its gathered weights (P a), the fp32 SwiGLU temporaries (6 T i / t x 4),
      and one ring attention fp32 score block (b x heads / t x q_chunk x kv_chunk x 4);
      the loss: the gathered output head (V h / t x a) with its fp32 gradient, and two fp32 logit
      chunks (b x loss_chunk x V / t x 4).
    """
    from training.step import micro_batch

    abstract = abstract_inputs(config, model, sizes, state_axes)
    argument = abstract.state_bytes_per_device() + abstract.batch_bytes_per_device()
    dp, sp, tp = sizes["dp"] * sizes["fsdp"], sizes["sp"], sizes["tp"]
    b, s = max(1, micro_batch(config) // dp), config.seq_len // sp
    h, i, v = model.hidden_size, model.intermediate_size, model.vocab_size + (model.vision_vocab_size if model.has_vision_head else 0)
    d, heads, kv = model.head_dim, model.num_heads, model.num_kv_heads
    a = _itemsize(model.dtype)
    state_shards = math.prod(sizes[x] for x in state_axes)
    import jax

    params = sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(abstract.params))
    layer = (h * d * (heads + 2 * kv) + heads * d * h + 3 * h * i) // tp
    tokens = b * s
    per_layer = {
        "full": 3.3 * tokens * h * a + 0.5 * layer * a,
        "dots_saveable": 3.3 * tokens * h * a + 0.5 * layer * a + tokens * a * (3 * h + 2 * kv * d + 3 * i // tp),
        "none": tokens * a * (10 * h + 6 * i // tp) + 0.5 * layer * a,
    }[model.remat]
    persistent = params // state_shards + model.num_layers * per_layer
    attention = b * heads // tp * min(config.q_chunk, s) * min(config.kv_chunk, s) * 4 if config.attention == "ring" else \
        3 * b * heads // tp * s * s * 4
    layer_phase = layer * a + 6 * tokens * i // tp * 4 + attention
    loss_phase = v * h // tp * (a + 4) + 2 * b * min(config.loss_chunk, s) * v // tp * 4
    return {"argument_bytes": int(argument), "temp_bytes": int(persistent + max(layer_phase, loss_phase))}


def _itemsize(dtype: str) -> int:
    import numpy as np

    import jax.numpy as jnp

    return np.dtype(jnp.dtype(dtype)).itemsize


# ----------------------------------------------------------------------------------------------
# Search
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Layout:
    """One way to run a stage: the mesh split, the remat policy, the micro-batches per step."""

    sizes: tuple[tuple[str, int], ...]
    remat: str
    grad_accum: int

    @property
    def mesh(self) -> str:
        return mesh_string(dict(self.sizes))


def candidate_layouts(config: TrainConfig, model, num_devices: int, remats: Iterable[str] = REMAT_ORDER,
                      max_tp: int = 8, max_accum: int = 16) -> list[Layout]:
    """Every layout the stage can run on `num_devices`: dp=1, fsdp x sp x tp = devices (tp up to
    `max_tp`, one host's fast interconnect), grad_accum a power of two up to `max_accum` dividing
    the step's rows (global_batch rows per step are kept), the config's chunk sizes."""
    out = []
    accums = [n for n in (2**k for k in range(8)) if n <= max_accum and config.global_batch % n == 0]
    for accum in accums:
        staged = config.model_copy(update={"grad_accum": accum})
        for tp in (t for t in (1, 2, 4, 8, 16) if t <= max_tp and num_devices % t == 0):
            for sp in (n for n in range(1, num_devices // tp + 1) if (num_devices // tp) % n == 0):
                sizes = {"dp": 1, "fsdp": num_devices // (tp * sp), "tp": tp, "sp": sp}
                if layout_problems(staged, model, sizes):
                    continue
                out.extend(Layout(tuple(sizes.items()), remat, accum) for remat in remats)
    return out


def layout_cost(config: TrainConfig, model, layout: Layout, target: Target, mfu: float = 0.4) -> float:
    """Estimated seconds per step of a layout, to rank candidates (not a prediction to quote):
    the model FLOPs with the remat policy's recompute at `mfu`, against the FSDP traffic each
    micro-batch needs (weights all-gathered for the forward and again for the backward, gradients
    reduce-scattered: about 3 x the compute-dtype model per device) over the chip's link, assumed
    overlapped with compute, plus tensor parallelism's all-reduces (4 per layer of the local
    activations), which are not."""
    from training.model import count_params

    sizes = dict(layout.sizes)
    chip = target.chip or Chip("?", 0, 1e12, 1e10)
    flops, _ = _model_flops(config, model)
    compute = flops * REMAT_RECOMPUTE[layout.remat] / (target.num_devices * max(chip.peak_flops, 1.0) * mfu)
    link = chip.link_bytes_per_s or 1e10
    a = _itemsize(model.dtype)
    shards = math.prod(sizes[x] for x in STATE_AXES)
    fsdp = layout.grad_accum * 3 * count_params(_abstract_params(model)) * a * (shards - 1) / shards / sizes["tp"] / link
    tokens = config.global_batch * config.seq_len // target.num_devices * sizes["tp"]  # per tp group, whole step
    tp = 4 * model.num_layers * tokens * model.hidden_size * a * (sizes["tp"] - 1) / sizes["tp"] / link
    return max(compute, fsdp) + tp


def search_stage(name: str, config: TrainConfig, target: Target, *, mfu: float = 0.4, layers: Sequence[int] = (),
                 state_axes: tuple[str, ...] = STATE_AXES, max_compiles: int = 4, estimate: bool = False,
                 on_try: Callable[[StageReport], None] | None = None) -> tuple[StageReport | None, list[StageReport]]:
    """The cheapest layout (mesh split x remat policy x micro-batches, by `layout_cost`'s estimated
    step time) that fits.

    Candidates are ranked by cost and first screened with the analytic estimate (a layout it puts
    beyond 1.5 x the HBM is not worth a compile); the others are compiled in order, cheapest first,
    until one fits (at most `max_compiles` compiles). Without devices to compile for, or with
    `estimate`, the estimate decides (with its margin, ESTIMATE_MARGIN). Returns (the choice or
    None, every report made)."""
    from training.train import model_config_for

    model = model_config_for(config)
    hbm = target.hbm_bytes
    tried: list[StageReport] = []
    layouts = candidate_layouts(config, model, target.num_devices)
    costs = {layout: layout_cost(config, model.with_(remat=layout.remat), layout, target, mfu) for layout in layouts}
    ranked = sorted(layouts, key=lambda layout: (costs[layout], dict(layout.sizes)["sp"]))
    if not ranked:
        raise PlanError(f"stage {name}: no mesh split of {target.num_devices} devices satisfies its batch and chunk sizes")
    compiles = 0
    for layout in ranked:
        kwargs = dict(mfu=mfu, state_axes=state_axes, mesh=layout.mesh, remat=layout.remat, grad_accum=layout.grad_accum)
        est = plan_stage(name, config, target, estimate=True, **kwargs)
        ranking = f"search: ~{costs[layout]:.1f} s/step with communication"
        est.note = f"{est.note}; {ranking}"
        if not target.compiles or estimate:
            tried.append(est)
            if on_try:
                on_try(est)
            if est.fits or hbm is None:
                return est, tried
            continue
        if hbm is not None and est.peak_bytes_per_device > 1.5 * hbm:
            continue
        report = plan_stage(name, config, target, layers=layers, **kwargs)
        report.note = f"{report.note}; {ranking}" if report.note else ranking
        tried.append(report)
        if on_try:
            on_try(report)
        compiles += 1
        if report.fits or hbm is None:
            return report, tried
        if compiles >= max_compiles:
            break
    return None, tried


# ----------------------------------------------------------------------------------------------
# Output
# ----------------------------------------------------------------------------------------------


def write_json(reports: list[StageReport], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"stages": [r.to_json() for r in reports]}, indent=2) + "\n")
    return path


def _gib(n: int | None) -> str:
    return "-" if n is None else f"{n / GiB:,.2f}"


def _seconds(s: float | None) -> str:
    if s is None:
        return "-"
    return f"{s:,.1f} s" if s < 120 else f"{s / 60:,.1f} min"


def render_table(reports: list[StageReport], title: str = "longctx plan"):
    """A rich Table: one row per stage (or search try), bytes per device in GiB (as TPU HBM is stated)."""
    from rich.table import Table

    table = Table(title=title)
    for col, justify in [("stage", "left"), ("target", "left"), ("mesh dp/fsdp/tp/sp", "left"), ("remat", "left"),
                         ("seq", "right"), ("rows", "right"), ("state GiB/dev", "right"), ("args GiB", "right"),
                         ("temp GiB", "right"), ("total GiB", "right"), ("HBM GiB", "right"), ("fits", "center"),
                         ("model PFLOP/step", "right"), ("step @MFU", "right"), ("how", "left")]:
        table.add_column(col, justify=justify)
    for r in reports:
        fits = {True: "[green]yes[/]", False: "[red]no[/]", None: "?"}[r.fits]
        m = r.mesh
        how = r.method + (f", {r.compile_seconds:.0f} s compile" if r.compile_seconds else "") + (f"; {r.note}" if r.note else "")
        table.add_row(r.name, r.target, f"{m['dp']}/{m['fsdp']}/{m['tp']}/{m['sp']}", r.remat, f"{r.seq_len:,}",
                      f"{r.global_batch}" + (f"/{r.grad_accum}" if r.grad_accum > 1 else ""),
                      _gib(r.state_bytes_per_device), _gib(r.argument_bytes), _gib(r.temp_bytes),
                      _gib(r.peak_bytes_per_device), _gib(r.hbm_bytes_per_device), fits, f"{r.flops_per_step / 1e15:,.1f}",
                      _seconds(r.step_seconds) + f" @{r.mfu:.0%}", how)
    return table


def parse_layers(spec: str | None) -> tuple[int, ...]:
    if not spec:
        return ()
    try:
        return tuple(int(x) for x in spec.split(",") if x.strip())
    except ValueError:
        raise PlanError(f"--layers {spec!r}: expected N or N1,N2 (e.g. 2,4)") from None


__all__ = [
    "Chip", "GPUS", "JSON_KEYS", "PlanError", "StageReport", "TPU_CHIPS", "Target", "abstract_inputs",
    "candidate_layouts", "compile_step", "estimate_memory", "libtpu_available", "load_stages", "mesh_sizes",
    "parse_layers", "parse_state_axes", "plan_stage", "render_table", "resolve_target", "search_stage",
    "write_json",
]
