"""Real gs:// I/O: the book pipeline end to end against a GCS API server started here.

The server is `gcp-storage-emulator` (PyPI), run as a subprocess on 127.0.0.1. The pipeline code is
unchanged: it opens `gs://` URLs with plain fsspec, and gcsfs finds the server through the global
configuration set below (`STORAGE_EMULATOR_HOST` and `fsspec.config.conf["gcs"]`), exactly as it
finds real GCS through credentials in production.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

# Read by gcsfs when it is imported: without it gcsfs probes every bucket's type over gRPC/TLS,
# which the emulator does not speak, and waits 60 s per bucket before falling back.
os.environ["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] = "false"

gcsfs = pytest.importorskip("gcsfs", reason="gs:// support needs gcsfs: pip install -e '.[dev]'")
import gcsfs.retry  # noqa: E402
import fsspec  # noqa: E402

from curation.shards import read_manifest, read_shard, write_bytes_atomic  # noqa: E402
from pipelines.config import BooksConfig  # noqa: E402
from pipelines.launch import run_books  # noqa: E402
from tests.conftest import DEMO_TOKENIZER, SAMPLE_BOOKS, write_corrupt_inputs  # noqa: E402

BUCKET = "longctx-test"
STAGES = ["4k=4096:100000-400000", "small=2048:500-20000"]
IN_MEMORY = ["--runner=DirectRunner", "--direct_running_mode=in_memory"]
START_TIMEOUT_S = 20


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _emulator_command() -> list[str]:
    script = Path(sys.executable).parent / "gcp-storage-emulator"
    if script.exists():
        return [str(script)]
    found = shutil.which("gcp-storage-emulator")
    return [found] if found else [sys.executable, "-m", "gcp_storage_emulator"]


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def wait_for_emulator(proc: subprocess.Popen, endpoint: str, log_path: Path, exited=pytest.fail) -> None:
    """Until the emulator at `endpoint` answers with bucket BUCKET; `exited(reason)` if its process
    stops first, a test failure if it does not answer within START_TIMEOUT_S."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            exited(f"gcp-storage-emulator exited at start (rc={proc.returncode}): {log_path.read_text()[-2000:]}")
        try:  # the port answers and the default bucket exists
            with urllib.request.urlopen(f"{endpoint}/storage/v1/b/{BUCKET}", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"gcp-storage-emulator did not answer within {START_TIMEOUT_S} s: {log_path.read_text()[-2000:]}")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
    """A GCS API server with bucket BUCKET; gcsfs (fsspec's gs://) talks to it. Yields the filesystem."""
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log_path = tmp_path_factory.mktemp("gcs-emulator") / "emulator.log"
    log = open(log_path, "wb")
    cmd = _emulator_command() + ["start", "--host", "127.0.0.1", "--port", str(port), "--in-memory", "--default-bucket", BUCKET]
    try:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    except OSError as err:
        log.close()
        pytest.skip(f"gcp-storage-emulator cannot start ({err}): pip install -e '.[dev]'")
    try:
        wait_for_emulator(proc, endpoint, log_path, exited=pytest.skip)
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("STORAGE_EMULATOR_HOST", endpoint)
            # Global gcsfs defaults: the pipeline opens URLs with plain fsspec.open / url_to_fs.
            mp.setitem(fsspec.config.conf, "gcs", {"endpoint_url": endpoint, "token": "anon", "project": "test"})
            # The emulator answers 501 Not Implemented to objects.moveTo, which gcsfs retries as a
            # transient error (6 tries, ~31 s of backoff) before its own copy+delete fallback. 501 is
            # not transient: make it fail fast so gcsfs falls back at once, as it does on GCS buckets
            # without moveTo. (Without this every write_bytes_atomic takes ~31 s here.)
            mp.setattr(gcsfs.retry, "errs", gcsfs.retry.errs - {501, "501"})
            gcsfs.GCSFileSystem.clear_instance_cache()
            fs, _ = fsspec.core.url_to_fs(f"gs://{BUCKET}/")
            assert type(fs) is gcsfs.GCSFileSystem, type(fs)  # not the experimental ZB/HNS subclass
            assert fs._location == endpoint
            yield fs
            gcsfs.GCSFileSystem.clear_instance_cache()
    finally:
        _stop(proc)
        log.close()


