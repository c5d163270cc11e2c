"""Which JAX platforms a `longctx` process starts: on a machine with no accelerator, the CPU only.

With libtpu installed (the `tpu` and `dev` extras, for `longctx plan`'s compiles for TPU slices,
which need no TPU) JAX tries to start a TPU client in every process. On a machine without a TPU,
libtpu then prints errors about TPU_ACCELERATOR_TYPE and TPU_WORKER_HOSTNAMES (a newcomer's
`make demo` showed them) before JAX falls back to the CPU. So where JAX_PLATFORMS is not set,
libtpu is installed and the machine shows no accelerator device, `longctx` sets it to "cpu": the
platform JAX ends up on anyway, under which TPU compile-only work still runs. A JAX_PLATFORMS the
user sets always wins. JAX reads the variable when it is first imported, hence an environment
variable set before any command runs, not a JAX config update.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Mapping, MutableMapping

from training.plan_targets import libtpu_available

# Device files of the accelerators JAX can use: TPU chips (/dev/accel*, or VFIO groups on newer
# generations), NVIDIA GPUs and AMD GPUs (ROCm's /dev/kfd).
ACCELERATOR_DEVICES = ("/dev/accel*", "/dev/vfio/[0-9]*", "/dev/nvidia[0-9]*", "/dev/kfd")


def accelerator_visible() -> bool:
    return any(glob.glob(pattern) for pattern in ACCELERATOR_DEVICES)


def default_jax_platforms(env: Mapping[str, str], libtpu: bool, accelerator: bool) -> str | None:
    """The JAX_PLATFORMS to set, or None to leave JAX to choose."""
    if "JAX_PLATFORMS" in env or not libtpu or accelerator:
        return None
    return "cpu"


def prefer_cpu_without_accelerators(env: MutableMapping[str, str] = os.environ) -> str | None:
    """Set JAX_PLATFORMS in `env` as `default_jax_platforms` says; returns what it set (None: nothing)."""
    value = default_jax_platforms(env, libtpu_available(), accelerator_visible())
    if value is not None:
        env["JAX_PLATFORMS"] = value
    return value
