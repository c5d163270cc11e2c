"""The image-text pipeline end to end: Parquet with image bytes, JSONL with paths, broken images."""

from __future__ import annotations

import io
import json

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
from tests.conftest import DEMO_TOKENIZER

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
