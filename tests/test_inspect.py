"""`longctx inspect` on real outputs: the books pipeline's shards (conftest `book_shards`), a video
job over the real sample clips with a small random VQGAN, and a unified-layout row written here.
Every number is checked against what pyarrow reads from the files or what the tokenizer gives
for the sample books, never against the code under test."""

from __future__ import annotations

import json
import re
import struct
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from inspection.output import summarize_output
from inspection.rows import describe_row
from inspection.stage_stats import stage_stats
from curation.text import CleanConfig, clean_text
from curation.tokenize import encode_long
from longctx.cli import main
from tests.conftest import DEMO_TOKENIZER, REPO, cli_error

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------------------------
# Independent readers
# ----------------------------------------------------------------------------------------------


def _arrow_table(path: Path) -> pa.Table:
    return pa.ipc.open_stream(pa.memory_map(str(path))).read_all()


def _column(table: pa.Table, name: str) -> np.ndarray:
    """A fixed-size-list column as [rows, L] numpy, read with pyarrow alone."""
    column = table.column(name).combine_chunks()
    return column.flatten().to_numpy().reshape(len(column), -1)


def _stage_tables(out: Path, stage: str) -> list[pa.Table]:
    manifest = json.loads((out / "manifest.json").read_text())
    return [_arrow_table(out / s["path"]) for s in manifest["stages"][stage]["shards"]]


def _png_size(path: Path) -> tuple[int, int]:
    """(width, height) from the PNG's IHDR chunk, after checking the signature."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def _assert_real_png(path: Path, min_width: int = 400, min_height: int = 250) -> None:
    import matplotlib.image

    width, height = _png_size(path)
    assert width >= min_width and height >= min_height, (path, width, height)
    assert path.stat().st_size > 10_000, path
    pixels = matplotlib.image.imread(str(path))
    assert pixels.shape[:2] == (height, width)
    assert pixels[..., :3].std() > 0.05, f"{path} is (nearly) blank"


def _flat(text: str) -> str:
    """Whitespace collapsed, rich's box-drawing characters removed: what a reader sees."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())


# ----------------------------------------------------------------------------------------------
# Books
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def books_summary(book_shards):
    return summarize_output(str(book_shards))


def test_stage_stats_match_the_shards_read_with_pyarrow(book_shards, books_summary):
    manifest = json.loads((book_shards / "manifest.json").read_text())
    assert [s.name for s in books_summary.stages] == list(manifest["stages"]) == ["s128", "s256"]
    for stats in books_summary.stages:
        rows = tokens = loss = 0
        docs_per_row = Counter()
        for table in _stage_tables(book_shards, stats.name):
            seg, mask = _column(table, "segment_ids"), _column(table, "loss_mask")
            rows += table.num_rows
            tokens += int((seg > 0).sum())
            loss += int(((mask > 0) & (seg > 0)).sum())
            docs_per_row.update(len(ids) for ids in table.column("doc_ids").to_pylist())
        length = manifest["stages"][stats.name]["length"]
        assert (stats.rows, stats.tokens, stats.loss_tokens) == (rows, tokens, loss)
        assert stats.capacity == rows * length and stats.padding == rows * length - tokens
        assert stats.packing_efficiency == pytest.approx(tokens / (rows * length))
        assert stats.packing_efficiency == pytest.approx(manifest["stages"][stats.name]["packing_efficiency"], abs=1e-6)
        assert dict(stats.docs_per_row) == dict(docs_per_row)
        assert stats.loss_share == 1.0 and stats.vision_share is None  # books: every token is trained on
        assert stats.mismatches == []
        # Walking the rows a few at a time gives the same counts as whole shards.
        small = stage_stats(str(book_shards), stats.name, block_positions=1000)
        assert (small.rows, small.tokens, small.loss_tokens, small.docs_per_row, small.doc_tokens) == (
            stats.rows, stats.tokens, stats.loss_tokens, stats.docs_per_row, stats.doc_tokens)


