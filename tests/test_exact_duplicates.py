"""Exact copies and content names (curation/exact_duplicates.py), as pure functions."""

from __future__ import annotations

import pytest

from curation.accounting import Reason
from curation.documents import Document
from curation.exact_duplicates import Copy, later_copies, named_by_content, named_copies, record_hash
from curation.text import content_hash


def _doc(source: str, index: int, text: str = "the same text", **meta) -> Document:
    return Document(source=source, id=f"id{index}", uid=f"{source}#{index}", index=index, text=text,
                    content_hash=content_hash(text), meta=meta)


def test_later_copies_keep_the_first_read_whatever_the_arrival_order():
    copies = [Copy.of(_doc("/data/b.jsonl", 0)), Copy.of(_doc("/data/a.jsonl", 7)), Copy.of(_doc("/data/a.jsonl", 2))]
    for order in (copies, copies[::-1]):
        dropped = later_copies(order)
        assert [uid for uid, _ in dropped] == ["/data/a.jsonl#7", "/data/b.jsonl#0"]
        assert {r.reason for _, r in dropped} == {Reason.DUPLICATE}
        assert all(r.detail == "same content as /data/a.jsonl id=id2" for _, r in dropped)


def test_a_kept_document_is_named_by_its_content():
    doc = _doc("/home/me/books.jsonl", 3, "a novel")
    named = named_by_content(doc)
    assert named.uid == content_hash("a novel") == named_by_content(_doc("gs://bucket/x/part-9.jsonl", 0, "a novel")).uid
    assert (named.source, named.id, named.text) == (doc.source, doc.id, doc.text)  # provenance stays
    with pytest.raises(ValueError, match="no content hash"):
        named_by_content(doc.with_(content_hash=""))


def test_record_hash_reads_the_record_not_its_place():
    one = _doc("/a/pairs.jsonl", 0, "A cat.", image="cat.png")
    assert record_hash(one) == record_hash(_doc("gs://b/c/other.jsonl", 41, "A cat.", image="cat.png"))
    different = [
        _doc("/a/pairs.jsonl", 0, "A dog.", image="cat.png"),
        _doc("/a/pairs.jsonl", 0, "A cat.", image="dog.png"),
        _doc("/a/pairs.jsonl", 0, "A cat.", image=b"cat.png"),  # inline bytes are not a path
        _doc("/a/pairs.jsonl", 0, "A cat."),
        _doc("/a/pairs.jsonl", 0, "A cat.", image="cat.png", video="cat.png"),
    ]
    assert len({record_hash(d) for d in [one, *different]}) == 1 + len(different)


def test_identical_records_get_distinct_names_in_read_order():
    copies = [_doc("/x/b.jsonl", 0), _doc("/x/a.jsonl", 5), _doc("/x/a.jsonl", 1)]
    for order in (copies, copies[::-1], copies[1:] + copies[:1]):
        named = named_copies("abc", order)
        assert [(d.source, d.index, d.uid) for d in named] == [
            ("/x/a.jsonl", 1, "abc"), ("/x/a.jsonl", 5, "abc.1"), ("/x/b.jsonl", 0, "abc.2")]
