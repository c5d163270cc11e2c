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


# Every match of either marker contains this, lowercased (its letters have no case forms outside
# ASCII that IGNORECASE would also accept, unlike i, k and s). Before it, a match holds at most 14
# other non-space characters ("***START OF THIS "), so it starts at a line start shortly before.
_MARKER_WORDS = "project gutenberg"
_MARKER_LEAD = 32


def _first_marker(pattern: re.Pattern[str], text: str, lowered: str) -> re.Match[str] | None:
    """`pattern.search(text)` for a START/END marker pattern, tried only at the line starts just
    before each place that holds `_MARKER_WORDS` (back over whitespace and at most `_MARKER_LEAD`
    other characters). The regex scanning a whole novel cost more than the rest of cleaning."""
    at = lowered.find(_MARKER_WORDS)
    while at >= 0:
        lead, begin = 0, at
        while begin > 0 and (text[begin - 1].isspace() or lead < _MARKER_LEAD):
            lead += not text[begin - 1].isspace()
            begin -= 1
        line = text.rfind("\n", 0, at) + 1
        if begin == 0 or text[begin - 1] == "\n":
            q = begin
        else:
            q = text.find("\n", begin, line) + 1 or line + 1  # no line start in reach: no match here
        while q <= line:
            found = pattern.match(text, q)
            if found:
                return found
            q = text.find("\n", q, line) + 1 or line + 1
        nl = text.find("\n", at)
        at = lowered.find(_MARKER_WORDS, nl + 1) if nl >= 0 else -1
    return None


def _find_marker(pattern: re.Pattern[str], text: str, lowered: str | None) -> re.Match[str] | None:
    """`pattern.search(text)`: by `_first_marker` when `lowered` is `text` lowercased character for
    character, else by the regex over the whole text."""
    return pattern.search(text) if lowered is None else _first_marker(pattern, text, lowered)


def strip_gutenberg(text: str) -> str:
    """Drop the Project Gutenberg header (up to the START marker) and licence footer (from the
    END marker on). Text without the markers is returned unchanged."""
    lowered: str | None = text.lower()
    if len(lowered) != len(text):  # a character whose lowercase is longer: offsets would not line up
        lowered = None
    start = _find_marker(_GUTENBERG_START, text, lowered)
    if start:
        text = text[start.end() :]
        lowered = None if lowered is None else lowered[start.end() :]
    end = _find_marker(_GUTENBERG_END, text, lowered)
    return text[: end.start()] if end else text


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
