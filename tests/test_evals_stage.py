"""The `eval:` hook of `train-stages` (evals/stage_eval.py): a finished toy stage on real book
shards evaluated at its own length, its outputs in the stage folder."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from evals.stage_eval import EvalSection, evaluate_stage, stage_lengths
from tests.test_niah import TOY, toy_params
from training import checkpoint as ckpt
from training.config import TrainConfig


def test_stage_lengths():
    assert stage_lengths(32768, None) == [4096, 8192, 16384, 32768]
    assert stage_lengths(2048, None) == [1024, 2048]
    assert stage_lengths(256, None) == [256]
    assert stage_lengths(8192, ["1k", "4k", "16k"]) == [1024, 4096]
    with pytest.raises(ValueError, match="all longer than the stage's 1024"):
        stage_lengths(1024, ["4k"])


def test_section_schema():
    section = EvalSection.model_validate({"ruler": {"tasks": "vt"}, "niah": None})
    assert section.niah is None and section.ruler.samples == 5 and section.loss_by_position.rows == 32
    with pytest.raises(ValidationError, match="step"):
        EvalSection.model_validate({"ruler": {"step": 1}})


def test_evaluate_stage_writes_into_the_stage_folder(book_shards, tmp_path):
    stage_out = tmp_path / "plan" / "s256"
    ckpt.save_params(stage_out / "checkpoints" / "final", TOY, toy_params())
    config = TrainConfig(data=str(book_shards / "s256"), out=str(stage_out), seq_len=256, global_batch=2, steps=1,
                         attention="dense", progress=False)
    section = EvalSection.model_validate({
        "ruler": {"tasks": "niah_single_1,niah_multikey_2", "samples": 1, "max_new_tokens": 8},
        "niah": {"format": "lwm", "depths": "0,100"},
        "loss_by_position": {"rows": 2},
    })
    summary = evaluate_stage(config, section)
    # Defaults: evaluated at the stage's own length; the tokenizer is the one the shards record.
    assert summary["lengths"] == [256] and summary["stage"] == "s256"
    assert summary["ruler"]["average"] == {"256": 0.0} and summary["ruler"]["effective_length"] is None
    assert summary["niah"] == {"format": "lwm", "mean": {"256": 0.0}}
    assert summary["loss_by_position"]["tokens"] > 400 and summary["loss_by_position"]["loss"] > 5
    out = stage_out / "eval"
    assert json.loads((out / "summary.json").read_text()) == summary
    results = [json.loads(line) for line in (out / "ruler" / "results.jsonl").read_text().splitlines()]
    assert sorted(r["task"] for r in results) == ["niah_multikey_2", "niah_single_1"] and {r["length"] for r in results} == {256}
    niah_rows = [json.loads(line) for line in (out / "niah" / "results.jsonl").read_text().splitlines()]
    assert [(r["format"], r["depth"]) for r in niah_rows] == [("lwm", 0.0), ("lwm", 100.0)]
    assert (out / "niah" / "heatmap.png").is_file() and (out / "loss_by_position" / "loss_by_position.png").is_file()
    assert (out / "ruler" / "scores_by_length.png").is_file() and (out / "ruler" / "heatmap.png").is_file()


def test_train_stages_evaluates_each_stage_as_it_ends(book_shards, tmp_path, capsys):
    """`longctx train-stages` with an `eval:` section: the stage trains, then is evaluated at its
    own length into STAGE/eval/; a typo in the section stops the plan before anything trains."""
    import yaml

    from longctx.cli import main

    stage = {"name": "s256", "data": str(book_shards / "s256"), "overrides": {}}
    base = {"model": "toy", "seq_len": 256, "global_batch": 2, "steps": 2, "attention": "dense", "progress": False,
            "mesh": "dp=1,fsdp=1,tp=1,sp=1"}
    section = {"ruler": {"tasks": "niah_single_1", "samples": 1, "max_new_tokens": 4}, "niah": None,
               "loss_by_position": {"rows": 2}}
    plan = tmp_path / "plan.yaml"
    plan.write_text(yaml.safe_dump({"out": str(tmp_path / "run"), "base": base, "stages": [stage], "eval": section}))
    assert main(["train-stages", "--plan", str(plan)]) == 0
    summary = json.loads((tmp_path / "run" / "s256" / "eval" / "summary.json").read_text())
    assert summary["stage"] == "s256" and summary["lengths"] == [256] and summary.get("niah") is None
    assert set(summary["ruler"]["average"]) == {"256"} and summary["loss_by_position"]["tokens"] > 0
    assert (tmp_path / "run" / "s256" / "checkpoints" / "final").is_dir()

    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"out": str(tmp_path / "run2"), "base": base, "stages": [stage],
                                   "eval": {"ruler": {"step": 1}}}))
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["train-stages", "--plan", str(bad)])
    assert exit_info.value.code == 2 and "step" in capsys.readouterr().err
    assert not (tmp_path / "run2").exists()
