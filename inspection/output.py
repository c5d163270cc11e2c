"""What a pipeline wrote, measured from the files themselves: per-stage statistics, rejects by
reason, document lengths, and one row decoded back into its segments, text and vision blocks.

Everything here reads an output folder (local path or fsspec URL) through `curation.shards`:
shards are opened one at a time and walked in blocks of rows, so memory stays bounded by one
shard whatever the size of a stage. No Beam, no plotting (see `inspection.plots`).
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import fsspec
import numpy as np

from curation.packing import packing_efficiency
from curation.shards import Shard, join_url, read_manifest, read_shard, stage_shard_urls
from curation.vision_layout import CODES_PER_FRAME, UnifiedVocab, VisionVocab, Vocab, decode_layout

if TYPE_CHECKING:
    from tokenizers import Tokenizer

# Rows are walked in blocks of about this many positions, so temporaries stay small even for a
# 256 MiB shard of 1M-token rows.
BLOCK_POSITIONS = 1 << 22
RECORD = "record"  # the unit of a reject that names no unit (curation.accounting.Reject)


# ----------------------------------------------------------------------------------------------
# Per-stage statistics
# ----------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------
# Rejects
# ----------------------------------------------------------------------------------------------


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


def read_rejects(
    output: str, manifest: dict[str, Any] | None = None, examples: int = 3, max_chars: int = 160
) -> RejectSummary:
    """Count the rejects files line by line by (unit, reason), keeping the first `examples` of
    each with their detail cut to `max_chars`, and the token counts that rejects state."""
    manifest = manifest or read_manifest(output)
    groups: dict[tuple[str, str], RejectGroup] = {}
    lengths: dict[str, list[int]] = defaultdict(list)
    files = list(manifest.get("rejects", []))
    for rel in files:
        with fsspec.open(join_url(output, rel), "r", encoding="utf-8") as fh:
            for line in fh:
                if not line.strip():
                    continue
                rec = json.loads(line)
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
    return RejectSummary(ordered, dict(lengths), files, manifest_reject_counts(manifest))


# ----------------------------------------------------------------------------------------------
# Document lengths
# ----------------------------------------------------------------------------------------------


@dataclass
class DocumentLengths:
    """Token lengths of what a stage window judges. Books (`unit` "document"): one length per
    source document, the most tokens it has in any one stage, i.e. the whole document except a
    tail shorter than `min_tail_tokens` dropped in every stage. QA, video and images (`unit`
    "example"): one length per packed example (a segment), over all stages; their documents are
    cut into examples by the pipeline, not filtered by length.
    `kept` counts lengths (tokens -> how many); `rejected[reason]` are the lengths rejects state
    (books' and images' `no_stage`); `per_document` is each source document's largest token count
    in one stage, whatever the kind."""

    unit: str
    kept: Counter
    rejected: dict[str, list[int]]
    per_document: dict[str, int]

    @property
    def kept_count(self) -> int:
        return sum(self.kept.values())

    def kept_quantiles(self, qs: tuple[float, ...] = (0.0, 0.5, 1.0)) -> list[int]:
        """Lengths at the given quantiles of `kept` (lower value at ties), without expanding it."""
        lengths = sorted(self.kept)
        if not lengths:
            return []
        cumulative = np.cumsum([self.kept[n] for n in lengths])
        total = int(cumulative[-1])
        return [lengths[int(np.searchsorted(cumulative, max(1, int(np.ceil(q * total)))))] for q in qs]


def document_lengths(stages: list[StageStats], rejects: RejectSummary | None = None, kind: str = "books") -> DocumentLengths:
    per_document: dict[str, int] = {}
    for stats in stages:
        for doc_id, n in stats.doc_tokens.items():
            per_document[doc_id] = max(per_document.get(doc_id, 0), n)
    if kind == "books":
        unit, kept = "document", Counter(per_document.values())
    else:
        unit, kept = "example", sum((s.segment_lengths for s in stages), Counter())
    return DocumentLengths(unit, kept, dict(rejects.token_lengths) if rejects else {}, per_document)


# ----------------------------------------------------------------------------------------------
# The whole output
# ----------------------------------------------------------------------------------------------


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


def summarize_output(output: str, examples: int = 3, max_chars: int = 160) -> OutputSummary:
    """Manifest, every stage's statistics (shards streamed), rejects and document lengths."""
    manifest = read_manifest(output)
    stages = [stage_stats(output, name, manifest) for name in manifest["stages"]]
    rejects = read_rejects(output, manifest, examples, max_chars)
    return OutputSummary(output, manifest, stages, rejects, document_lengths(stages, rejects, manifest.get("kind", "books")))


