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
