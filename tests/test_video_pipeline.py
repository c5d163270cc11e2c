"""The video pipeline end to end on DirectRunner: videos written here, corrupt files, a small VQGAN."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

pytest.importorskip("decord")
av = pytest.importorskip("av")

from curation.shards import read_shard  # noqa: E402
from curation.video import iter_video_frames, sample_indices  # noqa: E402
from curation.vqgan import VQGAN, VQGANConfig, init_params, save_params  # noqa: E402
from pipelines.config import VideoConfig  # noqa: E402
from pipelines.launch import run_video  # noqa: E402
from tests.conftest import DEMO_TOKENIZER, stage_rows  # noqa: E402
from tests.test_video import _write_video  # noqa: E402

IN_MEMORY = ["--runner=DirectRunner", "--direct_running_mode=in_memory"]
SIZE = 32  # the small VQGAN turns 32x32 frames into 16x16 codes, as the real one does 256x256


@pytest.fixture(scope="module")
def video_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("videos")
    _write_video(folder / "wide.mp4", 320, 180, n=40, fps=10)
    _write_video(folder / "tall.mp4", 180, 320, n=30, fps=10)
    (folder / "empty.mp4").write_bytes(b"")
    (folder / "garbage.mp4").write_bytes(b"not a video at all " * 500)
    config = VQGANConfig.tiny()
    save_params(folder / "vqgan", config, init_params(config, seed=3, image_size=SIZE))
    rows = [
        {"id": "wide", "video": "wide.mp4", "text": "A bright square moves across a blue gradient."},
        {"id": "tall", "video": str(folder / "tall.mp4"), "text": "The same square, standing up."},
        {"id": "empty", "video": "empty.mp4", "text": "nothing"},
        {"id": "garbage", "video": "garbage.mp4", "text": "nothing"},
        {"id": "missing", "video": "missing.mp4", "text": "nothing"},
        {"id": "no-video-field", "text": "nothing"},
    ]
    (folder / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path_factory.mktemp("video-out") / "out"
    cfg = VideoConfig.model_validate({
        "inputs": [str(folder / "manifest.jsonl")], "output": str(out), "tokenizer": DEMO_TOKENIZER,
        "vqgan": str(folder / "vqgan"), "stages": ["v2k=2048:0-"], "fps": 2.0, "frame_size": SIZE, "encode_batch": 4,
    })
    return folder, out, run_video(cfg, IN_MEMORY)


def test_every_row_is_accounted_for(video_run):
    _, out, manifest = video_run
    assert manifest["read"] == 6 == manifest["kept"] + manifest["rejected_total"]
    assert manifest["kept"] == 2
    rejects = {json.loads(x)["id"]: json.loads(x)["reason"] for f in (out / "rejects").glob("*.jsonl") for x in f.read_text().splitlines()}
    assert rejects == {"empty": "unreadable_video", "garbage": "unreadable_video", "missing": "unreadable_video",
                       "no-video-field": "missing_field"}


def test_rows_decode_back_to_the_sampled_frames_codes(video_run):
    import datasets

    folder, out, manifest = video_run
    vqgan = VQGAN.load(folder / "vqgan", batch_size=4)
    expected = {}
    for name in ("wide", "tall"):
        idx = lambda n, fps: sample_indices(n, fps, target_fps=2.0, max_frames=512)  # noqa: E731
        frames = np.concatenate(list(iter_video_frames(folder / f"{name}.mp4", idx, 4, SIZE)))
        expected[name] = vqgan.encode(frames).reshape(len(frames), -1)
    seen = {"wide": {}, "tall": {}}
    for shard in manifest["stages"]["v2k"]["shards"]:
        path = out / shard["path"]
        ds = datasets.Dataset.from_file(str(path))
        assert "vision_mask" in ds.column_names and len(ds[0]["input_ids"]) == 2048
        assert str(ds.data.schema.field("vision_mask").type) == "fixed_size_list<item: uint8>[2048]"
        view = read_shard(str(path))
        assert view.metadata["longctx.vision"] and json.loads(view.metadata["longctx.vision"])["eof"] == 8192
        for r in range(view.num_rows):
            for k, (doc_id, first) in enumerate(zip(view.doc_ids[r], view.doc_starts[r]), start=1):
                span = view.arrays["segment_ids"][r] == k
                ids, vision = view.arrays["input_ids"][r][span], view.arrays["vision_mask"][r][span]
                codes = ids[vision > 0].reshape(-1, 257)
                assert (codes[:-1, 256] == 8192).all() and codes[-1, 256] == 8193  # <eof> ... <eov>
                for i, frame in enumerate(codes[:, :256]):
                    seen[doc_id][first + i] = frame
                loss = view.arrays["loss_mask"][r][span]
                assert (loss[vision > 0] == 1).all()
    for name, frames in expected.items():
        assert sorted(seen[name]) == list(range(len(frames)))  # every sampled frame, once, no frame split
        for i, frame in seen[name].items():
            assert np.array_equal(frame, frames[i])


def test_unified_layout_decodes_exactly(video_run, tmp_path):
    from curation.vision_layout import UnifiedVocab, decode_layout

    folder, _, _ = video_run
    cfg = VideoConfig.model_validate({
        "inputs": [str(folder / "manifest.jsonl")], "output": str(tmp_path / "u"), "tokenizer": DEMO_TOKENIZER,
        "vqgan": str(folder / "vqgan"), "stages": ["v2k=2048:0-"], "fps": 2.0, "frame_size": SIZE,
        "vision_layout": "unified", "text_position": "before",
    })
    manifest = run_video(cfg, IN_MEMORY)
    vocab = UnifiedVocab(32000)
    view = read_shard(str(tmp_path / "u" / manifest["stages"]["v2k"]["shards"][0]["path"]))
    assert json.loads(view.metadata["longctx.vision"])["vision_start_id"] == 32000 + 8194
    span = view.arrays["segment_ids"][0] == 1
    blocks = decode_layout(view.arrays["input_ids"][0][span], view.arrays["vision_mask"][0][span], vocab)
    kinds = [b.kind for b in blocks]
    assert kinds == ["text", "vision", "text"]  # BOS + caption, the frames, EOS
    assert blocks[1].data.shape[1] == 256 and blocks[1].data.max() < 64  # the small codebook


def test_rows_follow_the_manifest_not_its_folder(video_run, tmp_path):
    """The same manifest and videos copied to two folders give the same rows: which examples put
    the text first (`text_position: auto`) and the row order follow the records, not their path."""
    folder, _, _ = video_run
    runs = []
    for place in (tmp_path / "here", tmp_path / "z" / "moved"):
        shutil.copytree(folder, place)
        # Twelve examples: a coin flip per example, so a path-keyed choice cannot match by chance.
        rows = [{"video": "wide.mp4", "text": f"Take {i}: a bright square moves."} for i in range(12)]
        (place / "many.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        cfg = VideoConfig.model_validate({
            "inputs": [str(place / "many.jsonl")], "output": str(place / "out"), "tokenizer": DEMO_TOKENIZER,
            "vqgan": str(place / "vqgan"), "stages": ["v2k=2048:0-"], "fps": 2.0, "frame_size": SIZE, "encode_batch": 4,
        })
        manifest = run_video(cfg, IN_MEMORY)
        assert manifest["kept"] == 12
        runs.append(stage_rows(place / "out", manifest)["v2k"])
    # Where each row's first frame code sits: right after BOS and `<vision>`, or after the text too.
    first_code = [row.index(1) for _, _, arrays in runs[0] for row in arrays["vision_mask"]]
    assert min(first_code) < 10 < max(first_code)  # both positions occur
    assert runs[0] == runs[1]


def test_real_sample_videos(tmp_path):
    """Big Buck Bunny (1280x720, with an audio stream) and bikes (640x272), through the pipeline."""
    from tests.conftest import REPO

    videos = REPO / "data" / "sample" / "videos"
    config = VQGANConfig.tiny()
    save_params(tmp_path / "vqgan", config, init_params(config, seed=1, image_size=SIZE))
    cfg = VideoConfig.model_validate({
        "inputs": [str(videos / "manifest.jsonl")], "output": str(tmp_path / "out"), "tokenizer": DEMO_TOKENIZER,
        "vqgan": str(tmp_path / "vqgan"), "stages": ["v4k=4096:0-"], "frame_count": 6, "frame_size": SIZE,
    })
    manifest = run_video(cfg, IN_MEMORY)
    assert manifest["read"] == manifest["kept"] == 2
    view = read_shard(str(tmp_path / "out" / manifest["stages"]["v4k"]["shards"][0]["path"]))
    assert view.arrays["input_ids"].shape[1] == 4096
    assert int(view.arrays["vision_mask"].sum()) == 2 * 6 * 257  # 6 frames each, codes + eof/eov


def test_long_video_is_streamed_in_bounded_memory(tmp_path):
    """Decoding every frame of a 240-frame 640x360 video (166 MB decoded) raises peak RSS by far
    less than that: frames come out in batches, never all at once."""
    import subprocess
    import sys

    from tests.conftest import REPO

    path = _write_video(tmp_path / "long.mp4", 640, 360, n=240, fps=24)
    script = (
        "import resource, numpy as np\n"
        "from curation.video import iter_video_frames\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        f"n = sum(len(b) for b in iter_video_frames({str(path)!r}, list(range(240)), batch=8, size=None))\n"
        "after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "print(n, (after - before) * 1024)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=True).stdout
    frames, grown = (int(x) for x in out.split())
    decoded = frames * 640 * 360 * 3
    assert frames == 240
    assert grown < decoded / 3, f"peak RSS grew {grown / 2**20:.0f} MiB for {decoded / 2**20:.0f} MiB of frames"
