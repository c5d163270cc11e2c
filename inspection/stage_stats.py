"""Per-stage statistics counted from a stage's shards: rows, tokens, padding, packing, documents
per row, loss and vision shares, and each document's tokens, next to what the manifest says.

Shards are opened one at a time and walked in blocks of rows, so memory stays bounded by one
shard whatever the size of a stage.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from curation.packing import packing_efficiency
from curation.shards import Shard, read_manifest, read_shard, stage_shard_urls

# Rows are walked in blocks of about this many positions, so temporaries stay small even for a
# 256 MiB shard of 1M-token rows.
BLOCK_POSITIONS = 1 << 22

@dataclass
class StageStats:
    """One stage as its shards hold it. `tokens` counts non-padding positions (segment id > 0),
    as the manifest does; `capacity` is rows x length."""

    name: str
    length: int
    min_tokens: int
    max_tokens: int | None
    shards: int = 0
    rows: int = 0
    tokens: int = 0
    loss_tokens: int = 0  # non-padding positions with loss_mask > 0
    vision_tokens: int | None = None  # positions with vision_mask 1; None: no vision_mask column
    docs_per_row: Counter = field(default_factory=Counter)  # segments in a row -> rows
    doc_tokens: dict[str, int] = field(default_factory=dict)  # doc id -> its tokens in this stage
    segment_lengths: Counter = field(default_factory=Counter)  # segment tokens -> segments
    manifest_rows: int = 0
    manifest_tokens: int = 0

    @property
    def capacity(self) -> int:
        return self.rows * self.length

    @property
    def padding(self) -> int:
        return self.capacity - self.tokens

    @property
    def packing_efficiency(self) -> float:
        return packing_efficiency(self.tokens, self.rows, self.length)

    @property
    def loss_share(self) -> float:
        return self.loss_tokens / self.tokens if self.tokens else 0.0

    @property
    def vision_share(self) -> float | None:
        if self.vision_tokens is None:
            return None
        return self.vision_tokens / self.tokens if self.tokens else 0.0

    @property
    def segments(self) -> int:
        return sum(k * n for k, n in self.docs_per_row.items())

    @property
    def mean_docs_per_row(self) -> float:
        return self.segments / self.rows if self.rows else 0.0

    @property
    def mismatches(self) -> list[str]:
        """Where the shards disagree with what the manifest says of them (empty when they agree)."""
        out = []
        if self.rows != self.manifest_rows:
            out.append(f"rows: shards {self.rows:,}, manifest {self.manifest_rows:,}")
        if self.tokens != self.manifest_tokens:
            out.append(f"tokens: shards {self.tokens:,}, manifest {self.manifest_tokens:,}")
        return out


def _segment_lengths(segment_ids: np.ndarray) -> np.ndarray:
    """Tokens of segment k (1-based) in each row of a block: int64 [rows, K], K = max id."""
    rows = segment_ids.shape[0]
    k = int(segment_ids.max()) if segment_ids.size else 0
    if k == 0:
        return np.zeros((rows, 0), np.int64)
    # One bincount for the whole block: row r's segment s lands in bin r * (K + 1) + s.
    flat = (segment_ids.astype(np.int64) + (np.arange(rows, dtype=np.int64) * (k + 1))[:, None]).ravel()
    return np.bincount(flat, minlength=rows * (k + 1)).reshape(rows, k + 1)[:, 1:]


def _accumulate(stats: StageStats, shard: Shard, block_positions: int) -> None:
    seg_all = shard.arrays["segment_ids"]
    loss_all = shard.arrays["loss_mask"]
    vision_all = shard.arrays.get("vision_mask")
    if vision_all is not None and stats.vision_tokens is None:
        stats.vision_tokens = 0
    block = max(1, block_positions // max(shard.length, 1))
    for lo in range(0, shard.num_rows, block):
        seg = seg_all[lo : lo + block]
        real = seg > 0
        stats.tokens += int(real.sum())
        stats.loss_tokens += int(((loss_all[lo : lo + block] > 0) & real).sum())
        if vision_all is not None:
            stats.vision_tokens += int((vision_all[lo : lo + block] > 0).sum())
        lengths = _segment_lengths(seg)
        for r in range(seg.shape[0]):
            ids = shard.doc_ids[lo + r]
            stats.docs_per_row[len(ids)] += 1
            for doc_id, n in zip(ids, lengths[r, : len(ids)].tolist()):
                stats.doc_tokens[doc_id] = stats.doc_tokens.get(doc_id, 0) + n
                stats.segment_lengths[n] += 1
    stats.rows += shard.num_rows
    stats.shards += 1


def iter_stage_shards(output: str, stage: str) -> Iterator[tuple[str, Shard]]:
    """(url, shard) for every shard of a stage, in manifest order, opened one at a time."""
    for url in stage_shard_urls(output, stage):
        yield url, read_shard(url)


def stage_stats(
    output: str, stage: str, manifest: dict[str, Any] | None = None, block_positions: int = BLOCK_POSITIONS
) -> StageStats:
    """Count one stage from its shards (streamed, `block_positions` positions of rows at a time),
    next to what the manifest says of it."""
    manifest = manifest or read_manifest(output)
    entry = manifest["stages"][stage]
    stats = StageStats(
        name=stage, length=int(entry["length"]), min_tokens=int(entry.get("min_tokens") or 0),
        max_tokens=entry.get("max_tokens"), manifest_rows=int(entry["rows"]), manifest_tokens=int(entry["tokens"]),
    )
    for _, shard in iter_stage_shards(output, stage):
        _accumulate(stats, shard, block_positions)
    return stats
