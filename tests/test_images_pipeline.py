"""The image-text pipeline end to end: Parquet with image bytes, JSONL with paths, broken images."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from curation.shards import read_shard
from curation.tokenize import load_tokenizer
from curation.vqgan import VQGAN, VQGANConfig, init_params, save_params
from pipelines.config import ImagesConfig
from curation.vision_encode import decode_image
from pipelines.launch import run_images
from tests.conftest import DEMO_TOKENIZER, stage_rows

SIZE = 32


def _png(w: int, h: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def images_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    config = VQGANConfig.tiny()
    save_params(folder / "vqgan", config, init_params(config, seed=5, image_size=SIZE))
    pngs = {f"p{i}": _png(40 + 10 * i, 30 + 7 * i, i) for i in range(5)}
    pq.write_table(pa.table({
        "id": list(pngs) + ["broken"],
        "image": list(pngs.values()) + [b"\x89PNG not really"],
        "text": [f"Random noise picture number {i}." for i in range(5)] + ["broken"],
    }), folder / "pairs.parquet")
    (folder / "cat.png").write_bytes(_png(64, 48, 9))
    (folder / "pairs.jsonl").write_text(
        json.dumps({"id": "file", "image": "cat.png", "text": "A picture from a file."}) + "\n"
        + json.dumps({"id": "gone", "image": "missing.png", "text": "x"}) + "\n"
    )
    out = tmp_path_factory.mktemp("images-out") / "out"
    cfg = ImagesConfig.model_validate({
        "inputs": [str(folder / "pairs.parquet"), str(folder / "pairs.jsonl")], "output": str(out),
        "tokenizer": DEMO_TOKENIZER, "vqgan": str(folder / "vqgan"), "stages": ["img=512:0-"],
        "frame_size": SIZE, "encode_batch": 4,
    })
    return folder, out, run_images(cfg, ["--runner=DirectRunner", "--direct_running_mode=in_memory"]), pngs


def test_pairs_are_accounted_for_and_laid_out(images_run):
    folder, out, manifest, pngs = images_run
    assert manifest["read"] == 8 == manifest["kept"] + manifest["rejected_total"]
    assert manifest["rejected"] == {"unreadable_image": 2}
    vqgan = VQGAN.load(folder / "vqgan", batch_size=4)
    expected = {k: vqgan.encode(decode_image(v, SIZE)[None])[0].reshape(-1) for k, v in pngs.items()}
    expected["file"] = vqgan.encode(decode_image((folder / "cat.png").read_bytes(), SIZE)[None])[0].reshape(-1)
    tok, _ = load_tokenizer(DEMO_TOKENIZER)
    seen, generation = set(), set(expected)
    for shard in manifest["stages"]["img"]["shards"]:
        view = read_shard(str(out / shard["path"]))
        for r in range(view.num_rows):
            for k, doc_id in enumerate(view.doc_ids[r], start=1):
                span = view.arrays["segment_ids"][r] == k
                ids, vision, loss = (view.arrays[c][r][span] for c in ("input_ids", "vision_mask", "loss_mask"))
                codes = ids[vision > 0]
                assert len(codes) == 257 and codes[-1] == 8193  # one frame, closed by <eov>
                assert np.array_equal(codes[:256], expected[doc_id])
                # Loss is on the caption (captioning) or on the image and its markers (generation), never both.
                scored_text = tok.decode(ids[(loss > 0) & (vision == 0)].tolist())
                if (loss[vision > 0] > 0).all():
                    assert "picture" not in scored_text and scored_text.replace(" ", "") == "<vision></vision>"
                else:
                    assert (loss[vision > 0] == 0).all() and "picture" in scored_text
                    generation.discard(doc_id)
                seen.add(doc_id)
    assert seen == set(expected)
    assert 0 < len(generation) < len(seen)  # caption position "auto" gives both kinds


def test_separate_layout_metadata_and_rows_decode(images_run):
    """The default layout: the shard says `separate`, and a row decodes with the release's vocabulary
    (codes 0..8191 in their own id space, `<vision>`/`</vision>` as text ids)."""
    from curation.vision_layout import DEFAULT_VISION_VOCAB, decode_layout

    _, out, manifest, _ = images_run
    view = read_shard(str(out / manifest["stages"]["img"]["shards"][0]["path"]))
    assert json.loads(view.metadata["longctx.vision"])["layout"] == "separate"
    span = view.arrays["segment_ids"][0] == 1
    blocks = decode_layout(view.arrays["input_ids"][0][span], view.arrays["vision_mask"][0][span], DEFAULT_VISION_VOCAB)
    assert [b.kind for b in blocks] == ["text", "vision", "text"] and blocks[1].data.shape == (1, 256)


def test_unified_layout_from_the_images_flag(images_run, tmp_path):
    """`longctx images --vision-layout unified`: the flag reaches the config, the shards say so,
    and every row decodes exactly with the unified vocabulary (codes after the 32,000 text ids)."""
    from apache_beam.options.pipeline_options import PipelineOptions

    from curation.vision_layout import UnifiedVocab, decode_layout
    from pipelines.jobs import DATA_JOBS

    folder, _, _, pngs = images_run
    cfg = DATA_JOBS["images"].config_from(PipelineOptions([
        "--input", str(folder / "pairs.parquet"), "--output", str(tmp_path / "u"), "--tokenizer", DEMO_TOKENIZER,
        "--vqgan", str(folder / "vqgan"), "--stages", "img=512:0-", "--frame-size", str(SIZE), "--encode-batch", "4",
        "--vision-layout", "unified", "--caption-position", "before",
    ]))
    assert cfg.vision_layout == "unified"
    manifest = run_images(cfg, ["--runner=DirectRunner", "--direct_running_mode=in_memory"])
    assert manifest["kept"] == len(pngs)
    vocab = UnifiedVocab(32000)
    vqgan = VQGAN.load(folder / "vqgan", batch_size=4)
    tok, _ = load_tokenizer(DEMO_TOKENIZER)
    decoded = {}
    for shard in manifest["stages"]["img"]["shards"]:
        view = read_shard(str(tmp_path / "u" / shard["path"]))
        meta = json.loads(view.metadata["longctx.vision"])
        assert (meta["layout"], meta["offset"], meta["vision_start_id"], meta["vocab_size"]) == ("unified", 32000, 40194, 40196)
        for r in range(view.num_rows):
            for k, doc_id in enumerate(view.doc_ids[r], start=1):
                span = view.arrays["segment_ids"][r] == k
                ids = view.arrays["input_ids"][r][span]
                assert {40194, 40195} <= set(ids.tolist())  # <vision>/</vision> as single ids
                decoded[doc_id] = decode_layout(ids, view.arrays["vision_mask"][r][span], vocab)
    assert set(decoded) == set(pngs)
    for doc_id, blocks in decoded.items():
        assert [b.kind for b in blocks] == ["text", "vision", "text"]  # BOS + caption, the image, EOS
        assert tok.decode(blocks[0].data.tolist()).strip() == f"Random noise picture number {doc_id[1:]}."
        expected = vqgan.encode(decode_image(pngs[doc_id], SIZE)[None])[0].reshape(-1)
        assert np.array_equal(blocks[1].data[0], expected)


def test_rows_follow_the_records_not_their_folder(images_run, tmp_path):
    """The same pairs read from another folder give the same rows, caption positions included
    (`auto` flips a coin on the record, not on its path); identical records are both kept."""
    folder, _, _, _ = images_run
    runs = []
    for place in (tmp_path / "here", tmp_path / "z" / "moved" / "there"):
        shutil.copytree(folder, place)
        twin = json.dumps({"image": "cat.png", "text": "The same cat, twice."}) + "\n"
        (place / "twice.jsonl").write_text(twin + twin)
        out = place.parent / f"{place.name}-out"
        cfg = ImagesConfig.model_validate({
            "inputs": [str(place / "pairs.parquet"), str(place / "pairs.jsonl"), str(place / "twice.jsonl")],
            "output": str(out), "tokenizer": DEMO_TOKENIZER, "vqgan": str(place / "vqgan"), "stages": ["img=512:0-"],
            "frame_size": SIZE, "encode_batch": 4,
        })
        manifest = run_images(cfg, ["--runner=DirectRunner", "--direct_running_mode=in_memory"])
        runs.append(stage_rows(out, manifest)["img"])
        ids = [i for doc_ids, _, _ in runs[-1] for row in doc_ids for i in row]
        assert manifest["kept"] == 8 and ids.count("twice.jsonl:1") == ids.count("twice.jsonl:2") == 1
    assert runs[0] == runs[1]
