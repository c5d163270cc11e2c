"""Describing a TPU slice for a compile-only plan loads libtpu, which on a machine that is no TPU VM
wrote its start-up warnings (no TPU_ACCELERATOR_TYPE, no TPU_WORKER_HOSTNAMES, an INVALID_ARGUMENT
line) straight to stderr, though the plan needs neither; the README says longctx keeps them off
the terminal. They now go to the debug log. Run in a fresh interpreter: libtpu speaks once, on
its first load in a process."""

from __future__ import annotations

import subprocess
import sys

import pytest

from training.plan_targets import libtpu_available

pytestmark = pytest.mark.skipif(not libtpu_available(), reason="needs libtpu (the tpu extra)")

SCRIPT = ("from training.plan_targets import tpu_topology_devices; "
          "print(len(tpu_topology_devices('v5p:2x2x1')))")


def test_describing_a_tpu_slice_writes_nothing_to_stderr(tmp_path):
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env={**_env(), "JAX_PLATFORMS": "cpu"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "4"  # a v5p 2x2x1 slice: 4 chips
    assert "TPU_ACCELERATOR_TYPE" not in done.stderr and "TPU_WORKER_HOSTNAMES" not in done.stderr, done.stderr


def _env() -> dict[str, str]:
    import os

    from tests.conftest import REPO

    return {**os.environ, "PYTHONPATH": str(REPO)}
