"""A RULER task's least context (its shortest prompt, measured with the model's tokenizer, plus its
answer budget: evals/common.py `min_context`, from the task's own text builder) is checked before
any work: `longctx eval ruler` refuses a length below it before loading the model, and
`train-stages` refuses an `eval:` section that would hit it before stage one trains (it used to be
found only when the cell was built, after the model loaded or the stage trained)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import yaml

from curation.shards import write_shard
from curation.tokenize import load_tokenizer
from evals import niah
from evals.common import PromptBuilder, check_min_context, make_sample, min_context
from evals.generators import load_niah_tokenizer
from evals.stage_eval import EvalSection, check_stages
from evals.tasks import build_tasks
from tests.conftest import DEMO_TOKENIZER, cli_error, toy_rows

NEEDS = re.compile(r"RULER task (\w+) cannot run at length (\d+): it needs at least (\d+) tokens there "
                   r"\(its shortest prompt, (\d+) tokens, and (\d+) answer tokens\)$")


@pytest.fixture(scope="module")
def builder() -> PromptBuilder:
    tokenizer = load_niah_tokenizer(DEMO_TOKENIZER)
    return PromptBuilder(tokenizer, niah.PromptFrame.for_tokenizer(tokenizer))


def smallest_prompt_said_by_make_sample(task, builder, length: int, index: int = 0, seed: int = 0) -> int:
    """What building the cell itself says of its smallest prompt (the late error this check moves up)."""
    with pytest.raises(ValueError) as err:
        make_sample(task, builder, length, index, seed)
    return int(re.search(r"the smallest prompt takes (\d+)$", str(err.value)).group(1))


def test_the_least_context_is_what_building_the_cell_finds(builder):
    (vt,) = build_tasks(["vt"])
    need, prompt = min_context(vt, builder, 256)
    assert prompt == smallest_prompt_said_by_make_sample(vt, builder, 256) and need == prompt + vt.max_new_tokens
    assert need > 256  # vt's one-shot example and its chain alone outgrow 256 tokens
    with pytest.raises(ValueError) as err:
        check_min_context([vt], builder, [1024, 256], samples=1)
    assert NEEDS.match(str(err.value)).groups() == ("vt", "256", str(need), str(prompt), "30")
    # At a length where it fits, the cell builds and so does the check pass.
    check_min_context([vt], builder, [512], samples=3)
    assert make_sample(vt, builder, 512, 2, 0).prompt_tokens <= 512 - 30
    # An answer budget given for every task counts instead of the task's own.
    assert min_context(vt, builder, 256, max_new_tokens=4) == (prompt + 4, prompt)


def test_eval_ruler_refuses_a_too_short_length_before_loading_the_model(tmp_path, capsys):
    out = tmp_path / "ruler"
    # A checkpoint that is not there: had the model been loaded first, that would be the error.
    argv = ["eval", "ruler", "--checkpoint", str(tmp_path / "no-checkpoint"), "--tokenizer", DEMO_TOKENIZER,
            "--tasks", "niah_single_1,vt", "--lengths", "256,1k", "--samples", "2", "--out", str(out)]
    line = cli_error(argv, capsys)[-1]
    assert line.startswith("longctx eval ruler: error: RULER task vt cannot run at length 256: it needs at least ")
    task, length, need, prompt, answer = NEEDS.match(line.split("error: ", 1)[1]).groups()
    assert int(need) == int(prompt) + int(answer) > int(length)
    assert not out.exists()  # nothing started
    # The same lengths with vt left out get as far as the model (then the missing checkpoint).
    line = cli_error([a if a != "niah_single_1,vt" else "niah_single_1" for a in argv], capsys)[-1]
    assert "RULER task" not in line and "no-checkpoint" in line


def _demo_stage(folder, length: int) -> str:
    """A stage folder of `length`-token rows whose shards record the demo tokenizer (as a books job's do)."""
    info = load_tokenizer(DEMO_TOKENIZER)[1]
    meta = {"tokenizer": {**info.as_metadata(), "name": DEMO_TOKENIZER}}
    write_shard(str(folder), f"s{length}", 0, 1, toy_rows(np.random.default_rng(0), 4, length, 1000, "d"), meta)
    return str(folder / f"s{length}")


def test_check_stages_refuses_a_task_that_cannot_fit_a_stage_length(tmp_path, builder):
    section = EvalSection.model_validate({"ruler": {"tasks": "niah_single_1,vt", "samples": 2}, "niah": None,
                                          "loss_by_position": None})
    s256, s1k = _demo_stage(tmp_path, 256), _demo_stage(tmp_path, 1024)
    # The tokenizer the stage's shards record measures the prompts, as the evaluation will.
    with pytest.raises(ValueError) as err:
        check_stages(section, [("s1k", 1024, s1k), ("s256", 256, s256)])
    message = str(err.value)
    assert message.startswith("stage s256: ") and "\n" not in message
    task, length, need, prompt, answer = NEEDS.match(message.removeprefix("stage s256: ")).groups()
    (vt,) = build_tasks(["vt"])
    assert (task, length) == ("vt", "256") and int(need) == min_context(vt, builder, 256, samples=2)[0]
    check_stages(section, [("s1k", 1024, s1k)])  # fits
    # Named in the section, it is used for a stage given without its data too.
    named = section.model_copy(update={"tokenizer": DEMO_TOKENIZER})
    with pytest.raises(ValueError, match=r"^stage s256: RULER task vt cannot run at length 256: it needs at least "):
        check_stages(named, [("s256", 256)])
    # A section whose own answer budget makes room: vt still needs more than 256, niah_single_1 fits.
    small = named.model_copy(update={"ruler": named.ruler.model_copy(update={"tasks": "niah_single_1",
                                                                              "max_new_tokens": 8})})
    check_stages(small, [("s256", 256)])
    # `all` is the synthetic tasks (a plan gives no QA file); a QA task named alone is refused when read.
    with pytest.raises(ValueError, match="^stage s256: RULER task "):
        check_stages(named.model_copy(update={"ruler": named.ruler.model_copy(update={"tasks": "all"})}),
                     [("s256", 256)])
    with pytest.raises(ValueError, match="qa_1 needs a QA file, which an eval: section cannot give"):
        EvalSection.model_validate({"ruler": {"tasks": "vt,qa_1"}})


def test_train_stages_refuses_before_stage_one_trains(tmp_path, capsys):
    data = _demo_stage(tmp_path / "data", 256)
    plan = tmp_path / "plan.yaml"
    base = {"model": "toy", "seq_len": 256, "global_batch": 2, "steps": 1, "attention": "dense", "progress": False,
            "mesh": "dp=1,fsdp=1,tp=1,sp=1"}
    section = {"tokenizer": DEMO_TOKENIZER, "ruler": {"tasks": "niah_single_1,vt", "samples": 1}, "niah": None,
               "loss_by_position": None}
    plan.write_text(yaml.safe_dump({"out": str(tmp_path / "run"), "base": base,
                                    "stages": [{"name": "s256", "data": data, "overrides": {}}], "eval": section}))
    line = cli_error(["train-stages", "--plan", str(plan)], capsys)[-1]
    assert line.startswith("longctx train-stages: error: stage s256: RULER task vt cannot run at length 256: "
                           "it needs at least "), line
    assert not (tmp_path / "run").exists()  # nothing trained
