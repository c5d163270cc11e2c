"""The device mesh: named axes (dp, fsdp, tp, sp), from a config string such as `dp=1,fsdp=-1,tp=1,sp=8`."""

from __future__ import annotations

import math

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

AXES = ("dp", "fsdp", "tp", "sp")  # sp innermost: ring neighbours are adjacent devices
BATCH_AXES = ("dp", "fsdp")


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
            sizes[name.strip()] = int(value)
    unknown = set(sizes) - set(AXES)
    if unknown:
        raise MeshError(f"unknown mesh axes {sorted(unknown)}; axes are {AXES}")
    return {axis: int(sizes.get(axis, 1)) for axis in AXES}


def make_mesh(spec: str | dict[str, int] | None = None, devices: list | None = None) -> Mesh:
    """A mesh over all (or the given) devices; a -1 axis takes whatever the others leave."""
    devices = list(devices if devices is not None else jax.devices())
    sizes = parse_mesh(spec)
    free = [a for a, n in sizes.items() if n == -1]
    fixed = math.prod(n for n in sizes.values() if n != -1)
    if len(free) > 1:
        raise MeshError(f"only one mesh axis may be -1, got {free}")
    if free:
        if len(devices) % fixed:
            raise MeshError(f"{len(devices)} devices do not divide by the fixed axes ({fixed})")
        sizes[free[0]] = len(devices) // fixed
    total = math.prod(sizes.values())
    if total > len(devices):
        raise MeshError(f"mesh {sizes} needs {total} devices, only {len(devices)} available")
    grid = np.array(devices[:total]).reshape([sizes[a] for a in AXES])
    return Mesh(grid, AXES)


def batch_spec() -> PartitionSpec:
    """[batch, seq] arrays: batch over dp x fsdp, sequence over sp."""
    return PartitionSpec(BATCH_AXES, "sp")


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, batch_spec())


def data_parallel_size(mesh: Mesh) -> int:
    return mesh.shape["dp"] * mesh.shape["fsdp"]
