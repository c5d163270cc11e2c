"""A train refused before it starts leaves no run folder behind and says why in one line: a
sequence layout the ring cannot run (zigzag/striped on sp=8, dense attention with sp > 1, the
same rules as `longctx plan`), an --out below a file, an --out that is a params checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import cli_error, write_toy_stage
from training.config import TrainConfig
from training.train import train


@pytest.fixture(scope="module")
def stage40(tmp_path_factory) -> str:
    return write_toy_stage(tmp_path_factory.mktemp("refusal-data"), name="s40", length=40)


@pytest.fixture(scope="module")
def params_checkpoint(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("refusal-ckpt")
    stage = write_toy_stage(root / "data", length=64)
    train(TrainConfig(data=stage, out=str(root / "tiny"), seq_len=64, global_batch=2, steps=1, mesh="dp=1,fsdp=1,tp=1,sp=1",
                      attention="dense", progress=False, model_overrides={"vocab_size": 1000, "num_layers": 1}))
    return root / "tiny" / "checkpoints" / "final"


SP8 = ["--seq-len", "40", "--mesh", "sp=8", "--q-chunk", "8", "--kv-chunk", "8", "--loss-chunk", "8"]


@pytest.mark.parametrize("extra, reason", [
    ([], "zigzag load balancing needs seq_len (40) divisible by 2 x sp = 16"),
    (["--load-balance", "striped"], "striped load balancing needs seq_len (40) divisible by sp x sp = 64"),
    (["--attention", "dense"], "dense attention needs sp=1 (ring attention splits the sequence)"),
])
def test_a_layout_the_mesh_cannot_run_leaves_no_run_folder(stage40, tmp_path, capsys, extra, reason):
    out = tmp_path / "runs" / "z1"
    line = cli_error(["train", "--data", stage40, *SP8, *extra, "--out", str(out)], capsys)[-1]
    assert not out.exists() and not (tmp_path / "runs").exists()
    assert line.startswith("longctx train: error: ") and reason in line, line
    # An existing (empty) run folder is left as it was found.
    out.mkdir(parents=True)
    cli_error(["train", "--data", stage40, *SP8, *extra, "--out", str(out)], capsys)
    assert list(out.iterdir()) == []


def test_out_below_a_file_is_refused_in_one_line(stage40, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("runs").mkdir()
    Path("runs/afile").write_text("not a folder\n")
    lines = cli_error(["train", "--data", stage40, "--seq-len", "40", "--out", "runs/afile/sub"], capsys)
    assert lines[-1] == ("longctx train: error: out runs/afile/sub cannot be made: runs/afile is a file, not a folder; "
                         "pass a run folder whose parent folders are folders")
    assert Path("runs/afile").read_text() == "not a folder\n" and sorted(p.name for p in Path("runs").iterdir()) == ["afile"]


def test_out_that_is_a_params_checkpoint_is_refused(stage40, params_checkpoint, tmp_path, capsys, monkeypatch):
    before = sorted(p.name for p in params_checkpoint.iterdir())
    assert before == ["model.json", "params"]
    monkeypatch.chdir(params_checkpoint.parent.parent.parent)
    line = cli_error(["train", "--data", stage40, "--seq-len", "40", "--out", "tiny/checkpoints/final"], capsys)[-1]
    assert line == ("longctx train: error: out tiny/checkpoints/final is a params checkpoint (model.json, params/), not a run "
                    "folder; to start from it pass it as --init-from (config key init_from) and train into a new (or empty) --out")
    assert sorted(p.name for p in params_checkpoint.iterdir()) == before
