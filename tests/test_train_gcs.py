"""A training run on gs://, against a GCS API server started here (`gcp-storage-emulator`, as in
tests/test_gcs.py).

Everything of the run goes to the server through the libraries' own remote support: Orbax's step
and params checkpoints (TensorStore's gcs driver, pointed at the server by TENSORSTORE_GCS_HTTP_URL,
plus etils.epath over gcsfs for Orbax's metadata and commit files) and our config.yaml,
metrics.jsonl, metrics.discarded.jsonl and model.json (etils.epath over gcsfs). The training data
stays local: reading shards from gs:// is the data side's business (tests/test_gcs.py).

One gap of the emulator is filled where it is started: its object downloads lack the
`x-goog-generation` header that GCS sends with every object read. TensorStore's OCDBT format
(Orbax's default) reads its manifest back before each further commit of a save and needs that
generation for the conditional write; without it a save of more than a few arrays fails with
"Malformed StorageGeneration". The launcher adds the header from the emulator's own object record,
nothing else. (The emulator also ignores ifGenerationMatch preconditions; the runs here have one
writer, so no precondition would fail on GCS either.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.conftest import write_toy_stage
from tests.test_gcs import BUCKET, _free_port, _stop, wait_for_emulator
from training import checkpoint as ckpt
from training import run_folder
from training.config import TrainConfig
from training.train import train, truncate_metrics

LENGTH, VOCAB = 64, 1000

# The emulator, with x-goog-generation / x-goog-metageneration on object downloads (see above).
# Handlers are bound when its server module is imported, so the download handler is wrapped first.
_LAUNCHER = """
import sys
from http import HTTPStatus
from gcp_storage_emulator.handlers import objects

_download = objects.download

def download(request, response, storage, *args, **kwargs):
    _download(request, response, storage, *args, **kwargs)
    if response.status in (HTTPStatus.OK, HTTPStatus.PARTIAL_CONTENT):
        obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
        response["x-goog-generation"] = str(obj["generation"])
        response["x-goog-metageneration"] = str(obj["metageneration"])

objects.download = download
from gcp_storage_emulator.server import create_server

create_server("127.0.0.1", int(sys.argv[1]), in_memory=True, default_bucket=sys.argv[2]).run()
"""


@pytest.fixture(scope="module")
def gs(tmp_path_factory):
    """The emulator's gcsfs filesystem; gcsfs, etils.epath and TensorStore all talk to it."""
    pytest.importorskip("gcp_storage_emulator", reason="the GCS emulator: pip install -e '.[dev]'")
    import fsspec
    import gcsfs  # tests.test_gcs imported it (or skipped this module) with gcsfs's bucket probe off
    import gcsfs.retry
    from etils.epath import backend as epath_backend

    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log_path = tmp_path_factory.mktemp("gcs-emulator") / "emulator.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-c", _LAUNCHER, str(port), BUCKET], stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    try:
        wait_for_emulator(proc, endpoint, log_path)
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("STORAGE_EMULATOR_HOST", endpoint)
            # TensorStore's gcs driver (Orbax's arrays) talks to this server instead of storage.googleapis.com.
            mp.setenv("TENSORSTORE_GCS_HTTP_URL", endpoint)
            mp.setitem(fsspec.config.conf, "gcs", {"endpoint_url": endpoint, "token": "anon", "project": "test"})
            mp.setattr(gcsfs.retry, "errs", gcsfs.retry.errs - {501, "501"})  # no moveTo here: see test_gcs.py
            gcsfs.GCSFileSystem.clear_instance_cache()
            # epath keeps one gcsfs instance per process: drop one made for another server.
            epath_backend.fsspec_backend._get_filesystem.cache_clear()
            fs, _ = fsspec.core.url_to_fs(f"gs://{BUCKET}/")
            assert fs._location == endpoint
            yield fs
            gcsfs.GCSFileSystem.clear_instance_cache()
            epath_backend.fsspec_backend._get_filesystem.cache_clear()
    finally:
        _stop(proc)


