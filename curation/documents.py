"""The record that flows through every pipeline: a document with its provenance."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np


@dataclass(frozen=True)
class Document:
    """One input record. `uid` is unique across the job: where the record was read
    (`<source>#<index>`) until exact deduplication, its content hash after it (`named_by_content`),
    so that what follows depends on the text, not on the input's path. `id` is the user's
    identifier (may repeat). `text` is set until tokenization, `tokens` after."""

    source: str
    id: str
    uid: str
    index: int = 0  # position of the record in its source file
    text: str | None = None
    tokens: np.ndarray | None = None
    content_hash: str = ""
    meta: dict = field(default_factory=dict)

    def with_(self, **changes) -> "Document":
        return replace(self, **changes)

    @property
    def num_tokens(self) -> int:
        return 0 if self.tokens is None else int(self.tokens.shape[0])
