"""Evaluations tell a model by its weights, not only its name: the checkpoint's save time
(training.checkpoint.weights_saved: Orbax's commit time of a params checkpoint, the newest weight
file of a Hugging Face folder) is one of the settings a results folder records (evals/resume.py).

- `eval niah` / `eval ruler` rerun into a folder scored with a checkpoint of the same name saved
  again since (a run retrained into its folder) are refused in one line before the weights load:
  before, the old cells were kept as this model's.
- A `train-stages` stage evaluation over a retrained stage sets the old cells aside
  (STAGE/eval/set-aside/niah) and scores the grid again, rather than refusing after training.

The model is the toy checkpoint of tests/test_niah.py."""

from __future__ import annotations

import json
import os

import pytest

from curation.hf_models import weights_written
from evals.stage_eval import EvalSection, evaluate_stage
from longctx.cli import main
from tests.conftest import DEMO_TOKENIZER, cli_error
from tests.test_niah import TOY, toy_params
from tests.test_stage_eval_niah_resume import asked  # noqa: F401 - the fixture
from training import checkpoint as ckpt
from training.config import TrainConfig


def _niah_argv(checkpoint, out) -> list[str]:
    return ["eval", "niah", "--checkpoint", str(checkpoint), "--tokenizer", DEMO_TOKENIZER, "--lengths", "256",
            "--depths", "50%", "--sp", "2", "--out", str(out)]


def test_weights_saved_reads_the_checkpoints_own_commit_time_and_changes_when_saved_again(tmp_path):
    final = ckpt.save_params(tmp_path / "run" / "checkpoints" / "final", TOY, toy_params())
    first = ckpt.weights_saved(str(final))
    assert first is not None and first.endswith("Z") and len(first) == len("2026-12-01T19:30:01.123456789Z")
    assert ckpt.weights_saved(str(final)) == first  # read, not made up: the same checkpoint, the same time
    ckpt.save_params(final, TOY, toy_params())
    assert ckpt.weights_saved(str(final)) not in (None, first)


def test_weights_written_is_the_newest_weight_file_of_a_model_folder(tmp_path):
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    assert weights_written(str(folder)) is None  # no weight file: nothing to tell it by
    (folder / "model-00001.safetensors").write_bytes(b"a")
    (folder / "model-00002.safetensors").write_bytes(b"b")
    os.utime(folder / "model-00001.safetensors", ns=(1_700_000_000_000_000_000, 1_700_000_000_000_000_000))
    os.utime(folder / "model-00002.safetensors", ns=(1_800_000_000_123_456_789, 1_800_000_000_123_456_789))
    os.utime(folder / "config.json", ns=(1_900_000_000_000_000_000, 1_900_000_000_000_000_000))  # not weights
    assert weights_written(str(folder)) == "2027-01-15T08:00:00.123456789Z"
    assert weights_written("HuggingFaceTB/SmolLM2-135M-Instruct") is None  # a hub id


def test_eval_niah_refuses_a_folder_scored_with_earlier_weights_of_the_same_name(tmp_path, capsys):
    final = ckpt.save_params(tmp_path / "run" / "checkpoints" / "final", TOY, toy_params())
    out = tmp_path / "niah"
    assert main(_niah_argv(final, out)) == 0
    results = (out / "results.jsonl").read_bytes()
    recorded = json.loads((out / "settings.json").read_text())["settings"]
    assert recorded["model"] == "run" and recorded["weights_saved"] == ckpt.weights_saved(str(final))
    assert main(_niah_argv(final, out)) == 0  # the same weights: resumed, nothing rewritten
    assert (out / "results.jsonl").read_bytes() == results

    ckpt.save_params(final, TOY, toy_params())  # the run retrained into its folder: same name, other weights
    lines = cli_error(_niah_argv(final, out), capsys)
    assert "weights_saved" in lines[-1] and "write to another folder, or remove it to start over" in lines[-1]
    assert f"this run has {ckpt.weights_saved(str(final))!r}" in lines[-1]
    assert (out / "results.jsonl").read_bytes() == results


def test_a_stage_evaluation_of_a_retrained_stage_sets_the_old_cells_aside(book_shards, tmp_path, asked):  # noqa: F811
    stage_out = tmp_path / "plan" / "s256"
    final = stage_out / "checkpoints" / "final"
    ckpt.save_params(final, TOY, toy_params())
    config = TrainConfig(data=str(book_shards / "s256"), out=str(stage_out), seq_len=256, global_batch=2, steps=1,
                         attention="dense", progress=False)
    section = EvalSection.model_validate({"ruler": None, "loss_by_position": None,
                                          "niah": {"format": "lwm", "depths": "0,100"}})
    said: list[str] = []
    first = evaluate_stage(config, section, log=said.append)
    niah_out = stage_out / "eval" / "niah"
    old = (niah_out / "results.jsonl").read_bytes()
    assert sum(asked) == 2 and first["weights_saved"] == ckpt.weights_saved(str(final))

    ckpt.save_params(final, TOY, toy_params())
    second = evaluate_stage(config, section, log=said.append)
    aside = stage_out / "eval" / "set-aside" / "niah"
    assert said[-2] == f"stage s256: niah results of earlier weights set aside to {aside}"
    assert said[-1] == "stage s256: NIAH (lwm) written (2 cells scored, 0 kept from an earlier run)"
    assert sum(asked) == 4 and (aside / "results.jsonl").read_bytes() == old
    assert len((niah_out / "results.jsonl").read_bytes().splitlines()) == 2
    recorded = json.loads((niah_out / "settings.json").read_text())["settings"]["weights_saved"]
    assert recorded == second["weights_saved"] == ckpt.weights_saved(str(final)) != first["weights_saved"]

    # Retrained once more: the second set-aside goes beside the first, nothing is overwritten.
    ckpt.save_params(final, TOY, toy_params())
    evaluate_stage(config, section, log=said.append)
    assert said[-2].endswith(str(stage_out / "eval" / "set-aside" / "niah-2")) and sum(asked) == 6
    assert (aside / "results.jsonl").read_bytes() == old


@pytest.mark.parametrize("recorded", [None, "absent"])
def test_a_folder_without_a_recorded_save_time_is_not_set_aside(tmp_path, recorded):
    from evals.resume import set_aside_stale

    out = tmp_path / "niah"
    out.mkdir()
    settings = {"model": "s256"} if recorded == "absent" else {"model": "s256", "weights_saved": None}
    (out / "settings.json").write_text(json.dumps({"eval": "niah", "settings": settings}))
    assert set_aside_stale(out, "weights_saved", "2026-12-01T00:00:00.000000000Z") is None
    assert (out / "settings.json").is_file() and not (tmp_path / "set-aside").exists()