@pytest.fixture(scope="module")
def stage(tmp_path_factory) -> str:
    return write_toy_stage(tmp_path_factory.mktemp("gcs-train-data"), length=LENGTH, vocab=VOCAB)


def _config(stage: str, out: str, **kw) -> TrainConfig:
    base = dict(data=stage, out=out, seq_len=LENGTH, global_batch=4, steps=8, lr=3e-3, warmup_steps=2,
                mesh="dp=1,fsdp=1,tp=1,sp=1", attention="dense", progress=False, checkpoint_every=2, keep_checkpoints=2,
                model_overrides={"vocab_size": VOCAB, "num_layers": 1})
    return TrainConfig(**{**base, **kw})


def _read(fs, key: str) -> str:
    fs.invalidate_cache()
    return fs.cat_file(f"{BUCKET}/{key}").decode()


def _steps(text: str) -> list[int]:
    return [json.loads(line)["step"] for line in text.splitlines()]


def _step_folders(fs, run: str) -> list[int]:
    fs.invalidate_cache()
    return sorted(int(p.rsplit("/", 1)[-1]) for p in fs.ls(f"{BUCKET}/{run}/checkpoints/steps", detail=False) if p.rsplit("/", 1)[-1].isdigit())


def _params(path: str) -> list[np.ndarray]:
    import jax

    return [np.asarray(x) for x in jax.tree.leaves(ckpt.load_params(path)[1])]


