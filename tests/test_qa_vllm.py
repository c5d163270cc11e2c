"""The vLLM backend, without vLLM: Beam's handler is built and wired into the QA graph, and the
OpenAI response objects it returns are read back. No server is started here (tests/test_qa_vllm_server.py runs
the handler against a stand-in server process).

Beam's `apache_beam.ml.inference.vllm_inference` imports `openai` at import time (the `dev` and
`vllm` extras install it); vllm itself is only needed on the workers that start the server.
"""

from __future__ import annotations

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.ml.inference.base import (
    KeyedModelHandler,
    PredictionResult,
    RunInference,
)

from pipelines.config import QAConfig
from pipelines.launch import shard_metadata
from pipelines.qa import BuildQAShards, ValidateQA
from pipelines.qa_backends import completion_text, make_handler
from qa_synth.chunking import Chunk
from qa_synth.parse import parse_qa
from tests.conftest import DEMO_TOKENIZER

try:
    from apache_beam.ml.inference import vllm_inference
except ImportError as err:  # openai missing: nothing here can be checked
    pytest.skip(f"apache_beam.ml.inference.vllm_inference cannot be imported ({err}); "
                "pip install 'openai>=1.0' (the dev extra)", allow_module_level=True)

# vllm_inference imported, so openai is installed.
from openai.types import Completion, CompletionChoice
from openai.types.chat import ChatCompletion, ChatCompletionMessage
from openai.types.chat.chat_completion import Choice as ChatChoice

MODEL = "Qwen/Qwen2.5-7B-Instruct"
SERVER_KWARGS = {"max-model-len": "8192", "gpu-memory-utilization": "0.85", "max-num-seqs": "64"}
PASSAGE = "Emma Woodhouse, handsome, clever, and rich, lived at Hartfield with her father, Mr. Woodhouse."
ANSWER_JSON = '{"question": "Where did Emma Woodhouse live?", "answer": "at Hartfield"}'


@pytest.fixture(autouse=True)
def no_server(monkeypatch):
    """Building handlers and graphs must never start a vLLM server."""
    def refuse(self):
        raise AssertionError("a vLLM server was started")

    monkeypatch.setattr(vllm_inference._VLLMModelServer, "start_server", refuse)


def vllm_config(tmp_path, **overrides) -> QAConfig:
    return QAConfig.model_validate({
        "inputs": [str(tmp_path / "in")], "output": str(tmp_path / "out"), "tokenizer": DEMO_TOKENIZER,
        "stages": ["q4k=4096:0-"], "backend": "vllm", "model": MODEL, "temperature": 0.7,
        "max_new_tokens": 64, "vllm_server_kwargs": SERVER_KWARGS, **overrides,
    })


def assert_beam_vllm_handler(handler, model: str, server_kwargs: dict) -> None:
    # The chat handler: the server applies the generator's chat template to every prompt.
    assert isinstance(handler, vllm_inference.VLLMChatModelHandler)
    assert handler._model_name == model
    assert handler._vllm_server_kwargs == server_kwargs
    assert handler._use_dynamo is False
    assert handler.share_model_across_processes()  # one server per worker, shared by its processes


# --- make_handler -----------------------------------------------------------------------------------


def test_make_handler_builds_beams_vllm_handler_with_our_model_and_server_kwargs():
    handler = make_handler("vllm", MODEL, server_kwargs=dict(SERVER_KWARGS))
    assert_beam_vllm_handler(handler, MODEL, SERVER_KWARGS)
    # Completion parameters travel as inference args; Beam's handler must accept them.
    handler.validate_inference_args({"max_tokens": 64, "temperature": 0.7})


def test_make_handler_vllm_defaults_and_errors():
    assert_beam_vllm_handler(make_handler("vllm", MODEL), MODEL, {})
    assert_beam_vllm_handler(make_handler("vllm", MODEL, server_kwargs=None), MODEL, {})
    with pytest.raises(ValueError, match="needs --model"):
        make_handler("vllm", None)
    with pytest.raises(ValueError, match="needs --model"):
        make_handler("vllm", "")


# --- BuildQAShards' handler and inference arguments for a vllm config --------------------------------


def test_build_qa_shards_configures_the_vllm_handler_from_the_config(tmp_path):
    config = vllm_config(tmp_path)
    transform = BuildQAShards(config, {})
    assert transform._handler_kwargs() == {"server_kwargs": SERVER_KWARGS, "chat_template": None}
    assert transform._inference_args() == {"max_tokens": 64, "temperature": 0.7}
    assert_beam_vllm_handler(make_handler(config.backend, config.model, **transform._handler_kwargs()), MODEL, SERVER_KWARGS)
    # The transformers-only settings are not passed to the vLLM handler.
    greedy = BuildQAShards(vllm_config(tmp_path, temperature=0.0, max_new_tokens=96, vllm_server_kwargs={}), {})
    assert greedy._handler_kwargs() == {"server_kwargs": {}, "chat_template": None}
    assert greedy._inference_args() == {"max_tokens": 96, "temperature": 0.0}


