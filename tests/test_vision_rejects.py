"""Rejects of the video and image jobs: the same corrupt inputs give byte-identical rejects files
on every rerun (no decoder timestamps, object addresses or backtraces in the details), and rows
with a lone surrogate (a JSON `\\udXXX` escape) in their text, path or id never crash a job."""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

pytest.importorskip("decord")
pytest.importorskip("av")

from curation.video import stable_message  # noqa: E402
from curation.vqgan import VQGANConfig, VQModel, save_params  # noqa: E402
from pipelines.config import ImagesConfig, VideoConfig  # noqa: E402
from pipelines.launch import run_images, run_video  # noqa: E402
from tests.conftest import DEMO_TOKENIZER  # noqa: E402
from tests.test_video import _write_video, _zero_middle  # noqa: E402

IN_MEMORY = ["--runner=DirectRunner", "--direct_running_mode=in_memory"]
SIZE = 32


def test_stable_message_drops_what_changes_between_runs():
    decord_like = RuntimeError(
        "[05:56:14] /github/workspace/src/video/ffmpeg/threaded_decoder.cc:292: [05:56:14] "
        "/github/workspace/src/video/ffmpeg/threaded_decoder.cc:218: Check failed: x >= 0 (-1094995529 vs. 0)\n"
        "Stack trace returned 2 entries:\n[bt] (0) /lib/libdecord.so(+0x1a2b3c) [0x7f3a5c1d2e3f]\n[bt] (1) [0x7f3a5c1d2e40]"
    )
    assert stable_message(decord_like) == "Check failed: x >= 0 (-1094995529 vs. 0)"
    pil_like = OSError("cannot identify image file <_io.BytesIO object at 0x7fb190217b50>")
    assert stable_message(pil_like) == "cannot identify image file <_io.BytesIO object>"
    assert stable_message(ValueError("plain\n  message")) == "plain message"
    assert len(stable_message(ValueError("x" * 1000))) == 300


@pytest.fixture(scope="module")
def vqgan(tmp_path_factory) -> str:
    """A small VQGAN of zeros: the jobs load it, but no corrupt input gets as far as encoding, so
    only its shapes matter (traced, not compiled: seconds faster than initialising it)."""
    import jax
    import jax.numpy as jnp

    folder = tmp_path_factory.mktemp("vqgan")
    config = VQGANConfig.tiny()
    shapes = jax.eval_shape(VQModel(config).init, jax.random.PRNGKey(0), jnp.zeros((1, SIZE, SIZE, config.in_channels)))
    save_params(folder, config, jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), shapes["params"]))
    return str(folder)


def _rejects_bytes(out) -> dict[str, bytes]:
    return {f.name: f.read_bytes() for f in sorted((out / "rejects").glob("*.jsonl"))}


