"""What every benchmark here shares: how busy the host was, what machine it was, best-of timing,
the memory of a process tree, a measurement in a fresh child process, and number formatting.

No JAX, Beam or torch imports here: `ring_attention.py` and `train_step.py` must set XLA_FLAGS
before JAX is first imported, and import this module before that.
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parent.parent

T = TypeVar("T")
Clock = Callable[[], float]


# --- how busy the host was -----------------------------------------------------------------------


def format_load(values: Iterable[float]) -> str:
    """Load averages as the tables print them: "1.23 0.98 0.50" (1, 5 and 15 minutes)."""
    return " ".join(f"{x:.2f}" for x in values)


def load_average() -> str:
    """The host's load average now. The hosts are shared: every number a benchmark prints is only as
    good as how idle the CPUs were, so each records this before and after it measures."""
    return format_load(os.getloadavg())


class LoadSpan:
    """The load average when a measured span starts (`before`) and when it ends (`after`):

        with LoadSpan() as load:
            ...
        print(f"load {load}")          # "0.50 0.40 0.30 -> 1.90 0.80 0.40"
    """

    def __init__(self, read: Callable[[], Iterable[float]] = os.getloadavg):
        self._read = read
        self.before = ""
        self.after = ""

    def __enter__(self) -> LoadSpan:
        self.before = format_load(self._read())
        return self

    def __exit__(self, *exc: object) -> None:
        self.after = format_load(self._read())

    def __str__(self) -> str:
        return f"{self.before} -> {self.after}"


# --- what machine it was -------------------------------------------------------------------------


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else what `platform` knows, else "unknown"."""
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def mem_available_bytes(meminfo: Path = Path("/proc/meminfo")) -> float:
    """MemAvailable in bytes (Linux), or infinity where it cannot be read (no limit known)."""
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return float("inf")


# --- timing ------------------------------------------------------------------------------------


def timed_calls(fn: Callable[[], T], repeats: int, clock: Clock = time.perf_counter) -> tuple[list[float], T]:
    """The seconds of each of `repeats` calls of `fn` (as `clock` reads them), and the last call's result."""
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    times = []
    for _ in range(repeats):
        start = clock()
        result = fn()
        times.append(clock() - start)
    return times, result


def best_of(fn: Callable[[], T], repeats: int, clock: Clock = time.perf_counter) -> tuple[float, T]:
    """The fastest of `repeats` calls of `fn`, and the last call's result. The fastest, not the mean:
    on a shared host other jobs only ever add time."""
    times, result = timed_calls(fn, repeats, clock)
    return min(times), result


# --- memory of a process tree --------------------------------------------------------------------


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM of a process in KiB (Linux /proc), {} if it is gone."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    key, value = line.split(":", 1)
                    out[key] = int(value.split()[0])
    except OSError:
        pass
    return out


def descendants(root: int) -> list[int]:
    """Descendants of `root`, read from /proc (what the sampler uses when psutil is not installed)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


class TreeSampler(threading.Thread):
    """Samples this process's descendants every `interval` s (or once per `sample()` call): per-pid
    peak RSS (max of sampled VmRSS and of VmHWM, the kernel's own high-water mark, so a peak between
    two samples is not missed), the peak of their summed RSS, and the last CPU seconds seen per pid
    (psutil only). Descendants: psutil's when it is installed (`use_psutil`), else /proc's."""

    def __init__(self, interval: float = 0.1, use_psutil: bool = True):
        super().__init__(daemon=True)
        self.interval = interval
        self.stop_event = threading.Event()
        self.peak_kib: dict[int, int] = {}
        self.names: dict[int, str] = {}
        self.cpu_s: dict[int, float] = {}
        self.sum_peak_kib = 0
        self.samples = 0
        self.psutil = None
        if use_psutil:
            try:
                import psutil

                self.psutil = psutil
                self.me = psutil.Process()
            except ImportError:
                pass

    def _pids(self) -> list[int]:
        if self.psutil:
            return [p.pid for p in self.me.children(recursive=True)]
        return descendants(os.getpid())

    def sample(self) -> None:
        total = 0
        for pid in self._pids():
            status = proc_status(pid)
            if not status:
                continue
            rss = status.get("VmRSS", 0)
            total += rss
            self.peak_kib[pid] = max(self.peak_kib.get(pid, 0), rss, status.get("VmHWM", 0))
            if pid not in self.names:
                try:
                    with open(f"/proc/{pid}/comm") as fh:
                        self.names[pid] = fh.read().strip()
                except OSError:
                    self.names[pid] = "?"
            if self.psutil:
                try:
                    t = self.psutil.Process(pid).cpu_times()
                    self.cpu_s[pid] = t.user + t.system
                except self.psutil.Error:
                    pass
        self.sum_peak_kib = max(self.sum_peak_kib, total)
        self.samples += 1

    def run(self) -> None:
        while not self.stop_event.is_set():
            self.sample()
            self.stop_event.wait(self.interval)

    def stop(self) -> None:
        self.stop_event.set()
        self.join()

    def workers(self) -> dict[int, int]:
        """Peak KiB of the Python processes among them (not, e.g., the `sh -c` wrapper Beam starts
        its workers with)."""
        return {pid: kib for pid, kib in self.peak_kib.items() if self.names.get(pid, "").startswith("python")}


# --- a measurement in a fresh process ------------------------------------------------------------


def run_json_child(script: Path, flag: str, job: dict[str, Any], workdir: Path, tag: str, timeout: int,
                   log: bool = False) -> dict[str, Any]:
    """Run `python SCRIPT FLAG JOB.json` in a fresh process (a process's peak RSS only grows, so each
    measurement of memory gets its own) and return the JSON it wrote to `job["result"]`. The job
    and result files are `{tag}-job.json` / `{tag}-result.json` in `workdir`; with `log`, the
    child's output is kept in `{tag}.log`. A failing child raises with the tail of its output."""
    job_path = workdir / f"{tag}-job.json"
    job["result"] = str(workdir / f"{tag}-result.json")
    job_path.write_text(json.dumps(job))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    command = [sys.executable, str(Path(script).resolve()), flag, str(job_path)]
    if log:
        log_path = workdir / f"{tag}.log"
        with open(log_path, "w") as log_fh:
            proc = subprocess.run(command, check=False, stdout=log_fh, stderr=subprocess.STDOUT, env=env,
                                  timeout=timeout, cwd=str(REPO))
        output = log_path.read_text() if proc.returncode else ""
    else:
        proc = subprocess.run(command, check=False, capture_output=True, text=True, env=env, timeout=timeout, cwd=str(REPO))
        output = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise RuntimeError(f"child {tag} failed (rc {proc.returncode}):\n{output[-3000:]}")
    return json.loads(Path(job["result"]).read_text())


# --- numbers -------------------------------------------------------------------------------------


def si(x: float) -> str:
    """A large count with an SI prefix: 1.73e12 -> "1.73 T", 4.2e7 -> "42.00 M"; "-" if not finite."""
    if not math.isfinite(x):
        return "-"
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6)):
        if x >= scale:
            return f"{x / scale:,.2f} {unit}"
    return f"{x:,.0f}"


def mib(n_bytes: float | None) -> str:
    """Bytes as MiB with one decimal ("1,024.0"); "-" for None (not measured)."""
    return "-" if n_bytes is None else f"{n_bytes / 2**20:,.1f}"


def ratio(a: float, b: float) -> str:
    """a / b as "1.23x"; "-" when b is 0 (no base to compare with)."""
    return f"{a / b:.2f}x" if b else "-"
