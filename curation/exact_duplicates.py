"""Exact duplicates: documents whose cleaned text is the same (the same sha256, `content_hash`).
Of each set of copies the first read is kept (by source, then position in it); the others are
rejected as `duplicate`, naming the kept one. Decided on these small records, never on the texts."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from curation.accounting import Reason, Reject
from curation.documents import Document


@dataclass(frozen=True)
class Copy:
    """A document as exact deduplication sees it."""

    source: str
    index: int
    id: str
    uid: str

    @classmethod
    def of(cls, doc: Document) -> "Copy":
        return cls(doc.source, doc.index, doc.id, doc.uid)


def later_copies(copies: Iterable[Copy]) -> list[tuple[str, Reject]]:
    """Copies of one text -> (uid, `duplicate` reject) for every copy but the first read."""
    ordered = sorted(copies, key=lambda c: (c.source, c.index))
    first = ordered[0]
    return [
        (dup.uid, Reject(dup.source, dup.id, Reason.DUPLICATE, f"same content as {first.source} id={first.id}"))
        for dup in ordered[1:]
    ]