def test_document_lengths_are_the_books_token_counts(book_shards, books_summary, sample_books, demo_tokenizer):
    manifest = json.loads((book_shards / "manifest.json").read_text())
    docs = books_summary.documents
    assert docs.unit == "document" and docs.kept == Counter(docs.per_document.values())
    # Windows of 128 and 256 tokens with min_tail_tokens 1024: each stage drops the last partial
    # window, so a book's longest presence is its length rounded down to 128, and what s128
    # dropped plus the no_stage books' lengths (their `tokens` field) make up the rest of the tokens the job read
    # (tokens_in = kept + no_stage).
    stated = [r["tokens"] for f in (book_shards / "rejects").glob("*.jsonl")
              for r in map(json.loads, f.read_text().splitlines()) if r["reason"] == "no_stage"]
    assert sum(docs.per_document.values()) + manifest["stages"]["s128"]["dropped_tail_tokens"] + sum(stated) == manifest["tokens_in"]
    tok, info = demo_tokenizer
    shortest = min(sample_books, key=lambda b: len(b["text"]))  # one book, tokenized here (cheap)
    n = len(encode_long(tok, clean_text(shortest["text"], CleanConfig()), info.bos_id, info.eos_id))
    assert docs.per_document[shortest["id"]] == n - n % 128
    # Rejected books' lengths are the ones their rejects state.
    assert stated and sorted(docs.rejected["no_stage"]) == sorted(stated)
    assert all(not 100_000 <= x < 250_000 for x in stated) and all(100_000 <= x < 250_000 for x in docs.per_document.values())


def test_rejects_by_reason_equal_the_manifest_counters(book_shards, books_summary):
    manifest = json.loads((book_shards / "manifest.json").read_text())
    rejects = books_summary.rejects
    assert rejects.counts() == manifest["rejected"] and manifest["rejected"]
    assert rejects.total == manifest["rejected_total"]
    assert rejects.mismatches == []
    lines = [json.loads(x) for f in (book_shards / "rejects").glob("*.jsonl") for x in f.read_text().splitlines() if x]
    for group in rejects.groups:
        ids = {r["id"] for r in lines if r["reason"] == group.reason}
        assert 1 <= len(group.examples) <= 3 and {e.id for e in group.examples} <= ids
        assert all(len(e.detail) <= 160 for e in group.examples)


def _check_segments(view, table: pa.Table, r: int) -> None:
    """A decoded row against pyarrow's arrays: boundaries, doc ids and starts, loss per span."""
    seg, loss = _column(table, "segment_ids")[r], _column(table, "loss_mask")[r]
    assert view.tokens == int((seg > 0).sum()) and view.padding == len(seg) - view.tokens
    assert [s.doc_id for s in view.segments] == table.column("doc_ids").to_pylist()[r]
    assert [s.doc_start for s in view.segments] == table.column("doc_starts").to_pylist()[r]
    for k, segment in enumerate(view.segments, start=1):
        where = np.flatnonzero(seg == k)
        assert (segment.offset, segment.length) == (int(where[0]), len(where))
        assert segment.spans[0].start == segment.offset and segment.spans[-1].end == segment.offset + segment.length
        assert all(a.end == b.start for a, b in zip(segment.spans, segment.spans[1:]))
        for span in segment.spans:
            assert span.loss_share == float((loss[span.start : span.end] > 0).mean())


