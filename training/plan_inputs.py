"""What a plan starts from: the stages of a train config or stage plan, the mesh split of a target's
devices (and why a split cannot run a stage), and the step's inputs as abstract shapes with the
trainer's PartitionSpecs (`abstract_inputs`), from which both the compile (`training.plan`) and the
analytic estimate (`training.plan_estimate`) work. Nothing here allocates an array.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from curation.config_errors import read_config_yaml, top_level_keys, validation_line
from training.config import StagePlan, TrainConfig
from training.mesh import AXES, BATCH_AXES, SEQ_AXIS, STATE_AXES
from training.mesh import mesh_sizes as resolve_mesh_sizes
from training.plan_targets import PlanError


def load_stages(config_path: str | None = None, plan_path: str | None = None,
                overrides: dict[str, Any] | None = None,
                flags: dict[str, str] | None = None) -> list[tuple[str, TrainConfig]]:
    """(name, config) of one train config YAML or of every stage of a stage plan YAML.

    `flags` names each override as the user gave it (`{"global_batch": "--set global_batch=abc"}`):
    a train config that fails validation at an overridden key blames that flag, not the file."""
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
        raise PlanError(f"{_blamed(err, path, overrides, flags)}: "
                        f"{validation_line(err, known_keys=top_level_keys(TrainConfig))}") from None
    except ValueError as err:
        raise PlanError(f"{path}: {err}") from None


def _blamed(err: ValidationError, path: Path, overrides: dict[str, Any], flags: dict[str, str] | None) -> str:
    """What the first error (as `validation_line` orders them: an unknown key first) is about: the
    --set flag that gave its top-level key, else the file."""
    errors = sorted(err.errors(), key=lambda e: e["type"] != "extra_forbidden")
    if not errors:
        return str(path)
    loc = tuple(errors[0]["loc"])
    key = loc[0] if loc else None
    if not loc:  # a check across keys (a model validator) whose message starts with the key it is about: "model: ..."
        said = errors[0]["msg"].removeprefix("Value error, ")
        key = next((k for k in overrides if said.startswith(f"{k}:")), None)
    if key in overrides:
        return (flags or {}).get(key) or f"--set {key}={overrides[key]}"
    return str(path)


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
        specs = jax.tree.leaves(self.param_specs, is_leaf=is_spec) + jax.tree.leaves(self.opt_specs, is_leaf=is_spec)
        return sum(_shard_bytes(x.shape, x.dtype.itemsize, s, self.sizes) for x, s in zip(leaves, specs)) + 4  # + step

    def state_bytes_total(self) -> int:
        import jax

        return sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves((self.params, self.opt_state))) + 4

    def batch_bytes_per_device(self) -> int:
        return sum(_shard_bytes(x.shape, x.dtype.itemsize, self.batch_spec, self.sizes) for x in self.batch.values())


def is_spec(x: Any) -> bool:
    """A PartitionSpec leaf (jax.tree would otherwise descend into its tuple)."""
    from jax.sharding import PartitionSpec

    return isinstance(x, PartitionSpec)


# The TrainConfig keys build_optimizer reads: the optimiser state's structure depends on nothing else.
_OPTIMIZER_KEYS = ("lr", "warmup_steps", "schedule", "steps", "end_lr_ratio", "b1", "b2", "weight_decay", "grad_clip")


@functools.lru_cache(maxsize=16)
def abstract_params(model) -> Any:
    """Parameter shapes of a model config (tracing a 7B init takes seconds: once per config)."""
    import jax

    from training.model import init_params

    return jax.eval_shape(lambda: init_params(model, jax.random.key(0)))


@functools.lru_cache(maxsize=16)
def _abstract_opt_state(model, optimizer_json: str) -> Any:
    import jax

    from training.step import build_optimizer

    config = TrainConfig.model_validate_json(optimizer_json)
    return jax.eval_shape(build_optimizer(config).init, abstract_params(model))


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
    params = abstract_params(model)
    specs = param_partition_specs(params, mesh, fsdp_axes=state_axes)
    optimizer = build_optimizer(config)
    opt_state = _abstract_opt_state(model, config.model_dump_json(include=set(_OPTIMIZER_KEYS)))
    opt_specs = optax.tree_map_params(optimizer, lambda _, spec: spec, opt_state, specs,
                                      transform_non_params=lambda _: PartitionSpec())
    shape = (config.grad_accum, micro_batch(config), config.seq_len)
    batch = {k: jax.ShapeDtypeStruct(shape, jnp.dtype(d)) for k, d in BATCH_DTYPES.items()}
    return Abstract(params, specs, opt_state, opt_specs, batch, PartitionSpec(None, BATCH_AXES, SEQ_AXIS), sizes)


def model_flops(config: TrainConfig, model) -> tuple[float, int]:
    """(model FLOPs of one step: 6 x matmul params + causal attention per token, tokens of the step)."""
    from training.model import flops_per_token

    tokens = config.global_batch * config.seq_len
    return flops_per_token(model, config.seq_len) * tokens, tokens


def itemsize(dtype: str) -> int:
    """Bytes per element of a dtype name (bfloat16 = 2)."""
    import numpy as np

    import jax.numpy as jnp

    return np.dtype(jnp.dtype(dtype)).itemsize


__all__ = ["BATCH_DTYPES", "Abstract", "abstract_inputs", "abstract_params", "is_spec", "itemsize", "layout_problems",
           "load_stages", "mesh_sizes", "mesh_string", "model_flops"]
