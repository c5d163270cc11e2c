"""A resume must restore into the network the run was trained as: resuming without the run's
init_from (or with another network's) is refused in one line naming the difference and the fix,
before any checkpoint is touched; a readable checkpoint of another network is never called
damaged nor a rollback suggested; another init_from of the same network is a config change."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from tests.conftest import cli_error, write_toy_stage
from training import checkpoint as ckpt
from training.config import TrainConfig
from training.train import ConfigMismatch, train

LENGTH, VOCAB = 64, 1000


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, str]:
    """Two 1-layer params checkpoints (another network than the toy preset) and their stage."""
    root = tmp_path_factory.mktemp("resume-network")
    stage = write_toy_stage(root / "data", length=LENGTH, vocab=VOCAB)
    for name, seed in (("l1", 0), ("l1b", 1)):
        train(TrainConfig(data=stage, out=str(root / name), seq_len=LENGTH, global_batch=2, steps=1, seed=seed,
                          mesh="dp=1,fsdp=1,tp=1,sp=1", attention="dense", progress=False,
                          model_overrides={"vocab_size": VOCAB, "num_layers": 1}))
    return {"stage": stage, "l1": str(root / "l1" / "checkpoints" / "final"), "l1b": str(root / "l1b" / "checkpoints" / "final")}


def _config(runs, out: Path, **kw) -> TrainConfig:
    base = dict(data=runs["stage"], out=str(out), seq_len=LENGTH, global_batch=2, steps=4, checkpoint_every=1,
                mesh="dp=1,fsdp=1,tp=1,sp=1", attention="dense", progress=False)
    return TrainConfig(**{**base, **kw})


def _steps(run: Path) -> list[int]:
    manager = ckpt.step_manager(run, 3)
    try:
        return ckpt.available_steps(manager)
    finally:
        manager.close()


def test_resume_without_the_runs_init_from_is_refused_before_any_checkpoint_is_touched(runs, tmp_path, capsys):
    run = tmp_path / "r2"
    train(_config(runs, run, init_from=runs["l1"], stop_after=2))
    assert _steps(run) == [1, 2]
    for kw in ({}, {"resume_step": 1}):  # the old advice (--resume-step 1) set healthy checkpoint 2 aside
        with pytest.raises(ConfigMismatch) as err:
            train(_config(runs, run, **kw))
        message = str(err.value)
        assert "\n" not in message and f"was trained to step {kw.get('resume_step', 2)} as another network" in message, message
        assert "num_layers 1 in the run, 2 here" in message and "vocab_size 1000 in the run, 32000 here" in message
        assert f"pass the run's own --init-from {runs['l1']} again" in message and "or train into a new --out" in message
        assert "cannot be read" not in message and "--resume-step" not in message
        assert _steps(run) == [1, 2] and not (run / "checkpoints" / "set-aside").exists()

    # The command line says the same, as a user error (exit 2, one line, no traceback).
    argv = ["train", "--data", runs["stage"], "--seq-len", str(LENGTH), "--global-batch", "2", "--steps", "4",
            "--checkpoint-every", "1", "--mesh", "dp=1,fsdp=1,tp=1,sp=1", "--out", str(run), "--stop-after", "2"]
    line = cli_error(argv, capsys)[-1]
    assert line.startswith("longctx train: error: ") and "as another network (" in line and "--init-from" in line
    assert "cannot be read" not in line and _steps(run) == [1, 2]

    # The run's own init_from (spelled with a trailing slash) resumes it.
    result = train(_config(runs, run, init_from=runs["l1"] + "/"))
    assert [h["step"] for h in result["history"]] == [3, 4] and result["steps"] == 4


def test_another_init_from_of_the_same_network_is_a_config_change(runs, tmp_path, caplog):
    run = tmp_path / "r3"
    train(_config(runs, run, init_from=runs["l1"], stop_after=2))
    with pytest.raises(ConfigMismatch) as err:
        train(_config(runs, run, init_from=runs["l1b"]))
    message = str(err.value)
    assert "\n" not in message and "trained to step 2 with other settings" in message
    assert f"init_from {runs['l1']!r} -> {runs['l1b']!r}" in message and "allow_config_change" in message
    assert "config.yaml" not in [p.name for p in run.iterdir()] or runs["l1b"] not in (run / "config.yaml").read_text()

    with caplog.at_level(logging.WARNING, logger="longctx"):
        result = train(_config(runs, run, init_from=runs["l1b"], allow_config_change=True, stop_after=1))
    assert result["steps"] == 3
    assert any("changed settings" in r.getMessage() and "init_from" in r.getMessage() for r in caplog.records)


def test_a_checkpoint_of_another_network_is_not_called_damaged(runs, tmp_path):
    """When the run's init_from has moved, the configs cannot tell the networks apart: the restore
    compares the checkpoint's array shapes with the state built, and says so instead of 'damaged'."""
    moved = tmp_path / "moved-l1"
    shutil.copytree(runs["l1"], moved)
    run = tmp_path / "r4"
    train(_config(runs, run, init_from=str(moved), stop_after=2))
    shutil.rmtree(moved)
    with pytest.raises(ConfigMismatch) as err:
        train(_config(runs, run, allow_config_change=True))
    message = str(err.value)
    assert "\n" not in message and "step checkpoint 2 holds another network than this run builds" in message, message
    assert "arrays only here (e.g. " in message and "or train into a new --out" in message
    assert "cannot be read" not in message and "--resume-step" not in message
    assert _steps(run) == [1, 2] and not (run / "checkpoints" / "set-aside").exists()
