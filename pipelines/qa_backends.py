"""The generator backends as Beam RunInference model handlers (the one place QA meets Beam).

Each handler turns a batch of examples (a prompt, or for `extractive` the chunk text) into the
model's raw text; parsing and validation are the same for every backend (qa_synth/parse.py).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterable, Sequence
from typing import Any

from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from curation.hf_models import is_local_model_path, local_generator_problem, local_model_problem
from qa_synth.extractive import extractive_qa


class _NoModel:
    """Stands in for a model (Beam's shared-model cache needs a weak-referenceable object)."""


class ExtractiveHandler(ModelHandler[str, PredictionResult, _NoModel]):
    """No model: a deterministic cloze question per chunk, so the pipeline runs anywhere."""

    def load_model(self) -> _NoModel:
        return _NoModel()

    def run_inference(self, batch: Sequence[str], model: _NoModel, inference_args: dict | None = None) -> Iterable[PredictionResult]:
        return [PredictionResult(text, extractive_qa(text, seed_key=text)) for text in batch]


class LoadedLM:
    """A tokenizer and its model, held together (and weak-referenceable, for Beam's model cache)."""

    def __init__(self, tokenizer, model):
        self.tokenizer = tokenizer
        self.model = model


class TransformersHandler(ModelHandler[str, PredictionResult, LoadedLM]):
    """A local causal LM through transformers, batched (left padding), greedy unless temperature > 0.

    `model` is a folder (safetensors + tokenizer), a hub id, or `package:DIST/file.gguf` (see
    qa_synth/generator_model.py); `gguf_file` a GGUF file name inside the folder (dequantised on load). Prompts are wrapped in the model's chat template when it has one.
    """

    def __init__(self, model: str, gguf_file: str | None = None, device: str = "cpu", max_new_tokens: int = 96,
                 temperature: float = 0.0, batch_size: int = 4, trust_remote_code: bool = False):
        self.model_path = model
        self.gguf_file = gguf_file
        self.device = device
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.batch_size = batch_size
        self.trust_remote_code = trust_remote_code

    def load_model(self):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from qa_synth.generator_model import resolve_generator

        path, gguf_file = resolve_generator(self.model_path, self.gguf_file)
        kwargs = {"trust_remote_code": self.trust_remote_code}
        if gguf_file:
            kwargs["gguf_file"] = gguf_file
        tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
        tokenizer.padding_side = "left"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, **kwargs)
        model.to(self.device).eval()
        return LoadedLM(tokenizer, model)

    def run_inference(self, batch: Sequence[str], model: LoadedLM, inference_args: dict | None = None) -> Iterable[PredictionResult]:
        import torch

        from qa_synth.prompts import chat_prompt

        tokenizer, lm = model.tokenizer, model.model
        prompts = [chat_prompt(tokenizer, text) for text in batch]
        enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        sampling = {"do_sample": True, "temperature": self.temperature} if self.temperature > 0 else {"do_sample": False}
        with torch.no_grad():
            out = lm.generate(**enc, max_new_tokens=self.max_new_tokens, pad_token_id=tokenizer.pad_token_id, **sampling)
        texts = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        return [PredictionResult(p, t) for p, t in zip(batch, texts)]

    def batch_elements_kwargs(self) -> dict[str, int]:
        # Full batches from the start: BatchElements would otherwise grow from 1 (1, 1, 2, 4, ...),
        # and small batches waste the model's time (measured in benchmarks/qa_throughput.py).
        return {"min_batch_size": self.batch_size, "max_batch_size": self.batch_size}


def vllm_handler(model: str, server_kwargs: dict[str, str] | None = None, chat_template: str | None = None):
    """Beam's vLLM chat handler: one OpenAI-compatible vLLM server per worker (GPU workers).

    The chat endpoint, not the completions one: the server wraps each prompt in the generator's
    chat template, which instruct models need (a raw prompt to /v1/completions is continued as
    plain text). `chat_template` (a Jinja file any worker can read, e.g. gs://...) is for models
    whose tokenizer has none; vLLM refuses chat requests to such a model otherwise.
    """
    from apache_beam.ml.inference.vllm_inference import VLLMChatModelHandler

    return VLLMChatModelHandler(model_name=model, chat_template_path=chat_template, vllm_server_kwargs=dict(server_kwargs or {}))


