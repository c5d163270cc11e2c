"""`longctx generate` refuses, in one line and before any weights load, what it used to ignore or
fail on late: a --vqgan that is not there (a FileNotFoundError traceback after the model had
loaded), flags the chosen mode never reads (--vqgan, --vision-out, --fps, --frames, --max-frames,
--frame-size without the media they act on; --no-bos with --prompt-ids; --seed when decoding is
greedy; --max-new-tokens with --generate-vision), and a VQGAN whose codebook does not fit the
model's vision vocabulary. A decode past max_position_embeddings runs with a note on stderr;
frames generated for a VQGAN whose codebook is smaller than the model's are drawn from its codes
(they failed with `codes out of range [0, 64)` after decoding)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import numpy as np
import pytest

from curation.vision_layout import DEFAULT_VISION_VOCAB
from curation.vqgan import PARAMS_FILE, VQGANConfig, init_params as vqgan_params, save_params as save_vqgan
from longctx.cli import main
from tests.conftest import DEMO_TOKENIZER, cli_error
from training import checkpoint as ckpt
from training.model import ModelConfig, init_params

TEXT = ModelConfig(num_layers=1, hidden_size=16, intermediate_size=32, num_heads=2, num_kv_heads=1, vocab_size=32000,
                   max_position_embeddings=8)
VISION = TEXT.with_(vision_layout="separate", vision_vocab_size=DEFAULT_VISION_VOCAB.size, max_position_embeddings=4096)
MISSING = "/nonexist/longctx-test"  # never a temporary path: the messages name it


def _save(config: ModelConfig, folder: Path) -> str:
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: rng.normal(0, 0.02, s.shape).astype(np.float32),
                          jax.eval_shape(lambda: init_params(config, jax.random.key(0))))
    return str(ckpt.save_params(folder, config, params))


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("generate-flags")
    out = {"text": _save(TEXT, root / "text"), "vision": _save(VISION, root / "vision")}
    hollow = root / "hollow-vision"  # model.json only: any attempt to read the weights fails
    (hollow / "params").mkdir(parents=True)
    (hollow / "model.json").write_text(json.dumps(VISION.to_dict()))
    out["hollow"] = str(hollow)
    for name, codes in (("vqgan64", 64), ("vqgan9000", 9000)):
        config = dataclasses.replace(VQGANConfig.tiny(), num_vq_embeddings=codes)
        shapes = jax.eval_shape(lambda: vqgan_params(config, seed=0, image_size=32))
        out[name] = str(save_vqgan(root / name, config, jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)))
    return out


def _vision(checkpoint: str, vqgan: str, *extra: str) -> list[str]:
    return ["generate", "--checkpoint", checkpoint, "--tokenizer", DEMO_TOKENIZER, "--vqgan", vqgan, "--prompt", "a",
            *extra]


@pytest.mark.parametrize("media", [["--video", f"{MISSING}/clip.mp4"], ["--generate-vision", "8"]])
def test_a_missing_vqgan_is_one_line_before_the_weights_load(models, capsys, media):
    line = cli_error(_vision(models["hollow"], f"{MISSING}/vqgan", *media), capsys)[-1]
    assert line == (f"longctx generate: error: --vqgan '{MISSING}/vqgan': no such folder (expected a diffusers VQModel "
                    "folder, our saved params, or a hub id like 'owner/repo[/subfolder]')")


def test_a_vqgan_without_weights_is_named(models, tmp_path, capsys):
    import shutil

    folder = tmp_path / "vq"
    shutil.copytree(models["vqgan64"], folder)
    (folder / PARAMS_FILE).unlink()
    line = cli_error(_vision(models["hollow"], str(folder), "--generate-vision", "1"), capsys)[-1]
    assert line.startswith("longctx generate: error: --vqgan ")
    assert line.endswith(": no params.safetensors beside its config.json")


UNUSED = [
    (["--prompt-ids", "1,2", "--vqgan", "vq"],
     "--vqgan vq needs --video, --image or --generate-vision: it encodes their frames (or decodes generated ones), "
     "and a text prompt uses no VQGAN"),
    (["--prompt-ids", "1,2", "--vision-out", "a.gif"],
     "--vision-out a.gif needs --generate-vision: only generated frames are written to it"),
    (["--prompt-ids", "1,2", "--frames", "4"], "--frames 4 needs --video: it sets how many of its frames are sampled"),
    (["--prompt-ids", "1,2", "--max-frames", "8"], "--max-frames 8 needs --video: it caps how many of its frames are sampled"),
    (["--prompt-ids", "1,2", "--fps", "2"], "--fps 2 needs --video: it sets the rate its frames are sampled at"),
    (["--prompt-ids", "1,2", "--frame-size", "32"],
     "--frame-size 32 needs --video or --image: it sizes the frames the VQGAN encodes"),
    (["--tokenizer", DEMO_TOKENIZER, "--prompt", "a", "--vqgan", "vq", "--image", "x.png", "--frames", "2"],
     "--frames 2 needs --video: it sets how many of its frames are sampled; an --image is one frame"),
    (["--tokenizer", DEMO_TOKENIZER, "--prompt", "a", "--vqgan", "vq", "--generate-vision", "1", "--max-frames", "2"],
     "--max-frames 2 needs --video: it caps how many of its frames are sampled"),
    (["--tokenizer", DEMO_TOKENIZER, "--prompt", "a", "--vqgan", "vq", "--generate-vision", "1", "--frame-size", "32"],
     "--frame-size 32 needs --video or --image: it sizes the frames the VQGAN encodes; generated frames have the "
     "VQGAN's own size"),
    (["--tokenizer", DEMO_TOKENIZER, "--prompt", "a", "--vqgan", "vq", "--video", "c.mp4", "--generate-vision", "1"],
     "--generate-vision 1 writes frames after a text prompt, but --video puts frames in the prompt: give one of them"),
    (["--prompt-ids", "1,2", "--no-bos"],
     "--no-bos applies to a --prompt's tokens, but --prompt-ids are used as given: leave the BOS id out of them instead"),
    (["--prompt-ids", "1,2", "--seed", "3"],
     "--seed 3 only seeds sampling, but --temperature is 0 (greedy): give --temperature above 0 to sample, or drop --seed"),
    (["--prompt-ids", "1,2", "--seed", "0", "--temperature", "0"],
     "--seed 0 only seeds sampling, but --temperature is 0 (greedy): give --temperature above 0 to sample, or drop --seed"),
    (["--tokenizer", DEMO_TOKENIZER, "--prompt", "a", "--vqgan", "vq", "--generate-vision", "2", "--max-new-tokens", "10"],
     "--max-new-tokens 10 counts text tokens, but --generate-vision 2 writes frames (257 tokens each): drop --max-new-tokens"),
]


@pytest.mark.parametrize("flags, message", UNUSED)
def test_a_flag_the_mode_does_not_use_is_refused(capsys, flags, message):
    # Refused before the checkpoint is read: the one named here is not there.
    line = cli_error(["generate", "--checkpoint", f"{MISSING}/ckpt", *flags], capsys)[-1]
    assert line == f"longctx generate: error: {message}"


def _run(argv: list[str], capsys) -> tuple[str, str]:
    capsys.readouterr()
    assert main(argv) == 0
    captured = capsys.readouterr()
    return captured.out, captured.err


def test_flags_left_at_their_defaults_and_a_seed_that_samples_still_run(models, capsys):
    out, err = _run(["generate", "--checkpoint", models["text"], "--prompt-ids", "1,2,3", "--max-new-tokens", "2"], capsys)
    assert len(out.strip().splitlines()[-1].removeprefix("new token ids: ").split(",")) == 2 and err == ""
    sampled = [_run(["generate", "--checkpoint", models["text"], "--prompt-ids", "1,2,3", "--max-new-tokens", "3",
                     "--temperature", "1.0", "--seed", str(seed)], capsys)[0].strip().splitlines()[-1] for seed in (3, 3)]
    assert sampled[0] == sampled[1] and sampled[0].startswith("new token ids: ")


def test_a_decode_past_max_position_embeddings_runs_with_a_note(models, capsys):
    # 3 + 5 = 8 positions: the model's max_position_embeddings, no note.
    _, err = _run(["generate", "--checkpoint", models["text"], "--prompt-ids", "1,2,3", "--max-new-tokens", "5"], capsys)
    assert err == ""
    out, err = _run(["generate", "--checkpoint", models["text"], "--prompt-ids", "1,2,3", "--max-new-tokens", "6"], capsys)
    assert err.splitlines() == ["note: a 3-token prompt + 6 new tokens = 9 positions exceed the model's "
                                "max_position_embeddings (8): RoPE extrapolates past it; expect worse output"]
    assert len(out.strip().splitlines()[-1].removeprefix("new token ids: ").split(",")) <= 6


def test_frames_for_a_smaller_codebook_are_drawn_from_its_codes(models, tmp_path, capsys):
    """A random vision model picks codes across its 8192; a 64-code VQGAN decodes only 0..63."""
    out, err = _run(_vision(models["vision"], models["vqgan64"], "--generate-vision", "1",
                            "--vision-out", str(tmp_path / "frame.png")), capsys)
    assert "wrote 1 generated frame(s)" in out and (tmp_path / "frame.png").is_file()
    assert err.startswith("note: the VQGAN's codebook (") and err.strip().endswith(
        "has 64 codes, the model's vision vocabulary 8,192: generated frames use only codes 0..63")


def test_generate_frames_keeps_to_the_codebook_it_is_given(models):
    from training.generate import generate_frames

    config, params = ckpt.load_params(models["vision"])
    frames = generate_frames(config, params, [1, 2], 1, codebook_size=64)
    assert frames.shape == (1, 16, 16) and 0 <= frames.min() and frames.max() < 64


def test_a_vqgan_codebook_larger_than_the_model_vocabulary_is_refused_for_a_prompt(models, capsys):
    line = cli_error(_vision(models["hollow"], models["vqgan9000"], "--image", f"{MISSING}/x.png"), capsys)[-1]
    assert line.startswith("longctx generate: error: --vqgan ")
    assert line.endswith(": its codebook has 9,000 codes, but the model's vision vocabulary holds 8,192: the frames "
                         "would encode to codes the model has no ids for; give the VQGAN the vision stage's data was "
                         "encoded with")


def test_a_smaller_codebook_encodes_a_prompt_without_a_word():
    """Codes 0..63 of a 64-code VQGAN all have ids in an 8192-code vision vocabulary: a --video or
    --image through it is accepted (tests/test_vision_training.py's toy model reads such clips)."""
    from training.model import ModelConfig
    from training.vision import with_vision
    from training.vision_prompt import check_vqgan_codebook

    model = with_vision(ModelConfig.preset("toy"), "separate")
    assert check_vqgan_codebook(model, 64, "small", generates=False) is None
    assert check_vqgan_codebook(model, 8192, "same", generates=False) is None
    with pytest.raises(ValueError, match="its codebook has 9,000 codes"):
        check_vqgan_codebook(model, 9000, "large", generates=False)
