"""Where every record ends up: rejects with reasons, job counters, and the read = kept + rejected check."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from enum import Enum


class Reason(str, Enum):
    """Why a record was rejected. Values are what `rejects/*.jsonl` and the manifest say."""

    CORRUPT_FILE = "corrupt_file"  # the file itself cannot be read (truncated archive, bad parquet)
    MALFORMED_JSON = "malformed_json"
    MISSING_FIELD = "missing_field"
    WRONG_TYPE = "wrong_type"
    INVALID_UTF8 = "invalid_utf8"
    BINARY = "binary"
    EMPTY = "empty"
    TOO_SHORT = "too_short"
    DUPLICATE = "duplicate"
    TOKENIZER_ERROR = "tokenizer_error"
    NO_STAGE = "no_stage"


@dataclass(frozen=True)
class Reject:
    """A record that reached no output, and why. `detail` is short, human-readable context."""

    source: str
    id: str
    reason: str
    detail: str = ""
    unit: str = "record"  # what was rejected: an input record, or a part of one (e.g. a QA "chunk")

    def as_json(self) -> dict[str, str]:
        out = {"source": self.source, "id": self.id, "reason": str(self.reason), "detail": self.detail}
        if self.unit != "record":
            out["unit"] = self.unit
        return out

    @property
    def sort_key(self) -> tuple[str, str, str, str]:
        return (self.unit, self.source, self.id, str(self.reason))

    @property
    def counter(self) -> str:
        """The event key this reject is counted under: `rejected.R`, or `UNIT.rejected.R` for parts."""
        return f"rejected.{self.reason}" if self.unit == "record" else f"{self.unit}.rejected.{self.reason}"


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
