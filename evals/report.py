"""`longctx eval report DIR [DIR...]`: several eval output folders side by side (e.g. the stages of
one plan). A folder counts when it holds a RULER summary.json (evals/runner.py) or a
loss_by_position.json (evals/loss_by_position.py), directly, in a `ruler/` or `loss_by_position/`
subfolder, or in the `eval/` folder of a stage (where a plan's `eval:` section writes them), so
`longctx eval report runs/plan/*` compares a plan's stages. Prints one table (the all-task average per
length, the effective length, the overall loss) and writes OUT/scores_by_length.png (one line per
folder, per task) and OUT/loss_by_position.png (one curve per folder).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

# A run's own folder, a stage's eval/ folder, or the stage folder (evals/stage_eval.py writes
# STAGE/eval/{ruler,loss_by_position}/ beside a stage summary.json of its own).
RULER_FILES = ("summary.json", "ruler/summary.json", "eval/ruler/summary.json")
LOSS_FILES = ("loss_by_position.json", "loss_by_position/loss_by_position.json",
              "eval/loss_by_position/loss_by_position.json")


@dataclass(frozen=True)
class EvalRun:
    label: str
    folder: Path
    ruler: dict[str, Any] | None
    loss: dict[str, Any] | None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_length(value: Any) -> bool:
    """A context length as summary.json keeps it: an int, or its string as a JSON key."""
    if isinstance(value, bool):
        return False
    try:
        int(value)
    except (TypeError, ValueError):
        return False
    return True


def _is_position(value: Any) -> bool:
    """A bucket edge as loss_by_position.json writes it: a JSON integer (a string would reach the chart)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _scores(value: Any) -> bool:
    """{length: score}, as evals/runner.py writes the average and each task's row."""
    return isinstance(value, dict) and all(_is_length(n) and _is_number(s) for n, s in value.items())


def _shown(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def ruler_problem(data: dict[str, Any]) -> str | None:
    """What a RULER summary.json lacks of what the report reads (evals/runner.py summarize), in
    words, or None: a hand-edited or foreign file would otherwise fail deep in the table or chart."""
    if not isinstance(data["tasks"], dict) or not all(_scores(by) for by in data["tasks"].values()):
        return (f"'tasks' must map each task to its scores by length (e.g. {{\"niah_single_1\": {{\"4096\": 95.0}}}}), "
                f"got {_shown(data['tasks'])}")
    missing = [key for key in ("average", "threshold") if key not in data]
    if missing:
        return f"no {' or '.join(map(repr, missing))} field"
    if not _scores(data["average"]):
        return f"'average' must map each length to a score (e.g. {{\"4096\": 95.0}}), got {_shown(data['average'])}"
    if not _is_number(data["threshold"]):
        return f"'threshold' must be a number, got {_shown(data['threshold'])}"
    lengths = data.get("lengths", [])
    if not isinstance(lengths, list) or not all(_is_length(n) for n in lengths):
        return f"'lengths' must be a list of token counts, got {_shown(lengths)}"
    effective = data.get("effective_length")
    if effective is not None and not (_is_length(effective) and isinstance(effective, int)):
        return f"'effective_length' must be a token count or null, got {_shown(effective)}"
    return None


def loss_problem(data: dict[str, Any]) -> str | None:
    """What a loss_by_position.json lacks of what the report reads (its buckets, its overall loss), or None."""
    buckets = data.get("buckets")
    if not isinstance(buckets, list) or not all(
            isinstance(b, dict) and _is_position(b.get("start")) and _is_position(b.get("end"))
            and (b.get("loss") is None or _is_number(b.get("loss"))) for b in buckets):
        return (f"'buckets' must be a list of {{\"start\", \"end\", \"loss\"}} position buckets, got {_shown(buckets)}")
    if data.get("loss") is not None and not _is_number(data["loss"]):
        return f"'loss' must be a number or null, got {_shown(data['loss'])}"
    return None


def _read(folder: Path, names: tuple[str, ...], want: str, kind: str,
          problem: Callable[[dict[str, Any]], str | None]) -> dict[str, Any] | None:
    """The first of `names` in `folder` holding the field `want`; a file of that name without it is
    passed over (a stage's eval/summary.json), and an error only when no candidate has it. The
    file taken must hold what the report reads (`problem` says what it lacks)."""
    wrong = None
    for name in names:
        path = folder / name
        if path.is_file():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as err:
                raise ValueError(f"{path}: not a JSON file ({err})") from None
            if isinstance(data, dict) and want in data:
                why = problem(data)
                if why:
                    raise ValueError(f"{path}: not a complete {kind} output: {why}; pass the folder `longctx {kind}` wrote")
                return data
            wrong = wrong or path
    if wrong is not None:
        raise ValueError(f"{wrong}: not an eval output (no {want!r} field)")
    return None


def load_run(folder: str | Path, label: str | None = None) -> EvalRun:
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"eval folder not found: {folder}")
    ruler = _read(folder, RULER_FILES, "tasks", "eval ruler", ruler_problem)
    loss = _read(folder, LOSS_FILES, "buckets", "eval loss-by-position", loss_problem)
    if ruler is None and loss is None:
        raise ValueError(f"{folder}: no summary.json (eval ruler) or loss_by_position.json (eval loss-by-position)")
    return EvalRun(label or folder.name, folder, ruler, loss)


