"""One row of a stage decoded back into what it holds: its segments (documents), each split into
text runs of equal loss (decoded with the shard's tokenizer), vision blocks (their VQGAN codes)
and unified-layout delimiters.

A row is read on its own (`curation.shards.ShardReader`: its token columns, one byte range each),
and what the shard records about how it was made comes from its typed `ShardMetadata`.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from curation.shards import ShardMetadata, ShardReader, join_url, read_manifest, read_shard, read_shard_headers, stage_shard_urls
from curation.vision_layout import CODES_PER_FRAME, UnifiedVocab, Vocab, decode_layout
from inspection.stage_stats import BLOCK_POSITIONS

if TYPE_CHECKING:
    from tokenizers import Tokenizer

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



def find_vision_row(output: str, stage: str, block_positions: int = BLOCK_POSITIONS) -> int | None:
    """The first row of a stage that holds vision tokens (None if none does): only the
    vision_mask column is read, a block of rows at a time."""
    offset = 0
    urls = stage_shard_urls(output, stage)
    for url, header in zip(urls, read_shard_headers(urls)):
        if "vision_mask" in header.columns:
            reader = ShardReader(url, header)
            block = max(1, block_positions // max(header.length, 1))
            for lo in range(0, header.num_rows, block):
                rows = np.arange(lo, min(lo + block, header.num_rows))
                hits = np.flatnonzero(reader.read(rows, names=["vision_mask"])["vision_mask"].any(axis=1))
                if hits.size:
                    return offset + lo + int(hits[0])
        offset += header.num_rows
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


def load_row_tokenizer(metadata: ShardMetadata, override: str | None = None) -> tuple[Tokenizer, str, list[str]]:
    """(tokenizer, spec, warnings): the shard's own tokenizer, or `override`; a warning when the
    override is not the file the shard was made with (its sha256 differs)."""
    from curation.tokenize import load_tokenizer

    recorded = metadata.tokenizer
    spec = override or recorded.get("name")
    if not spec:
        raise ValueError("the shard records no tokenizer; pass one (--tokenizer SPEC)")
    tok, info = load_tokenizer(spec)
    warnings = []
    made_with = metadata.tokenizer_identity()["tokenizer sha256"]
    if made_with and info.sha256 != made_with:
        warnings.append(f"tokenizer {spec!r} (sha256 {info.sha256[:12]}) is not the one the shard was made with "
                        f"({recorded.get('name')!r}, sha256 {made_with[:12]}): text may decode wrongly")
    return tok, spec, warnings


def row_documents(url: str, row: int) -> tuple[list[str], list[int]]:
    """(doc ids, doc starts) of one row of a shard, through the one shard reader (`read_shard`:
    a local shard is memory-mapped, so only these columns' pages are touched; a remote one is
    fetched whole, the one case where `--row` reads more than its row: ShardReader's byte ranges
    cover the token columns only)."""
    shard = read_shard(url)
    return list(shard.doc_ids[row]), [int(x) for x in shard.doc_starts[row]]


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
    tail (None: keep everything). Only that row's token columns are read (ShardReader)."""
    url, r = locate_row(output, stage, row, manifest)
    header = read_shard_headers([url])[0]
    metadata = header.metadata
    tok, spec, warnings = load_row_tokenizer(metadata, tokenizer)
    vocab = metadata.vision_vocab()
    names = [name for name in header.columns if name != "positions"]  # positions are not shown
    arrays = {name: values[0] for name, values in ShardReader(url, header).read(np.array([r]), names=names).items()}
    ids, seg, loss = arrays["input_ids"], arrays["segment_ids"], arrays["loss_mask"]
    vision = arrays.get("vision_mask")
    doc_ids, doc_starts = row_documents(url, r)
    # Each segment id's positions, found in one pass over the row's runs of equal ids (a 1M-token
    # row may hold hundreds of segments).
    bounds = [0, *(np.flatnonzero(seg[1:] != seg[:-1]) + 1).tolist(), len(seg)]
    runs: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        runs[int(seg[lo])].append((lo, hi))
    segments = []
    for index, (doc_id, doc_start) in enumerate(zip(doc_ids, doc_starts), start=1):
        if index not in runs:
            warnings.append(f"segment {index} ({doc_id}) has no tokens")
            continue
        if len(runs[index]) > 1:
            warnings.append(f"segment {index} ({doc_id}) is not contiguous; showing its first run")
        lo, hi = runs[index][0]
        spans = _segment_spans(tok, ids[lo:hi], loss[lo:hi], None if vision is None else vision[lo:hi], vocab, lo, max_span_tokens)
        segments.append(SegmentView(index, doc_id, int(doc_start), lo, hi - lo, spans))
    return RowView(stage, row, url, r, header.length, metadata.kind or "?", spec, segments, warnings)
