"""Multi-process (multi-host) start-up: `jax.distributed.initialize` when the job has several processes.

A job is multi-process when it is told so (`coordinator_address` / `num_processes` / `process_id`,
JAX's own names, or `distributed: on`) or when its environment says so: a SLURM step with more
than one task, or a TPU pod / GKE TPU slice whose worker list names more than one host. Then JAX's
own cluster detection (or the explicit values) connects the processes; alone, nothing is done and
the run stays a plain single-process one.

It must run before any JAX computation: the first one fixes the process's view of the devices.

JAX aborts the whole process (a C++ check failure with a stack dump, no Python exception) when the
other processes do not connect in time. A watchdog thread says instead, in one line, who was
waited for and through which coordinator, and leaves with exit status 1, just before JAX would.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
from collections.abc import Mapping
from typing import Literal

import jax

log = logging.getLogger("longctx")

# JAX's own deadline is set this much later than ours, so the clear message always comes first.
_JAX_DEADLINE_MARGIN_S = 30
TIMEOUT_EXIT_STATUS = 1
_HOST = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.\-_:]*$")


class DistributedConfigError(ValueError):
    """The multi-process settings cannot describe a job (one line, said before connecting)."""


def _int_env(env: Mapping[str, str], name: str) -> int:
    try:
        return int(env.get(name, "") or 0)
    except ValueError:
        return 0


def detected_cluster(env: Mapping[str, str] | None = None) -> str | None:
    """The multi-process cluster the environment describes, or None for a single process.

    Pure (reads only `env`), so each rule is tested on an environment alone. JAX's own detection is
    what connects the processes; this only decides whether to ask it: a SLURM allocation with one
    task, or a single TPU VM, is a plain single-process run."""
    env = os.environ if env is None else env
    if "SLURM_JOB_ID" in env and _int_env(env, "SLURM_NTASKS") > 1:
        return "SLURM"
    hosts = [h.strip() for h in (env.get("TPU_PROCESS_ADDRESSES") or env.get("TPU_WORKER_HOSTNAMES") or "").split(",")]
    # Only a list of host names counts: libtpu fills the variable with a warning sentence when it
    # cannot tell the workers, and a sentence with a comma is not two hosts.
    if len(hosts) > 1 and all(_HOST.match(h) for h in hosts):
        return "TPU pod"
    if _int_env(env, "OMPI_COMM_WORLD_SIZE") > 1:
        return "Open MPI"
    return None


def wants_distributed(mode: Literal["auto", "on", "off"], coordinator_address: str | None, num_processes: int | None,
                      process_id: int | None, env: Mapping[str, str] | None = None) -> bool:
    """Whether this process must join a multi-process job (see the module docstring)."""
    if mode == "off":
        return False
    if mode == "on" or coordinator_address or process_id is not None or (num_processes or 1) > 1:
        return True
    return detected_cluster(env) is not None


def check_off(coordinator_address: str | None, num_processes: int | None, process_id: int | None) -> None:
    """`distributed: off` trains as one process whatever it is told: a coordinator, process count
    or index given with it (two processes would write one run folder at once) is refused, named."""
    given = {"coordinator_address": coordinator_address, "num_processes": num_processes, "process_id": process_id}
    named = [key for key, value in given.items() if value is not None]
    if named:
        flags = ", ".join(f"--{key.replace('_', '-')} {given[key]}" for key in named)
        raise DistributedConfigError(
            f"--distributed off (distributed: off) trains as one process and never joins a job, but {flags} "
            f"({', '.join(named)}) describe{'s' if len(named) == 1 else ''} a multi-process one: remove "
            f"{'it' if len(named) == 1 else 'them'}, or use --distributed auto (the default) or on")


def check_settings(coordinator_address: str | None, num_processes: int | None, process_id: int | None,
                   timeout_s: int) -> None:
    """Refuse settings that cannot name a process of a job, before any connection is tried."""
    if num_processes is not None and num_processes < 1:
        raise DistributedConfigError(f"num_processes {num_processes} must be >= 1")
    if process_id is not None and (process_id < 0 or (num_processes is not None and process_id >= num_processes)):
        raise DistributedConfigError(f"process_id {process_id} must be in 0..{(num_processes or 1) - 1} (num_processes {num_processes})")
    if coordinator_address is not None and not coordinator_address.rpartition(":")[2].isdigit():
        raise DistributedConfigError(f"coordinator_address {coordinator_address!r} must be HOST:PORT, e.g. 10.0.0.2:1234")
    if timeout_s < 1:
        raise DistributedConfigError(f"initialization_timeout {timeout_s} must be >= 1 second")


def timeout_message(coordinator_address: str | None, num_processes: int | None, process_id: int | None, timeout_s: int) -> str:
    """The one line said when the processes did not all connect in time."""
    where = coordinator_address or "the coordinator JAX detected"
    who = f"process {process_id} of {num_processes}" if process_id is not None and num_processes else "this process"
    return (f"longctx: error: multi-process start timed out after {timeout_s} s: {who} waited at coordinator {where} "
            f"and not all processes joined; start every process with the same --coordinator-address and --num-processes "
            f"and a distinct --process-id (or raise --initialization-timeout)")


def initialize(mode: Literal["auto", "on", "off"] = "auto", coordinator_address: str | None = None,
               num_processes: int | None = None, process_id: int | None = None, timeout_s: int = 300) -> bool:
    """Connect this process to its job when the job is multi-process (see `wants_distributed`).
    True when JAX's distributed runtime is up (now or from an earlier call: a plan's stages share it).
    On CPU the cross-process collectives go through gloo, which must be chosen before the backend starts."""
    if mode == "off":
        check_off(coordinator_address, num_processes, process_id)
    if jax.distributed.is_initialized():
        return True
    if not wants_distributed(mode, coordinator_address, num_processes, process_id):
        return False
    check_settings(coordinator_address, num_processes, process_id, timeout_s)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    message = timeout_message(coordinator_address, num_processes, process_id, timeout_s)
    watchdog = threading.Timer(timeout_s, _give_up, args=(message,))
    watchdog.daemon = True
    log.info("joining a multi-process job (coordinator %s, process %s of %s)", coordinator_address or "auto-detected",
             process_id if process_id is not None else "auto", num_processes or "auto")
    watchdog.start()
    try:
        jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                                   process_id=process_id, initialization_timeout=timeout_s + _JAX_DEADLINE_MARGIN_S)
    finally:
        watchdog.cancel()
    log.info("process %d of %d: %d local devices of %d", jax.process_index(), jax.process_count(),
             jax.local_device_count(), jax.device_count())
    return True


def _give_up(message: str) -> None:
    # The main thread is blocked inside JAX's C++ connect, where no Python exception can reach it.
    sys.stderr.write(message + "\n")
    sys.stderr.flush()
    os._exit(TIMEOUT_EXIT_STATUS)


def is_primary() -> bool:
    """Whether this process writes the run's own files (config, metrics): process 0 of the job."""
    return jax.process_index() == 0