def chat_messages(prompt: str) -> list:
    """One prompt as the single user turn the vLLM chat handler takes (OpenAI chat messages)."""
    from apache_beam.ml.inference.vllm_inference import OpenAIChatMessage

    return [OpenAIChatMessage(role="user", content=prompt)]


def completion_text(inference: Any) -> str:
    """The generated text, whatever the backend returned (str, an OpenAI completion, a choice)."""
    if isinstance(inference, str):
        return inference
    choices = getattr(inference, "choices", None)
    if choices:
        inference = choices[0]
    message = getattr(inference, "message", None)
    if message is not None:
        return message.content or ""
    return str(getattr(inference, "text", inference) or "")


# What the transformers backend loads (TransformersHandler.load_model through resolve_generator).
GENERATOR_KINDS = ("a transformers model folder (config.json + weights), a .gguf file, package:DIST/file.gguf, "
                   "or a Hugging Face hub id")
def generator_model_problem(model: str, gguf_file: str | None = None) -> str | None:
    """Why `model` cannot be the transformers backend's generator, or None when it may be: found
    before the job starts, since every worker would otherwise fail to load it inside RunInference.
    A package: spec or a local path is judged on disk (curation.hf_models.local_generator_problem);
    a hub id (`owner/name`) is asked of the hub."""
    if model.startswith("package:"):
        from curation.tokenize import resolve_package_path

        try:
            path = resolve_package_path(model)
        except ValueError as err:  # its message is worded for a tokenizer spec: keep only the why
            return str(err).removeprefix(f"tokenizer {model!r}: ")
        return local_model_problem(path, gguf_file)
    if is_local_model_path(model):
        return local_generator_problem(model, gguf_file)
    return hub_model_problem(model, gguf_file)


def hub_model_problem(model: str, gguf_file: str | None = None) -> str | None:
    """Why the hub id `model` cannot be fetched, or None: only its config (or, for a GGUF repo,
    whether the file is there) is asked for, never the weights, and no remote code is run. With
    the hub out of reach only the local Hugging Face cache is read (the client would retry)."""
    from curation.tokenize import hub_miss, hub_unreachable

    why = hub_unreachable()
    try:
        if gguf_file:  # the config is inside the GGUF file: ask only whether it is there
            from huggingface_hub import file_exists, try_to_load_from_cache

            if isinstance(try_to_load_from_cache(model, gguf_file), str):
                return None
            if why is not None:
                raise OSError(f"{gguf_file!r} is not in the local cache")
            if not file_exists(model, gguf_file):
                return f"the Hugging Face hub has no {gguf_file!r} in {model!r}"
        else:
            from transformers import AutoConfig

            AutoConfig.from_pretrained(model, trust_remote_code=False, local_files_only=why is not None)
    except Exception as err:  # noqa: BLE001 - offline, gated, missing, not a model: one line either way
        if "trust_remote_code" in str(err):  # found, and its code is the workers' to run (--trust-remote-code)
            return None
        return f"no such folder, and {hub_miss(err, why)}"
    return None


def vllm_installed() -> bool:
    """Whether Beam's vLLM handler can start its server here: it runs `python -m
    vllm.entrypoints.openai.api_server` with this interpreter and environment, so a child process
    of the same kind is asked (it sees PYTHONPATH as the server will; vllm itself is not imported)."""
    probe = "import importlib.util, sys; sys.exit(importlib.util.find_spec('vllm') is None)"
    return subprocess.run([sys.executable, "-c", probe], capture_output=True, timeout=120).returncode == 0


def make_handler(backend: str, model: str | None, **kwargs) -> ModelHandler:
    if backend == "extractive":
        return ExtractiveHandler()
    if not model:
        raise ValueError(f"the {backend} backend needs --model (a local path or hub id)")
    if backend == "transformers":
        return TransformersHandler(model, **kwargs)
    if backend == "vllm":
        return vllm_handler(model, kwargs.get("server_kwargs"), kwargs.get("chat_template"))
    raise ValueError(f"unknown backend {backend!r}: extractive, transformers or vllm")
