"""The prompt a short-context generator model gets for one chunk.

The generator only ever sees text: its own tokenizer (if any) is used solely to wrap the prompt in
that model's chat template. The training tokenizer plays no part here.
"""

from __future__ import annotations

import string
from dataclasses import dataclass

# Asks for JSON so every backend's output goes through the same parser (qa_synth.parse).
DEFAULT_TEMPLATE = (
    "Read the passage below, taken from a book.\n\n"
    "Passage:\n{passage}\n\n"
    "Write exactly one question that can be answered only from this passage, and its short "
    "answer (a few words, taken from the passage). Reply with a JSON object of the form "
    '{{"question": "...", "answer": "..."}} and nothing else.'
)


def _fields(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}


@dataclass(frozen=True)
class PromptTemplate:
    """A Python format string with one `{passage}` field (literal braces doubled: `{{ }}`).
    Checked at construction so a bad template fails at job start, not on the first worker."""

    template: str = DEFAULT_TEMPLATE

    def __post_init__(self) -> None:
        try:
            fields = _fields(self.template)
        except ValueError as err:
            raise ValueError(f"prompt template is not a valid format string: {err}") from None
        if fields != {"passage"}:
            raise ValueError(f"prompt template must use exactly the field {{passage}}, found {sorted(fields)}")

    def render(self, chunk_text: str) -> str:
        """The prompt for one chunk (the passage is inserted as is, braces in it included)."""
        return self.template.format(passage=chunk_text)


def chat_prompt(hf_tokenizer, text: str) -> str:
    """`text` as the single user turn of the generator's chat template, ready for generation.

    Without a tokenizer, or with one that has no chat template (a base model), the text is the
    prompt itself: a base model continues it as plain completion.
    """
    if hf_tokenizer is None or not getattr(hf_tokenizer, "chat_template", None):
        return text
    return hf_tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
    )