def _objects(fs, prefix: str = "") -> list[str]:
    fs.invalidate_cache()
    return sorted(fs.find(f"{BUCKET}/{prefix}"))


def _hidden(paths: list[str]) -> list[str]:
    return [p for p in paths if "/." in p or ".tmp-" in p]


@pytest.fixture(scope="module")
def gcs_run(gcs, tmp_path_factory, sample_books):
    fs = gcs
    local = tmp_path_factory.mktemp("gcs-inputs")
    expected = write_corrupt_inputs(local, sample_books[0]["text"][:6000])
    shutil.copy(SAMPLE_BOOKS, local / SAMPLE_BOOKS.name)
    for path in sorted(local.iterdir()):
        fs.put_file(str(path), f"{BUCKET}/in/{path.name}")
    uploaded = {p.name for p in local.iterdir()}
    assert {p.rsplit("/", 1)[1] for p in _objects(fs, "in")} == uploaded
    config = BooksConfig.model_validate({
        "inputs": [f"gs://{BUCKET}/in/*"], "output": f"gs://{BUCKET}/out", "tokenizer": DEMO_TOKENIZER,
        "stages": STAGES, "min_tail_tokens": 256,
    })
    start = time.monotonic()
    manifest = run_books(config, IN_MEMORY)
    return manifest, expected, uploaded, time.monotonic() - start


def test_outputs_land_in_the_bucket_and_every_record_is_accounted(gcs, gcs_run):
    fs = gcs
    manifest, expected, uploaded, _ = gcs_run
    out = _objects(fs, "out")
    assert f"{BUCKET}/out/manifest.json" in out
    assert manifest == json.loads(fs.cat_file(f"{BUCKET}/out/manifest.json")) == read_manifest(f"gs://{BUCKET}/out")
    assert fs.glob(f"{BUCKET}/out/4k/train-*.arrow") and fs.glob(f"{BUCKET}/out/small/train-*.arrow")
    reject_files = fs.glob(f"{BUCKET}/out/rejects/*.jsonl")
    assert reject_files and sorted(f"{BUCKET}/out/{r}" for r in manifest["rejects"]) == sorted(reject_files)
    shards = {f"{BUCKET}/out/{s['path']}" for st in manifest["stages"].values() for s in st["shards"]}
    assert set(out) == shards | set(reject_files) | {f"{BUCKET}/out/manifest.json"}  # nothing else, no temporaries

    assert manifest["read"] == manifest["kept"] + manifest["rejected_total"]
    rejects = [json.loads(line) for f in reject_files for line in fs.cat_file(f).decode().splitlines()]
    assert len(rejects) == manifest["rejected_total"]
    by_id = {r["id"]: r["reason"] for r in rejects}
    for record_id, reason in expected.items():
        assert by_id.get(record_id) == reason, record_id
    # Inputs were matched as full gs:// URLs (the readers got URLs they could open).
    assert {r["source"] for r in rejects} <= {f"gs://{BUCKET}/in/{name}" for name in uploaded}
    assert any(r["reason"] == "corrupt_file" and r["source"].endswith("/truncated.jsonl.gz") for r in rejects)
    assert any(r["reason"] == "binary" and r["source"].endswith("/blob.txt") for r in rejects)
    assert manifest["kept"] >= 8  # 7 books + good-1 + the gz records before the cut
    assert manifest["stages"]["4k"]["rows"] > 0 and manifest["stages"]["small"]["rows"] > 0


def test_shards_in_the_bucket_match_the_manifest_and_read_back(gcs, gcs_run, tmp_path):
    fs = gcs
    manifest, _, _, _ = gcs_run
    data_files = []
    for name, stage in manifest["stages"].items():
        tokens = 0
        for shard in stage["shards"]:
            url = f"gs://{BUCKET}/out/{shard['path']}"
            assert hashlib.sha256(fs.cat_file(url)).hexdigest() == shard["sha256"], url
            with fs.open(url, "rb") as fh, pa.ipc.open_stream(fh) as reader:
                table = reader.read_all()
            assert table.num_rows == shard["rows"]
            assert table.schema.field("input_ids").type == pa.list_(pa.int32(), stage["length"])
            assert table.schema.metadata[b"longctx.config_hash"].decode() == manifest["config_hash"]
            view = read_shard(url)
            ids = view.arrays["input_ids"]
            assert ids.shape == (shard["rows"], stage["length"]) and ids.dtype == np.int32
            assert np.array_equal(ids, table.column("input_ids").combine_chunks().flatten().to_numpy().reshape(ids.shape))
            tokens += int((view.arrays["segment_ids"] > 0).sum())
            data_files.append(url)
        assert tokens == stage["tokens"], name

    # Hugging Face datasets reads the same gs:// shards through fsspec (Dataset.from_file takes no URLs).
    import datasets

    ds = datasets.load_dataset("arrow", data_files={"train": data_files[:1]}, split="train", cache_dir=str(tmp_path / "hf"))
    first = manifest["stages"]["4k"]["shards"][0]
    assert len(ds) == first["rows"] and len(ds[0]["input_ids"]) == manifest["stages"]["4k"]["length"]
    assert np.array_equal(np.asarray(ds[0]["input_ids"], dtype=np.int32), read_shard(data_files[0]).arrays["input_ids"][0])


