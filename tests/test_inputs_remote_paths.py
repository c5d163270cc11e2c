"""Inputs and outputs the job's workers cannot reach are one line before the job starts.

- A local --input/--output with a runner whose workers are other machines (DataflowRunner; a
  portable runner's Docker containers) is refused before staging; DirectRunner in any mode keeps
  local paths.
- A gs:// input whose store cannot be reached (nothing listening, a host that does not resolve)
  is one line naming the URL and the cause, after one unretried request, not gcsfs's retries and
  a page of aiohttp traceback. gcsfs is pointed at the endpoint the same way tests/test_gcs.py
  points it at the emulator.
"""

from __future__ import annotations

import os
import socket
import threading

import pytest
from apache_beam.options.pipeline_options import PipelineOptions

os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
gcsfs = pytest.importorskip("gcsfs", reason="gs:// support needs gcsfs")
import fsspec  # noqa: E402

from pipelines.runners import remote_workers  # noqa: E402
from tests.conftest import DEMO_TOKENIZER, cli_error  # noqa: E402

DATAFLOW = ["--runner", "DataflowRunner", "--project", "p", "--region", "us-central1", "--temp_location", "gs://b/tmp"]


def _books(inputs: list[str], output: str, *beam: str) -> list[str]:
    argv = ["books", "--output", output, "--tokenizer", DEMO_TOKENIZER, "--stages", "tiny=4096:0-", *beam]
    for pattern in inputs:
        argv += ["--input", pattern]
    return argv


