"""RULER pictures (evals/plots.py) and `longctx eval report` (evals/report.py) over folders written by
real runs: the suite's runner with the oracle of tests/test_evals_oracle.py and with a noise model."""

from __future__ import annotations

import json

import matplotlib.image as mpimg
import numpy as np
import pytest

from evals import niah
from evals.generators import load_niah_tokenizer
from evals.common import PromptBuilder
from evals.loss_by_position import write_outputs
from evals.plots import plot_task_heatmap, score_rows, write_ruler_plots
from evals.report import load_runs, report_table
from evals.runner import TextBackend, run_suite
from evals.tasks import build_tasks
from longctx.cli import main
from tests.conftest import DEMO_TOKENIZER
from tests.test_evals_oracle import oracle

TASKS = ("niah_single_1", "vt")
LENGTHS = (512, 1024)


class OracleBackend:
    """Answers each sample from its prompt text alone (the runner's Backend protocol)."""

    name = "oracle"

    def __call__(self, sample) -> str:
        return oracle(sample.task, sample.body)


def png(path) -> np.ndarray:
    image = mpimg.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    return image


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two ruler folders: the oracle (100 everywhere) and a model that always says the noise sentence."""
    tokenizer = load_niah_tokenizer(DEMO_TOKENIZER)
    builder = PromptBuilder(tokenizer, niah.PromptFrame.for_tokenizer(tokenizer))
    tasks = build_tasks(list(TASKS))
    root = tmp_path_factory.mktemp("runs")
    oracle_summary = run_suite(OracleBackend(), builder, tasks, LENGTHS, 1, root / "oracle")
    summary = run_suite(TextBackend(lambda body: "The grass is green.", "noise"), builder, tasks, LENGTHS, 1,
                        root / "noise")
    assert json.loads((root / "oracle" / "summary.json").read_text())["tasks"].keys() == set(TASKS)
    return root, oracle_summary, summary


def test_ruler_pictures(runs, tmp_path):
    root, good, bad = runs
    assert score_rows(good)["average"] == {512: 100.0, 1024: 100.0} and good["effective_length"] == 1024
    assert score_rows(bad) == {"niah_single_1": {512: 0.0, 1024: 0.0}, "vt": {512: 0.0, 1024: 0.0},
                               "average": {512: 0.0, 1024: 0.0}}
    paths = write_ruler_plots(good, tmp_path)
    assert [p.name for p in paths] == ["scores_by_length.png", "heatmap.png"]
    # The heatmap's colours follow the scores: all-green for the oracle, all-red for noise.
    good_img = png(plot_task_heatmap(good, tmp_path / "good.png"))
    bad_img = png(plot_task_heatmap(bad, tmp_path / "bad.png"))
    def share(image, rgb):  # fraction of pixels of a colour
        return float(np.mean(np.all(np.abs(image[..., :3] - np.array(rgb) / 255) < 0.03, axis=-1)))
    green, red = (0x0C, 0xD7, 0x9F), (0xF0, 0x49, 0x6E)
    assert share(good_img, green) > 0.1 and share(good_img, red) < 0.01
    assert share(bad_img, red) > 0.1 and share(bad_img, green) < 0.01
    png(paths[0])


def test_report_side_by_side(runs, tmp_path, capsys):
    root, good, bad = runs
    # A loss-by-position folder, from the module's own writer.
    buckets = [{"start": 1, "end": 2, "tokens": 10, "loss": 5.0}, {"start": 2, "end": 4, "tokens": 20, "loss": 4.0}]
    write_outputs({"model": "toy", "rows": 1, "seq_len": 4, "buckets": buckets, "tokens": 30, "loss": 4.33,
                   "bucketing": "log"}, root / "ppl")
    out = tmp_path / "report"
    assert main(["eval", "report", str(root / "oracle"), str(root / "noise"), str(root / "ppl"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    lines = {line.split()[1]: line for line in printed.splitlines() if line.startswith("│ ")}
    assert "100.0" in lines["oracle"] and "1K" in lines["oracle"]  # effective length: the longest
    assert "0.0" in lines["noise"] and "none" in lines["noise"]
    assert "4.3300" in lines["ppl"]
    png(out / "scores_by_length.png")
    png(out / "loss_by_position.png")
    runs_loaded = load_runs([root / "oracle", root / "noise", root / "ppl"])
    assert [(r.label, r.ruler is not None, r.loss is not None) for r in runs_loaded] == [
        ("oracle", True, False), ("noise", True, False), ("ppl", False, True)]
    assert report_table(runs_loaded).row_count == 3
    # A stage folder as a plan's eval: section leaves it: STAGE/eval/{summary.json (the stage's own),
    # ruler/, loss_by_position/}.
    stage = tmp_path / "stage-1k"
    (stage / "eval").mkdir(parents=True)
    (stage / "eval" / "summary.json").write_text(json.dumps({"ruler": {"average": good["average"]}}))
    (stage / "eval" / "ruler").mkdir()
    (stage / "eval" / "ruler" / "summary.json").write_text((root / "oracle" / "summary.json").read_text())
    write_outputs({"model": "toy", "rows": 1, "seq_len": 4, "buckets": buckets, "tokens": 30, "loss": 4.33,
                   "bucketing": "log"}, stage / "eval" / "loss_by_position")
    (loaded,) = load_runs([stage])
    assert loaded.label == "stage-1k" and loaded.ruler == good and loaded.loss["loss"] == 4.33


def test_report_rejects_what_is_not_an_eval(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit):
        main(["eval", "report", str(tmp_path / "empty")])
    assert "no summary.json (eval ruler) or loss_by_position.json" in capsys.readouterr().err
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "summary.json").write_text("{}")
    with pytest.raises(ValueError, match="not an eval output"):
        load_runs([tmp_path / "bad"])
    with pytest.raises(FileNotFoundError, match="eval folder not found"):
        load_runs([tmp_path / "missing"])
