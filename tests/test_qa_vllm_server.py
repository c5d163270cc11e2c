"""The vLLM backend against a stand-in for its one external border: the vLLM server process.

Beam's handler starts `python -m vllm.entrypoints.openai.api_server --model M --port P ...` and
talks to it over HTTP with the `openai` client. vLLM needs a GPU, so here that module is a small
stdlib HTTP server speaking the same OpenAI API (found first on PYTHONPATH); everything on our side
of the border runs as is: Beam's handler starts the process, waits for /v1/models, and sends the
requests our pipeline builds. The server records each request, so the tests assert on exactly
what a real vLLM server would receive.
"""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest

from pipelines.config import QAConfig
from pipelines.launch import run_qa
from pipelines.qa import BuildQAShards, ToExample
from pipelines.qa_backends import completion_text, make_handler
from qa_synth.chunking import Chunk
from qa_synth.prompts import DEFAULT_TEMPLATE, PromptTemplate
from tests.conftest import DEMO_TOKENIZER

try:
    from apache_beam.ml.inference import vllm_inference
except ImportError as err:  # openai missing
    pytest.skip(f"apache_beam.ml.inference.vllm_inference cannot be imported ({err})", allow_module_level=True)

MODEL = "Qwen/Qwen2.5-7B-Instruct"

# The stand-in server: the OpenAI routes Beam's handlers use. A chat request is answered with a
# QA pair built from the passage in the prompt (so it validates); the completions route exists
# too, answering "not a chat request", so a handler that sends raw prompts is caught by the tests.
FAKE_SERVER = textwrap.dedent('''
    import json, os, sys, threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    argv = sys.argv[1:]
    model = argv[argv.index("--model") + 1]
    port = int(argv[argv.index("--port") + 1])
    log = os.environ["FAKE_VLLM_LOG"]
    lock = threading.Lock()

    def record(entry):
        with lock, open(log, "a") as fh:
            fh.write(json.dumps(entry) + "\\n")

    record({"argv": argv})

    def answer(prompt):
        passage = prompt.split("Passage:\\n", 1)[-1].split("\\n\\n", 1)[0]
        words = passage.split()
        return json.dumps({"question": "Which words open the passage " + " ".join(words[4:9]) + "?",
                           "answer": " ".join(words[:3])})

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def reply(self, status, body):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path == "/v1/models":
                return self.reply(200, {"object": "list", "data": [
                    {"id": model, "object": "model", "created": 0, "owned_by": "vllm"}]})
            self.reply(404, {"error": {"message": "not found"}})

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            record({"path": self.path, "body": body})
            if self.path == "/v1/chat/completions":
                content = answer(body["messages"][-1]["content"])
                return self.reply(200, {
                    "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": body["model"],
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": content}}]})
            if self.path == "/v1/completions":
                return self.reply(200, {
                    "id": "cmpl-1", "object": "text_completion", "created": 0, "model": body["model"],
                    "choices": [{"index": 0, "finish_reason": "stop", "text": "not a chat request"}]})
            self.reply(404, {"error": {"message": "not found"}})

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Timer(120, server.shutdown).start()  # never outlives a stuck test
    server.serve_forever()
''')


@pytest.fixture
def fake_vllm(tmp_path, monkeypatch):
    """Puts the stand-in `vllm.entrypoints.openai.api_server` first on the server process's path;
    returns a function reading back what the server recorded."""
    root = tmp_path / "fake-vllm"
    package = root / "vllm" / "entrypoints" / "openai"
    package.mkdir(parents=True)
    for folder in (root / "vllm", root / "vllm" / "entrypoints", package):
        (folder / "__init__.py").write_text("")
    (package / "api_server.py").write_text(FAKE_SERVER)
    log = tmp_path / "requests.jsonl"
    monkeypatch.setenv("PYTHONPATH", str(root))
    monkeypatch.setenv("FAKE_VLLM_LOG", str(log))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    started = []
    real_start = vllm_inference.start_process

    def start_and_track(cmd):
        process, port = real_start(cmd)
        started.append(process)
        return process, port

    monkeypatch.setattr(vllm_inference, "start_process", start_and_track)

    def recorded() -> list[dict]:
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

    yield recorded
    for process in started:  # the server processes this test started, and only those
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=10)