def _png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def corrupt_videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad-videos")
    land = _write_video(folder / "land.mp4", 64, 48, n=20, fps=10).read_bytes()
    faststart = _write_video(folder / "fs.mp4", 64, 48, n=120, fps=10, faststart=True).read_bytes()
    files = {"empty": b"", "garbage": bytes(range(256)) * 200, "half": land[: len(land) // 2],
             "zeroed": _zero_middle(faststart, 2000)}
    for name, data in files.items():
        (folder / f"{name}.mp4").write_bytes(data)
    rows = [{"id": name, "video": f"{name}.mp4", "text": f"a {name} video"} for name in [*files, "missing"]]
    (folder / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_video_rejects_are_identical_across_reruns(corrupt_videos, vqgan, tmp_path):
    folder = corrupt_videos
    outputs = []
    for run in ("first", "second"):
        cfg = VideoConfig.model_validate({
            "inputs": [str(folder / "manifest.jsonl")], "output": str(tmp_path / run), "tokenizer": DEMO_TOKENIZER,
            "vqgan": vqgan, "stages": ["v2k=2048:0-"], "fps": 10.0, "frame_size": SIZE,
            "encode_batch": 128,  # all 120 frames in one decord call: "zeroed" fails before any encoding
        })
        manifest = run_video(cfg, IN_MEMORY)
        assert manifest["read"] == 5 == manifest["rejected_total"]
        outputs.append(_rejects_bytes(tmp_path / run))
    assert outputs[0] == outputs[1] and outputs[0]
    rejects = {r["id"]: r for r in map(json.loads, b"".join(outputs[0].values()).decode().splitlines())}
    assert rejects["zeroed"]["reason"] == "decode_error"
    assert {rejects[k]["reason"] for k in ("empty", "garbage", "half", "missing")} == {"unreadable_video"}
    for reject in rejects.values():
        assert reject["detail"].startswith(str(folder / reject["id"]) + ".mp4: ")  # names the video, once
        assert "[bt]" not in reject["detail"] and ".cc:" not in reject["detail"]


def test_image_rejects_are_identical_across_reruns(vqgan, tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad-images")
    png = _png(1)
    pq.write_table(pa.table({"id": ["not-png", "cut"], "image": [b"\x89PNG not really", png[:60]],
                             "text": ["broken", "cut short"]}), folder / "pairs.parquet")
    (folder / "notes.txt").write_text("not an image")
    (folder / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [
        {"id": "missing", "image": "missing.png", "text": "gone"}, {"id": "text-file", "image": "notes.txt", "text": "words"}]))
    outputs = []
    for run in ("first", "second"):
        out = tmp_path_factory.mktemp(f"images-{run}") / "out"
        cfg = ImagesConfig.model_validate({
            "inputs": [str(folder / "pairs.parquet"), str(folder / "pairs.jsonl")], "output": str(out),
            "tokenizer": DEMO_TOKENIZER, "vqgan": vqgan, "stages": ["img=512:0-"], "frame_size": SIZE, "encode_batch": 2,
        })
        manifest = run_images(cfg, IN_MEMORY)
        assert manifest["read"] == 4 and manifest["rejected"] == {"unreadable_image": 4}
        outputs.append(_rejects_bytes(out))
    assert outputs[0] == outputs[1]
    details = {r["id"]: r["detail"] for r in map(json.loads, b"".join(outputs[0].values()).decode().splitlines())}
    assert details["not-png"] == "UnidentifiedImageError: cannot identify image file <_io.BytesIO object>"
    assert details["text-file"] == "UnidentifiedImageError: cannot identify image file <_io.BytesIO object>"
    assert details["cut"] == "OSError: image file is truncated"
    assert details["missing"].startswith("FileNotFoundError: ")


def test_lone_surrogates_never_crash_the_video_or_images_job(corrupt_videos, vqgan, tmp_path):
    """JSON escapes that are no character, in a caption, a video/image path or an id: the row is
    rejected (`invalid_unicode`, by the shared reader) or its id escaped; nothing crashes."""
    folder = corrupt_videos
    rows = [
        {"id": "caption", "video": "garbage.mp4", "text": "caf\ud800 au lait"},
        {"id": "path", "video": "clip\udc80.mp4", "text": "a clip"},
        {"id": "odd\udc80id", "video": "garbage.mp4", "text": "a clip"},
        {"id": "nested", "video": ["clip\ud800.mp4"], "text": "a clip"},  # not a string: never made a path
    ]
    (folder / "surrogates.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))  # \\udXXX escapes
    cfg = VideoConfig.model_validate({
        "inputs": [str(folder / "surrogates.jsonl")], "output": str(tmp_path / "video"), "tokenizer": DEMO_TOKENIZER,
        "vqgan": vqgan, "stages": ["v2k=2048:0-"], "frame_size": SIZE,
    })
    manifest = run_video(cfg, IN_MEMORY)
    assert manifest["read"] == 4 and manifest["rejected"] == {"invalid_unicode": 2, "unreadable_video": 1, "wrong_type": 1}
    rejects = {r["id"]: r["reason"] for r in map(json.loads, b"".join(_rejects_bytes(tmp_path / "video").values()).decode().splitlines())}
    assert rejects == {"caption": "invalid_unicode", "path": "invalid_unicode", "odd\\udc80id": "unreadable_video",
                       "nested": "wrong_type"}

    (folder / "picture.png").write_bytes(_png(2))
    pairs = [
        {"id": "caption", "image": "picture.png", "text": "caf\ud800 au lait"},
        {"id": "path", "image": "picture\udc80.png", "text": "a picture"},
        {"id": "odd\udc80id", "image": "picture.png", "text": "a picture"},
        {"id": "nested", "image": {"path": "picture\ud800.png"}, "text": "a picture"},  # a Hugging Face image cell
    ]
    (folder / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pairs))
    cfg = ImagesConfig.model_validate({
        "inputs": [str(folder / "pairs.jsonl")], "output": str(tmp_path / "images"), "tokenizer": DEMO_TOKENIZER,
        "vqgan": vqgan, "stages": ["img=512:0-"], "frame_size": SIZE, "encode_batch": 1,
    })
    manifest = run_images(cfg, IN_MEMORY)
    assert manifest["read"] == 4 and manifest["kept"] == 1
    assert manifest["rejected"] == {"invalid_unicode": 3}
    from curation.shards import read_shard

    view = read_shard(str(tmp_path / "images" / manifest["stages"]["img"]["shards"][0]["path"]))
    assert [list(ids) for ids in view.doc_ids] == [["odd\\udc80id"]]
