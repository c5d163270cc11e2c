"""benchmarks/harness.py: load averages, machine info, best-of timing on a given clock, the memory of
a process tree (a real child that allocates), a measurement in a fresh process, number formatting;
and benchmarks/synthetic.py's book corpora."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from benchmarks.harness import (
    LoadSpan,
    TreeSampler,
    best_of,
    cpu_model,
    descendants,
    format_load,
    mem_available_bytes,
    mib,
    proc_status,
    ratio,
    run_json_child,
    si,
    timed_calls,
)

linux_proc = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads Linux /proc")


# --- load and machine ---------------------------------------------------------------------------


def test_format_load_two_decimals():
    assert format_load((0.5, 1, 12.25)) == "0.50 1.00 12.25"


def test_load_span_reads_before_and_after():
    readings = iter([(1.0, 2.0, 3.0), (4.5, 0.25, 0.0)])
    with LoadSpan(read=lambda: next(readings)) as load:
        assert load.before == "1.00 2.00 3.00" and load.after == ""
    assert load.after == "4.50 0.25 0.00"
    assert str(load) == "1.00 2.00 3.00 -> 4.50 0.25 0.00"


def test_load_span_default_reads_the_host():
    with LoadSpan() as load:
        pass
    assert len(load.before.split()) == 3 and len(load.after.split()) == 3


def test_cpu_model_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: X\nmodel name\t: Example CPU @ 2.0GHz\n\nprocessor\t: 1\n")
    assert cpu_model(info) == "Example CPU @ 2.0GHz"
    assert cpu_model(tmp_path / "missing") == (platform.processor() or "unknown")


def test_mem_available_from_meminfo(tmp_path):
    info = tmp_path / "meminfo"
    info.write_text("MemTotal:       16000000 kB\nMemAvailable:    8000000 kB\n")
    assert mem_available_bytes(info) == 8_000_000 * 1024
    assert mem_available_bytes(tmp_path / "missing") == float("inf")


# --- timing ------------------------------------------------------------------------------------


class StepClock:
    """A clock that reads the given instants in turn."""

    def __init__(self, instants):
        self.instants = iter(instants)

    def __call__(self) -> float:
        return next(self.instants)


def test_best_of_is_the_fastest_call_and_returns_the_last_result():
    calls = []
    # Calls take 5, 2 and 7 "seconds": starts at 0, 10, 20; ends at 5, 12, 27.
    clock = StepClock([0.0, 5.0, 10.0, 12.0, 20.0, 27.0])
    best, result = best_of(lambda: calls.append(len(calls)) or len(calls), 3, clock=clock)
    assert best == 2.0
    assert result == 3 and calls == [0, 1, 2]


def test_timed_calls_lists_every_call():
    times, result = timed_calls(lambda: "x", 2, clock=StepClock([1.0, 1.5, 3.0, 6.0]))
    assert times == [0.5, 3.0] and result == "x"


def test_best_of_rejects_no_repeats():
    with pytest.raises(ValueError, match="repeats must be at least 1, got 0"):
        best_of(lambda: None, 0)


# --- memory of a process tree --------------------------------------------------------------------

# A child that touches 96 MiB, frees it, then says so and waits for its stdin to close: its peak is
# over by the time anything samples it, so only the kernel's high-water mark (VmHWM) can show it.
ALLOCATE = textwrap.dedent("""
    import sys
    block = b"\\x01" * (96 << 20)
    del block
    print("freed", flush=True)
    sys.stdin.read()
