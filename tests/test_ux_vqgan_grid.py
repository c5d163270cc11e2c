"""A VQGAN whose code grid at --frame-size is not the layout's 16x16 stops a vision job before
its pipeline starts, in one line (issue 19: it ended a 51-line Beam traceback)."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from curation.vqgan import VQGANConfig, init_params, save_params
from longctx.cli import main
from tests.conftest import DEMO_TOKENIZER


@pytest.fixture(scope="module")
def vqgan(tmp_path_factory):
    config = VQGANConfig.tiny()  # downsamples by 2: 32x32 frames -> 16x16 codes
    # Zero weights of the real shapes (XLA takes seconds to compile the random initialisers on CPU).
    shapes = jax.eval_shape(lambda: init_params(config, seed=0, image_size=32))
    return save_params(tmp_path_factory.mktemp("vq") / "vqgan", config, jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes))


@pytest.mark.parametrize("job", ["images", "video"])
def test_a_vqgan_grid_that_does_not_fit_the_frame_size_is_one_line(job, vqgan, tmp_path, capsys):
    src = tmp_path / "pairs.jsonl"
    src.write_text(json.dumps({"id": "a", "text": "a cat", "image": "cat.png", "video": "cat.mp4"}) + "\n")
    out = tmp_path / "out"
    common = [job, "--input", str(src), "--output", str(out), "--tokenizer", DEMO_TOKENIZER, "--vqgan", str(vqgan),
              "--stages", "v=4096:0-", "--direct_running_mode", "in_memory"]
    for size, expected in (("64", f"VQGAN {vqgan} turns a 64x64 frame into a 32x32 grid of codes, but the vision layout "
                                  "holds 16x16 (256 codes a frame): pass --frame-size 32 (this VQGAN downsamples by 2)"),
                           ("33", "frame_size 33 is not a multiple of the VQGAN's downsampling factor 2: pass --frame-size 32")):
        with pytest.raises(SystemExit) as err:
            main([*common, "--frame-size", size])
        assert err.value.code == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert lines[-1].startswith(f"longctx {job}: error: ") and expected in lines[-1], lines[-1]
        assert "Traceback" not in "\n".join(lines)
        assert not out.exists()  # stopped before the output folder was made
