"""Exact duplicates: documents whose cleaned text is the same (the same sha256, `content_hash`).
Of each set of copies the first read is kept (by source, then position in it); the others are
rejected as `duplicate`, naming the kept one. Decided on these small records, never on the texts.

Once the copies are gone, a document's content hash is unique in the job, and the kept documents
are named by it (`named_by_content`): every stable choice made after deduplication (packing groups
and row order, QA turn order) then depends on what the documents hold, never on where they were
read, so the same corpus gives the same rows from any folder or bucket. Vision records are not
deduplicated; `named_copies` names them by `record_hash` all the same (for the packing and a
vision example's text position)."""

from __future__ import annotations

import hashlib
import json
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


def named_by_content(doc: Document) -> Document:
    """A document that survived exact deduplication, its uid now its content hash (unique from
    here on: every other copy of its text was rejected)."""
    if not doc.content_hash:
        raise ValueError(f"document {doc.id} of {doc.source} has no content hash: it was not deduplicated")
    return doc.with_(uid=doc.content_hash)


def record_hash(doc: Document) -> str:
    """sha256 of a record as written: its text and its meta fields (an image's bytes, a video's
    path as the record gives it), never where the record was read."""
    digest = hashlib.sha256(doc.text.encode("utf-8") if doc.text else b"")
    for name in sorted(doc.meta):
        value = doc.meta[name]
        raw = value if isinstance(value, bytes) else json.dumps(value, sort_keys=True, default=str).encode()
        digest.update(b"\0" + name.encode() + b"\0" + len(raw).to_bytes(8, "little") + raw)
    return digest.hexdigest()


def named_copies(digest: str, copies: Iterable[Document]) -> list[Document]:
    """The records that share one `record_hash`, each named by it: `<digest>` for the first read (by
    source, then position), `<digest>.<n>` for the n-th other. Identical records are kept: a
    relative media path is relative to its manifest, so two identical lines may name two files."""
    ordered = sorted(copies, key=lambda d: (d.source, d.index))
    return [d.with_(uid=digest if n == 0 else f"{digest}.{n}") for n, d in enumerate(ordered)]
