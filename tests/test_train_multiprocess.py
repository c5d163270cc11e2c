"""Multi-process training on one CPU machine: two processes of 4 devices each make one 8-device
mesh whose sequence axis spans both, and train exactly as one process with 8 devices does; a
two-process run rolled back and resumed continues exactly; a job missing a process fails in one line.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from training.config import TrainConfig
from training.data import BatchIterator, GlobalRows, StageData, _piece_positions, global_arrays
from training.distributed import DistributedConfigError, check_settings, detected_cluster, timeout_message, wants_distributed
from training.mesh import make_mesh
from training.train import train

REPO = Path(__file__).resolve().parents[1]
SPANNING_MESH = "dp=1,fsdp=1,tp=1,sp=8"  # sp innermost over devices ordered by process: 0-3 | 4-7

# Each process trains, then says what it saw: its losses and which processes each sp ring spans.
DRIVER = """
import json, sys
import jax
from training.config import TrainConfig
from training.mesh import make_mesh
from training.train import train
config = TrainConfig.model_validate_json(sys.argv[1])
result = train(config)
mesh = make_mesh(config.mesh)
rings = mesh.devices.reshape(-1, mesh.shape["sp"])
with open(sys.argv[2], "w") as fh:
    json.dump({"losses": [h["loss"] for h in result["history"]], "steps": result["steps"],
               "process_index": jax.process_index(), "process_count": jax.process_count(),
               "local_devices": jax.local_device_count(),
               "ring_processes": [sorted({d.process_index for d in ring}) for ring in rings]}, fh)
