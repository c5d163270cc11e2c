"""The job's event keys, built and read in one place.

Every data job sums dicts of counts (key -> int) into one counter dict (pipelines/accounting.py)
that the manifest is built from (curation/manifest.py). The keys:

- `read`, `kept`, `tokens_in`: records read, records kept, tokens read in.
- `rejected.R`: records rejected for reason R; `UNIT.rejected.R` for parts of records (a QA
  `chunk`), with `UNIT.read` / `UNIT.accepted` beside them (`part_event`).
- `stage.S.NAME`: a per-stage count (`StageCount`: documents, segments, rows, shards, ...).
- `max.KEY`: summed as a maximum instead of a sum (`max_event`, `is_max`).

Writers and readers both call these functions, so a key is spelled once; the strings are what the
manifest and Beam counters always said.
"""

from __future__ import annotations

from enum import StrEnum

READ = "read"
KEPT = "kept"
TOKENS_IN = "tokens_in"
RECORD = "record"  # the unit of a whole input record; its rejects are counted without a unit prefix
CHUNK = "chunk"  # a QA book's ~1,000-token chunk (pipelines/qa.py)
PART_UNITS = (CHUNK,)  # the parts of records a manifest accounts for on their own (`chunks`)

_REJECTED = "rejected"
_STAGE = "stage"
MAX_PREFIX = "max."


class StageCount(StrEnum):
    """What a `stage.S.NAME` event counts."""

    DOCUMENTS = "documents"  # documents (or examples' sources) placed in the stage
    SEGMENTS = "segments"  # pieces those documents were cut into
    DROPPED_TOKENS = "dropped_tokens"  # tail tokens no window kept
    PACKING_GROUPS = "packing_groups"  # groups the packer packed on their own
    GROUP_TOKENS = "group_tokens"  # tokens of one packing group (a `max.` event)
    ROWS = "rows"  # packed rows written (a Beam counter)
    SHARDS = "shards"  # shard files written (a Beam counter)


class PartCount(StrEnum):
    """What a `UNIT.NAME` event counts, for the parts records are split into (e.g. QA chunks)."""

    READ = "read"
    ACCEPTED = "accepted"
    TO_GENERATE = "to_generate"  # a Beam counter: chunks sent to the generator
    GENERATED = "generated"  # a Beam counter: chunks back from the generator


def stage_event(stage: str, name: StageCount | str) -> str:
    """`stage.S.NAME`; `name` must be a StageCount (or its value), so a typo cannot make a new key."""
    return f"{_STAGE}.{stage}.{StageCount(name).value}"


def max_event(key: str) -> str:
    """The key under which `key` keeps its largest value instead of a sum."""
    return MAX_PREFIX + key


def is_max(key: str) -> bool:
    """Whether the event `key` is merged by maximum (see `max_event`)."""
    return key.startswith(MAX_PREFIX)


def part_event(unit: str, name: PartCount | str) -> str:
    """`UNIT.NAME` for parts of records, e.g. `chunk.read`, `chunk.accepted`."""
    return f"{unit}.{PartCount(name).value}"


def rejected_prefix(unit: str = RECORD) -> str:
    """What every reject key of `unit` starts with: `rejected.` for records, `UNIT.rejected.` for parts."""
    return f"{_REJECTED}." if unit == RECORD else f"{unit}.{_REJECTED}."


def rejected_event(reason: str, unit: str = RECORD) -> str:
    """The key a reject is counted under: `rejected.R`, or `UNIT.rejected.R` for a part.
    `reason` is a curation.accounting.Reason (a StrEnum: its value) or that value."""
    return rejected_prefix(unit) + str(reason)


def rejected_counts(counters: dict[str, int], unit: str = RECORD) -> dict[str, int]:
    """reason -> count of the non-zero `rejected_event(reason, unit)` keys in `counters`."""
    prefix = rejected_prefix(unit)
    return {key.removeprefix(prefix): value for key, value in counters.items() if key.startswith(prefix) and value}
