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

The planner's files, one job each: `training.plan_targets` (chips and target specs),
`training.plan_inputs` (stages, mesh splits, abstract inputs), `training.plan_estimate` (the
analytic memory model), this module (compile a stage's step and report it: `plan_stage`),
`training.layouts` (the layout search), `training.plan_report` (the table and the JSON) and
`training.plan_cli` (the command).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from typing import Any

from training.config import TrainConfig
from training.mesh import SEQ_AXIS, STATE_AXES
from training.plan_estimate import ESTIMATE_MARGIN, estimate_memory
from training.plan_inputs import abstract_inputs, is_spec, layout_problems, mesh_sizes, mesh_string, model_flops
from training.plan_targets import PlanError, Target


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


def _fits(peak: int, hbm: int | None, spare: float = 0.0) -> bool | None:
    return None if hbm is None else peak <= hbm * (1.0 - spare)


def _step_seconds(flops: float, target: Target, mfu: float) -> float | None:
    if not target.chip or not target.chip.peak_flops or mfu <= 0:
        return None
    return flops / (target.num_devices * target.chip.peak_flops * mfu)


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
    params_sh = jax.tree.map(named, abstract.param_specs, is_leaf=is_spec)
    opt_sh = jax.tree.map(named, abstract.opt_specs, is_leaf=is_spec)
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
    flops, tokens = model_flops(config, model)
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


__all__ = ["Compiled", "StageReport", "compile_step", "plan_stage"]