""")


@pytest.fixture
def allocating_child():
    proc = subprocess.Popen([sys.executable, "-c", ALLOCATE], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "freed"
        yield proc
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)


@linux_proc
def test_proc_status_of_self_and_of_a_gone_pid():
    mine = proc_status(os.getpid())
    assert mine["VmRSS"] > 0 and mine["VmHWM"] >= mine["VmRSS"]
    assert proc_status(2**22 + 1) == {}  # above the kernel's pid_max limit: never a live process


@linux_proc
def test_descendants_finds_a_child(allocating_child):
    assert allocating_child.pid in descendants(os.getpid())


@linux_proc
@pytest.mark.parametrize("use_psutil", [True, False], ids=["psutil", "proc"])
def test_tree_sampler_sees_a_childs_past_peak(allocating_child, use_psutil):
    if use_psutil:
        pytest.importorskip("psutil")
    sampler = TreeSampler(use_psutil=use_psutil)
    sampler.sample()
    peak_mib = sampler.peak_kib[allocating_child.pid] / 1024
    assert peak_mib >= 96
    # The block was freed: the current RSS is well under the peak the sampler reports.
    assert proc_status(allocating_child.pid)["VmRSS"] / 1024 < peak_mib - 48
    assert sampler.names[allocating_child.pid].startswith("python")
    assert allocating_child.pid in sampler.workers()
    assert sampler.samples == 1


# --- a measurement in a fresh process ------------------------------------------------------------

CHILD_SCRIPT = textwrap.dedent("""
    import json, sys
    flag, path = sys.argv[1], sys.argv[2]
    job = json.load(open(path))
    if job["fail"]:
        print("something broke in the child", flush=True)
        sys.exit(3)
    json.dump({"flag": flag, "doubled": job["n"] * 2}, open(job["result"], "w"))
""")


def test_run_json_child_returns_what_the_child_wrote(tmp_path):
    script = tmp_path / "child.py"
    script.write_text(CHILD_SCRIPT)
    out = run_json_child(script, "--_child", {"n": 21, "fail": False}, tmp_path, "t1", timeout=60)
    assert out == {"flag": "--_child", "doubled": 42}
    assert json.loads((tmp_path / "t1-job.json").read_text())["n"] == 21


@pytest.mark.parametrize("log", [False, True])
def test_run_json_child_failure_carries_its_output(tmp_path, log):
    script = tmp_path / "child.py"
    script.write_text(CHILD_SCRIPT)
    with pytest.raises(RuntimeError, match=r"child t2 failed \(rc 3\):\nsomething broke in the child"):
        run_json_child(script, "--_child", {"n": 1, "fail": True}, tmp_path, "t2", timeout=60, log=log)


# --- numbers -------------------------------------------------------------------------------------


def test_si():
    assert si(1.73e12) == "1.73 T"
    assert si(4.2e7) == "42.00 M"
    assert si(2.5e9) == "2.50 G"
    assert si(999.4) == "999"
    assert si(float("nan")) == "-" and si(float("inf")) == "-"


def test_mib_and_ratio():
    assert mib(3 * 2**20) == "3.0"
    assert mib(1536 * 2**20) == "1,536.0"
    assert mib(None) == "-"
    assert ratio(3, 2) == "1.50x"
    assert ratio(1, 0) == "-"


# --- synthetic book corpora (benchmarks/synthetic.py, which scaling.py and packing_memory.py share) ---


def test_block_lengths_are_the_lengths_make_blocks_writes(tmp_path):
    import gzip

    import numpy as np

    from benchmarks.synthetic import block_lengths, corpus_of, make_blocks

    paragraphs = [f"paragraph {i} " + "word " * (i % 7) for i in range(50)]
    counts = np.array([3 + i % 7 for i in range(50)], dtype=np.int64)  # stand-in token counts
    blocks = make_blocks(tmp_path, 3, 5, 2, 200, 0.8, 10.0, paragraphs, counts, seed=7)
    # packing_memory.py measures the corpora scaling.py writes, from the lengths alone.
    assert block_lengths(3, 5, 200, 0.8, 10.0, seed=7) == [b["lengths"] for b in blocks]
    assert all(max(b["lengths"]) >= 10.0 * 200 for b in blocks)  # one tail book per block
    c2 = corpus_of(blocks, 2, 200, 10.0)
    assert c2["books"] == 10 and c2["inputs"] == blocks[0]["files"] + blocks[1]["files"]
    with gzip.open(blocks[0]["files"][0], "rt", encoding="utf-8") as fh:
        first = fh.readlines()
    assert first[0].startswith('{"id": "synth-0000-00000", "text": "Synthetic book synth-0000-00000 (seed 7)')
