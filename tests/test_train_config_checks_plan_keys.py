"""`train-stages` refuses `out`, `data` and `init_from` given in a plan's `base:` or a stage's
`overrides:` (each stage's are made by the plan: they were dropped without a word, and a stage
given `init_from` there started from random weights), and the vision-only keys where every stage
they reach is surely text-only. One line naming the place and where the key belongs, exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from longctx.cli import main
from training.config import StagePlan

BASE = {"model": "toy", "seq_len": 128, "global_batch": 2, "steps": 1}
STAGE = {"name": "s128", "data": "data/s128"}


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative plan paths: the lines are exact, no temporary path in them
    yield
    assert not (tmp_path / "runs").exists() and not (tmp_path / "elsewhere").exists()  # nothing started


def _plan_error(plan: dict, capsys) -> str:
    Path("plan.yaml").write_text(yaml.safe_dump(plan, sort_keys=False))
    capsys.readouterr()
    with pytest.raises(SystemExit) as err:
        main(["train-stages", "--plan", "plan.yaml"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert err.value.code == 2 and len(lines) == 2 and lines[0].startswith("usage: longctx train-stages "), lines
    return lines[1]


OUT_HOME = ("a plan's run folder is its top-level out: (stage NAME trains into OUT/NAME; --out overrides it); "
            "here it would be ignored: move it there")
DATA_HOME = "a stage's shards are its stage entry's data: (stages[N].data); here it would be ignored: move it there"
INIT_HOME = ("the first stage starts from the plan's top-level init_from:, each later stage from the previous stage's "
             "checkpoints/final; here it would be ignored: move it to the top-level init_from")


def test_the_probe_plan_out_and_data_in_base_init_from_in_overrides_is_refused(capsys):
    plan = {"out": "runs", "base": {**BASE, "out": "elsewhere", "data": "out/nowhere"},
            "stages": [{**STAGE, "overrides": {"init_from": "runs/tiny/checkpoints/final"}}]}
    assert _plan_error(plan, capsys) == f"longctx train-stages: error: plan.yaml: base.out: {OUT_HOME}"


@pytest.mark.parametrize("section, key, home", [
    ("base", "data", DATA_HOME),
    ("base", "init_from", INIT_HOME),
    ("overrides", "out", OUT_HOME),
    ("overrides", "data", DATA_HOME),
    ("overrides", "init_from", INIT_HOME),
])
def test_each_plan_key_in_base_or_a_stage_overrides_names_its_place(capsys, section, key, home):
    value = "somewhere/else"
    second = {"name": "s256", "data": "data/s256", "overrides": {"seq_len": 256}}
    if section == "base":
        plan, place = {"out": "runs", "base": {**BASE, key: value}, "stages": [STAGE, second]}, f"base.{key}"
    else:
        second["overrides"][key] = value
        plan, place = {"out": "runs", "base": BASE, "stages": [STAGE, second]}, f"stages[1].overrides.{key}"
    assert _plan_error(plan, capsys) == f"longctx train-stages: error: plan.yaml: {place}: {home}"


def test_a_plan_with_its_keys_in_their_places_still_makes_its_stages():
    plan = StagePlan.from_data({"out": "runs", "init_from": "runs/tiny/checkpoints/final", "base": BASE,
                                "stages": [STAGE, {"name": "s256", "data": "data/s256", "overrides": {"seq_len": 256}}]})
    (first, one), (second, two) = plan.stage_configs()
    assert (first, one.out, one.data, one.init_from) == ("s128", "runs/s128", "data/s128", "runs/tiny/checkpoints/final")
    assert (second, two.out, two.data, two.init_from) == ("s256", "runs/s256", "data/s256", "runs/s128/checkpoints/final")


VISION_TEXT = "no vision_layout in it or an earlier stage, no plan init_from"


def test_vision_only_keys_in_a_text_only_stage_are_refused_by_place(capsys):
    plan = {"out": "runs", "base": BASE, "stages": [{**STAGE, "overrides": {"vision_loss_weight": 0.3, "vision_init": "text_mean"}}]}
    assert _plan_error(plan, capsys) == (
        "longctx train-stages: error: plan.yaml: stages[0].overrides.vision_loss_weight, stages[0].overrides.vision_init "
        f"act on a vision vocabulary only, but stage s128's model ({VISION_TEXT}) is text-only: remove them, or set vision_layout")
    plan = {"out": "runs", "base": {**BASE, "text_loss_weight": 0.7}, "stages": [STAGE]}
    assert _plan_error(plan, capsys) == (
        "longctx train-stages: error: plan.yaml: base.text_loss_weight acts on a vision vocabulary only, but every "
        f"stage's model ({VISION_TEXT}) is text-only: remove it, or set vision_layout")


def test_vision_only_keys_where_a_stage_has_or_inherits_a_vision_vocabulary_are_kept():
    text_then_vision = [STAGE, {"name": "v", "data": "data/v", "overrides": {"vision_layout": "separate", "vision_init": "text_mean"}},
                        {"name": "v2", "data": "data/v2", "overrides": {"vision_loss_weight": 0.4}}]  # v2 inherits v's layout
    plan = StagePlan.from_data({"out": "runs", "base": {**BASE, "text_loss_weight": 0.6}, "stages": text_then_vision})
    weights = [(c.vision_layout, c.text_loss_weight, c.vision_loss_weight, c.vision_init) for _, c in plan.stage_configs()]
    assert weights == [(None, 0.6, None, "normal"), ("separate", 0.6, None, "text_mean"), (None, 0.6, 0.4, "normal")]
    # A plan init_from may be a vision checkpoint: nothing is refused (the trainer knows once it is read).
    plan = StagePlan.from_data({"out": "runs", "init_from": "runs/v/checkpoints/final",
                                "base": {**BASE, "vision_loss_weight": 0.3}, "stages": [STAGE]})
    assert plan.stage_configs()[0][1].vision_loss_weight == 0.3


def test_the_shipped_plans_still_load():
    repo = Path(__file__).resolve().parents[1]
    for name in ("lwm-text.yaml", "lwm-vision.yaml"):
        data = yaml.safe_load((repo / "configs" / "train" / name).read_text())
        assert StagePlan.from_data(data).stage_configs()