PASSAGE = ("Emma Woodhouse, handsome, clever, and rich, with a comfortable home and happy disposition, "
           "seemed to unite some of the best blessings of existence.")


def test_the_vllm_handler_sends_each_prompt_as_one_chat_turn(fake_vllm, tmp_path):
    """What reaches the server: the rendered prompt as the single user message of a chat request
    (so vLLM applies the generator's chat template), the model name and the sampling arguments;
    the server was started with our model and server flags."""
    config = QAConfig.model_validate({
        "inputs": ["x"], "output": str(tmp_path / "out"), "tokenizer": DEMO_TOKENIZER, "backend": "vllm",
        "model": MODEL, "max_new_tokens": 64, "temperature": 0.7,
        "vllm_server_kwargs": {"max-model-len": "8192", "gpu-memory-utilization": "0.85"},
    })
    job = BuildQAShards(config, {})
    handler = make_handler(config.backend, config.model, **job._handler_kwargs())
    chunk = Chunk("emma", "in.jsonl#0", 0, 1, np.arange(3, dtype=np.int32), PASSAGE)
    ((key, example),) = ToExample("vllm", DEFAULT_TEMPLATE).process(("in.jsonl", chunk))
    assert key == ("in.jsonl", chunk)

    server = handler.load_model()
    (result,) = handler.run_inference([example], server, job._inference_args())

    argv, request = fake_vllm()
    assert argv["argv"] == ["--model", MODEL, "--port", argv["argv"][3], "--max-model-len", "8192",
                            "--gpu-memory-utilization", "0.85"]
    assert request["path"] == "/v1/chat/completions"
    assert request["body"] == {
        "model": MODEL, "max_tokens": 64, "temperature": 0.7,
        "messages": [{"role": "user", "content": PromptTemplate(DEFAULT_TEMPLATE).render(PASSAGE)}],
    }
    assert json.loads(completion_text(result.inference)) == {
        "question": "Which words open the passage and rich, with a comfortable?", "answer": "Emma Woodhouse, handsome,"}


def test_a_chat_template_file_reaches_the_server(fake_vllm, tmp_path, monkeypatch):
    """`vllm_chat_template` (for a generator without one) becomes the server's --chat-template."""
    template = tmp_path / "template.jinja"
    template.write_text("{% for m in messages %}{{ m.content }}{% endfor %}")
    monkeypatch.chdir(tmp_path)  # Beam copies the template into the working folder
    config = QAConfig.model_validate({"inputs": ["x"], "output": "o", "tokenizer": DEMO_TOKENIZER, "backend": "vllm",
                                      "model": MODEL, "vllm_chat_template": str(template)})
    handler = make_handler(config.backend, config.model, **BuildQAShards(config, {})._handler_kwargs())
    handler.load_model()
    (argv,) = fake_vllm()
    flag = argv["argv"].index("--chat_template")
    assert open(argv["argv"][flag + 1]).read() == template.read_text()
    assert config.vllm_server_kwargs == {}  # the config's own dict is not changed by Beam


def test_qa_job_with_the_vllm_backend_end_to_end(fake_vllm, tmp_path, sample_books):
    """The whole QA job on DirectRunner with backend vllm: every chunk goes to the server as a
    chat turn, every answer comes back into the shards."""
    book = sample_books[3]
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "book.jsonl").write_text(json.dumps({"id": "b", "text": book["text"][:20_000]}) + "\n")
    config = QAConfig.model_validate({
        "inputs": [str(tmp_path / "in")], "output": str(tmp_path / "out"), "tokenizer": DEMO_TOKENIZER,
        "stages": ["q4k=4096:0-"], "backend": "vllm", "model": MODEL, "max_new_tokens": 64,
    })
    manifest = run_qa(config, ["--runner=DirectRunner", "--direct_running_mode=in_memory"])
    requests = [r for r in fake_vllm() if "path" in r]
    assert {r["path"] for r in requests} == {"/v1/chat/completions"}
    assert len(requests) == manifest["chunks"]["read"] > 2
    assert all(len(r["body"]["messages"]) == 1 and r["body"]["messages"][0]["role"] == "user" for r in requests)
    assert manifest["read"] == manifest["kept"] == 1
    assert manifest["chunks"]["accepted"] == manifest["chunks"]["read"]

