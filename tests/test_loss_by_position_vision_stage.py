"""`longctx eval loss-by-position` on a vision stage (VQGAN codes beside caption text) scores only
a model that reads those codes: a text-only model (a transformers --hf-model, or a checkpoint
without vision_layout) took the codes for text ids and scored the captions after them as if they
followed text, with no word; a vision checkpoint of another layout reads other ids. Both are now
refused in one line before the weights load; a checkpoint of the shards' own layout is scored
(text targets only, as before). The shards are tests/test_vision_training.py's real clips."""

from __future__ import annotations

import json

import jax
import pytest

from longctx.cli import main
from tests.conftest import cli_error
from tests.test_niah import SMOLLM2
from tests.test_vision_training import clip_shards  # noqa: F401 - the fixture
from training import checkpoint as ckpt
from training.model import ModelConfig, init_params
from training.vision import with_vision

pytest.importorskip("decord")


def _checkpoint(tmp_path, layout: str | None) -> str:
    config = ModelConfig.preset("toy", max_position_embeddings=320)
    if layout:
        config = with_vision(config, layout)
    return str(ckpt.save_params(tmp_path / (layout or "text") / "final", config, init_params(config, jax.random.key(7))))


def _argv(stage, out, *model: str) -> list[str]:
    return ["eval", "loss-by-position", *model, "--data", str(stage), "--rows", "2", "--buckets", "160",
            "--out", str(out)]


def test_a_text_checkpoint_is_refused_on_a_vision_stage(clip_shards, tmp_path, capsys):  # noqa: F811
    stage = clip_shards / "v320"
    text = _checkpoint(tmp_path, None)
    line = cli_error(_argv(stage, tmp_path / "out", "--checkpoint", text), capsys)[-1]
    assert line == (f"longctx eval loss-by-position: error: --data {stage} holds vision rows ('separate' VQGAN codes "
                    f"beside the text); the checkpoint's model reads text only (--checkpoint {text}), so it would read "
                    "the codes as text ids: score a vision-language checkpoint (--checkpoint, a run with "
                    "vision_layout), or a text stage")
    assert not (tmp_path / "out").exists()


def test_a_transformers_model_is_refused_on_a_vision_stage_before_it_loads(clip_shards, tmp_path, capsys):  # noqa: F811
    line = cli_error(_argv(clip_shards / "v320", tmp_path / "out", "--hf-model", SMOLLM2), capsys)[-1]
    assert "holds vision rows ('separate' VQGAN codes beside the text); a transformers model reads text only " \
           f"(--hf-model {SMOLLM2})" in line


def test_a_vision_checkpoint_of_another_layout_is_refused(clip_shards, tmp_path, capsys):  # noqa: F811
    line = cli_error(_argv(clip_shards / "v320", tmp_path / "out", "--checkpoint", _checkpoint(tmp_path, "unified")),
                     capsys)[-1]
    assert "holds vision rows of another layout than the checkpoint's model reads (vision layout 'separate' != " \
           "model's 'unified'" in line


def test_a_vision_checkpoint_of_the_shards_layout_is_scored_on_text_targets(clip_shards, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "out"
    assert main(_argv(clip_shards / "v320", out, "--checkpoint", _checkpoint(tmp_path, "separate"))) == 0
    result = json.loads((out / "loss_by_position.json").read_text())
    # Each clip row holds one 256-code frame and a one-word caption: a few text targets a row, no vision ones.
    assert result["rows"] == 2 and 0 < result["tokens"] < 2 * 64
    assert result["loss"] > 0