def load_runs(folders: list[str | Path]) -> list[EvalRun]:
    """The runs, labelled by folder name; when names repeat (stage1/ruler, stage2/ruler) by the
    parent and the name."""
    paths = [Path(f) for f in folders]
    names = [p.resolve().name for p in paths]
    labels = [f"{p.resolve().parent.name}/{n}" if names.count(n) > 1 else n for p, n in zip(paths, names)]
    return [load_run(p, label) for p, label in zip(paths, labels)]


def report_table(runs: list[EvalRun]) -> Table:
    """Folders down; the RULER average at each length, the effective length, the mean loss across."""
    from evals.niah_plot import length_label

    lengths = sorted({int(n) for r in runs if r.ruler for n in r.ruler["average"]} |
                     {int(n) for r in runs if r.ruler for n in r.ruler.get("lengths", [])})
    table = Table(title="eval report: RULER average score (%) by length, effective length, loss")
    table.add_column("run")
    for n in lengths:
        table.add_column(length_label(n), justify="right")
    table.add_column("effective", justify="right")
    table.add_column("loss", justify="right")
    for run in runs:
        cells = []
        for n in lengths:
            value = run.ruler["average"].get(str(n)) if run.ruler else None
            cells.append("-" if value is None else f"{value:.1f}")
        if run.ruler:
            effective = run.ruler.get("effective_length")
            cells.append(length_label(effective) if effective else "none")
        else:
            cells.append("-")
        loss = run.loss.get("loss") if run.loss else None
        cells.append("-" if loss is None else f"{loss:.4f}")
        table.add_row(run.label, *cells)
    return table


def write_report(runs: list[EvalRun], out: str | Path) -> list[Path]:
    from evals.loss_by_position import plot_loss_by_position
    from evals.plots import plot_scores_by_length

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    ruler = {r.label: r.ruler for r in runs if r.ruler}
    if ruler:
        written.append(plot_scores_by_length(ruler, out / "scores_by_length.png"))
    loss = {r.label: r.loss for r in runs if r.loss}
    if loss:
        written.append(plot_loss_by_position(loss, out / "loss_by_position.png"))
    return written


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folders", nargs="+", metavar="DIR", help="eval output folders (eval ruler / loss-by-position)")
    parser.add_argument("--out", default="eval-report", help="folder for the combined charts (default: %(default)s)")


def run_report(args: argparse.Namespace, console: Console) -> int:
    from evals.model_cli import check_results_folder

    check_results_folder(args.out)  # a file there would stop it after the folders are read
    runs = load_runs(args.folders)
    console.print(report_table(runs))
    written = write_report(runs, args.out)
    console.print(f"wrote {' and '.join(str(p) for p in written)}")
    return 0
