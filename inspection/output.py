"""What a pipeline wrote, measured from the files themselves, in one object: the manifest, every
stage's statistics (inspection.stage_stats), the rejects by reason with the curation steps' facts
(inspection.rejects, inspection.curation_rejects) and document lengths
(inspection.document_lengths). Rows are decoded by inspection.rows, training runs read by
inspection.training_runs.

Everything here reads an output folder (local path or fsspec URL) through `curation.shards`.
No Beam, no plotting (see `inspection.plots`).
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from typing import Any

import fsspec

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
    check_kind(manifest, join_url(output, "manifest.json"))
    check_listed_shards(output, manifest)
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


# The jobs whose outputs inspect reads (the `kind` a job's manifest records, pipelines.jobs.DATA_JOBS):
# books filter documents by their stages' windows and count lengths per document; the others
# (curation.stages.STAGE_RULES) cut examples to the row length and count lengths per example.
KINDS = ("books", "qa", "video", "images")


def check_kind(manifest: dict[str, Any], url: str) -> None:
    """The manifest at `url` names a job kind inspect knows (ManifestError, one line naming the
    kinds, otherwise): a `kind: 5` or `kind: "audio"` would be read as a books job's output."""
    kind = manifest.get("kind")
    if isinstance(kind, str) and kind in KINDS:
        return
    what = 'no "kind"' if kind is None else f'its "kind" is {kind!r}'
    raise ManifestError(f"{url} is not a job manifest: {what}, not one of the kinds inspect reads ({', '.join(KINDS)})")


class MissingShardsError(ValueError):
    """Shards a finished job's manifest lists are not in its output folder."""


def check_listed_shards(output: str, manifest: dict[str, Any]) -> None:
    """Every shard the manifest lists is in `output` (MissingShardsError, one line naming the
    missing files, otherwise). Checked here, with inspect's own advice, before the shards are
    opened: curation.shards refuses them too, but its message is the trainer's (a setting to
    train on unfinished data anyway), which inspect has no use for. One listing per folder."""
    listed = [shard["path"] for entry in manifest["stages"].values() for shard in entry["shards"]]
    present: dict[str, set[str]] = {}
    for folder in dict.fromkeys(posixpath.dirname(path) for path in listed):
        fs, root = fsspec.core.url_to_fs(join_url(output, folder) if folder else output.rstrip("/"))
        try:
            present[folder] = {posixpath.basename(p.rstrip("/")) for p in fs.ls(root, detail=False)}
        except (FileNotFoundError, NotADirectoryError):
            present[folder] = set()
    missing = [p for p in listed if posixpath.basename(p) not in present[posixpath.dirname(p)]]
    if not missing:
        return
    names = ", ".join(missing[:3]) + (f" and {len(missing) - 3:,} more" if len(missing) > 3 else "")
    verb, it, was = ("is", "it", "it was") if len(missing) == 1 else ("are", "them", "they were")
    raise MissingShardsError(
        f"{output}: {len(missing):,} of the {len(listed):,} shards its manifest lists {verb} missing ({names}): the job did "
        f"not finish writing {it}, or {was} moved or deleted; rerun the job with the same --output and --overwrite "
        f"to write {it} again (without --overwrite a rerun finds the manifest and does nothing)")