def test_no_hidden_temporary_objects_anywhere(gcs, gcs_run):
    everything = _objects(gcs)
    assert any(p.endswith("/out/manifest.json") for p in everything)
    assert _hidden(everything) == []


class _DroppedConnection(ConnectionError):
    pass


def _fail_final_chunk(monkeypatch, sent: list[int], on_chunk=None):
    """Make the last part of every resumable upload fail, after the earlier parts reached the server."""
    real = gcsfs.core.GCSFile._upload_chunk

    def upload_chunk(self, final=False):
        if final:
            raise _DroppedConnection(f"connection dropped before the last part of {self.path}")
        before = self.offset
        result = real(self, final=final)
        sent.append(self.offset - before)  # bytes the server acknowledged
        if on_chunk:
            on_chunk(self)
        return result

    monkeypatch.setattr(gcsfs.core.GCSFile, "_upload_chunk", upload_chunk)


def _payload(size: int, seed: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()


def test_an_upload_failing_part_way_leaves_no_object(gcs, monkeypatch):
    fs = gcs
    url = f"gs://{BUCKET}/atomic-fail/x.arrow"
    data = _payload(6 * 2**20 + 12345, seed=1)  # over gcsfs's 5 MiB block: a resumable upload in parts
    sent: list[int] = []
    _fail_final_chunk(monkeypatch, sent)
    with pytest.raises(_DroppedConnection):
        write_bytes_atomic(url, data)
    assert sum(sent) >= 5 * 2**20  # megabytes had reached the server when the upload broke
    monkeypatch.undo()
    assert not fs.exists(url)
    assert _objects(fs, "atomic-fail") == []  # neither x.arrow nor a hidden temporary object


def test_replacing_an_object_is_atomic(gcs, monkeypatch):
    fs = gcs
    url = f"gs://{BUCKET}/atomic-replace/x.arrow"
    old, new = _payload(3000, seed=2), _payload(6 * 2**20 + 777, seed=3)
    write_bytes_atomic(url, old)
    assert fs.cat_file(url) == old
    assert _objects(fs, "atomic-replace") == [f"{BUCKET}/atomic-replace/x.arrow"]

    # A replacement that breaks part-way leaves the old object as it was.
    sent: list[int] = []
    _fail_final_chunk(monkeypatch, sent)
    with pytest.raises(_DroppedConnection):
        write_bytes_atomic(url, new)
    monkeypatch.undo()
    assert sum(sent) > 0
    assert fs.cat_file(url) == old
    assert _objects(fs, "atomic-replace") == [f"{BUCKET}/atomic-replace/x.arrow"]

    # A replacement that succeeds: readers see the old bytes while it uploads, then the new ones.
    seen_during_upload: list[bytes] = []
    real_upload = gcsfs.core.GCSFile._upload_chunk

    def upload_chunk(self, final=False):
        result = real_upload(self, final=final)
        if not final:  # once the last part lands, the object is (rightly) the new one
            seen_during_upload.append(fs.cat_file(url))
        return result

    monkeypatch.setattr(gcsfs.core.GCSFile, "_upload_chunk", upload_chunk)
    write_bytes_atomic(url, new)
    monkeypatch.undo()
    assert len(seen_during_upload) >= 1  # at least one part was uploaded before the last
    assert all(seen == old for seen in seen_during_upload)
    assert fs.cat_file(url) == new
    assert _objects(fs, "atomic-replace") == [f"{BUCKET}/atomic-replace/x.arrow"]
