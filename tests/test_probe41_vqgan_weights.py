"""A local VQGAN folder whose config is there but whose weights are missing or cut short is named
in one line before a vision job starts (it ended the job with a safetensors traceback from inside
Beam, or with a diffusers-config message about attention), and `longctx inspect --vqgan` says the
same instead of a traceback; a local VQGAN path that does not exist is not looked up on the hub."""

from __future__ import annotations

import json
import shutil

import jax
import numpy as np
import pytest

from curation.vqgan import PARAMS_FILE, VQGANConfig, init_params, save_params
from longctx.cli import main
from tests.conftest import DEMO_TOKENIZER, cli_error


@pytest.fixture(scope="module")
def vqgan(tmp_path_factory):
    config = VQGANConfig.tiny()  # downsamples by 2: 32x32 frames -> 16x16 codes
    shapes = jax.eval_shape(lambda: init_params(config, seed=0, image_size=32))
    return save_params(tmp_path_factory.mktemp("vq") / "vqgan", config, jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes))


def _damaged(vqgan, tmp_path, how: str):
    folder = tmp_path / f"vq-{how}"
    shutil.copytree(vqgan, folder)
    weights = folder / PARAMS_FILE
    if how == "missing":
        weights.unlink()
    else:
        data = weights.read_bytes()
        weights.write_bytes(data[: {"header": 1000, "tail": len(data) * 9 // 10}[how]])
    return folder


@pytest.mark.parametrize("how, expected", [("missing", "no params.safetensors"),
                                           ("header", "params.safetensors cannot be read"),
                                           ("tail", "params.safetensors cannot be read")])
def test_images_job_refuses_a_vqgan_with_damaged_weights_before_it_starts(vqgan, tmp_path, capsys, how, expected):
    folder = _damaged(vqgan, tmp_path, how)
    src = tmp_path / "pairs.jsonl"
    src.write_text(json.dumps({"id": "a", "text": "a cat", "image": "cat.png"}) + "\n")
    out = tmp_path / "out"
    lines = cli_error(["images", "--input", str(src), "--output", str(out), "--tokenizer", DEMO_TOKENIZER,
                       "--vqgan", str(folder), "--stages", "v=4096:0-", "--frame-size", "32",
                       "--direct_running_mode", "in_memory"], capsys)
    assert lines[-1].startswith("longctx images: error: vqgan ") and expected in lines[-1], lines[-1]
    assert "mid_block_add_attention" not in lines[-1]
    assert not out.exists()  # stopped before the output folder was made


def _images_output(tmp_path, vqgan):
    """A finished images job's output (one pair), made with `vqgan`."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(buf, format="PNG")
    (tmp_path / "cat.png").write_bytes(buf.getvalue())
    src = tmp_path / "pairs.jsonl"
    src.write_text(json.dumps({"id": "a", "text": "a cat", "image": "cat.png"}) + "\n")
    out = tmp_path / "out"
    assert main(["images", "--input", str(src), "--output", str(out), "--tokenizer", DEMO_TOKENIZER, "--vqgan", str(vqgan),
                 "--stages", "v=512:0-", "--frame-size", "32", "--encode-batch", "1", "--direct_running_mode", "in_memory"]) == 0
    return out


def test_inspect_names_damaged_or_missing_vqgan_in_one_line(vqgan, tmp_path, capsys):
    out = _images_output(tmp_path, vqgan)
    cases = [(_damaged(vqgan, tmp_path, "header"), "params.safetensors cannot be read"),
             (_damaged(vqgan, tmp_path, "missing"), "no params.safetensors"),
             (tmp_path / "no-such-vqgan", "no such folder")]
    for folder, expected in cases:
        lines = cli_error(["inspect", str(out), "--vqgan", str(folder), "--row", "0", "--plots", str(tmp_path / "plots")], capsys)
        assert lines[-1].startswith("longctx inspect: error: ") and expected in lines[-1], lines[-1]
        assert "Hugging Face Hub" not in lines[-1]
