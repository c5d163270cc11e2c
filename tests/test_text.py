"""Cleaning on the real sample books and on the bad inputs it must refuse."""

from __future__ import annotations

import unicodedata

import pytest

from curation.accounting import Reason
from curation.text import CleanConfig, Rejected, clean_text, decode_utf8, strip_gutenberg


def test_moby_dick_loses_bom_crlf_and_gutenberg_licence(sample_books):
    raw = next(b["text"] for b in sample_books if b["id"] == "mobydick")
    assert raw.startswith("\ufeffThe Project Gutenberg EBook") and "\r\n" in raw
    text = clean_text(raw, CleanConfig())
    assert "\r" not in text and not text.startswith("\ufeff")
    assert "Project Gutenberg-tm" not in text and "START OF THIS PROJECT" not in text
    assert text.startswith("Produced by")
    assert text.endswith("only found another\norphan.")
    assert "Call me Ishmael." in text


def test_austen_without_markers_is_kept_whole(sample_books):
    raw = next(b["text"] for b in sample_books if b["id"] == "emma")
    assert strip_gutenberg(raw) == raw
    assert clean_text(raw, CleanConfig()) == unicodedata.normalize("NFC", raw).strip()


def test_nfc_and_newlines():
    text = clean_text("Cafe\u0301\r\nline two\rline three\n", CleanConfig())
    assert text == "Caf\u00e9\nline two\nline three"


@pytest.mark.parametrize(
    "text, reason",
    [
        ("", Reason.EMPTY),
        ("  \n\t ", Reason.EMPTY),
        ("a\x00b", Reason.BINARY),
        ("\x01\x02\x03 mostly controls", Reason.BINARY),
        ("short", Reason.TOO_SHORT),
    ],
)
def test_rejects_with_reason(text, reason):
    with pytest.raises(Rejected) as err:
        clean_text(text, CleanConfig(min_chars=10))
    assert err.value.reason is reason


def test_invalid_utf8_is_rejected_with_its_position():
    with pytest.raises(Rejected) as err:
        decode_utf8(b"caf\xe9")
    assert err.value.reason is Reason.INVALID_UTF8 and "byte 3" in err.value.detail
    assert decode_utf8("café".encode()) == "café"
