"""Long work shows progress: frames/images encoded (log lines and Beam counters), a line per shard
written, and `scored k/N cells (...%), rate, ETA` as NIAH and RULER cells finish. Every job and
eval here is the real code path on tiny inputs (a tiny VQGAN, a stub completions server)."""

from __future__ import annotations

import argparse
import io
import json
import logging
import re

import numpy as np
import pytest
from apache_beam.metrics import MetricsFilter
from PIL import Image
from rich.console import Console

from curation.progress import Progress
from curation.shards import read_manifest
from curation.video import sample_indices
from curation.vqgan import VQGANConfig, init_params, save_params
from evals.niah_cli import add_niah_arguments, run_niah
from evals.ruler_cli import add_ruler_arguments, run_ruler
from pipelines.accounting import NAMESPACE
from pipelines.config import ImagesConfig, VideoConfig
from pipelines.images import BuildImageShards
from pipelines.launch import job_pipeline, shard_metadata, validate
from pipelines.video import BuildVideoShards
from tests.conftest import DEMO_TOKENIZER
from tests.test_evals_endpoint import Stub

IN_MEMORY = ["--runner=DirectRunner", "--direct_running_mode=in_memory"]
SIZE = 32  # the tiny VQGAN: 32x32 frames -> 16x16 codes


@pytest.fixture(scope="module")
def vqgan(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vqgan")
    config = VQGANConfig.tiny()
    save_params(folder, config, init_params(config, seed=3, image_size=SIZE))
    return str(folder)


def run_with_counters(kind: str, transform, config) -> dict[str, int]:
    """The job's transform run as run_job runs it, keeping the result to read its counters."""
    metadata = shard_metadata(config, kind, validate(config))
    pipeline = job_pipeline(IN_MEMORY)
    _ = pipeline | transform(config, metadata)
    result = pipeline.run()
    result.wait_until_finish()
    found = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]
    return {c.key.metric.name: c.committed for c in found}


def messages(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "longctx"]


def shard_lines(manifest: dict) -> list[str]:
    """The line each shard of the manifest must have had, from what the manifest says of it."""
    lines = []
    for name, stage in manifest["stages"].items():
        for shard in stage["shards"]:
            index = int(re.search(r"-(\d+)-of-", shard["path"]).group(1))
            lines.append(f"wrote shard {index} of stage {name}: {shard['rows']:,} rows, {shard['tokens']:,} tokens "
                         f"({shard['path']})")
    return lines


