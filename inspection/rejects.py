"""Rejects as the rejects files hold them: counts by (unit, reason) with a few examples each,
the token lengths rejects state, and the check against the manifest's counters."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import fsspec

from curation.shards import join_url, read_manifest
from inspection.curation_rejects import CurationRejects

RECORD = "record"  # the unit of a reject that names no unit (curation.accounting.Reject)

@dataclass(frozen=True)
class RejectExample:
    source: str
    id: str
    detail: str


@dataclass
class RejectGroup:
    """Every reject of one unit ("record", or a part such as "chunk") and reason."""

    unit: str
    reason: str
    count: int = 0
    examples: list[RejectExample] = field(default_factory=list)


@dataclass
class RejectSummary:
    groups: list[RejectGroup]
    token_lengths: dict[str, list[int]]  # reason -> lengths of rejected records that say theirs
    files: list[str]
    expected: dict[tuple[str, str], int]  # (unit, reason) -> count, from the manifest's counters
    # Near-duplicate clusters, per-rule quality counts, contamination: from the rejects' facts.
    curation: CurationRejects = field(default_factory=CurationRejects)

    def counts(self, unit: str = RECORD) -> dict[str, int]:
        return {g.reason: g.count for g in self.groups if g.unit == unit}

    @property
    def total(self) -> int:
        return sum(g.count for g in self.groups)

    @property
    def mismatches(self) -> list[str]:
        found = {(g.unit, g.reason): g.count for g in self.groups}
        return [
            f"{unit} {reason}: rejects files {found.get((unit, reason), 0):,}, manifest {want:,}"
            for (unit, reason), want in sorted(self.expected.items())
            if found.get((unit, reason), 0) != want
        ] + [
            f"{unit} {reason}: rejects files {n:,}, manifest 0"
            for (unit, reason), n in sorted(found.items())
            if (unit, reason) not in self.expected
        ]


def truncate(text: str, max_chars: int) -> str:
    """One line of at most `max_chars` characters (newlines shown as spaces)."""
    text = " ".join(str(text).split())
    return text if len(text) <= max_chars else text[: max(max_chars - 1, 0)] + "…"


def manifest_reject_counts(manifest: dict[str, Any]) -> dict[tuple[str, str], int]:
    """(unit, reason) -> count as the manifest's counters say: records, and parts (e.g. chunks)."""
    out = {(RECORD, reason): int(n) for reason, n in manifest.get("rejected", {}).items() if n}
    for key, value in manifest.items():
        # Parts are stored as `{unit}s: {"read", "accepted", "rejected": {...}}` (manifest.part_counts).
        if key.endswith("s") and isinstance(value, dict) and isinstance(value.get("rejected"), dict) and "accepted" in value:
            out.update({(key[:-1], reason): int(n) for reason, n in value["rejected"].items() if n})
    return out


def reject_record(line: str, url: str, number: int) -> dict[str, Any]:
    """One line of a rejects file as its record. A damaged line is a ValueError naming the file
    and line (`longctx inspect` prints it as its one-line error): JSON's own message names neither."""
    try:
        rec = json.loads(line)
    except json.JSONDecodeError as err:
        raise ValueError(f"{url}, line {number}: not a JSON reject record ({err.msg} at column {err.colno}); "
                         "the rejects file is damaged: rerun the job with --overwrite") from None
    if not isinstance(rec, dict):
        raise ValueError(f"{url}, line {number}: not a reject record (a JSON {type(rec).__name__}, not an object); "
                         "the rejects file is damaged: rerun the job with --overwrite")
    return rec


def read_rejects(
    output: str, manifest: dict[str, Any] | None = None, examples: int = 3, max_chars: int = 160
) -> RejectSummary:
    """Count the rejects files line by line by (unit, reason), keeping the first `examples` of
    each with their detail cut to `max_chars`, the token counts that rejects state, and the
    curation steps' facts (near-duplicate clusters, quality rules, contamination)."""
    manifest = manifest or read_manifest(output)
    groups: dict[tuple[str, str], RejectGroup] = {}
    lengths: dict[str, list[int]] = defaultdict(list)
    curation = CurationRejects()
    files = list(manifest.get("rejects", []))
    for rel in files:
        url = join_url(output, rel)
        with fsspec.open(url, "r", encoding="utf-8") as fh:
            for number, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                rec = reject_record(line, url, number)
                curation.add(rec)
                unit, reason = rec.get("unit", RECORD), str(rec.get("reason", ""))
                group = groups.setdefault((unit, reason), RejectGroup(unit, reason))
                group.count += int(rec.get("records", 1))
                detail = str(rec.get("detail", ""))
                if len(group.examples) < examples:
                    group.examples.append(RejectExample(
                        truncate(rec.get("source", ""), max_chars), truncate(rec.get("id", ""), max_chars), truncate(detail, max_chars),
                    ))
                # A record dropped after it was tokenized (`no_stage`) carries its length.
                tokens = rec.get("tokens")
                if isinstance(tokens, int) and unit == RECORD:
                    lengths[reason].append(tokens)
    ordered = sorted(groups.values(), key=lambda g: (g.unit != RECORD, g.unit, -g.count, g.reason))
    return RejectSummary(ordered, dict(lengths), files, manifest_reject_counts(manifest), curation)
