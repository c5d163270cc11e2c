"""The device mesh: named axes (dp, fsdp, tp, sp), from a config string such as `dp=1,fsdp=-1,tp=1,sp=8`.

Every mesh axis name used by the trainer and the model is defined here, once:
- the batch is split over dp x fsdp, the sequence over sp, attention heads / MLP columns over tp;
- training state (params, gradients, Adam moments) is split over `STATE_AXES` = fsdp x sp by default:
  ZeRO-3 across the sequence-parallel devices too, as LWM does, so a 7B model's 81 GB of fp32
  params and Adam moments (108 GB with the gradients) are divided by every device of a (dp=1)
  mesh instead of by fsdp alone (the ring's sp=8 devices each held all of it).
`shard_activation` pins an activation's layout inside a jitted function running under
`jax.set_mesh(mesh)`; without a mesh in context it does nothing, so single-device code is unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

DP, FSDP, TP, SP = "dp", "fsdp", "tp", "sp"
AXES = (DP, FSDP, TP, SP)  # sp innermost: ring neighbours are adjacent devices
BATCH_AXES = (DP, FSDP)
SEQ_AXIS = SP
HEAD_AXIS = TP
STATE_AXES = (FSDP, SP)  # default ZeRO-3 axes of params, gradients and optimiser moments

# Logical dimensions of activations -> the mesh axes that split them.
ACTIVATION_AXES: dict[str, tuple[str, ...]] = {
    "batch": BATCH_AXES,
    "seq": (SEQ_AXIS,),
    "heads": (HEAD_AXIS,),
    "mlp": (HEAD_AXIS,),
    "vocab": (HEAD_AXIS,),
    "embed": (),  # the hidden dim stays whole on each device (weights are gathered, not activations)
    "head_dim": (),
}


class MeshError(ValueError):
    pass


def parse_mesh(spec: str | dict[str, int] | None) -> dict[str, int]:
    """`dp=1,fsdp=-1,tp=1,sp=8` -> {axis: size}; missing axes are 1, one axis may be -1 (the rest)."""
    if spec is None or spec == "":
        sizes = {}
    elif isinstance(spec, dict):
        sizes = dict(spec)
    else:
        sizes = {}
        for part in spec.split(","):
            name, _, value = part.partition("=")
            if name.strip() not in AXES or not value.strip().lstrip("-").isdigit():
                raise MeshError(f"bad mesh entry {part!r}: expected AXIS=N with AXIS in {AXES}")
            if name.strip() in sizes:  # `dp=2,dp=1` would otherwise keep whichever came last
                raise MeshError(f"mesh {spec!r} names axis {name.strip()} twice")
            sizes[name.strip()] = int(value)
    unknown = set(sizes) - set(AXES)
    if unknown:
        raise MeshError(f"unknown mesh axes {sorted(unknown)}; axes are {AXES}")
    for axis, size in sizes.items():
        if isinstance(size, bool) or not isinstance(size, int) or (size < 1 and size != -1):
            raise MeshError(f"mesh axis {axis}={size!r}: a size is a whole number >= 1, or -1 for the devices the other axes leave")
    return {axis: int(sizes.get(axis, 1)) for axis in AXES}


def parse_state_axes(spec: str | Sequence[str] | None) -> tuple[str, ...]:
    """Mesh axes that split training state: `"fsdp,sp"` (default, ZeRO-3 over fsdp x sp), `"fsdp"`
    (the sequence devices keep full copies), or any of dp/fsdp/sp; tp already splits another dim."""
    if spec is None:
        return STATE_AXES
    names = [n.strip() for n in (spec.replace("+", ",").split(",") if isinstance(spec, str) else spec)]
    names = [n for n in names if n]
    bad = [n for n in names if n not in (DP, FSDP, SP)]
    if bad or len(set(names)) != len(names):
        raise MeshError(f"state axes {spec!r}: expected distinct names from {(DP, FSDP, SP)}, e.g. 'fsdp,sp'")
    return tuple(names)


def mesh_sizes(spec: str | dict[str, int] | None, num_devices: int) -> dict[str, int]:
    """Axis sizes of a mesh spec on `num_devices` devices: a -1 axis takes whatever the others leave."""
    sizes = parse_mesh(spec)
    free = [a for a, n in sizes.items() if n == -1]
    fixed = math.prod(n for n in sizes.values() if n != -1)
    if len(free) > 1:
        raise MeshError(f"only one mesh axis may be -1, got {free}")
    if free:
        if num_devices % fixed:
            raise MeshError(f"{num_devices} devices do not divide by the fixed axes ({fixed})")
        sizes[free[0]] = num_devices // fixed
    return sizes


def make_mesh(spec: str | dict[str, int] | None = None, devices: list | None = None) -> Mesh:
    """A mesh over all (or the given) devices; a -1 axis takes whatever the others leave."""
    devices = list(devices if devices is not None else jax.devices())
    sizes = mesh_sizes(spec, len(devices))
    total = math.prod(sizes.values())
    if total > len(devices):
        raise MeshError(f"mesh {sizes} needs {total} devices, only {len(devices)} available")
    grid = np.array(devices[:total]).reshape([sizes[a] for a in AXES])
    return Mesh(grid, AXES)


def mesh_text(sizes: dict[str, int]) -> str:
    """{axis: size} -> `dp=1,fsdp=2,tp=1,sp=4`."""
    return ",".join(f"{axis}={sizes[axis]}" for axis in AXES)


def check_uses_all_devices(spec: str | dict[str, int] | None, num_devices: int) -> dict[str, int]:
    """The axis sizes of a training mesh on `num_devices` devices, or a one-line MeshError when
    they multiply to fewer: the other devices would sit idle without a word (`longctx plan`
    refuses the same against its target). A one-device mesh (every axis 1) is the one subset
    allowed: a deliberate single-device run (e.g. a debugging run or a test)."""
    sizes = mesh_sizes(spec, num_devices)
    total = math.prod(sizes.values())
    if 1 < total < num_devices:
        given = mesh_text(parse_mesh(spec))
        hint = ""
        for axis in (FSDP, DP, SP, TP):  # the first axis that can take the rest, the batch's axes first
            others = math.prod(n for a, n in sizes.items() if a != axis)
            if num_devices % others == 0:
                hint = f", e.g. --mesh {mesh_text({**sizes, axis: -1})} ({axis}={num_devices // others})"
                break
        raise MeshError(f"mesh {given} uses {total} of the {num_devices} devices, leaving {num_devices - total} idle: "
                        f"make the axes multiply to {num_devices}, or give one axis -1 to take the devices the others "
                        f"leave{hint}")
    return sizes


def make_train_mesh(spec: str | dict[str, int] | None = None, devices: list | None = None) -> Mesh:
    """`make_mesh` for a training run: the mesh must use every device (`check_uses_all_devices`)."""
    devices = list(devices if devices is not None else jax.devices())
    check_uses_all_devices(spec, len(devices))
    return make_mesh(spec, devices)


def batch_spec() -> PartitionSpec:
    """[batch, seq] arrays: batch over dp x fsdp, sequence over sp."""
    return PartitionSpec(BATCH_AXES, SEQ_AXIS)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, batch_spec())


def data_parallel_size(mesh: Mesh) -> int:
    return mesh.shape[DP] * mesh.shape[FSDP]


def activation_spec(shape: Sequence[int], logical: Sequence[str | None], mesh_shape: dict[str, int]) -> PartitionSpec:
    """PartitionSpec of an activation with these logical dims on a mesh of these (usable) axes.

    A dim whose axes do not divide it stays whole (a decode step's single token, a batch smaller
    than dp x fsdp); axes the mesh lacks are dropped."""
    if len(shape) != len(logical):
        raise ValueError(f"{len(logical)} logical dims {tuple(logical)} for a rank-{len(shape)} array")
    entries = []
    for dim, name in zip(shape, logical):
        axes = tuple(a for a in (ACTIVATION_AXES[name] if name else ()) if a in mesh_shape and mesh_shape[a] > 1)
        if not axes or dim % math.prod(mesh_shape[a] for a in axes):
            entries.append(None)
        else:
            entries.append(axes[0] if len(axes) == 1 else axes)
    return PartitionSpec(*entries)


def shard_activation(x: jax.Array, *logical: str | None) -> jax.Array:
    """`with_sharding_constraint` by logical dims (`"batch", "seq", "embed"`...) on the mesh in context.

    Why: with weights split over fsdp x sp, XLA's sharding propagation otherwise follows the weights
    into the matmuls and materialises activations of the whole global batch on every device. Does
    nothing without a mesh (`jax.set_mesh`) or inside `shard_map` (manual axes)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or any(t == AxisType.Manual for t in mesh.axis_types):
        return x  # no mesh, or inside shard_map where the layout is already explicit
    spec = activation_spec(x.shape, logical, dict(zip(mesh.axis_names, mesh.axis_sizes)))
    return jax.lax.with_sharding_constraint(x, spec)
