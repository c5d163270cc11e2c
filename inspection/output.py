"""What a pipeline wrote, measured from the files themselves, in one object: the manifest, every
stage's statistics (inspection.stage_stats), the rejects by reason with the curation steps' facts
(inspection.rejects, inspection.curation_rejects) and document lengths
(inspection.document_lengths). Rows are decoded by inspection.rows, training runs read by
inspection.training_runs.

Everything here reads an output folder (local path or fsspec URL) through `curation.shards`.
No Beam, no plotting (see `inspection.plots`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from curation.shards import ManifestError, join_url, read_manifest
from inspection.curation_rejects import CurationRejects
from inspection.document_lengths import DocumentLengths, document_lengths
from inspection.rejects import RejectSummary, read_rejects
from inspection.stage_stats import StageStats, stage_stats


@dataclass
class OutputSummary:
    output: str
    manifest: dict[str, Any]
    stages: list[StageStats]
    rejects: RejectSummary
    documents: DocumentLengths

    @property
    def kind(self) -> str:
        return str(self.manifest.get("kind", "?"))

    def stage(self, name: str) -> StageStats:
        for stats in self.stages:
            if stats.name == name:
                return stats
        raise KeyError(f"no stage {name!r}; stages are {[s.name for s in self.stages]}")

    @property
    def has_vision(self) -> bool:
        return any(s.vision_tokens is not None for s in self.stages)

    @property
    def curation(self) -> CurationRejects:
        """Near-duplicate clusters, per-rule quality counts and contamination (from the rejects)."""
        return self.rejects.curation


def summarize_output(output: str, examples: int = 3, max_chars: int = 160) -> OutputSummary:
    """Manifest, every stage's statistics (shards streamed), rejects and document lengths. A
    manifest.json that is not a job's, or a damaged shard, is a one-line ValueError naming it."""
    manifest = read_manifest(output)
    check_stage_entries(manifest, join_url(output, "manifest.json"))
    check_counts(manifest, join_url(output, "manifest.json"))
    stages = [stage_stats(output, name, manifest) for name in manifest["stages"]]
    rejects = read_rejects(output, manifest, examples, max_chars)
    return OutputSummary(output, manifest, stages, rejects, document_lengths(stages, rejects, manifest.get("kind", "books")))


def check_stage_entries(manifest: dict[str, Any], url: str) -> None:
    """What inspect reads of each stage of the manifest at `url` is there: integer length, rows and
    tokens, and shards as a list of {"path": str, "rows": int} (ManifestError, one line, otherwise)."""
    for name, entry in manifest["stages"].items():
        for key in ("length", "rows", "tokens"):
            if not isinstance(entry.get(key), int) or isinstance(entry.get(key), bool):
                raise ManifestError(f"{url} is not a job manifest: stage {name!r} has no integer {key!r}")
        shards = entry.get("shards")
        if not isinstance(shards, list):
            raise ManifestError(f"{url} is not a job manifest: stage {name!r} has no list of shards")
        for shard in shards:
            if not (isinstance(shard, dict) and isinstance(shard.get("path"), str) and isinstance(shard.get("rows"), int)):
                raise ManifestError(f"{url} is not a job manifest: a shard of stage {name!r} is not "
                                    '{"path": ..., "rows": ...}')


COUNT_KEYS = ("read", "kept", "rejected_total", "tokens_in", "tokens_out", "dropped_tail_tokens")


def check_counts(manifest: dict[str, Any], url: str) -> None:
    """The manifest's own counts that inspect prints are what a job writes (ManifestError, one line
    naming the key, otherwise): whole numbers, `rejected` as {reason: count}, `rejects` as a list
    of file names, and a part's counts (`chunks`) as {"read", "accepted", "rejected": {...}}."""
    def count(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    def by_reason(value: Any) -> bool:
        return isinstance(value, dict) and all(count(n) for n in value.values())

    bad = next((k for k in COUNT_KEYS if k in manifest and not count(manifest[k])), None)
    if bad is not None:
        raise ManifestError(f"{url} is not a job manifest: {bad!r} is not a whole number")
    if "rejected" in manifest and not by_reason(manifest["rejected"]):
        raise ManifestError(f"{url} is not a job manifest: 'rejected' is not {{reason: count}}")
    rejects = manifest.get("rejects", [])
    if not (isinstance(rejects, list) and all(isinstance(r, str) for r in rejects)):
        raise ManifestError(f"{url} is not a job manifest: 'rejects' is not a list of rejects files")
    for key, value in manifest.items():  # parts, as curation.manifest.part_counts writes them (chunks)
        part = key == "chunks" or (key.endswith("s") and key not in ("stages", "rejects", "versions")
                                   and isinstance(value, dict) and "accepted" in value)
        if part and value and not (isinstance(value, dict) and count(value.get("read")) and count(value.get("accepted"))
                                   and by_reason(value.get("rejected", {}))):
            raise ManifestError(f"{url} is not a job manifest: {key!r} is not {{\"read\", \"accepted\", \"rejected\"}} counts")