# ----------------------------------------------------------------------------------------------
# One row, decoded
# ----------------------------------------------------------------------------------------------


@dataclass
class Span:
    """A run of positions [start, end) of a row. kind: "text" (decoded ids), "vision" (one
    video or image: `codes` [frames, 256]) or "marker" (a unified-layout `<vision>`/`</vision>`
    id). `loss_share`: the share of its positions with loss_mask > 0 (text runs are split where
    the loss switches, so theirs is 0 or 1). A long text run keeps its head in `text` and its
    tail in `tail`, with `elided` tokens between them."""

    kind: str
    start: int
    end: int
    loss_share: float
    text: str = ""
    tail: str = ""
    elided: int = 0
    codes: np.ndarray | None = None

    @property
    def trained(self) -> bool:
        return self.loss_share > 0

    @property
    def frames(self) -> int:
        return 0 if self.codes is None else int(self.codes.shape[0])

    def __len__(self) -> int:
        return self.end - self.start


@dataclass
class SegmentView:
    """Segment `index` (its segment id, 1-based) of a row: a window of document `doc_id`
    starting at `doc_start` (a token offset for books, a frame index for video), at `offset`."""

    index: int
    doc_id: str
    doc_start: int
    offset: int
    length: int
    spans: list[Span]

    @property
    def loss_tokens(self) -> int:
        return int(round(sum(s.loss_share * len(s) for s in self.spans)))


@dataclass
class RowView:
    stage: str
    row: int  # index in the stage (all shards, manifest order)
    url: str
    row_in_shard: int
    length: int
    kind: str
    tokenizer: str
    segments: list[SegmentView]
    warnings: list[str] = field(default_factory=list)

    @property
    def tokens(self) -> int:
        return sum(s.length for s in self.segments)

    @property
    def padding(self) -> int:
        return self.length - self.tokens

    @property
    def vision_spans(self) -> list[tuple[SegmentView, Span]]:
        return [(seg, span) for seg in self.segments for span in seg.spans if span.kind == "vision"]


def locate_row(output: str, stage: str, row: int, manifest: dict[str, Any] | None = None) -> tuple[str, int]:
    """(shard url, row within it) of row `row` of a stage, from the manifest's row counts."""
    manifest = manifest or read_manifest(output)
    if stage not in manifest["stages"]:
        raise KeyError(f"no stage {stage!r}; stages are {list(manifest['stages'])}")
    entries = manifest["stages"][stage]["shards"]
    total = sum(int(s["rows"]) for s in entries)
    if not 0 <= row < total:
        raise IndexError(f"stage {stage!r} has {total:,} rows (0..{total - 1}); no row {row}")
    for entry in entries:
        if row < int(entry["rows"]):
            return join_url(output, entry["path"]), row
        row -= int(entry["rows"])
    raise AssertionError("unreachable")


def vision_vocab_from_metadata(metadata: dict[str, str]) -> Vocab | None:
    """The vision vocabulary a shard's `longctx.vision` metadata describes (None: text only)."""
    raw = metadata.get("longctx.vision")
    if not raw:
        return None
    meta = json.loads(raw)
    if meta.get("layout") == "unified":
        vocab = UnifiedVocab(text_vocab_size=int(meta["offset"]))
    else:
        vocab = VisionVocab(eof=int(meta["eof"]), eov=int(meta["eov"]), size=int(meta["vocab_size"]))
    if (vocab.eof, vocab.eov) != (int(meta["eof"]), int(meta["eov"])):
        raise ValueError(f"shard vision metadata {meta} does not match a {vocab.mode} vocabulary")
    return vocab


def shard_tokenizer(metadata: dict[str, str]) -> dict[str, Any]:
    """What a shard records about its tokenizer (name = the spec it was loaded from, sha256, ...)."""
    return json.loads(metadata.get("longctx.tokenizer", "{}"))


