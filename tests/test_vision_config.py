"""Data-side vision settings: loss weights belong to the trainer (the data jobs refuse them with a
clear error), and `vision_layout` is a setting of both the video and the image job."""

from __future__ import annotations

import argparse

import pytest

from longctx.cli import main
from pipelines.config import BooksConfig, ImagesConfig, QAConfig, VideoConfig, add_config_flags


@pytest.mark.parametrize("model", [VideoConfig, ImagesConfig, QAConfig, BooksConfig])
@pytest.mark.parametrize("key", ["vision_loss_weight", "text_loss_weight"])
def test_a_data_config_refuses_loss_weights_naming_the_trainer(model, key):
    with pytest.raises(ValueError, match=f"{key} is a trainer setting .*longctx train --text-loss-weight"):
        model.model_validate({"output": "o", key: 0.5})


def test_a_video_yaml_with_loss_weights_is_a_one_line_cli_error(tmp_path, capsys):
    config = tmp_path / "video.yaml"
    config.write_text("inputs: [m.jsonl]\noutput: out\nvqgan: v\nvision_loss_weight: 0.7\ntext_loss_weight: 0.3\n")
    with pytest.raises(SystemExit) as exit_:
        main(["video", "--config", str(config)])
    assert exit_.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error == (f"longctx video: error: {config}: text_loss_weight and vision_loss_weight are trainer settings "
                     "(longctx train --text-loss-weight / --vision-loss-weight, or a configs/train YAML), "
                     "not a data job's: remove them from the data config")
    assert not (tmp_path / "out").exists()


def test_loss_weights_are_no_longer_video_flags_and_vision_layout_is_an_images_flag():
    flags = {}
    for model in (VideoConfig, ImagesConfig):
        parser = argparse.ArgumentParser()
        add_config_flags(parser, model)
        flags[model] = {a for action in parser._actions for a in action.option_strings}
    assert not {"--vision-loss-weight", "--text-loss-weight"} & flags[VideoConfig]
    assert "--vision-layout" in flags[VideoConfig] and "--vision-layout" in flags[ImagesConfig]
    assert ImagesConfig().vision_layout == "separate"
    assert ImagesConfig(vision_layout="unified").hash() != ImagesConfig().hash()  # it shapes the data
    with pytest.raises(ValueError):
        ImagesConfig(vision_layout="interleaved")
