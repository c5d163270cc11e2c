"""The OpenAI-compatible completions backend (evals/endpoint.py): the request we build, the answers
we parse, and `longctx eval ruler / niah --endpoint` against a stub server on 127.0.0.1 that answers
from the prompt text alone (the oracle of tests/test_evals_oracle.py)."""

from __future__ import annotations

import argparse
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from rich.console import Console

from evals.endpoint import EndpointClient, api_url, completion_request, parse_completion, parse_models
from evals.generators import load_niah_tokenizer
from evals.niah_cli import add_niah_arguments, run_niah
from evals.runner import read_results
from evals.ruler_cli import add_ruler_arguments, run_ruler
from tests.conftest import DEMO_TOKENIZER
from tests.test_evals_oracle import oracle


def test_request_building():
    url, headers, body = completion_request("http://127.0.0.1:8000/", "smol", "Hello\nthere", 32)
    assert url == "http://127.0.0.1:8000/v1/completions"
    assert headers == {"Content-Type": "application/json"}
    assert json.loads(body) == {"model": "smol", "prompt": "Hello\nthere", "max_tokens": 32, "temperature": 0.0}
    url, headers, body = completion_request("https://h/v1", "m", "p", 4, api_key="sk-1", stop=["\n"])
    assert url == "https://h/v1/completions" and headers["Authorization"] == "Bearer sk-1"
    assert json.loads(body)["stop"] == ["\n"]
    assert api_url("http://h:1/v1/", "models") == "http://h:1/v1/models"
    with pytest.raises(ValueError, match="must be an http"):
        completion_request("127.0.0.1:8000", "m", "p", 4)
    with pytest.raises(ValueError, match="max_tokens"):
        completion_request("http://h", "m", "p", 0)


def test_response_parsing():
    assert parse_completion(json.dumps({"choices": [{"text": " 1234567", "index": 0}]})) == " 1234567"
    with pytest.raises(ValueError, match="endpoint error: model not found"):
        parse_completion(json.dumps({"error": {"message": "model not found"}}))
    with pytest.raises(ValueError, match="no choices"):
        parse_completion(json.dumps({"choices": []}))
    with pytest.raises(ValueError, match="not JSON"):
        parse_completion(b"<html>")
    assert parse_models(json.dumps({"data": [{"id": "a"}, {"id": "b"}]})) == ["a", "b"]


class Stub:
    """A completions server answering each prompt with `answer(prompt)`; it records every request."""

    def __init__(self, answer, models=("stub-model",), key: str | None = None):
        self.requests: list[dict] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet test output
                pass

            def reply(self, code: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if self.path == "/v1/models":
                    self.reply(200, {"data": [{"id": m} for m in models]})
                else:
                    self.reply(404, {"error": {"message": f"no route {self.path}"}})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stub.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), **body})
                if key and self.headers.get("Authorization") != f"Bearer {key}":
                    self.reply(401, {"error": {"message": "bad key"}})
                elif self.path != "/v1/completions":
                    self.reply(404, {"error": {"message": f"no route {self.path}"}})
                else:
                    self.reply(200, {"choices": [{"text": answer(body["prompt"]), "index": 0}]})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def test_client_against_stub(monkeypatch):
    with Stub(lambda p: p.upper(), models=("a", "b"), key="sk-9") as stub:
        with pytest.raises(ValueError, match="serves 2 models"):
            EndpointClient(stub.url)
        client = EndpointClient(stub.url + "/v1", "a", api_key="sk-9")
        assert client.complete("abc", 5) == "ABC"
        assert stub.requests[-1] == {"path": "/v1/completions", "auth": "Bearer sk-9", "model": "a", "prompt": "abc",
                                     "max_tokens": 5, "temperature": 0.0}
        with pytest.raises(ValueError, match="HTTP 401: endpoint error: bad key"):
            EndpointClient(stub.url, "a").complete("abc", 5)
    with pytest.raises(ValueError, match="unreachable"):
        EndpointClient(stub.url, "a", timeout=5).complete("abc", 5)  # the server is gone


def ruler_args(argv):
    parser = argparse.ArgumentParser()
    add_ruler_arguments(parser)
    return parser.parse_args(argv)


def test_eval_ruler_through_endpoint(tmp_path, monkeypatch):
    tokenizer = load_niah_tokenizer(DEMO_TOKENIZER)
    tasks = ("niah_single_1", "niah_multikey_2", "vt", "fwe")

    current = [""]  # the task being run: the stub applies its oracle

    def answer(prompt: str) -> str:
        return oracle(current[0], prompt)

    out = tmp_path / "ruler"
    monkeypatch.setenv("STUB_KEY", "sk-2")
    with Stub(answer, key="sk-2") as stub:
        for name in tasks:  # one task per run, so the stub knows which oracle to apply
            current[0] = name
            argv = ["--endpoint", stub.url, "--api-key-env", "STUB_KEY", "--tokenizer", DEMO_TOKENIZER, "--tasks",
                    name, "--lengths", "1024", "--samples", "2", "--out", str(out / name)]
            assert run_ruler(ruler_args(argv), Console(record=True, width=140)) == 0
            summary = json.loads((out / name / "summary.json").read_text())
            assert summary["tasks"] == {name: {"1024": 100.0}} and summary["model"] == "stub-model"
            for record in read_results(out / name / "results.jsonl"):
                assert record["model"] == "stub-model" and record["score"] == 1.0
    # What was sent: the whole prompt as text (the frame's head included, BOS left to the server),
    # the task's answer budget, greedy.
    assert len(stub.requests) == 2 * len(tasks)
    for request in stub.requests:
        assert request["auth"] == "Bearer sk-2" and request["temperature"] == 0.0 and request["model"] == "stub-model"
        ids = tokenizer.encode(request["prompt"])
        assert 1024 - 200 <= len(ids) <= 1024 and not request["prompt"].startswith("<s>")
    assert {r["max_tokens"] for r in stub.requests} == {128, 30, 50}
    with pytest.raises(ValueError, match="--endpoint needs --tokenizer"):
        run_ruler(ruler_args(["--endpoint", "http://127.0.0.1:9", "--tasks", "vt", "--out", str(tmp_path / "x")]),
                  Console(record=True))
    with pytest.raises(ValueError, match="NO_SUCH_VAR_EVALS3: that environment variable is not set"):
        run_ruler(ruler_args(["--endpoint", "http://127.0.0.1:9", "--api-key-env", "NO_SUCH_VAR_EVALS3", "--tokenizer",
                              DEMO_TOKENIZER, "--tasks", "vt", "--out", str(tmp_path / "x")]), Console(record=True))


def test_eval_niah_through_endpoint(tmp_path):
    parser = argparse.ArgumentParser()
    add_niah_arguments(parser)
    with Stub(lambda prompt: " 1234567") as stub:
        args = parser.parse_args(["--endpoint", stub.url, "--endpoint-model", "stub-model", "--tokenizer",
                                  DEMO_TOKENIZER, "--lengths", "512,1k", "--depths", "0,50", "--out",
                                  str(tmp_path / "niah")])
        assert run_niah(args, Console(record=True, width=140)) == 0
    records = [json.loads(line) for line in (tmp_path / "niah" / "results.jsonl").read_text().splitlines()]
    assert len(records) == 4 == len(stub.requests)
    assert all("1234567" in r["answer"] for r in records)
    assert all(r["model"] == "stub-model" for r in records)
    assert (tmp_path / "niah" / "heatmap.png").stat().st_size > 0