"""


def _config(shards: Path, out: Path, **kw) -> TrainConfig:
    base = dict(data=str(shards / "s128"), out=str(out), seq_len=128, global_batch=2, steps=4, lr=3e-3, warmup_steps=1,
                mesh=SPANNING_MESH, attention="ring", q_chunk=16, kv_chunk=16, progress=False, checkpoint_every=2, seed=1)
    base.update(kw)
    return TrainConfig(**base)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env() -> dict[str, str]:
    return {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}


def _kill(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _logs(paths: list[Path]) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()[-4000:]}" for p in paths if p.exists())


def _run_two(config: TrainConfig, tmp: Path, name: str, meanwhile=None, timeout: float = 240) -> list[dict]:
    """Train `config` as a job of two processes (4 devices each); each one's report. `meanwhile`
    runs here while they train (they spend much of their time waiting on each other)."""
    port = _free_port()
    procs, logs, reports = [], [], []
    try:
        for pid in range(2):
            cfg = config.model_copy(update=dict(coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=pid,
                                                initialization_timeout=60))
            logs.append(tmp / f"{name}-{pid}.log")
            reports.append(tmp / f"{name}-{pid}.json")
            with logs[-1].open("w") as log:
                procs.append(subprocess.Popen([sys.executable, "-c", DRIVER, cfg.model_dump_json(), str(reports[-1])], cwd=REPO,
                                              env=_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        if meanwhile is not None:
            meanwhile()
        for proc in procs:
            proc.wait(timeout=timeout)
        codes = [p.returncode for p in procs]
        assert codes == [0, 0], f"exit codes {codes}\n{_logs(logs)}"
        return [json.loads(r.read_text()) for r in reports]
    except BaseException:
        print(_logs(logs))
        raise
    finally:
        _kill(procs)


@pytest.fixture(scope="module")
def two_process_run(book_shards, tmp_path_factory):
    """(config, folder, the two processes' reports, the same run's history on one process of 8 devices)."""
    tmp = tmp_path_factory.mktemp("multiprocess")
    config = _config(book_shards, tmp / "run")
    single = {}
    reports = _run_two(config, tmp, "straight", meanwhile=lambda: single.update(train(_config(book_shards, tmp / "single"))))
    return config, tmp, reports, single["history"]


def test_two_processes_with_a_spanning_sequence_axis_train_like_one(two_process_run):
    config, tmp, reports, single = two_process_run
    assert [r["process_index"] for r in reports] == [0, 1]
    assert all(r["process_count"] == 2 and r["local_devices"] == 4 for r in reports)
    assert all(r["ring_processes"] == [[0, 1]] for r in reports)  # the sp ring really crosses processes
    assert reports[0]["losses"] == reports[1]["losses"] and reports[0]["steps"] == 4
    assert len(jax.devices()) == 8 and jax.process_count() == 1  # the reference: one process, 8 devices
    np.testing.assert_allclose(reports[0]["losses"], [h["loss"] for h in single], rtol=1e-5)
    run = Path(config.out)
    # One writer for the run's own files: one line per step, not one per process.
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4]
    assert (run / "config.yaml").is_file() and (run / "checkpoints" / "final" / "model.json").is_file()
    assert sorted(p.name for p in (run / "checkpoints" / "steps").iterdir()) == ["2", "4"]


def test_two_process_run_resumed_under_two_processes_continues_exactly(two_process_run):
    config, tmp, straight, _ = two_process_run
    # Back to step 2 (later checkpoints set aside by process 0 behind a barrier), then on to 4.
    resumed = _run_two(config.model_copy(update=dict(resume_step=2)), tmp, "resumed")
    assert resumed[0]["losses"] == resumed[1]["losses"] == straight[0]["losses"][2:]
    run = Path(config.out)
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4]
    assert (run / "checkpoints" / "set-aside" / "after-2" / "4").is_dir()


def test_a_missing_process_fails_in_one_line_naming_the_coordinator(book_shards, tmp_path):
    port = _free_port()
    log = tmp_path / "alone.log"
    argv = [sys.executable, "-m", "longctx", "train", "--data", str(book_shards / "s128"), "--out", str(tmp_path / "run"),
            "--seq-len", "128", "--mesh", SPANNING_MESH, "--coordinator-address", f"127.0.0.1:{port}",
            "--num-processes", "2", "--process-id", "0", "--initialization-timeout", "10", "--no-progress"]
    with log.open("w") as out:
        proc = subprocess.Popen(argv, cwd=REPO, env=_env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        code = proc.wait(timeout=120)
    finally:
        _kill([proc])
    text = log.read_text()
    lines = [line for line in text.splitlines() if "multi-process start timed out" in line]
    assert code == 1 and len(lines) == 1, text
    assert f"127.0.0.1:{port}" in lines[0] and "process 0 of 2" in lines[0] and "after 10 s" in lines[0]
    assert "Check failure" not in text  # JAX's own abort (a C++ stack dump) never comes


def test_each_piece_of_a_global_batch_is_the_batch_sliced_for_any_mesh(book_shards):
    data = StageData.open(str(book_shards / "s128"))
    rows = BatchIterator(data, 8, seed=2).next_rows()
    whole = rows.read()
    for spec in ("dp=2,fsdp=2,tp=1,sp=2", "dp=1,fsdp=2,tp=2,sp=2", "dp=1,fsdp=1,tp=1,sp=8", "dp=4,fsdp=1,tp=2,sp=1"):
        mesh = make_mesh(spec)
        sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, ("dp", "fsdp"), "sp"))
        arrays = global_arrays(rows, sharding, accum=2)
        for name, value in whole.items():
            assert np.array_equal(np.asarray(arrays[name]), value.reshape(2, 4, -1)), (spec, name)
    # Micro-batch a of a step holds the a-th consecutive slice of the rows; a piece is a block of it.
    assert _piece_positions((slice(1, 2), slice(0, 2), slice(None)), accum=2, micro=4).tolist() == [4, 5]
    cut = rows.read(np.array([6, 1]), slice(32, 48))
    assert np.array_equal(cut["input_ids"], whole["input_ids"][[6, 1], 32:48])


def test_mixture_rows_read_like_the_mixture_batch(book_shards):
    from training.data import MixtureIterator

    a, b = StageData.open(str(book_shards / "s128")), StageData.open(str(book_shards / "s128"))
    named = MixtureIterator([(a, 0.75), (b, 0.25)], 8, seed=3).next_rows()
    assert isinstance(named, GlobalRows) and sorted(set(named.picks[:, 0].tolist())) == [0, 1]
    batch = named.read()
    # Row k of the batch is row picks[k] of its source, read alone.
    for k, (source, row) in enumerate(named.picks):
        alone = (a, b)[source].rows(np.array([row]))
        assert all(np.array_equal(batch[name][k], alone[name][0]) for name in batch)


@pytest.mark.parametrize(("env", "cluster"), [
    ({}, None),
    ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}, None),
    ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4"}, "SLURM"),
    ({"TPU_WORKER_HOSTNAMES": "localhost"}, None),
    ({"TPU_WORKER_HOSTNAMES": "10.0.0.2,10.0.0.3"}, "TPU pod"),
    ({"TPU_WORKER_HOSTNAMES": "WARNING: could not determine TPU worker hostnames or IP addresses, please set it"}, None),
    ({"OMPI_COMM_WORLD_SIZE": "2"}, "Open MPI"),
])
def test_clusters_are_detected_from_their_environment(env, cluster):
    assert detected_cluster(env) == cluster
    assert wants_distributed("auto", None, None, None, env) is (cluster is not None)
    assert wants_distributed("off", None, None, None, {"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4"}) is False
    assert wants_distributed("on", None, None, None, {}) is True
    assert wants_distributed("auto", None, 2, 0, {}) is True and wants_distributed("auto", None, 1, None, {}) is False


def test_timeout_message_is_one_line_naming_the_coordinator():
    message = timeout_message("10.1.2.3:1234", 4, 3, 30)
    assert "\n" not in message and "10.1.2.3:1234" in message and "process 3 of 4" in message and "30 s" in message


@pytest.mark.parametrize(("kw", "error"), [
    (dict(num_processes=2, process_id=2), "process_id 2 must be in 0..1"),
    (dict(num_processes=0), "num_processes 0 must be >= 1"),
    (dict(coordinator_address="10.0.0.2"), "must be HOST:PORT"),
    (dict(timeout_s=0), "initialization_timeout 0 must be >= 1"),
])
def test_settings_that_name_no_process_are_refused_before_connecting(kw, error):
    args = dict(coordinator_address=None, num_processes=None, process_id=None, timeout_s=10) | kw
    with pytest.raises(DistributedConfigError, match=error):
        check_settings(**args)
