"""`longctx train` on a surely text-only model (no vision_layout, no init_from) refuses
--text-loss-weight, --vision-loss-weight and --vision-init (they act on a vision vocabulary only
and had no effect); with init_from the checkpoint decides (`check_vision_settings`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import cli_error
from training.config import TrainConfig, check_vision_settings


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative paths: the lines hold no temporary path
    yield
    assert not (tmp_path / "run").exists()


def test_the_probe_flags_on_a_text_only_model_are_refused_by_name(capsys):
    lines = cli_error(["train", "--model", "toy", "--data", "data/s128", "--out", "run", "--text-loss-weight", "0.3",
                       "--vision-loss-weight", "0.7", "--vision-init", "text_mean"], capsys)
    assert lines[-1] == (
        "longctx train: error: text_loss_weight, vision_loss_weight, vision_init act on a vision vocabulary only, but the "
        "model (no vision_layout, no init_from) is text-only: remove them (--text-loss-weight, --vision-loss-weight, "
        "--vision-init), or set vision_layout (--vision-layout separate|unified)")


def test_one_key_in_a_config_file(capsys):
    Path("t.yaml").write_text("model: toy\nvision_loss_weight: 0.5\n")
    lines = cli_error(["train", "--config", "t.yaml", "--data", "data/s128", "--out", "run"], capsys)
    assert lines[-1] == (
        "longctx train: error: t.yaml: vision_loss_weight acts on a vision vocabulary only, but the model (no vision_layout, "
        "no init_from) is text-only: remove it (--vision-loss-weight), or set vision_layout (--vision-layout separate|unified)")


def test_defaults_a_vision_layout_or_an_init_from_keep_them():
    assert TrainConfig(vision_init="normal").vision_init == "normal"  # the no-op value, given explicitly
    vision = TrainConfig(vision_layout="separate", text_loss_weight=0.3, vision_loss_weight=0.7)
    assert (vision.text_loss_weight, vision.vision_loss_weight) == (0.3, 0.7)
    # init_from may be a vision checkpoint, or a text one that vision_layout grows: decided once it is read.
    grown = TrainConfig(init_from="runs/text/checkpoints/final", vision_init="text_mean", vision_loss_weight=0.7)
    assert grown.vision_init == "text_mean"
    check_vision_settings(grown, "separate")  # the checkpoint has a vision vocabulary: they act


def test_check_vision_settings_names_them_for_a_text_checkpoint():
    config = TrainConfig(init_from="runs/text/checkpoints/final", text_loss_weight=0.3)
    with pytest.raises(ValueError) as err:
        check_vision_settings(config, "none", f"the model of init_from {config.init_from}")
    assert str(err.value) == (
        "text_loss_weight acts on a vision vocabulary only, but the model of init_from runs/text/checkpoints/final is "
        "text-only: remove it (--text-loss-weight), or set vision_layout (--vision-layout separate|unified)")
