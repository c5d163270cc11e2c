"""Resuming a run: a damaged checkpoint is named with the way back (resume_step), metrics keep
one line per step, and a resume with other optimisation settings is refused unless allowed."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from tests.conftest import write_toy_stage
from training import checkpoint as ckpt
from training.config import TrainConfig
from training.train import ConfigMismatch, train, truncate_metrics

LENGTH, VOCAB = 64, 1000


@pytest.fixture(scope="module")
def stage(tmp_path_factory) -> str:
    return write_toy_stage(tmp_path_factory.mktemp("resume-data"), length=LENGTH, vocab=VOCAB)


def _config(stage: str, out: Path, **kw) -> TrainConfig:
    base = dict(data=stage, out=str(out), seq_len=LENGTH, global_batch=4, steps=8, lr=3e-3, warmup_steps=2,
                mesh="dp=1,fsdp=1,tp=1,sp=1", attention="dense", progress=False, checkpoint_every=2,
                model_overrides={"vocab_size": VOCAB, "num_layers": 1})
    return TrainConfig(**{**base, **kw})


def _steps_logged(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_damaged_checkpoint_names_the_file_and_the_step_to_resume_from(stage, tmp_path):
    run = tmp_path / "run"
    first = train(_config(stage, run, stop_after=6))  # step checkpoints 2, 4, 6
    data_files = sorted((run / "checkpoints" / "steps" / "6" / "state").rglob("d/*"), key=lambda p: p.stat().st_size)
    cut = data_files[-1]
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])  # a write cut short
    with pytest.raises(ckpt.CheckpointError) as err:
        train(_config(stage, run))
    message = str(err.value)
    step6 = run.absolute() / "checkpoints" / "steps" / "6"
    assert "\n" not in message and f"checkpoint {step6} cannot be read: array " in message
    assert f"file {cut.absolute().relative_to(step6)}" in message
    assert "other step checkpoints: 2, 4" in message and "--resume-step 4" in message and "resume_step: 4" in message

    # A damaged JSON file is named too.
    meta = run / "checkpoints" / "steps" / "6" / "state" / "_METADATA"
    meta.write_text("{not json")
    with pytest.raises(ckpt.CheckpointError, match=f"{step6} cannot be read: state/_METADATA is damaged .*--resume-step 4"):
        train(_config(stage, run))

    # Resuming from step 4 sets step 6 aside (kept, not deleted), retrains 5..8 exactly as the first
    # run trained 5 and 6, and the metrics keep one line per step.
    second = train(_config(stage, run, resume_step=4))
    assert [h["step"] for h in second["history"]] == [5, 6, 7, 8]
    assert [h["loss"] for h in second["history"][:2]] == [h["loss"] for h in first["history"][4:6]]
    assert (run / "checkpoints" / "set-aside" / "after-4" / "6" / "state" / "_METADATA").read_text() == "{not json"
    assert _steps_logged(run) == [1, 2, 3, 4, 5, 6, 7, 8]
    discarded = [json.loads(line)["step"] for line in (run / "metrics.discarded.jsonl").read_text().splitlines()]
    assert discarded == [5, 6]
    # The same command again does not roll back a second time: the run is done.
    again = train(_config(stage, run, resume_step=4))
    assert again["steps"] == 8 and again["history"] == [] and _steps_logged(run) == list(range(1, 9))


def test_metrics_are_cut_back_to_the_restored_step(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"step": s, "loss": 1.0}) for s in range(1, 7)]
    path.write_text("\n".join(lines) + '\n{"step": 7, "lo')  # killed while writing step 7
    assert truncate_metrics(path, 4) == 3
    assert path.read_text() == "".join(line + "\n" for line in lines[:4])
    assert (tmp_path / "metrics.discarded.jsonl").read_text() == lines[4] + "\n" + lines[5] + "\n" + '{"step": 7, "lo\n'
    assert truncate_metrics(path, 4) == 0 and truncate_metrics(tmp_path / "none.jsonl", 0) == 0


def test_resume_with_other_optimisation_settings_is_refused_unless_allowed(stage, tmp_path, caplog):
    run = tmp_path / "run"
    train(_config(stage, run, steps=4, stop_after=2))
    with pytest.raises(ConfigMismatch) as err:
        train(_config(stage, run, steps=4, lr=6e-3, warmup_steps=1, b2=0.99))
    message = str(err.value)
    assert "\n" not in message and "trained to step 2 with other settings" in message
    assert "lr 0.003 -> 0.006; warmup_steps 2 -> 1; b2 0.95 -> 0.99" in message and "allow_config_change: true" in message
    with pytest.raises(ConfigMismatch, match="global_batch 4 -> 8; grad_accum 1 -> 2"):
        train(_config(stage, run, steps=4, global_batch=8, grad_accum=2))
    with pytest.raises(ConfigMismatch, match=f"data '{stage}' -> "):
        train(_config(stage, run, steps=4, data=f"{stage}@1,{stage}@1"))

    # Where the run lives and how often it saves may change; the override resumes and logs the changes.
    with caplog.at_level(logging.WARNING, logger="longctx"):
        result = train(_config(stage, run, steps=4, lr=6e-3, checkpoint_every=1, stop_after=1, allow_config_change=True))
    assert result["steps"] == 3
    assert any("changed settings" in r.getMessage() and "lr 0.003 -> 0.006" in r.getMessage() for r in caplog.records)
    # The checkpoint now holds the new settings (a later resume compares with them).
    manager = ckpt.step_manager(run, 3)
    assert ckpt.available_steps(manager) == [2, 3] and ckpt.read_step_data(manager, 3)[1]["lr"] == 6e-3
    manager.close()
    assert _steps_logged(run) == [1, 2, 3]
