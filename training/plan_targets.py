"""The targets `longctx plan` judges a stage against: the accelerators' datasheet numbers (`Chip`),
and a target spec (`local`, a TPU topology such as `v5p:4x4x8`, `gpu:h100x64`) resolved into the
devices to compile for (none for GPUs: those are estimated) and the memory a device has.

`PlanError` lives here, the lowest of the planner's modules (`plan_targets` <- `plan_inputs` <-
`plan_estimate` <- `plan` <- `layouts`, `plan_report`), so every one of them raises the same error.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import sys
import tempfile
from collections.abc import Iterator

from curation.units import GiB


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
        problem = topology_problem(topology)  # before libtpu, whose refusal would read as a missing libtpu
        if problem:
            raise PlanError(f"TPU topology {spec!r}: {problem}; give GENERATION:AxBxC such as v5p:4x4x8 or v4:2x2x1, "
                            f"or GENERATION:AxB such as v5e:2x4 or v6e:4x4, the first two sizes even (a TPU host "
                            f"holds 2x2 chips)")
        # libtpu knows v5 lite pods as v5e only.
        devices = tpu_topology_devices("v5e" + topology.removeprefix(generation) if generation == "v5litepod" else topology)
        target = Target(spec, "tpu", len(devices), TPU_CHIPS[generation], devices)
    if hbm_bytes is not None:
        base = target.chip or Chip(target.spec, 0, 0.0)
        target.chip = dataclasses.replace(base, hbm_bytes=int(hbm_bytes))
    return target


def topology_problem(topology: str) -> str | None:
    """What is wrong with the form of a TPU topology `GENERATION:AxB[xC]` (a chip grid of 2 or 3
    positive sizes, the first two even: libtpu splits a slice into hosts of 2x2 chips), or None."""
    generation, sep, grid = topology.partition(":")
    if not sep or not grid:
        return f"{generation!r} names a TPU generation but no chip grid"
    if "-" in generation:
        return f"{generation!r} is a TPU type name (cores or chips in it), not a generation such as v5p"
    sizes = grid.split("x")
    if not all(size.isdigit() and int(size) >= 1 for size in sizes) or len(sizes) not in (2, 3):
        return f"chip grid {grid!r} is not 2 or 3 positive whole numbers joined by x"
    odd = [int(size) for size in sizes[:2] if int(size) % 2]
    if odd:
        return f"chip grid {grid} has an odd size ({odd[0]}) in its first two dimensions"
    return None


def tpu_topology_devices(topology: str) -> list:
    """The devices of a TPU slice, without a TPU: compile-only, through libtpu."""
    # libtpu takes a lock file per machine; compile-only use must not fail because another process
    # (a second `longctx plan`, a test) holds it. Read when libtpu loads, so only effective before.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    try:
        from jax.experimental import topologies

        # libtpu, loading on a machine that is no TPU VM, writes its start-up warnings (no
        # TPU_ACCELERATOR_TYPE, no TPU_WORKER_HOSTNAMES) straight to the process's stderr, though
        # compile-only use needs neither: kept off the terminal, and logged at debug level.
        with native_stderr_to_log():
            return list(topologies.get_topology_desc(platform="tpu", topology_name=topology).devices)
    except (ImportError, RuntimeError, ValueError) as err:  # JaxRuntimeError is a RuntimeError
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if libtpu_available() and "INVALID_ARGUMENT" in first:  # libtpu is there: the topology is what it refused
            raise PlanError(f"TPU topology {topology!r}: libtpu refuses it ({first}); give GENERATION:AxBxC such as "
                            "v5p:4x4x8, or GENERATION:AxB such as v5e:2x4") from None
        raise PlanError(f"cannot describe TPU topology {topology!r} ({first}); compiling for TPU needs libtpu "
                        "(pip install 'longctx[dev]' or libtpu matching jax)") from None


@contextlib.contextmanager
def native_stderr_to_log() -> Iterator[None]:
    """While the block runs, what native code writes to file descriptor 2 goes to a temporary file,
    then to the `longctx` log at debug level (the block's own exceptions pass through)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            written = sink.read().decode("utf-8", errors="replace").strip()
            if written:
                logging.getLogger("longctx").debug("libtpu said on loading: %s", written)


def libtpu_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("libtpu") is not None


__all__ = ["GPUS", "TPU_CHIPS", "Chip", "GiB", "PlanError", "Target", "libtpu_available", "resolve_target",
           "topology_problem", "tpu_topology_devices"]
