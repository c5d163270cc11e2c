"""`longctx video`: --fps and --frame-count are two ways to sample frames, and frame_count wins,
so an fps given with it was ignored without a word. Both given (as flags, or one in the --config
file) is refused in one line; fps's default with a frame_count is not "given" and still runs.
The check reads what the user typed (flags and the YAML), not the model: a manifest's config is
validated again with every field set."""

from __future__ import annotations

import json

import pytest

from pipelines.config import VideoConfig
from pipelines.jobs import DATA_JOBS
from pipelines.options import job_pipeline_options
from tests.conftest import DEMO_TOKENIZER, cli_error

BOTH = ("are both given, but frames are sampled by one of them (frame_count: exactly that many; fps: at that rate): "
        "give only one (fps: null in a config file)")


@pytest.fixture
def common(tmp_path):
    manifest = tmp_path / "videos.jsonl"
    manifest.write_text(json.dumps({"video": "clip.mp4", "text": "A clip."}) + "\n")
    # A VQGAN that is not there: the first check after the config is read, so reaching it means
    # the fps/frame_count check passed.
    return ["--input", str(manifest), "--output", str(tmp_path / "out"), "--tokenizer", DEMO_TOKENIZER,
            "--vqgan", str(tmp_path / "no-vqgan"), "--stages", "v=4096:0-"]


def test_fps_and_frame_count_flags_together_are_refused(common, capsys):
    line = cli_error(["video", *common, "--fps", "2", "--frame-count", "8"], capsys)[-1]
    assert line == f"longctx video: error: --fps 2 and --frame-count 8 {BOTH}"


def test_an_fps_in_the_config_file_with_a_frame_count_flag_is_refused(common, tmp_path, capsys):
    config = tmp_path / "video.yaml"
    config.write_text("fps: 2\n")
    line = cli_error(["video", "--config", str(config), *common, "--frame-count", "8"], capsys)[-1]
    assert line == f"longctx video: error: fps: 2 in {config} and --frame-count 8 {BOTH}"
    config.write_text("fps: 0.5\nframe_count: 8\n")
    line = cli_error(["video", "--config", str(config), *common], capsys)[-1]
    assert line == f"longctx video: error: fps: 0.5 in {config} and frame_count: 8 in {config} {BOTH}"


def test_a_frame_count_with_fps_left_at_its_default_runs(common, tmp_path, capsys):
    options = job_pipeline_options([*common, "--frame-count", "8"])
    config = DATA_JOBS["video"].config_from(options)
    assert (config.frame_count, config.fps) == (8, 1.0)
    # A manifest holds the dumped config (fps's default included) and validates it again.
    assert VideoConfig.model_validate(json.loads(json.dumps(config.model_dump(mode="json")))) == config
    # fps: null in the file with a frame count, and fps alone, run too.
    path = tmp_path / "video.yaml"
    path.write_text("fps: null\nframe_count: 4\n")
    config = DATA_JOBS["video"].config_from(job_pipeline_options(["--config", str(path), *common]))
    assert (config.frame_count, config.fps) == (4, None)
    config = DATA_JOBS["video"].config_from(job_pipeline_options([*common, "--fps", "2"]))
    assert (config.frame_count, config.fps) == (None, 2.0)
    # The whole command line gets past the check to the next one (the VQGAN that is not there).
    line = cli_error(["video", *common, "--frame-count", "8"], capsys)[-1]
    assert line.startswith("longctx video: error: vqgan ") and "no such folder" in line


@pytest.mark.parametrize("extra, message", [
    (["--fps", "2", "--frames", "4"], "--fps 2 and --frames 4 are both given, but frames are sampled by one of them: give only one"),
    (["--fps", "0"], "--fps must be above 0, got 0"),
])
def test_generate_refuses_fps_with_frames_and_a_rate_of_zero(tmp_path, capsys, extra, message):
    # Refused before the checkpoint is read: a checkpoint that is not there is never reached.
    line = cli_error(["generate", "--checkpoint", str(tmp_path / "no-run"), "--tokenizer", DEMO_TOKENIZER,
                      "--vqgan", str(tmp_path / "no-vqgan"), "--video", str(tmp_path / "clip.mp4"), "--prompt", "",
                      *extra], capsys)[-1]
    assert line == f"longctx generate: error: {message}"