def test_non_vllm_backends_pass_no_inference_args(tmp_path):
    for backend in ("extractive", "transformers"):
        assert BuildQAShards(vllm_config(tmp_path, backend=backend), {})._inference_args() is None


# --- completion_text on what the vLLM handler returns -----------------------------------------------


def completion(text: str) -> Completion:
    return Completion(id="cmpl-1", object="text_completion", created=1_700_000_000, model=MODEL,
                      choices=[CompletionChoice(index=0, text=text, finish_reason="stop", logprobs=None)])


def chat_completion(content: str | None) -> ChatCompletion:
    return ChatCompletion(id="chatcmpl-1", object="chat.completion", created=1_700_000_000, model=MODEL,
                          choices=[ChatChoice(index=0, finish_reason="stop", logprobs=None,
                                              message=ChatCompletionMessage(role="assistant", content=content))])


def test_completion_text_reads_openai_completions():
    assert completion_text(completion(ANSWER_JSON)) == ANSWER_JSON
    assert completion_text(completion(ANSWER_JSON).choices[0]) == ANSWER_JSON  # a bare CompletionChoice
    assert completion_text(completion("")) == ""
    # The first choice is the one used.
    two = completion("first")
    two.choices.append(CompletionChoice(index=1, text="second", finish_reason="length", logprobs=None))
    assert completion_text(two) == "first"


def test_completion_text_reads_openai_chat_completions():
    assert completion_text(chat_completion(ANSWER_JSON)) == ANSWER_JSON
    assert completion_text(chat_completion(ANSWER_JSON).choices[0]) == ANSWER_JSON
    assert completion_text(chat_completion(None)) == ""  # e.g. a refusal or tool call: no text


def test_completion_text_passes_plain_strings_through():
    assert completion_text(ANSWER_JSON) == ANSWER_JSON
    assert completion_text("") == ""
    assert completion_text("Question: Who?\nAnswer: Emma") == "Question: Who?\nAnswer: Emma"


def test_a_vllm_completion_goes_through_validation_to_a_qa_pair(tmp_path):
    """What RunInference yields for the vLLM backend (PredictionResult(prompt, Completion)) is
    parsed and validated exactly like any other backend's text."""
    chunk = Chunk("emma", "src:0", 0, 1, np.arange(5, dtype=np.int32), PASSAGE)
    assert parse_qa(completion_text(completion(ANSWER_JSON))).answer == "at Hartfield"
    for response in (completion(ANSWER_JSON), chat_completion(ANSWER_JSON)):
        out = list(ValidateQA(vllm_config(tmp_path)).process((("in.jsonl", chunk), PredictionResult("prompt", response, MODEL))))
        assert len(out) == 1
        book_uid, (source, got_chunk, pair) = out[0]
        assert (book_uid, source, got_chunk) == ("src:0", "in.jsonl", chunk)
        assert (pair.question, pair.answer) == ("Where did Emma Woodhouse live?", "at Hartfield")
    # An unusable completion is a chunk reject, as for every backend.
    (rejected,) = ValidateQA(vllm_config(tmp_path)).process((("in.jsonl", chunk), PredictionResult("prompt", completion("no idea"))))
    assert isinstance(rejected, beam.pvalue.TaggedOutput) and rejected.value.reason == "unparsable"


# --- the whole QA graph with backend vllm (built, not run) -------------------------------------------


class _FindRunInference(beam.pipeline.PipelineVisitor):
    def __init__(self):
        self.found = []

    def enter_composite_transform(self, node):
        if isinstance(node.transform, RunInference):
            self.found.append(node)

    def visit_transform(self, node):
        self.enter_composite_transform(node)


def test_qa_pipeline_graph_with_the_vllm_backend(tmp_path):
    config = vllm_config(tmp_path)
    metadata = shard_metadata(config, "qa")
    pipeline = beam.Pipeline()  # DirectRunner by default; never run
    _ = pipeline | "Qa" >> BuildQAShards(config, metadata)

    finder = _FindRunInference()
    pipeline.visit(finder)
    (node,) = finder.found
    assert node.full_label == "Qa/Generate"
    transform = node.transform
    assert isinstance(transform._model_handler, KeyedModelHandler)
    assert_beam_vllm_handler(transform._model_handler._unkeyed, MODEL, SERVER_KWARGS)
    assert transform._inference_args == {"max_tokens": 64, "temperature": 0.7}
    assert metadata["q4k"]["kind"] == "qa" and metadata["q4k"]["config_hash"] == config.hash()

    # The graph serialises (every DoFn and the handler pickle), as it must to go to a runner.
    proto = pipeline.to_runner_api()
    labels = {t.unique_name for t in proto.components.transforms.values()}
    assert {"Qa/Generate", "Qa/Validate", "Qa/Assemble", "Qa/Manifest"} <= labels