def find_vision_row(output: str, stage: str) -> int | None:
    """The first row of a stage that holds vision tokens (None if none does)."""
    offset = 0
    for _, shard in iter_stage_shards(output, stage):
        vision = shard.arrays.get("vision_mask")
        if vision is not None:
            hits = np.flatnonzero(vision.any(axis=1))
            if hits.size:
                return offset + int(hits[0])
        offset += shard.num_rows
    return None


def _decode(tok: Tokenizer, ids: np.ndarray, lo: int, hi: int) -> str:
    """Text of ids[lo:hi]. Decoded with the token before as context, then that context removed,
    so a run that starts mid-sentence keeps its leading space (SentencePiece decoders strip the
    first space of whatever they decode)."""
    if hi <= lo:
        return ""
    piece = [int(x) for x in ids[lo:hi]]
    if lo > 0:
        ctx = tok.decode([int(ids[lo - 1])], skip_special_tokens=False)
        full = tok.decode([int(ids[lo - 1]), *piece], skip_special_tokens=False)
        if full.startswith(ctx):
            return full[len(ctx):]
    return tok.decode(piece, skip_special_tokens=False)


def _runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) runs of equal values."""
    if not len(flags):
        return []
    cuts = np.flatnonzero(np.diff(flags.astype(np.int8))) + 1
    bounds = [0, *cuts.tolist(), len(flags)]
    return list(zip(bounds[:-1], bounds[1:]))


def _text_spans(tok: Tokenizer, ids: np.ndarray, loss: np.ndarray, lo: int, hi: int, base: int, max_tokens: int | None) -> list[Span]:
    """Text positions [lo, hi) of a segment, split where the loss switches on or off."""
    spans = []
    for a, b in _runs(loss[lo:hi] > 0):
        a, b = lo + a, lo + b
        share = float((loss[a:b] > 0).mean())
        if max_tokens is not None and b - a > max_tokens:
            head = max(max_tokens // 2, 1)
            tail_n = max(max_tokens - head, 1)
            spans.append(Span("text", base + a, base + b, share, _decode(tok, ids, a, a + head),
                              _decode(tok, ids, b - tail_n, b), b - a - head - tail_n))
        else:
            spans.append(Span("text", base + a, base + b, share, _decode(tok, ids, a, b)))
    return spans


def _segment_spans(tok: Tokenizer, ids: np.ndarray, loss: np.ndarray, vision: np.ndarray | None, vocab: Vocab | None,
                   base: int, max_tokens: int | None) -> list[Span]:
    if vision is None or vocab is None or not vision.any():
        return _text_spans(tok, ids, loss, 0, len(ids), base, max_tokens)
    # decode_layout checks the layout and gives each video's codes; the positions of its blocks
    # follow from their lengths (text: its ids; vision: frames x 257), with unified delimiters
    # (consumed by decode_layout) found at the cursor.
    blocks = decode_layout(ids, vision, vocab)
    delimiters = {}
    if isinstance(vocab, UnifiedVocab):
        delimiters = {vocab.vision_start: "<vision>", vocab.vision_end: "</vision>"}
    spans: list[Span] = []
    cursor = 0

    def markers() -> None:
        nonlocal cursor
        while cursor < len(ids) and int(ids[cursor]) in delimiters and not vision[cursor]:
            spans.append(Span("marker", base + cursor, base + cursor + 1, float(loss[cursor] > 0), delimiters[int(ids[cursor])]))
            cursor += 1

    for block in blocks:
        markers()
        if block.kind == "text":
            n = len(block.data)
            spans.extend(_text_spans(tok, ids, loss, cursor, cursor + n, base, max_tokens))
        else:
            n = block.data.shape[0] * (CODES_PER_FRAME + 1)
            share = float((loss[cursor : cursor + n] > 0).mean())
            spans.append(Span("vision", base + cursor, base + cursor + n, share, codes=block.data))
        cursor += n
    markers()
    if cursor != len(ids):
        raise ValueError(f"decoded blocks cover {cursor} of the segment's {len(ids)} positions")
    return spans


def load_row_tokenizer(metadata: dict[str, str], override: str | None = None) -> tuple[Tokenizer, str, list[str]]:
    """(tokenizer, spec, warnings): the shard's own tokenizer, or `override`; a warning when the
    override is not the file the shard was made with (its sha256 differs)."""
    from curation.tokenize import load_tokenizer

    recorded = shard_tokenizer(metadata)
    spec = override or recorded.get("name")
    if not spec:
        raise ValueError("the shard records no tokenizer; pass one (--tokenizer SPEC)")
    tok, info = load_tokenizer(spec)
    warnings = []
    if recorded.get("sha256") and info.sha256 != recorded["sha256"]:
        warnings.append(f"tokenizer {spec!r} (sha256 {info.sha256[:12]}) is not the one the shard was made with "
                        f"({recorded.get('name')!r}, sha256 {recorded['sha256'][:12]}): text may decode wrongly")
    return tok, spec, warnings


def describe_row(
    output: str,
    stage: str,
    row: int,
    tokenizer: str | None = None,
    max_span_tokens: int | None = 400,
    manifest: dict[str, Any] | None = None,
) -> RowView:
    """Row `row` of `stage` decoded: its segments (from the segment ids), each split into text
    runs of equal loss (decoded with the shard's tokenizer, or `tokenizer`), vision blocks (their
    codes) and unified delimiters. Text runs longer than `max_span_tokens` keep their head and
    tail (None: keep everything)."""
    url, r = locate_row(output, stage, row, manifest)
    shard = read_shard(url)
    tok, spec, warnings = load_row_tokenizer(shard.metadata, tokenizer)
    vocab = vision_vocab_from_metadata(shard.metadata)
    ids = shard.arrays["input_ids"][r]
    seg = shard.arrays["segment_ids"][r]
    loss = shard.arrays["loss_mask"][r]
    vision = shard.arrays.get("vision_mask")
    vision = None if vision is None else vision[r]
    # Each segment id's positions, found in one pass over the row's runs of equal ids (a 1M-token
    # row may hold hundreds of segments).
    bounds = [0, *(np.flatnonzero(seg[1:] != seg[:-1]) + 1).tolist(), len(seg)]
    runs: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        runs[int(seg[lo])].append((lo, hi))
    segments = []
    for index, (doc_id, doc_start) in enumerate(zip(shard.doc_ids[r], shard.doc_starts[r]), start=1):
        if index not in runs:
            warnings.append(f"segment {index} ({doc_id}) has no tokens")
            continue
        if len(runs[index]) > 1:
            warnings.append(f"segment {index} ({doc_id}) is not contiguous; showing its first run")
        lo, hi = runs[index][0]
        spans = _segment_spans(tok, ids[lo:hi], loss[lo:hi], None if vision is None else vision[lo:hi], vocab, lo, max_span_tokens)
        segments.append(SegmentView(index, doc_id, int(doc_start), lo, hi - lo, spans))
    return RowView(stage, row, url, r, shard.length, shard.metadata.get("longctx.kind", "?"), spec, segments, warnings)


# ----------------------------------------------------------------------------------------------
# A training run (longctx train / train-stages): metrics.jsonl, config.yaml, checkpoints/
# ----------------------------------------------------------------------------------------------

RUN_CONFIG = "config.yaml"
RUN_METRICS = "metrics.jsonl"
# Keys a metrics line may carry (training/train.py), in the order they are plotted. The learning
# rate is plotted when the trainer logs it (under either name).
LOSS_KEYS = ("loss", "text_loss", "vision_loss")
LR_KEYS = ("lr", "learning_rate")


@dataclass
class TrainingRun:
    """One run folder as its files say: the config it trained with, one record per logged step
    (lines that do not parse, e.g. one cut by a kill, are counted in `bad_lines`), and the
    checkpoints found under checkpoints/ (step checkpoints by step, and whether `final` exists)."""

    name: str
    path: str
    config: dict[str, Any]
    records: list[dict[str, Any]]
    checkpoint_steps: list[int]
    final: bool
    bad_lines: int = 0

    def series(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """(steps, values) of the records that carry a number under `key`."""
        pairs = [(int(r["step"]), float(r[key])) for r in self.records if isinstance(r.get(key), (int, float))]
        steps, values = zip(*pairs) if pairs else ((), ())
        return np.asarray(steps, np.int64), np.asarray(values, np.float64)

    def has(self, key: str) -> bool:
        return any(isinstance(r.get(key), (int, float)) for r in self.records)

    @property
    def lr_key(self) -> str | None:
        return next((k for k in LR_KEYS if self.has(k)), None)

    @property
    def last_step(self) -> int:
        return int(self.records[-1]["step"]) if self.records else 0

    @property
    def planned_steps(self) -> int | None:
        steps = self.config.get("steps")
        return int(steps) if isinstance(steps, int) else None

    def last(self, key: str) -> float | None:
        _, values = self.series(key)
        return float(values[-1]) if values.size else None

    def mean(self, key: str, last_n: int = 10) -> float | None:
        _, values = self.series(key)
        return float(values[-last_n:].mean()) if values.size else None


def _fs_join(root: str, *parts: str) -> str:
    return "/".join([root.rstrip("/"), *parts])


def is_training_run(path: str) -> bool:
    """A folder `longctx train` wrote: config.yaml and metrics.jsonl, no manifest.json."""
    fs, root = fsspec.core.url_to_fs(path)
    return fs.exists(_fs_join(root, RUN_METRICS)) and fs.exists(_fs_join(root, RUN_CONFIG))


def read_training_run(path: str, name: str | None = None) -> TrainingRun:
    """One run folder (local path or fsspec URL) read back: config, metrics, checkpoints."""
    import yaml

    fs, root = fsspec.core.url_to_fs(path)
    with fs.open(_fs_join(root, RUN_CONFIG), "r", encoding="utf-8") as fh:
        config = yaml.safe_load(fh) or {}
    records, bad = [], 0
    with fs.open(_fs_join(root, RUN_METRICS), "r", encoding="utf-8") as fh:
        for line in fh:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                int(record["step"])
            except (ValueError, KeyError, TypeError):
                bad += 1
                continue
            records.append(record)
    records.sort(key=lambda r: int(r["step"]))
    steps_dir = _fs_join(root, "checkpoints", "steps")
    steps = []
    if fs.isdir(steps_dir):
        steps = sorted(int(p.rstrip("/").rsplit("/", 1)[-1]) for p in fs.ls(steps_dir, detail=False)
                       if p.rstrip("/").rsplit("/", 1)[-1].isdigit())
    final = fs.isdir(_fs_join(root, "checkpoints", "final"))
    return TrainingRun(name or root.rstrip("/").rsplit("/", 1)[-1], path, config if isinstance(config, dict) else {},
                       records, steps, final, bad)


def _stage_order(runs: list[TrainingRun]) -> list[TrainingRun]:
    """A train-stages folder's stages in training order: each stage starts from the previous
    stage's checkpoints/final (its config's init_from); stages no sibling leads to come first."""
    by_final = {f"{r.name}/checkpoints/final": r for r in runs}
    previous = {}
    for run in runs:
        init = str(run.config.get("init_from") or "").rstrip("/")
        parent = next((r for key, r in by_final.items() if init.endswith("/" + key) or init == key), None)
        if parent is not None and parent is not run:
            previous[run.name] = parent.name
    ordered, placed = [], set()
    while len(ordered) < len(runs):
        ready = [r for r in runs if r.name not in placed and previous.get(r.name) in (None, *placed)]
        ready = ready or [r for r in runs if r.name not in placed]  # a cycle cannot happen; never loop
        ready.sort(key=lambda r: r.name)
        ordered.append(ready[0])
        placed.add(ready[0].name)
    return ordered


def training_runs(path: str) -> list[TrainingRun]:
    """The run at `path`, or, for a train-stages folder, each stage's run in training order; []
    when `path` is neither."""
    if is_training_run(path):
        return [read_training_run(path)]
    fs, root = fsspec.core.url_to_fs(path)
    if not fs.isdir(root):
        return []
    runs = [read_training_run(_fs_join(path, sub.rstrip("/").rsplit("/", 1)[-1]))
            for sub in sorted(fs.ls(root, detail=False)) if is_training_run(_fs_join(path, sub.rstrip("/").rsplit("/", 1)[-1]))]
    return _stage_order(runs)
