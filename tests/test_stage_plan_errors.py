"""A mistake in a `longctx train-stages` plan stops it with one line naming the file, the place and
the key (issue "newcomer path"), with the same exit code as a typo in `longctx train --config`."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from curation.shards import write_shard
from longctx.cli import main
from tests.conftest import toy_rows

STAGE = {"name": "s256", "data": "data/s256", "overrides": {"steps": 2}}
BASE = {"model": "toy", "seq_len": 256, "global_batch": 2}


def _error(argv: list[str], capsys) -> tuple[int, list[str]]:
    with pytest.raises(SystemExit) as err:
        main(argv)
    return err.value.code, capsys.readouterr().err.strip().splitlines()


def _plan_error(plan: dict, capsys) -> str:
    with open("plan.yaml", "w") as fh:
        yaml.safe_dump(plan, fh)
    code, lines = _error(["train-stages", "--plan", "plan.yaml"], capsys)
    assert code == 2 and len(lines) == 2 and lines[0].startswith("usage: longctx train-stages "), lines
    return lines[1]


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative plan paths: the lines are exact
    yield
    assert not (tmp_path / "runs").exists()  # nothing started


def test_a_typo_in_a_stage_overrides_is_one_line(capsys):
    second = {"name": "s512", "data": "data/s512", "overrides": {"step": 3}}
    line = _plan_error({"out": "runs", "base": BASE, "stages": [STAGE, second]}, capsys)
    assert line == "longctx train-stages: error: plan.yaml: stages[1].overrides: unknown key 'step' (did you mean 'steps'?)"


def test_unknown_keys_at_the_top_in_base_and_in_a_stage(capsys):
    line = _plan_error({"out": "runs", "base": BASE, "stage": [STAGE]}, capsys)
    # The typo comes first: it is why `stages` is missing.
    assert line == "longctx train-stages: error: plan.yaml: unknown key 'stage' (did you mean 'stages'?) (and 1 more)"
    line = _plan_error({"out": "runs", "base": {**BASE, "global_bach": 4}, "stages": [STAGE]}, capsys)
    assert line == "longctx train-stages: error: plan.yaml: base: unknown key 'global_bach' (did you mean 'global_batch'?)"
    line = _plan_error({"out": "runs", "stages": [{"name": "s256", "data": "d", "overides": {}}]}, capsys)
    assert line == "longctx train-stages: error: plan.yaml: stages[0]: unknown key 'overides' (did you mean 'overrides'?)"


def test_wrong_values_missing_keys_bad_yaml_and_no_file(capsys):
    bad = {**STAGE, "overrides": {"steps": "many"}}
    line = _plan_error({"out": "runs", "base": BASE, "stages": [bad]}, capsys)
    assert line == ("longctx train-stages: error: plan.yaml: stages[0].overrides.steps: Input should be a valid integer, "
                    "unable to parse string as an integer (got 'many')")
    line = _plan_error({"out": "runs", "stages": [{"name": "s256"}]}, capsys)
    assert line == "longctx train-stages: error: plan.yaml: stages[0]: missing key 'data'"
    line = _plan_error(["out", "runs"], capsys)
    assert line == "longctx train-stages: error: plan.yaml: a stage plan is a YAML mapping (out:, base:, stages:), not list"
    with open("broken.yaml", "w") as fh:
        fh.write("out: runs\nstages:\n  - name: a\n   data: d\n")
    code, lines = _error(["train-stages", "--plan", "broken.yaml"], capsys)
    assert code == 2 and lines[-1].startswith("longctx train-stages: error: broken.yaml:4:4: not valid YAML (") and len(lines) == 2
    code, lines = _error(["train-stages", "--plan", "none.yaml"], capsys)
    assert code == 2 and lines[-1] == "longctx train-stages: error: none.yaml: cannot read the plan (No such file or directory)"


def test_exit_code_matches_a_typo_in_train_config(capsys):
    with open("train.yaml", "w") as fh:
        yaml.safe_dump({**BASE, "step": 3, "data": "data/s256", "out": "runs/x"}, fh)
    train_code, lines = _error(["train", "--config", "train.yaml"], capsys)
    assert lines[-1] == "longctx train: error: train.yaml: unknown key 'step' (did you mean 'steps'?)"  # after the usage
    with open("plan.yaml", "w") as fh:
        yaml.safe_dump({"out": "runs", "base": {**BASE, "step": 3}, "stages": [STAGE]}, fh)
    plan_code, _ = _error(["train-stages", "--plan", "plan.yaml"], capsys)
    assert train_code == plan_code == 2


def test_a_typo_in_a_data_job_config_and_in_an_eval_section_is_one_line(capsys):
    with open("books.yaml", "w") as fh:
        yaml.safe_dump({"min_tail_tokens": 3, "stagez": ["4k"]}, fh)
    code, lines = _error(["books", "--config", "books.yaml", "--input", "in.jsonl", "--output", "out"], capsys)
    assert code == 2 and lines[-1] == "longctx books: error: books.yaml: unknown key 'stagez' (did you mean 'stages'?)"
    with open("plan.yaml", "w") as fh:
        yaml.safe_dump({"out": "runs", "base": BASE, "stages": [STAGE], "eval": {"rulr": {"lengths": ["1k"]}}}, fh)
    code, lines = _error(["train-stages", "--plan", "plan.yaml"], capsys)
    assert code == 2 and len(lines) == 2, lines
    assert lines[-1] == "longctx train-stages: error: plan.yaml: eval: unknown key 'rulr' (did you mean 'ruler'?)"


def test_an_unreadable_or_malformed_config_file_is_one_line_for_every_command(capsys):
    with open("broken.yaml", "w") as fh:
        fh.write("model: toy\n seq_len: 3\n")
    for argv in (["train", "--config", "broken.yaml"], ["books", "--config", "broken.yaml", "--input", "x", "--output", "y"]):
        code, lines = _error(argv, capsys)
        assert code == 2 and lines[-1] == f"longctx {argv[0]}: error: broken.yaml:2:9: not valid YAML (mapping values are not allowed here)"
        code, lines = _error([argv[0], "--config", "none.yaml", *argv[3:]], capsys)
        assert code == 2 and lines[-1] == f"longctx {argv[0]}: error: none.yaml: cannot read the config (No such file or directory)"


def _shards(folder: str, length: int, tokenizer_sha: str = "ab" * 32) -> None:
    tokenizer = {"name": "toy", "sha256": tokenizer_sha, "vocab_size": 1000, "bos_id": 1, "eos_id": 2, "pad_id": None}
    write_shard(folder, f"s{length}", 0, 1, toy_rows(np.random.default_rng(0), 4, length, 1000, "d"), {"tokenizer": tokenizer})


def test_a_later_stage_whose_data_is_missing_or_does_not_fit_stops_the_plan_before_stage_one(capsys):
    _shards("data", 64)
    first = {"name": "a", "data": "data/s64", "overrides": {"seq_len": 64}}
    second = {"name": "b", "data": "data/s128", "overrides": {"seq_len": 128}}
    plan = {"out": "runs", "base": {"model": "toy", "global_batch": 2, "steps": 1}, "stages": [first, second]}
    line = _plan_error(plan, capsys)
    assert line == ("longctx train-stages: error: stage b: data folder data/s128 does not exist: "
                    "pass a stage folder of a data job's output, e.g. out/books/4k")
    _shards("data", 128)
    line = _plan_error({**plan, "stages": [first, {**second, "overrides": {"seq_len": 256}}]}, capsys)
    assert line == "longctx train-stages: error: stage b: data/s128: stage length 128 != the stage's seq_len 256"
    _shards("other", 128, tokenizer_sha="cd" * 32)
    line = _plan_error({**plan, "stages": [first, {**second, "data": "other/s128"}]}, capsys)
    assert line == ("longctx train-stages: error: the plan's stages were made with different tokenizers: "
                    "tokenizer sha256: stage a (data/s64) has abababababab, stage b (other/s128) has cdcdcdcdcdcd")


@pytest.mark.parametrize(("section", "expected"), [
    ({"lengths": [0]}, "plan.yaml: eval.lengths: bad count 0: must be at least 1 (got [0])"),
    ({"niah": {"depths": "50,x"}}, "plan.yaml: eval.niah.depths: depths are a count or percents such as 0,25,50 "
                                   "(could not convert string to float: 'x') (got '50,x')"),
    ({"ruler": {"tasks": "vt,nope"}}, "plan.yaml: eval.ruler.tasks: unknown task(s) nope; known: all, "),
    ({"loss_by_position": {"buckets": "lg"}}, "plan.yaml: eval.loss_by_position.buckets: bad count 'lg': "),
    ({"tokenizer": "./nosuch.json"}, "plan.yaml: eval.tokenizer: tokenizer './nosuch.json': "),
    ({"lengths": ["64k"]}, "stage s256: eval lengths ['64k'] are all longer than the stage's 256 tokens"),
])
def test_a_bad_eval_value_stops_the_plan_before_stage_one(capsys, section, expected):
    # Each of these was found only after the first stage had trained (and partly been evaluated).
    line = _plan_error({"out": "runs", "base": BASE, "stages": [STAGE], "eval": section}, capsys)
    assert line.startswith(f"longctx train-stages: error: {expected}"), line
