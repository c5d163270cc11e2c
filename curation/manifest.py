"""The job manifest: what was read, kept and rejected, and every shard written, in one JSON file."""

from __future__ import annotations

import hashlib
import json
import platform
from collections import Counter
from importlib import metadata as importlib_metadata
from typing import Any

from curation.accounting import AccountingError, JobCounts
from curation.events import KEPT, PART_UNITS, READ, TOKENS_IN, PartCount, StageCount, max_event, part_event, rejected_counts, stage_event
from curation.packing import packing_efficiency
from curation.shards import ShardInfo
from curation.stages import Stage

def config_hash(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def job_counts(counters: dict[str, int]) -> JobCounts:
    rejected = Counter(rejected_counts(counters))
    return JobCounts(read=counters.get(READ, 0), kept=counters.get(KEPT, 0), rejected=rejected)


def part_counts(counters: dict[str, int], unit: str) -> dict[str, Any] | None:
    """Accounting of the parts records are split into (e.g. QA chunks): UNIT.read = UNIT.accepted +
    UNIT.rejected.*, checked like the records themselves. None when the job has no such parts."""
    if part_event(unit, PartCount.READ) not in counters:
        return None
    counts = JobCounts(
        read=counters[part_event(unit, PartCount.READ)],
        kept=counters.get(part_event(unit, PartCount.ACCEPTED), 0),
        rejected=Counter(rejected_counts(counters, unit)),
    )
    try:
        counts.check()
    except AccountingError as err:
        raise AccountingError(f"{unit}s: {err}") from None
    return {"read": counts.read, "accepted": counts.kept, "rejected": dict(sorted(counts.rejected.items()))}


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("longctx", "apache-beam", "pyarrow", "tokenizers", "numpy"):
        try:
            out[dist] = importlib_metadata.version(dist)
        except importlib_metadata.PackageNotFoundError:
            pass
    return out


def build_manifest(
    kind: str,
    counters: dict[str, int],
    stages: list[Stage],
    shards: list[ShardInfo],
    config: dict[str, Any],
    reject_files: list[str],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Assemble the manifest and check that every record is accounted for (raises AccountingError)."""
    counts = job_counts(counters)
    counts.check()
    per_stage = {}
    for stage in stages:
        stage_shards = sorted((s for s in shards if s.stage == stage.name), key=lambda s: s.path)
        rows = sum(s.rows for s in stage_shards)
        tokens = sum(s.tokens for s in stage_shards)
        per_stage[stage.name] = {
            "length": stage.length,
            "min_tokens": stage.min_tokens,
            "max_tokens": stage.max_tokens,
            "documents": counters.get(stage_event(stage.name, StageCount.DOCUMENTS), 0),
            "segments": counters.get(stage_event(stage.name, StageCount.SEGMENTS), 0),
            "rows": rows,
            "tokens": tokens,
            "dropped_tail_tokens": counters.get(stage_event(stage.name, StageCount.DROPPED_TOKENS), 0),
            "packing_efficiency": round(packing_efficiency(tokens, rows, stage.length), 6),
            "packing_groups": counters.get(stage_event(stage.name, StageCount.PACKING_GROUPS), 0),
            "max_group_tokens": counters.get(max_event(stage_event(stage.name, StageCount.GROUP_TOKENS)), 0),
            "shards": [s.as_json() for s in stage_shards],
        }
    manifest = {
        "kind": kind,
        "read": counts.read,
        "kept": counts.kept,
        "rejected": dict(sorted(counts.rejected.items())),
        "rejected_total": counts.rejected_total,
        "tokens_in": counters.get(TOKENS_IN, 0),
        "tokens_out": sum(s["tokens"] for s in per_stage.values()),
        "dropped_tail_tokens": sum(s["dropped_tail_tokens"] for s in per_stage.values()),
        "stages": per_stage,
        "rejects": sorted(reject_files),
        "config": config,
        "config_hash": config_hash(config),
        "versions": _versions(),
    }
    for unit in PART_UNITS:
        parts = part_counts(counters, unit)
        if parts is not None:
            manifest[f"{unit}s"] = parts
    if extra:
        manifest.update(extra)
    return manifest