def test_row_decodes_into_the_segments_of_the_arrays(book_shards, sample_books):
    """A row of s256, whole: boundaries, ids and loss as pyarrow reads them, and text that is a
    passage of the right book."""
    table = _stage_tables(book_shards, "s256")[0]
    view = describe_row(str(book_shards), "s256", 5, max_span_tokens=None)
    _check_segments(view, table, 5)
    texts = {b["id"]: _flat(clean_text(b["text"], CleanConfig())) for b in sample_books}
    for segment in view.segments:
        text = _flat("".join(s.text for s in segment.spans).replace("<s>", "").replace("</s>", ""))
        middle = text[len(text) // 4 : 3 * len(text) // 4]
        assert len(middle) > 200 and middle in texts[segment.doc_id]


def test_cli_prints_the_summary_writes_plots_and_decodes_a_row(book_shards, sample_books, tmp_path, capsys):
    manifest = json.loads((book_shards / "manifest.json").read_text())
    plots = tmp_path / "plots"
    assert main(["inspect", str(book_shards), "--plots", str(plots), "--stage", "s128", "--row", "0"]) == 0
    printed = capsys.readouterr().out
    flat = _flat(printed)
    for name, stage in manifest["stages"].items():
        assert re.search(rf"{name} .*{stage['rows']:,} .*{stage['tokens']:,} .*{100 * stage['packing_efficiency']:.2f}%", flat)
    for reason, count in manifest["rejected"].items():
        assert re.search(rf"record {reason} {count:,} ", flat)
    assert "agrees" in flat and "disagree" not in flat
    # The row: the decoded text of its window of the book, marked as trained.
    table = _stage_tables(book_shards, "s128")[0]
    doc_id, start = table.column("doc_ids").to_pylist()[0][0], table.column("doc_starts").to_pylist()[0][0]
    assert f"segment 1: {doc_id} from {start:,}" in flat
    length = int((_column(table, "segment_ids")[0] == 1).sum())
    assert f"positions loss content 0-{length:,} trained " in flat  # books: one run, loss on every token
    view = describe_row(str(book_shards), "s128", 0)
    words = _flat(view.segments[0].spans[0].text.replace("<s>", ""))[:80]
    book = next(b for b in sample_books if b["id"] == doc_id)
    assert words[10:70] in _flat(clean_text(book["text"], CleanConfig())) and words in flat
    written = [plots / n for n in ("document_lengths.png", "tokens_per_stage.png", "docs_per_row.png", "loss_share.png")]
    for path in written:
        assert str(path) in printed
        _assert_real_png(path)


def test_cli_usage_errors(book_shards, tmp_path, capsys):
    # As every command reports a user's mistake: usage and one line on stderr, exit code 2.
    line = cli_error(["inspect", str(tmp_path), "--no-plots"], capsys)[-1]
    assert line.startswith(f"longctx inspect: error: {tmp_path} has no manifest.json"), line
    line = cli_error(["inspect", str(book_shards), "--no-plots", "--stage", "nope"], capsys)[-1]
    assert line == f"longctx inspect: error: no stage 'nope' in {book_shards}; stages are s128, s256"
    rows = json.loads((book_shards / "manifest.json").read_text())["stages"]["s256"]["rows"]
    line = cli_error(["inspect", str(book_shards), "--no-plots", "--stage", "s256", "--row", str(rows)], capsys)[-1]
    assert line == f"longctx inspect: error: --row {rows}: stage s256 has {rows:,} rows (0 to {rows - 1:,})"


# ----------------------------------------------------------------------------------------------
# Video
# ----------------------------------------------------------------------------------------------


def _random_vqgan(folder: Path) -> Path:
    """A small VQGAN with random weights, saved. The shapes come from `jax.eval_shape` and the
    values from numpy: `init_params` would compile the whole model first (~30 s on 2 shared
    cores), and random weights are all these tests need (the frames are noise either way)."""
    import jax
    import jax.numpy as jnp

    from curation.vqgan import VQGANConfig, VQModel, save_params

    config = VQGANConfig.tiny()
    shapes = jax.eval_shape(VQModel(config).init, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))["params"]
    rng = np.random.default_rng(0)

    def fill(path, leaf):
        name = path[-1].key
        if name in ("scale", "bias"):  # GroupNorm and conv biases: identity and zero
            return np.full(leaf.shape, 1.0 if name == "scale" else 0.0, np.float32)
        fan_in = int(np.prod(leaf.shape[:-1])) or 1
        return (rng.standard_normal(leaf.shape) / np.sqrt(fan_in)).astype(np.float32)

    return save_params(folder, config, jax.tree_util.tree_map_with_path(fill, shapes))


@pytest.fixture(scope="module")
def video_output(tmp_path_factory):
    """The video job over data/sample/videos (two real clips), six 32x32 frames each, as
    tests/test_video_pipeline.py::test_real_sample_videos builds it."""
    pytest.importorskip("decord")
    from pipelines.config import VideoConfig
    from pipelines.launch import run_video

    folder = tmp_path_factory.mktemp("inspect-video")
    vqgan = _random_vqgan(folder / "vqgan")
    cfg = VideoConfig.model_validate({
        "inputs": [str(REPO / "data" / "sample" / "videos" / "manifest.jsonl")], "output": str(folder / "out"),
        "tokenizer": DEMO_TOKENIZER, "vqgan": str(vqgan), "stages": ["v4k=4096:0-"], "frame_count": 6, "frame_size": 32,
    })
    manifest = run_video(cfg, ["--runner=DirectRunner", "--direct_running_mode=in_memory"])
    assert manifest["kept"] == 2
    return folder / "out", vqgan


