"""`longctx` on a machine with no accelerator starts JAX on the CPU only, so that libtpu (installed
for `longctx plan`'s TPU compiles) does not print its TPU start-up errors into every command."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from longctx.accelerators import accelerator_visible, default_jax_platforms, prefer_cpu_without_accelerators
from training.plan_targets import libtpu_available
from tests.conftest import REPO


def test_cpu_only_when_libtpu_is_installed_and_no_accelerator_is_visible():
    assert default_jax_platforms({}, libtpu=True, accelerator=False) == "cpu"
    assert default_jax_platforms({}, libtpu=True, accelerator=True) is None  # a TPU VM, a GPU box
    assert default_jax_platforms({}, libtpu=False, accelerator=False) is None  # nothing to silence
    for users in ("", "cuda", "tpu,cpu"):  # the user's setting wins, even an empty one
        assert default_jax_platforms({"JAX_PLATFORMS": users}, libtpu=True, accelerator=False) is None


needs_cpu_only_with_libtpu = pytest.mark.skipif(
    accelerator_visible() or not libtpu_available(), reason="checks a CPU-only machine with libtpu installed (CI's)"
)


@needs_cpu_only_with_libtpu
def test_the_environment_gets_cpu_and_a_set_value_is_kept():
    env: dict[str, str] = {}
    assert prefer_cpu_without_accelerators(env) == "cpu" and env == {"JAX_PLATFORMS": "cpu"}
    kept = {"JAX_PLATFORMS": "cpu,tpu"}
    assert prefer_cpu_without_accelerators(kept) is None and kept == {"JAX_PLATFORMS": "cpu,tpu"}


@needs_cpu_only_with_libtpu
def test_jax_starts_without_libtpu_errors():
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    probe = "import jax; print(jax.devices()[0].platform)"

    def start(prefer: bool) -> subprocess.CompletedProcess:
        code = ("from longctx.accelerators import prefer_cpu_without_accelerators as p; p(); " if prefer else "") + probe
        return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)

    plain, preferred = start(False), start(True)
    # The control: JAX left to itself probes the TPU and libtpu complains (or the check is vacuous).
    assert plain.returncode == 0 and "TPU_ACCELERATOR_TYPE" in plain.stderr
    assert preferred.returncode == 0 and preferred.stdout.strip() == "cpu"
    assert "TPU_ACCELERATOR_TYPE" not in preferred.stderr and "TPU_WORKER_HOSTNAMES" not in preferred.stderr
