"""Token lengths of what the stage windows judged: per document (books) or per packed example
(QA, video, images), kept and rejected."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from inspection.rejects import RejectSummary
from inspection.stage_stats import StageStats

@dataclass
class DocumentLengths:
    """Token lengths of what a stage window judges. Books (`unit` "document"): one length per
    source document, the most tokens it has in any one stage, i.e. the whole document except a
    tail shorter than `min_tail_tokens` dropped in every stage. QA, video and images (`unit`
    "example"): one length per packed example (a segment), over all stages; their documents are
    cut into examples by the pipeline, not filtered by length.
    `kept` counts lengths (tokens -> how many); `rejected[reason]` are the lengths rejects state
    (books' and images' `no_stage`); `per_document` is each source document's largest token count
    in one stage, whatever the kind."""

    unit: str
    kept: Counter
    rejected: dict[str, list[int]]
    per_document: dict[str, int]

    @property
    def kept_count(self) -> int:
        return sum(self.kept.values())

    def kept_quantiles(self, qs: tuple[float, ...] = (0.0, 0.5, 1.0)) -> list[int]:
        """Lengths at the given quantiles of `kept` (lower value at ties), without expanding it."""
        lengths = sorted(self.kept)
        if not lengths:
            return []
        cumulative = np.cumsum([self.kept[n] for n in lengths])
        total = int(cumulative[-1])
        return [lengths[int(np.searchsorted(cumulative, max(1, int(np.ceil(q * total)))))] for q in qs]


def document_lengths(stages: list[StageStats], rejects: RejectSummary | None = None, kind: str = "books") -> DocumentLengths:
    per_document: dict[str, int] = {}
    for stats in stages:
        for doc_id, n in stats.doc_tokens.items():
            per_document[doc_id] = max(per_document.get(doc_id, 0), n)
    if kind == "books":
        unit, kept = "document", Counter(per_document.values())
    else:
        unit, kept = "example", sum((s.segment_lengths for s in stages), Counter())
    return DocumentLengths(unit, kept, dict(rejects.token_lengths) if rejects else {}, per_document)