def test_video_row_and_frame_grid(video_output, tmp_path, capsys):
    out, vqgan = video_output
    table = _stage_tables(out, "v4k")[0]
    ids, vision = _column(table, "input_ids")[0], _column(table, "vision_mask")[0]
    seg = _column(table, "segment_ids")[0]
    # Frames end with <eof> (8192) or <eov> (8193), videos with <eov>: counted in the raw arrays.
    frames = int(np.isin(ids[vision > 0], (8192, 8193)).sum())
    videos = int((ids[vision > 0] == 8193).sum())
    assert (frames, videos) == (12, 2)

    plots = tmp_path / "plots"
    assert main(["inspect", str(out), "--vqgan", str(vqgan), "--row", "0", "--plots", str(plots)]) == 0
    flat = _flat(capsys.readouterr().out)
    assert f"frame grid: row 0 of stage v4k, {frames} of {frames} frames decoded from {videos} of {videos} vision block(s)" in flat
    assert flat.count("[video: 6 frames x 256 codes]") == videos
    assert "no loss" in flat and "trained" in flat  # the text before a video is conditioning
    assert "A large white rabbit steps out of his burrow" in flat and "Cyclists ride past on a city street" in flat
    grid = plots / "frames_v4k_row0.png"
    _assert_real_png(grid, min_width=900)
    for name in ("document_lengths.png", "tokens_per_stage.png", "docs_per_row.png", "loss_share.png"):
        _assert_real_png(plots / name)

    # Two clips share the row: their segments, and their vision blocks carry exactly the codes of
    # the arrays.
    view = describe_row(str(out), "v4k", 0)
    assert len(view.segments) == 2
    _check_segments(view, table, 0)
    blocks = view.vision_spans
    assert [span.frames for _, span in blocks] == [6, 6]
    for _, span in blocks:
        raw = ids[span.start : span.end].reshape(-1, 257)
        assert np.array_equal(span.codes, raw[:, :256])
    stats = summarize_output(str(out)).stage("v4k")
    assert stats.vision_share == pytest.approx(int((vision > 0).sum()) / int((seg > 0).sum()))


def test_video_without_vqgan_skips_the_grid(video_output, tmp_path, capsys):
    out, _ = video_output
    assert main(["inspect", str(out), "--plots", str(tmp_path)]) == 0
    flat = _flat(capsys.readouterr().out)
    assert "frame grid skipped: these shards hold VQGAN codes; pass --vqgan PATH" in flat
    # A video job applies no length window (v4k=4096:0- records one): the table shows its real rule.
    assert "v4k 4,096 cut to fit L 1 " in flat and "0-inf" not in flat
    assert sorted(p.name for p in tmp_path.glob("*.png")) == sorted(
        ["document_lengths.png", "tokens_per_stage.png", "docs_per_row.png", "loss_share.png"])


def test_unified_layout_row(tmp_path, demo_tokenizer):
    """A unified-vocabulary row written with the public shard functions: text, <vision>, the
    frames, </vision>, text, each span with its loss."""
    from curation.manifest import build_manifest
    from curation.packing import RowArrays
    from curation.shards import write_shard
    from curation.stages import Stage
    from curation.vision_layout import UnifiedVocab, layout_video
    from pipelines.vision_text import vision_metadata

    tok, info = demo_tokenizer
    vocab = UnifiedVocab(info.vocab_size)
    before = tok.encode("A caption first.", add_special_tokens=False).ids
    after = tok.encode("And text after.", add_special_tokens=False).ids
    codes = [np.random.default_rng(i).integers(0, 8192, (16, 16)) for i in range(3)]
    tokens, vision, loss = layout_video(codes, before, after, vocab=vocab)
    rows = RowArrays.empty(1, 1024, with_vision=True)
    rows.place(0, 0, 0, tokens, "clip", 0, loss_mask=loss, vision_mask=vision)
    meta = {"kind": "video", "stage": "u", "tokenizer": info.as_metadata(), "vision": vision_metadata("unified", info.vocab_size)}
    shard = write_shard(str(tmp_path), "u", 0, 1, rows.finish(), meta)
    manifest = build_manifest("video", {"read": 1, "kept": 1}, [Stage("u", 1024)], [shard], {}, [])
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))

    spans = describe_row(str(tmp_path), "u", 0).segments[0].spans
    assert [s.kind for s in spans] == ["text", "marker", "vision", "marker", "text"]
    assert [s.trained for s in spans] == [False, True, True, True, True]
    assert spans[0].text == "A caption first." and spans[-1].text.strip() == "And text after."
    assert [spans[1].text, spans[3].text] == ["<vision>", "</vision>"]
    assert np.array_equal(spans[2].codes, np.stack([c.reshape(-1) for c in codes]))
    assert (spans[2].start, spans[2].end) == (len(before) + 1, len(before) + 1 + 3 * 257)
