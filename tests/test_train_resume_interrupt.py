"""Ctrl-C during `longctx train`: one line saying after which step the run stopped and which step
checkpoint the same command resumes from, exit status 130, no traceback; the same command resumes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import REPO, write_toy_stage


def _logged(run: Path) -> list[int]:
    path = run / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line)["step"] for line in path.read_text().splitlines() if line.endswith("}")]


def _saved(run: Path) -> list[int]:
    steps = run / "checkpoints" / "steps"
    return sorted(int(p.name) for p in steps.iterdir() if p.name.isdigit()) if steps.is_dir() else []


def test_ctrl_c_ends_in_one_line_and_the_same_command_resumes(tmp_path):
    stage = write_toy_stage(tmp_path / "data", length=64, vocab=1000)
    run = tmp_path / "run"
    argv = [sys.executable, "-m", "longctx", "train", "--data", stage, "--seq-len", "64", "--global-batch", "2",
            "--steps", "100000", "--checkpoint-every", "1", "--mesh", "dp=1,fsdp=1,tp=1,sp=1", "--attention", "dense",
            "--out", str(run)]
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        # After the first step is logged and its checkpoint committed (Orbax renames it into place).
        while not (_logged(run) and _saved(run)) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _logged(run) and _saved(run), "no step was logged and saved"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    lines = [line for line in err.splitlines() if line.strip()]
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]
    saved = _saved(run)
    last = lines[-1]
    done = _logged(run)[-1]
    assert last.startswith(f"longctx: training {run} interrupted after step ") and " of 100000; " in last, last
    stopped = int(last.split("interrupted after step ")[1].split()[0])
    assert stopped >= done >= 1 and saved and saved[-1] <= stopped
    assert f"the same command resumes from step checkpoint {run / 'checkpoints' / 'steps' / str(saved[-1])}" in last
    assert not list((run / "checkpoints" / "steps").glob("*tmp*"))  # no save left half-written

    # The same command (stopping after one more step) resumes from that checkpoint.
    again = subprocess.run([*argv, "--stop-after", "1"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert _logged(run) == list(range(1, saved[-1] + 2))