def test_video_job_logs_frames_done_of_total_per_video_and_each_shard(tmp_path, vqgan, caplog):
    pytest.importorskip("decord")
    pytest.importorskip("av")
    from benchmarks.synthetic import write_video as _write_video

    folder = tmp_path / "videos"
    folder.mkdir()
    _write_video(folder / "wide.mp4", 96, 64, n=24, fps=10)
    _write_video(folder / "tall.mp4", 64, 96, n=14, fps=10)
    rows = [{"id": "wide", "video": "wide.mp4", "text": "A square moves."},
            {"id": "tall", "video": "tall.mp4", "text": "Standing up."}]
    (folder / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = VideoConfig.model_validate({
        "inputs": [str(folder / "manifest.jsonl")], "output": str(tmp_path / "out"), "tokenizer": DEMO_TOKENIZER,
        "vqgan": vqgan, "stages": ["v2k=2048:0-"], "fps": 4.0, "frame_size": SIZE, "encode_batch": 4,
    })
    with caplog.at_level(logging.INFO, logger="longctx"):
        counters = run_with_counters("video", BuildVideoShards, config)
    lines = messages(caplog)
    sampled = {name: len(sample_indices(n, 10.0, target_fps=4.0, max_frames=512)) for name, n in (("wide", 24), ("tall", 14))}
    for name, n in sampled.items():
        # The last batch of every video is always reported, whatever the time since the last line.
        done = [line for line in lines if f"{name}.mp4: encoded {n}/{n} frames (100%)" in line]
        assert len(done) == 1 and re.search(r"frames/s, ETA 0s, elapsed \d+s$", done[0]), lines
    # The live counter: every frame through the VQGAN, batch by batch, as the kept videos' count.
    assert counters["video.frames_encoded"] == sum(sampled.values()) == counters["video.frames"]
    manifest = read_manifest(config.output)
    expected = shard_lines(manifest)
    assert expected and all(line in lines for line in expected), (expected, lines)


def _png(w: int, h: int, seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_images_job_logs_images_encoded_and_counts_them(tmp_path, vqgan, caplog):
    folder = tmp_path / "images"
    folder.mkdir()
    rows = []
    for i in range(5):
        (folder / f"p{i}.png").write_bytes(_png(40 + 8 * i, 36, i))
        rows.append({"id": f"p{i}", "image": f"p{i}.png", "text": f"Noise picture {i}."})
    rows.append({"id": "gone", "image": "missing.png", "text": "never decoded"})
    (folder / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = ImagesConfig.model_validate({
        "inputs": [str(folder / "pairs.jsonl")], "output": str(tmp_path / "out"), "tokenizer": DEMO_TOKENIZER,
        "vqgan": vqgan, "stages": ["img=512:0-"], "frame_size": SIZE, "encode_batch": 2,
    })
    with caplog.at_level(logging.INFO, logger="longctx"):
        counters = run_with_counters("images", BuildImageShards, config)
    lines = messages(caplog)
    assert counters["images.encoded"] == 5  # the missing file never reaches the VQGAN
    # No total is known ahead for images: the end of the worker's bundle reports its count.
    counts = [int(m.group(1)) for line in lines if (m := re.search(r"\] encoded (\d+) images, (\d+) tokens", line))]
    assert counts and counts[-1] == 5 and max(counts) == 5, lines
    assert any(f"encoded 5 images, {5 * 256} tokens" in line for line in lines), lines
    assert all(line in lines for line in shard_lines(read_manifest(config.output)))


def test_progress_flush_reports_the_count_once(caplog):
    progress = Progress("encoded", "images", every_s=3600)
    with caplog.at_level(logging.INFO, logger="longctx"):
        progress.add(3, tokens=768)  # within every_s, no total: no line yet
        assert messages(caplog) == []
        progress.flush()
        progress.flush()  # nothing new since: no repeat
    (line,) = messages(caplog)
    assert re.search(r"^\[pid \d+\] encoded 3 images, 768 tokens \(\d+ tokens/s\)$", line)


def test_niah_prints_cells_done_of_total_with_rate_and_eta(tmp_path):
    parser = argparse.ArgumentParser()
    add_niah_arguments(parser)
    console = Console(record=True, width=200)
    with Stub(lambda prompt: " 1234567") as stub:
        args = parser.parse_args(["--endpoint", stub.url, "--endpoint-model", "stub-model", "--tokenizer",
                                  DEMO_TOKENIZER, "--lengths", "512,1k", "--depths", "0,50", "--out",
                                  str(tmp_path / "niah")])
        assert run_niah(args, console) == 0
    lines = [line.strip() for line in console.export_text().splitlines() if line.strip().startswith("scored ")]
    assert [line.split(" cells")[0] for line in lines] == [f"scored {k}/4" for k in range(1, 5)]
    assert lines[1].startswith("scored 2/4 cells (50%), ") and " cells/s, ETA " in lines[1]
    assert re.fullmatch(r"scored 4/4 cells \(100%\), [\d.]+ cells/s, ETA 0s, elapsed \d+s", lines[-1]), lines


def test_ruler_prints_cells_done_of_those_left_to_run(tmp_path):
    parser = argparse.ArgumentParser()
    add_ruler_arguments(parser)
    out = tmp_path / "ruler"

    def run(samples: int) -> list[str]:
        console = Console(record=True, width=200)
        with Stub(lambda prompt: "nothing useful") as stub:
            argv = ["--endpoint", stub.url, "--tokenizer", DEMO_TOKENIZER, "--tasks", "vt,niah_single_1",
                    "--lengths", "1024", "--samples", str(samples), "--out", str(out)]
            assert run_ruler(parser.parse_args(argv), console) == 0
        return [line.strip() for line in console.export_text().splitlines() if line.strip().startswith("scored ")]

    lines = run(2)
    assert [line.split(" cells")[0] for line in lines] == [f"scored {k}/4" for k in range(1, 5)]
    assert re.fullmatch(r"scored 4/4 cells \(100%\), [\d.]+ cells/s, ETA 0s, elapsed \d+s", lines[-1]), lines
    # A rerun with one more sample per task runs (and counts) only the 2 new cells.
    assert [line.split(" cells")[0] for line in run(3)] == ["scored 1/2", "scored 2/2"]
