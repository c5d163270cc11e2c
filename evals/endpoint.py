"""An OpenAI-compatible completions endpoint as a model under test (`--endpoint URL`, e.g. a vLLM
server started with `vllm serve MODEL`).

The suite still fits every prompt to its token length with the model's own tokenizer (`--tokenizer`),
then sends the prompt as text: POST {URL}/v1/completions with {"model", "prompt", "max_tokens",
"temperature": 0} (greedy, as our other backends decode), and reads `choices[0].text`. The server
adds its own BOS, so the text is the prompt ids decoded without special tokens. Plain urllib: no
client library, nothing but the request leaves the machine; the API key, when one is needed, comes
from an environment variable (`--api-key-env`), never from the command line.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


def api_url(base: str, route: str) -> str:
    """`http://host:8000` or `http://host:8000/v1` (with or without a trailing slash) + route."""
    base = base.strip().rstrip("/")
    if not base.startswith(("http://", "https://")):
        raise ValueError(f"--endpoint must be an http(s) URL such as http://127.0.0.1:8000, got {base!r}")
    if base.endswith("/v1"):
        base = base[:-3]
    return f"{base}/v1/{route}"


def completion_request(base: str, model: str, prompt: str, max_tokens: int, *, api_key: str | None = None,
                       stop: Sequence[str] = ()) -> tuple[str, dict[str, str], bytes]:
    """The URL, headers and JSON body of one greedy completion request."""
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be at least 1, got {max_tokens}")
    body: dict[str, Any] = {"model": model, "prompt": prompt, "max_tokens": int(max_tokens), "temperature": 0.0}
    if stop:
        body["stop"] = list(stop)
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return api_url(base, "completions"), headers, json.dumps(body).encode("utf-8")


def parse_completion(raw: bytes | str) -> str:
    """`choices[0].text` of a completions response; an error object or another shape is a clear error."""
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"endpoint answered with something that is not JSON ({err})") from None
    if isinstance(data, dict) and "error" in data:
        error = data["error"]
        message = error.get("message", error) if isinstance(error, dict) else error
        raise ValueError(f"endpoint error: {message}")
    try:
        text = data["choices"][0]["text"]
    except (KeyError, IndexError, TypeError):
        raise ValueError("endpoint response has no choices[0].text (is it an OpenAI-compatible /v1/completions?)") from None
    if not isinstance(text, str):
        raise ValueError(f"endpoint choices[0].text is {type(text).__name__}, not text")
    return text


def parse_models(raw: bytes | str) -> list[str]:
    """The model ids of a /v1/models response."""
    try:
        return [m["id"] for m in json.loads(raw)["data"]]
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"endpoint /v1/models answered with no model list ({err})") from None


def api_key_from_env(var: str | None) -> str | None:
    if not var:
        return None
    key = os.environ.get(var)
    if not key:
        raise ValueError(f"--api-key-env {var}: that environment variable is not set")
    return key


@dataclass
class EndpointClient:
    """Completions from one served model. `model=None` asks the server which one it serves."""

    base: str
    model: str | None = None
    api_key: str | None = None
    timeout: float = 600.0

    def __post_init__(self) -> None:
        api_url(self.base, "completions")  # a bad URL fails here, before any prompt is built
        if not self.model:
            models = parse_models(self._send(api_url(self.base, "models"), {}, None))
            if len(models) != 1:
                raise ValueError(f"the endpoint serves {len(models)} models ({', '.join(models) or 'none'}); "
                                 "name one with --endpoint-model")
            self.model = models[0]

    def _send(self, url: str, headers: dict[str, str], body: bytes | None) -> bytes:
        if self.api_key:
            headers = {**headers, "Authorization": f"Bearer {self.api_key}"}
        request = urllib.request.Request(url, data=body, headers=headers, method="POST" if body else "GET")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310 (http(s) only, checked)
                return response.read()
        except urllib.error.HTTPError as err:
            detail = err.read()[:500].decode("utf-8", "replace")
            try:
                parse_completion(detail)
            except ValueError as parsed:
                detail = str(parsed)
            raise ValueError(f"endpoint {url} answered HTTP {err.code}: {detail}") from None
        except urllib.error.URLError as err:
            raise ValueError(f"endpoint {url} unreachable: {err.reason}") from None

    def complete(self, prompt: str, max_tokens: int) -> str:
        url, headers, body = completion_request(self.base, self.model or "", prompt, max_tokens)
        return parse_completion(self._send(url, headers, body))


@dataclass
class EndpointGenerator:
    """evals/niah.py's Generator interface over an endpoint: prompt ids -> answer ids. The ids are
    decoded to text for the request and the answer encoded back with the same tokenizer."""

    client: EndpointClient
    tokenizer: Any  # niah.NiahTokenizer
    name: str = ""
    eos_ids: tuple[int, ...] = field(default=())

    def __post_init__(self) -> None:
        self.name = self.name or str(self.client.model)

    def prompt_text(self, prompt_ids: Sequence[int]) -> str:
        return self.tokenizer.decode(prompt_ids)  # special tokens (BOS) dropped: the server adds its own

    def generate(self, prompt_ids: Sequence[int], max_new_tokens: int) -> list[int]:
        return self.tokenizer.encode_continuation(self.complete(prompt_ids, max_new_tokens))

    def complete(self, prompt_ids: Sequence[int], max_new_tokens: int) -> str:
        return self.client.complete(self.prompt_text(prompt_ids), max_new_tokens)


@dataclass
class EndpointBackend:
    """evals/runner.py's Backend over an endpoint: the sample's prompt as text, the answer as text
    (no re-tokenizing of the answer)."""

    generator: EndpointGenerator
    name: str = ""

    def __post_init__(self) -> None:
        self.name = self.name or self.generator.name

    def __call__(self, sample: Any) -> str:
        return self.generator.complete(sample.prompt_ids, sample.max_new_tokens)
