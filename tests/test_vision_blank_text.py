"""A vision-text record whose text is empty or blank is rejected as `empty` by `longctx images` and
`longctx video` (before the image or the video is decoded), unless `allow_empty_text` keeps it as
a vision-only example. Before, an image with an empty caption was kept: in the caption-after
direction its only text target was the EOS right after the image, so the model learnt to end there.
Every record still ends in a shard or in rejects (read = kept + rejected)."""

from __future__ import annotations

import json

import pytest

from curation.vqgan import VQGANConfig, init_params, save_params
from pipelines.config import ImagesConfig, VideoConfig
from pipelines.launch import run_images, run_video
from tests.conftest import DEMO_TOKENIZER
from tests.test_images_pipeline import _png

SIZE = 32
IN_MEMORY = ["--runner=DirectRunner", "--direct_running_mode=in_memory"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("blank-text")
    config = VQGANConfig.tiny()
    save_params(folder / "vqgan", config, init_params(config, seed=5, image_size=SIZE))
    for i in range(3):
        (folder / f"p{i}.png").write_bytes(_png(40, 40, i))
    pairs = [{"id": "captioned", "image": "p0.png", "text": "A noisy square."},
             {"id": "empty", "image": "p1.png", "text": ""},
             {"id": "blank", "image": "p2.png", "text": " \n\t "},
             {"id": "blank-and-broken", "image": "missing.png", "text": ""}]
    (folder / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    return folder


def _rejects(out) -> dict[str, tuple[str, str]]:
    lines = [json.loads(line) for path in sorted((out / "rejects").glob("*.jsonl")) for line in path.read_text().splitlines()]
    return {r["id"]: (r["reason"], r["detail"]) for r in lines}


def _images(folder, out, **extra):
    cfg = ImagesConfig.model_validate({"inputs": [str(folder / "pairs.jsonl")], "output": str(out),
                                       "tokenizer": DEMO_TOKENIZER, "vqgan": str(folder / "vqgan"),
                                       "stages": ["img=512:0-"], "frame_size": SIZE, "encode_batch": 2, **extra})
    return run_images(cfg, IN_MEMORY)


def test_images_reject_a_pair_without_its_caption(folder, tmp_path):
    manifest = _images(folder, tmp_path / "out")
    assert manifest["read"] == 4 == manifest["kept"] + manifest["rejected_total"]
    assert manifest["kept"] == 1 and manifest["rejected"] == {"empty": 3}
    rejects = _rejects(tmp_path / "out")
    why = "a vision-text pair needs its text (allow_empty_text keeps it vision-only)"
    assert rejects == {"empty": ("empty", f"no caption: {why}"), "blank": ("empty", f"a blank caption: {why}"),
                       "blank-and-broken": ("empty", f"no caption: {why}")}  # found before the image is read


def test_allow_empty_text_keeps_image_only_examples(folder, tmp_path):
    manifest = _images(folder, tmp_path / "out", allow_empty_text=True)
    assert manifest["read"] == 4 and manifest["kept"] == 3 and manifest["rejected"] == {"unreadable_image": 1}


def test_video_rejects_a_clip_without_its_text_before_decoding_it(folder, tmp_path):
    (folder / "clips.jsonl").write_text(json.dumps({"id": "silent", "video": "no-such-clip.mp4", "text": ""}) + "\n")

    def run(out, **extra):
        cfg = VideoConfig.model_validate({"inputs": [str(folder / "clips.jsonl")], "output": str(out),
                                          "tokenizer": DEMO_TOKENIZER, "vqgan": str(folder / "vqgan"),
                                          "stages": ["v320=320:0-"], "frame_size": SIZE, **extra})
        return run_video(cfg, IN_MEMORY)

    manifest = run(tmp_path / "out")
    assert manifest["read"] == 1 and manifest["rejected"] == {"empty": 1}
    assert _rejects(tmp_path / "out")["silent"][1].startswith("no text: a vision-text pair needs its text")
    # Allowed, the clip is opened, and here it is missing: the reject says so instead.
    assert run(tmp_path / "allowed", allow_empty_text=True)["rejected"] == {"unreadable_video": 1}


def test_the_flag_exists_with_its_help(capsys):
    from longctx.cli import main

    for job in ("images", "video"):
        with pytest.raises(SystemExit):
            main([job, "--help"])
        assert "--allow-empty-text" in capsys.readouterr().out
