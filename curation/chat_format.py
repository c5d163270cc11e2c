"""How chat turns are written, shared by QA assembly (qa_synth/assemble.py) and evaluation
(evals/niah.py, evals/ruler_cli.py): the LWM release's plain layout by default,

    <s>You are a helpful assistant. USER: {context}\\n\\n{question} ASSISTANT: {answer}</s>

or, with `hf_tokenizer`, a tokenizer's own chat template. Kept here, below both users, so that
evaluation prompts are written exactly as the QA data the model was trained on.
"""

from __future__ import annotations

from dataclasses import dataclass, field

LWM_SYSTEM = "You are a helpful assistant."
LWM_USER = "USER:"
LWM_ASSISTANT = "ASSISTANT:"
CONTEXT_SEPARATOR = "\n\n"


@dataclass(frozen=True)
class ChatFormat:
    """How turns are written. By default the LWM plain template; with `hf_tokenizer` (a
    transformers tokenizer of the TRAINING tokenizer that has a chat template) that template."""

    system: str = LWM_SYSTEM
    user: str = LWM_USER
    assistant: str = LWM_ASSISTANT
    context_separator: str = CONTEXT_SEPARATOR
    hf_tokenizer: object | None = field(default=None, compare=False)


def tokenizer_chat_format(spec: str) -> ChatFormat:
    """The chat template of the training tokenizer `spec` (a model folder, a hub id, or a tokenizer
    file whose folder holds its tokenizer_config.json), as a ChatFormat. A tokenizer without one
    (a bare SentencePiece `.model`, a folder whose config has no template) or one transformers
    cannot load is a ValueError in one line, said before a job starts (`pipelines.launch.validate`)."""
    from pathlib import Path

    from transformers import AutoTokenizer

    from curation.hf_models import resolve_generator

    path, _ = resolve_generator(spec)
    local = Path(path).expanduser()
    folder = local.parent if local.is_file() else local
    if local.exists() and not (folder / "tokenizer_config.json").is_file():
        raise ValueError(f"chat_format 'tokenizer' needs the tokenizer's chat template, and {spec!r} has no "
                         f"tokenizer_config.json beside it: pass a model folder (or hub id) with one, or use chat_format lwm")
    try:
        hf = AutoTokenizer.from_pretrained(str(folder) if local.exists() else path, trust_remote_code=False)
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"chat_format 'tokenizer': cannot load the tokenizer {spec!r} with transformers ({first})") from None
    if not getattr(hf, "chat_template", None):
        raise ValueError(f"chat_format 'tokenizer': the tokenizer {spec!r} has no chat template; use chat_format lwm")
    return ChatFormat(hf_tokenizer=hf)