def test_train_resume_roll_back_and_init_from_on_gs(gs, stage, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where Path("gs://...") would have made its local folder "gs:"
    run = f"gs://{BUCKET}/runs/a"
    # The same run locally, uninterrupted: what the gs:// run must reproduce exactly.
    ref = train(_config(stage, str(tmp_path / "ref")))

    first = train(_config(stage, run, stop_after=6))
    assert [h["step"] for h in first["history"]] == [1, 2, 3, 4, 5, 6] and first["run"] == run
    assert not (tmp_path / "gs:").exists() and sorted(os.listdir(tmp_path)) == ["ref"]
    assert _step_folders(gs, "runs/a") == [4, 6]  # saved 2, 4, 6; keep_checkpoints 2 pruned 2 on the bucket
    assert yaml.safe_load(_read(gs, "runs/a/config.yaml")) == _config(stage, run, stop_after=6).model_dump(mode="json")
    assert _steps(_read(gs, "runs/a/metrics.jsonl")) == [1, 2, 3, 4, 5, 6]

    # Resume from the bucket's step 6: the restored state trains 7 and 8 exactly as the local run did.
    second = train(_config(stage, run))
    assert [h["step"] for h in second["history"]] == [7, 8]
    assert [h["loss"] for h in second["history"]] == [h["loss"] for h in ref["history"][6:]]
    assert second["final"] == f"{run}/checkpoints/final"
    assert json.loads(_read(gs, "runs/a/checkpoints/final/model.json")) == ref["model"]
    assert all(np.array_equal(a, b) for a, b in zip(_params(second["final"]), _params(ref["final"]), strict=True))
    assert _steps(_read(gs, "runs/a/metrics.jsonl")) == list(range(1, 9))

    # A damaged JSON file of a step checkpoint on the bucket is named, with the way back.
    gs.pipe_file(f"{BUCKET}/runs/a/checkpoints/steps/8/state/_METADATA", b"{not json")
    with pytest.raises(ckpt.CheckpointError, match=r"steps/8 cannot be read: state/_METADATA is damaged .*--resume-step 6"):
        train(_config(stage, run))

    # resume_step 6 moves step 8 and the final params aside on the bucket (copied, then deleted),
    # retrains 7 and 8, and moves their first metrics lines to metrics.discarded.jsonl.
    third = train(_config(stage, run, resume_step=6))
    assert [h["loss"] for h in third["history"]] == [h["loss"] for h in ref["history"][6:]]
    assert _read(gs, "runs/a/checkpoints/set-aside/after-6/8/state/_METADATA") == "{not json"
    assert json.loads(_read(gs, "runs/a/checkpoints/set-aside/after-6/final/model.json")) == ref["model"]
    assert _step_folders(gs, "runs/a") == [6, 8]
    assert _steps(_read(gs, "runs/a/metrics.jsonl")) == list(range(1, 9))
    assert _steps(_read(gs, "runs/a/metrics.discarded.jsonl")) == [7, 8]
    # The same command again: the run is done, nothing rolls back a second time.
    again = train(_config(stage, run, resume_step=6))
    assert again["steps"] == 8 and again["history"] == [] and _steps(_read(gs, "runs/a/metrics.jsonl")) == list(range(1, 9))

    # The next stage starts from the bucket's final params (model.json and arrays read from gs://),
    # exactly as from the local run's.
    nxt = train(_config(stage, f"gs://{BUCKET}/runs/b", steps=1, init_from=f"{run}/checkpoints/final"))
    local = train(_config(stage, str(tmp_path / "next"), steps=1, init_from=ref["final"]))
    assert nxt["history"][0]["loss"] == local["history"][0]["loss"] != ref["history"][0]["loss"]
    assert _steps(_read(gs, "runs/b/metrics.jsonl")) == [1]


def test_metrics_on_a_bucket_are_rewritten_at_each_flush(gs):
    path = run_folder.run_path(f"gs://{BUCKET}/metrics-log/metrics.jsonl")
    gs.pipe_file(f"{BUCKET}/metrics-log/metrics.jsonl", b'{"step": 1}\n')
    with run_folder.MetricsLog(path) as log:
        log.write({"step": 2})
        log.write({"step": 3})
        assert _read(gs, "metrics-log/metrics.jsonl") == '{"step": 1}\n'  # objects cannot append: kept until a flush
        log.flush()  # the trainer flushes at each step checkpoint
        assert _steps(_read(gs, "metrics-log/metrics.jsonl")) == [1, 2, 3]
        log.write({"step": 4})
    assert _steps(_read(gs, "metrics-log/metrics.jsonl")) == [1, 2, 3, 4]  # and at the end
    with run_folder.MetricsLog(path, enabled=False) as log:  # processes other than 0 write nothing
        log.write({"step": 5})
    assert _steps(_read(gs, "metrics-log/metrics.jsonl")) == [1, 2, 3, 4]


def test_metrics_on_a_bucket_are_cut_back_to_the_restored_step(gs):
    lines = [json.dumps({"step": s, "loss": 1.0}) for s in range(1, 7)]
    gs.pipe_file(f"{BUCKET}/cut/metrics.jsonl", ("\n".join(lines) + '\n{"step": 7, "lo').encode())  # killed mid-line
    gs.pipe_file(f"{BUCKET}/cut/metrics.discarded.jsonl", b'{"step": 9}\n')  # from an earlier resume
    path = run_folder.run_path(f"gs://{BUCKET}/cut/metrics.jsonl")
    assert truncate_metrics(path, 4) == 3
    assert _read(gs, "cut/metrics.jsonl") == "".join(line + "\n" for line in lines[:4])
    assert _read(gs, "cut/metrics.discarded.jsonl") == '{"step": 9}\n' + lines[4] + "\n" + lines[5] + "\n" + '{"step": 7, "lo\n'
    assert truncate_metrics(path, 4) == 0 and truncate_metrics(run_folder.run_path(f"gs://{BUCKET}/cut/none.jsonl"), 0) == 0


def test_an_unsupported_url_is_refused_not_made_a_local_folder(stage, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(run_folder.RunFolderError, match=r"^out memory://runs/a: memory:// is not supported here; "
                                                        r"use a local path or gs://, s3://, az://, hf://$"):
        train(_config(stage, "memory://runs/a"))
    assert os.listdir(tmp_path) == []
    assert run_folder.run_path(f"file://{tmp_path}/x") == tmp_path / "x"
    assert run_folder.run_path("runs/x") == Path("runs/x") and str(run_folder.run_path("gs://b/runs/x")) == "gs://b/runs/x"
