"""Text cleaning: decode, reject what is not prose, normalise what is."""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass

from curation.accounting import Reason

# C0/C1 control characters other than tab, newline, carriage return and form feed.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f-\x9f]")

# Project Gutenberg wraps each book between a START and an END marker line; older files (like the
# sample Moby-Dick) say "*** START OF THIS PROJECT GUTENBERG EBOOK ... ***" / "End of Project
# Gutenberg's ...", newer ones "*** START OF THE PROJECT GUTENBERG EBOOK ... ***".
_GUTENBERG_START = re.compile(
    r"^\s*\*{3}\s*START OF (?:THIS|THE) PROJECT GUTENBERG E-?BOOK.*?\*{3}\s*$", re.IGNORECASE | re.MULTILINE
)
_GUTENBERG_END = re.compile(
    r"^\s*(?:\*{3}\s*END OF (?:THIS|THE) PROJECT GUTENBERG E-?BOOK.*$|End of (?:the )?Project Gutenberg'?s? .*$)",
    re.IGNORECASE | re.MULTILINE,
)


@dataclass(frozen=True)
class CleanConfig:
    min_chars: int = 1
    max_control_ratio: float = 0.001
    normalize_unicode: str | None = "NFC"
    strip_gutenberg: bool = True


class Rejected(Exception):
    """A cleaning step refused the text; carries the reason and a short detail."""

    def __init__(self, reason: Reason, detail: str = ""):
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


def decode_utf8(raw: bytes) -> str:
    """Strict UTF-8 decode (a leading BOM is allowed and removed later)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise Rejected(Reason.INVALID_UTF8, f"byte {err.start}: {err.reason}") from None


def strip_gutenberg(text: str) -> str:
    """Drop the Project Gutenberg header (up to the START marker) and licence footer (from the
    END marker on). Text without the markers is returned unchanged."""
    start = _GUTENBERG_START.search(text)
    if start:
        text = text[start.end() :]
    end = _GUTENBERG_END.search(text)
    if end:
        text = text[: end.start()]
    return text


def clean_text(text: str, config: CleanConfig) -> str:
    """Return the cleaned text, or raise `Rejected` with the reason it is unusable."""
    if "\x00" in text:
        raise Rejected(Reason.BINARY, f"NUL byte at char {text.index(chr(0))}")
    controls = len(_CONTROL.findall(text))
    if text and controls / len(text) > config.max_control_ratio:
        raise Rejected(Reason.BINARY, f"{controls} control characters in {len(text)}")
    text = text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    if config.normalize_unicode:
        text = unicodedata.normalize(config.normalize_unicode, text)
    if config.strip_gutenberg:
        text = strip_gutenberg(text)
    text = text.strip()
    if not text:
        raise Rejected(Reason.EMPTY, "no text after cleaning")
    if len(text) < config.min_chars:
        raise Rejected(Reason.TOO_SHORT, f"{len(text)} chars < min_chars={config.min_chars}")
    return text


def content_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