def _corpus(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.jsonl").write_text('{"id": "a", "text": "hello"}\n')
    return tmp_path / "d"


def test_local_output_on_dataflow_is_refused_before_staging(tmp_path, capsys):
    out = tmp_path / "out"
    lines = cli_error(_books(["gs://b/in/*.jsonl"], str(out), *DATAFLOW), capsys)
    assert lines[-1] == (f"longctx books: error: output '{out}' is a path on this machine, but DataflowRunner's workers "
                         "(Google Cloud machines) cannot see this machine's paths: use a gs:// URL "
                         "(or run with --runner DirectRunner)")
    assert not out.exists()  # refused before the output folder is made


def test_local_input_on_dataflow_is_refused_before_staging(tmp_path, capsys):
    data = _corpus(tmp_path)
    lines = cli_error(_books([str(data)], "gs://b/out", *DATAFLOW), capsys)
    assert lines[-1].startswith(f"longctx books: error: input '{data}' is a path on this machine, but DataflowRunner's")
    lines = cli_error(_books([f"file://{data}/a.jsonl"], "gs://b/out", *DATAFLOW), capsys)
    assert lines[-1].startswith(f"longctx books: error: input 'file://{data}/a.jsonl' is a path on this machine")
    lines = cli_error(_books(["gs://b/in/"], "memory://out", *DATAFLOW), capsys)
    assert lines[-1].startswith("longctx books: error: output 'memory://out' is a path on this machine")


@pytest.mark.parametrize("flags, where", [
    (["--runner=DataflowRunner"], "DataflowRunner's workers (Google Cloud machines)"),
    (["--runner=apache_beam.runners.dataflow.dataflow_runner.DataflowRunner"], "DataflowRunner's workers (Google Cloud machines)"),
    (["--runner=FlinkRunner", "--flink_master=flink.example.com:8081"], "FlinkRunner's workers (Docker containers)"),
    (["--runner=PortableRunner", "--job_endpoint=jobs.example.com:8099"], "PortableRunner's workers (Docker containers)"),
    (["--runner=DirectRunner"], None),
    (["--runner=DirectRunner", "--direct_running_mode=multi_processing"], None),
    (["--runner=DirectRunner", "--direct_running_mode=in_memory"], None),
    (["--runner=FnApiRunner"], None),
    (["--runner=BundleBasedDirectRunner"], None),
    (["--runner=PrismRunner"], None),  # Prism runs its workers here (loopback)
    (["--runner=FlinkRunner"], None),  # a local Flink cluster: loopback too
    (["--runner=DataflowRunner", "--dataflow_endpoint=http://localhost:9999"], None),  # Beam: not the service
])
def test_which_runners_cannot_see_local_paths(flags, where):
    options = PipelineOptions(flags)
    assert remote_workers(options) == where
    assert options.get_all_options(drop_default=True) == PipelineOptions(flags).get_all_options(drop_default=True)


def test_local_paths_still_run_on_the_direct_runner_in_every_mode(tmp_path, sample_books):
    import json

    from longctx.cli import main

    data = _corpus(tmp_path)
    (data / "a.jsonl").write_text(json.dumps({"id": "a", "text": sample_books[0]["text"]}) + "\n")
    for mode in ("in_memory", "multi_processing"):
        out = tmp_path / f"out-{mode}"
        assert main(_books([str(data)], str(out), "--runner", "DirectRunner", "--direct_running_mode", mode,
                           "--direct_num_workers", "1")) == 0
        manifest = json.loads((out / "manifest.json").read_text())
        assert (manifest["read"], manifest["kept"]) == (1, 1)


# --- gs:// that cannot be reached --------------------------------------------------------------


def _unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again: nothing listens there


@pytest.fixture
def gcs_at(monkeypatch):
    """Point gcsfs at an endpoint, as tests/test_gcs.py does for the emulator."""
    def point(endpoint: str) -> None:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", endpoint)
        monkeypatch.setitem(fsspec.config.conf, "gcs", {"endpoint_url": endpoint, "token": "anon", "project": "test"})
        gcsfs.GCSFileSystem.clear_instance_cache()

    yield point
    gcsfs.GCSFileSystem.clear_instance_cache()


@pytest.mark.parametrize("endpoint, cause", [
    ("http://127.0.0.1:{port}", "Cannot connect to host 127.0.0.1:{port}"),
    ("http://storage.example.invalid", "Cannot connect to host storage.example.invalid:80"),  # RFC 6761: never resolves
])
def test_unreachable_gs_input_is_one_line_naming_url_and_cause(tmp_path, capsys, gcs_at, endpoint, cause):
    port = _unused_port()
    gcs_at(endpoint.format(port=port))
    out = tmp_path / "out"
    lines = cli_error(_books(["gs://bkt/in/*.jsonl"], str(out), "--runner", "DirectRunner"), capsys)
    last = lines[-1]
    assert last.startswith("longctx books: error: input 'gs://bkt/in/*.jsonl' cannot be listed: the store does not answer (")
    assert cause.format(port=port) in last
    assert not [line for line in lines if "out of retries" in line or "aiohttp" in line], lines
    assert not out.exists()


def test_a_store_that_drops_connections_gets_one_request_before_the_one_line(tmp_path, capsys, gcs_at):
    """A server that accepts and hangs up at once (a transient failure gcsfs retries six times,
    with backoff, per request): the launcher's check asks once and stops."""
    connections = []
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            connections.append(1)
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        gcs_at(f"http://127.0.0.1:{server.getsockname()[1]}")
        lines = cli_error(_books(["gs://bkt/in/"], str(tmp_path / "out"), "--runner", "DirectRunner"), capsys)
    finally:
        stop.set()
        thread.join()
        server.close()
    assert lines[-1].startswith("longctx books: error: input 'gs://bkt/in/' cannot be listed: the store does not answer (")
    # How the hang-up reaches aiohttp depends on timing: a disconnect, or a reset of the connection.
    assert "ServerDisconnectedError" in lines[-1] or "Connection reset by peer" in lines[-1], lines[-1]
    # One request: aiohttp itself retries an idempotent request once on a fresh connection when
    # the server hangs up before answering; gcsfs's retries would make that 12 connections (and
    # the listing that follows a check would make more).
    assert 1 <= len(connections) <= 3, len(connections)  # (3: a reset may cost one more; still far from 12)


def test_unreachable_decontaminate_set_is_named_as_such(tmp_path, capsys, gcs_at):
    gcs_at(f"http://127.0.0.1:{_unused_port()}")
    data = _corpus(tmp_path)
    lines = cli_error(_books([str(data)], str(tmp_path / "out"), "--decontaminate", "gs://bkt/evals/"), capsys)
    assert lines[-1].startswith("longctx books: error: decontaminate 'gs://bkt/evals/' cannot be listed: the store does not answer")


def test_a_tokenizer_or_model_that_exists_only_here_is_refused_on_dataflow(tmp_path, capsys, monkeypatch):
    """What each worker loads by name (tokenizer, QA model, VQGAN) must exist there too: a local
    file or folder is refused before staging; a package: spec (as in every test above) passes."""
    monkeypatch.chdir(tmp_path)  # relative names: the lines hold no temporary path
    (tmp_path / "tok.model").write_bytes(b"not read: refused first")
    argv = _books(["gs://b/in/*.jsonl"], "gs://b/out", *DATAFLOW)
    argv[argv.index(DEMO_TOKENIZER)] = "tok.model"
    assert cli_error(argv, capsys)[-1] == (
        "longctx books: error: tokenizer 'tok.model' is a path on this machine, but DataflowRunner's workers (Google "
        "Cloud machines) cannot see this machine's paths: use a gs:// URL, a package: spec or a hub id (or run with "
        "--runner DirectRunner)")
    (tmp_path / "model").mkdir()
    qa = ["qa", "--input", "gs://b/in/*.jsonl", "--output", "gs://b/qa", "--tokenizer", DEMO_TOKENIZER, "--stages",
          "tiny=4096:0-", "--backend", "transformers", "--model", "model", *DATAFLOW]
    assert cli_error(qa, capsys)[-1].startswith("longctx qa: error: model 'model' is a path on this machine, but "
                                                "DataflowRunner's workers")
