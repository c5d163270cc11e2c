"""A `train-stages` stage evaluation (evals/stage_eval.py) reran into the same stage folder resumes
its NIAH grid as `eval niah` does (evals/resume.py): the cells already in eval/niah/results.jsonl
are kept and not asked again, new cells are appended, and a folder made with other settings is
refused in one line, its results untouched (the NIAH part rewrote results.jsonl from scratch on
every run). The model is the toy checkpoint tests/test_evals_stage.py uses, on the sample-book
shards; answers are counted by a pass-through wrapper of FlaxGenerator.generate_batch."""

from __future__ import annotations

import json

import pytest

from evals.generators import FlaxGenerator
from evals.stage_eval import EvalSection, evaluate_stage
from tests.test_niah import TOY, toy_params
from training import checkpoint as ckpt
from training.config import TrainConfig


@pytest.fixture
def asked(monkeypatch) -> list[int]:
    """The prompts each generate_batch call was given, the call itself left as it is."""
    calls: list[int] = []
    real = FlaxGenerator.generate_batch

    def counting(self, prompts, max_new_tokens):
        calls.append(len(prompts))
        return real(self, prompts, max_new_tokens)

    monkeypatch.setattr(FlaxGenerator, "generate_batch", counting)
    return calls


def _section(**niah) -> EvalSection:
    return EvalSection.model_validate({"ruler": None, "loss_by_position": None,
                                       "niah": {"format": "lwm", "depths": "0,100", **niah}})


def test_a_stage_evaluation_rerun_keeps_its_niah_cells(book_shards, tmp_path, asked):
    stage_out = tmp_path / "plan" / "s256"
    ckpt.save_params(stage_out / "checkpoints" / "final", TOY, toy_params())
    config = TrainConfig(data=str(book_shards / "s256"), out=str(stage_out), seq_len=256, global_batch=2, steps=1,
                         attention="dense", progress=False)
    niah_out = stage_out / "eval" / "niah"
    said: list[str] = []

    first = evaluate_stage(config, _section(), log=said.append)
    assert sum(asked) == 2 and said[-1] == "stage s256: NIAH (lwm) written (2 cells scored, 0 kept from an earlier run)"
    results = (niah_out / "results.jsonl").read_bytes()
    assert [(r["depth"], r["sample"], r["seed"]) for r in map(json.loads, results.splitlines())] == [
        (0.0, 0, 0), (100.0, 0, 0)]
    settings = json.loads((niah_out / "settings.json").read_text())
    assert settings["eval"] == "niah" and settings["settings"]["model"] == "s256"
    assert settings["settings"]["format"] == "lwm" and settings["settings"]["haystack"] == "sample books"
    csv_before = (niah_out / "results.csv").read_bytes()

    # The same evaluation again: nothing is asked, results.jsonl is byte for byte what it was.
    second = evaluate_stage(config, _section(), log=said.append)
    assert sum(asked) == 2 and said[-1] == "stage s256: NIAH (lwm) written (0 cells scored, 2 kept from an earlier run)"
    assert (niah_out / "results.jsonl").read_bytes() == results
    assert (niah_out / "results.csv").read_bytes() == csv_before
    assert json.loads((niah_out / "settings.json").read_text()) == settings
    assert second == first and json.loads((stage_out / "eval" / "summary.json").read_text()) == first

    # One more depth: only its cell is asked and appended; the CSV covers the whole grid in grid order.
    third = evaluate_stage(config, _section(depths="0,50,100"), log=said.append)
    assert sum(asked) == 3 and said[-1] == "stage s256: NIAH (lwm) written (1 cell scored, 2 kept from an earlier run)"
    grown = (niah_out / "results.jsonl").read_bytes()
    assert grown.startswith(results) and [json.loads(line)["depth"] for line in grown.splitlines()] == [0.0, 100.0, 50.0]
    csv_depths = [line.split(",")[3] for line in (niah_out / "results.csv").read_text().splitlines()[1:]]
    assert csv_depths == ["0.0", "50.0", "100.0"]
    assert third["niah"]["format"] == "lwm" and set(third["niah"]["mean"]) == {"256"}

    # Other settings: refused before anything is asked, the recorded cells left as they are.
    for other, named in ((_section(format="longctx"), "format 'lwm', this run has 'longctx'"),
                         (_section(needles=2, ask=2), "needles 1, this run has 2")):
        with pytest.raises(ValueError, match=named):
            evaluate_stage(config, other, log=said.append)
        assert sum(asked) == 3 and (niah_out / "results.jsonl").read_bytes() == grown

    # A folder the NIAH part wrote before it resumed (no settings.json): checked on the settings its
    # records carry, kept when they agree, refused when they do not.
    (niah_out / "settings.json").unlink()
    with pytest.raises(ValueError, match="format 'lwm', this run has 'longctx'"):
        evaluate_stage(config, _section(format="longctx", depths="0,50,100"), log=said.append)
    evaluate_stage(config, _section(depths="0,50,100"), log=said.append)
    assert sum(asked) == 3 and said[-1] == "stage s256: NIAH (lwm) written (0 cells scored, 3 kept from an earlier run)"
    assert (niah_out / "results.jsonl").read_bytes() == grown
    assert json.loads((niah_out / "settings.json").read_text()) == settings
