"""Where every record ends up: rejects with reasons, job counters, and the read = kept + rejected check."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from curation.events import RECORD, rejected_event


class Reason(StrEnum):
    """Why a record (or a part of one, e.g. a QA chunk) was rejected: every reason any job can
    write. Values are what `rejects/*.jsonl` and the manifest say; `Reject` refuses any other, so
    a new reason is added here, once. A StrEnum: `str()` and f-strings give the value."""

    CORRUPT_FILE = "corrupt_file"  # the file itself cannot be read (truncated archive, bad parquet)
    MALFORMED_JSON = "malformed_json"
    MISSING_FIELD = "missing_field"
    WRONG_TYPE = "wrong_type"
    INVALID_UTF8 = "invalid_utf8"
    INVALID_UNICODE = "invalid_unicode"  # decoded text holds a lone surrogate (a JSON "\\udXXX" escape)
    BINARY = "binary"
    EMPTY = "empty"
    TOO_SHORT = "too_short"
    DUPLICATE = "duplicate"
    NEAR_DUPLICATE = "near_duplicate"  # MinHash-similar to a kept document (curation/near_duplicates.py)
    CONTAMINATED = "contaminated"  # shares n-grams with evaluation text (curation/decontaminate.py)
    TOKENIZER_ERROR = "tokenizer_error"
    NO_STAGE = "no_stage"
    LANGUAGE = "language"  # not in the allowed languages, by lingua (curation/quality.py)
    LOW_QUALITY_WORDS = "low_quality:words"  # Gopher-style rules (curation/quality.py)
    LOW_QUALITY_MEAN_WORD_LENGTH = "low_quality:mean_word_length"
    LOW_QUALITY_HASH_RATIO = "low_quality:hash_ratio"
    LOW_QUALITY_ELLIPSIS_RATIO = "low_quality:ellipsis_ratio"
    LOW_QUALITY_BULLET_LINES = "low_quality:bullet_lines"
    LOW_QUALITY_ELLIPSIS_LINES = "low_quality:ellipsis_lines"
    LOW_QUALITY_ALPHA_WORDS = "low_quality:alpha_words"
    LOW_QUALITY_STOP_WORDS = "low_quality:stop_words"
    LOW_QUALITY_DUP_LINES = "low_quality:dup_lines"
    LOW_QUALITY_DUP_LINE_CHARS = "low_quality:dup_line_chars"
    LOW_QUALITY_DUP_PARAGRAPHS = "low_quality:dup_paragraphs"
    LOW_QUALITY_DUP_PARAGRAPH_CHARS = "low_quality:dup_paragraph_chars"
    LOW_QUALITY_TOP_2GRAM_CHARS = "low_quality:top_2gram_chars"
    LOW_QUALITY_TOP_3GRAM_CHARS = "low_quality:top_3gram_chars"
    LOW_QUALITY_TOP_4GRAM_CHARS = "low_quality:top_4gram_chars"
    LOW_QUALITY_DUP_5GRAM_CHARS = "low_quality:dup_5gram_chars"
    LOW_QUALITY_DUP_6GRAM_CHARS = "low_quality:dup_6gram_chars"
    LOW_QUALITY_DUP_7GRAM_CHARS = "low_quality:dup_7gram_chars"
    LOW_QUALITY_DUP_8GRAM_CHARS = "low_quality:dup_8gram_chars"
    LOW_QUALITY_DUP_9GRAM_CHARS = "low_quality:dup_9gram_chars"
    LOW_QUALITY_DUP_10GRAM_CHARS = "low_quality:dup_10gram_chars"
    # Vision inputs (curation/video.py, pipelines/images.py).
    UNREADABLE_VIDEO = "unreadable_video"  # the container cannot be opened (empty, garbage, missing, cut before its index)
    NO_FRAMES = "no_frames"  # the video opens but has no frames, or none was sampled
    DECODE_ERROR = "decode_error"  # frames cannot be decoded (a file cut after its index)
    UNREADABLE_IMAGE = "unreadable_image"  # missing file, not an image, truncated data
    # QA (pipelines/qa.py): a book none of whose chunks reached an example; and chunk rejects.
    NO_VALID_CHUNKS = "no_valid_chunks"
    NOT_GENERATED = "not_generated"  # chunks past max_chunks: read, never sent to the generator
    DOES_NOT_FIT = "does_not_fit"  # a chunk and its QA pair exceed every stage length
    # A generator's QA pair that cannot be trained on (qa_synth/parse.py; a lone surrogate is INVALID_UNICODE).
    UNPARSABLE = "unparsable"
    EMPTY_QUESTION = "empty_question"
    EMPTY_ANSWER = "empty_answer"
    ANSWER_TOO_LONG = "answer_too_long"
    ANSWER_NOT_GROUNDED = "answer_not_grounded"
    DUPLICATE_QUESTION = "duplicate_question"


def as_reason(value: Reason | str) -> Reason:
    """`value` as a Reason member (a member's value string is accepted too); anything else is a
    ValueError naming it, so a bare string that is no member never reaches a rejects file."""
    if isinstance(value, Reason):
        return value
    try:
        return Reason(value)
    except ValueError:
        raise ValueError(f"unknown reject reason {value!r}: add it to curation.accounting.Reason") from None


# A lone UTF-16 surrogate: JSON allows the escape (`"\\udc80"`, or half an emoji a model writes),
# UTF-8 cannot encode it, so no later step (hashing, tokenizing, writing) could handle the text.
LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def printable(text: str) -> str:
    """`text` as valid UTF-8: a lone surrogate (from a JSON `\\udXXX` escape or a file name that is
    not UTF-8) becomes a `\\udcXX` escape. Deterministic, and the identity on ordinary text."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


@dataclass(frozen=True)
class Reject:
    """What reached no output, and why. `detail` is short, human-readable context. `records` is
    how many input records the reject stands for: 1, or more for a part of a file that could not
    be read when its record count is known (e.g. a corrupt Parquet row group). `tokens`: the
    record's token count when it was tokenized in full before it was dropped (`no_stage`), a
    structured field beside the human detail (the job's `tokens_in`, `inspect`'s lengths).
    `facts`: other structured fields a reader needs without parsing the detail (JSON values), e.g.
    a near-duplicate's kept document and similarity, or every quality rule a document failed.
    `reason` is a `Reason` (a member's value string is accepted and stored as the member); an
    unknown reason raises ValueError here, where the reject is made."""

    source: str
    id: str
    reason: Reason
    detail: str = ""
    unit: str = RECORD  # what was rejected: an input record, or a part of one (e.g. a QA "chunk")
    records: int = 1
    tokens: int | None = None
    facts: Mapping[str, object] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "reason", as_reason(self.reason))  # frozen: set once, validated

    def as_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "source": printable(self.source),
            "id": printable(self.id),
            "reason": self.reason.value,
            "detail": printable(self.detail),
        }
        if self.unit != RECORD:
            out["unit"] = self.unit
        if self.records != 1:
            out["records"] = self.records
        if self.tokens is not None:
            out["tokens"] = self.tokens
        if self.facts:
            out["facts"] = {key: printable(value) if isinstance(value, str) else value for key, value in self.facts.items()}
        return out

    @property
    def sort_key(self) -> tuple[str, str, str, str]:
        return (self.unit, self.source, self.id, self.reason.value)

    @property
    def tokens_in(self) -> int:
        """Tokens this reject adds to the job's `tokens_in`: a record rejected as `no_stage` was
        tokenized in full before no stage took it, so its tokens count as read in (kept + no_stage);
        every other reject was dropped before or without a full token count, so 0."""
        if self.unit != RECORD or self.reason is not Reason.NO_STAGE:
            return 0
        return self.tokens or 0

    @property
    def counter(self) -> str:
        """The event key this reject is counted under: `rejected.R`, or `UNIT.rejected.R` for parts."""
        return rejected_event(self.reason, self.unit)


class AccountingError(RuntimeError):
    """Raised when records were lost or double counted: read != kept + rejected."""


@dataclass
class JobCounts:
    """Counts that must balance: every record read is either kept or rejected, exactly once."""

    read: int = 0
    kept: int = 0
    rejected: Counter = field(default_factory=Counter)

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())

    def check(self) -> None:
        if self.read != self.kept + self.rejected_total:
            raise AccountingError(
                f"records lost or double counted: read={self.read} but kept={self.kept} + "
                f"rejected={self.rejected_total} ({dict(self.rejected)}) = {self.kept + self.rejected_total}"
            )
