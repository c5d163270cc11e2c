"""A training run folder (`longctx train` / `train-stages`) read back: config.yaml, metrics.jsonl
and the checkpoints found, and a train-stages folder's stages in training order."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import fsspec
import numpy as np

RUN_CONFIG = "config.yaml"
RUN_METRICS = "metrics.jsonl"
# Keys a metrics line may carry (training/train.py), in the order they are plotted. The learning
# rate is plotted when the trainer logs it (under either name).
LOSS_KEYS = ("loss", "text_loss", "vision_loss")
LR_KEYS = ("lr", "learning_rate")


@dataclass
class TrainingRun:
    """One run folder as its files say: the config it trained with, one record per logged step
    (lines that do not parse, e.g. one cut by a kill, are counted in `bad_lines`), and the
    checkpoints found under checkpoints/ (step checkpoints by step, and whether `final` exists)."""

    name: str
    path: str
    config: dict[str, Any]
    records: list[dict[str, Any]]
    checkpoint_steps: list[int]
    final: bool
    bad_lines: int = 0

    def series(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """(steps, values) of the records that carry a number under `key`."""
        pairs = [(int(r["step"]), float(r[key])) for r in self.records if isinstance(r.get(key), (int, float))]
        steps, values = zip(*pairs) if pairs else ((), ())
        return np.asarray(steps, np.int64), np.asarray(values, np.float64)

    def has(self, key: str) -> bool:
        return any(isinstance(r.get(key), (int, float)) for r in self.records)

    @property
    def lr_key(self) -> str | None:
        return next((k for k in LR_KEYS if self.has(k)), None)

    @property
    def last_step(self) -> int:
        return int(self.records[-1]["step"]) if self.records else 0

    @property
    def planned_steps(self) -> int | None:
        steps = self.config.get("steps")
        return int(steps) if isinstance(steps, int) else None

    def last(self, key: str) -> float | None:
        _, values = self.series(key)
        return float(values[-1]) if values.size else None

    def mean(self, key: str, last_n: int = 10) -> float | None:
        _, values = self.series(key)
        return float(values[-last_n:].mean()) if values.size else None


def _fs_join(root: str, *parts: str) -> str:
    return "/".join([root.rstrip("/"), *parts])


def is_training_run(path: str) -> bool:
    """A folder `longctx train` wrote: config.yaml and metrics.jsonl, no manifest.json."""
    fs, root = fsspec.core.url_to_fs(path)
    return fs.exists(_fs_join(root, RUN_METRICS)) and fs.exists(_fs_join(root, RUN_CONFIG))


def read_training_run(path: str, name: str | None = None) -> TrainingRun:
    """One run folder (local path or fsspec URL) read back: config, metrics, checkpoints."""
    import yaml

    fs, root = fsspec.core.url_to_fs(path)
    url = _fs_join(path, RUN_CONFIG)
    with fs.open(_fs_join(root, RUN_CONFIG), "r", encoding="utf-8") as fh:
        try:
            config = yaml.safe_load(fh) or {}
        except UnicodeDecodeError as err:
            raise ValueError(f"{url}: not UTF-8 text ({err.reason} at byte {err.start})") from None
        except yaml.YAMLError as err:  # one line, as curation.config_errors.read_config_yaml says it
            mark = getattr(err, "problem_mark", None)
            place = f"{url}:{mark.line + 1}:{mark.column + 1}" if mark is not None else url
            raise ValueError(f"{place}: not valid YAML ({getattr(err, 'problem', None) or type(err).__name__})") from None
    records, bad = [], 0
    with fs.open(_fs_join(root, RUN_METRICS), "r", encoding="utf-8") as fh:
        for line in fh:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                int(record["step"])
            except (ValueError, KeyError, TypeError):
                bad += 1
                continue
            records.append(record)
    records.sort(key=lambda r: int(r["step"]))
    steps_dir = _fs_join(root, "checkpoints", "steps")
    steps = []
    if fs.isdir(steps_dir):
        steps = sorted(int(p.rstrip("/").rsplit("/", 1)[-1]) for p in fs.ls(steps_dir, detail=False)
                       if p.rstrip("/").rsplit("/", 1)[-1].isdigit())
    final = fs.isdir(_fs_join(root, "checkpoints", "final"))
    return TrainingRun(name or root.rstrip("/").rsplit("/", 1)[-1], path, config if isinstance(config, dict) else {},
                       records, steps, final, bad)


def _stage_order(runs: list[TrainingRun]) -> list[TrainingRun]:
    """A train-stages folder's stages in training order: each stage starts from the previous
    stage's checkpoints/final (its config's init_from); stages no sibling leads to come first."""
    by_final = {f"{r.name}/checkpoints/final": r for r in runs}
    previous = {}
    for run in runs:
        init = str(run.config.get("init_from") or "").rstrip("/")
        parent = next((r for key, r in by_final.items() if init.endswith("/" + key) or init == key), None)
        if parent is not None and parent is not run:
            previous[run.name] = parent.name
    ordered, placed = [], set()
    while len(ordered) < len(runs):
        ready = [r for r in runs if r.name not in placed and previous.get(r.name) in (None, *placed)]
        ready = ready or [r for r in runs if r.name not in placed]  # a cycle cannot happen; never loop
        ready.sort(key=lambda r: r.name)
        ordered.append(ready[0])
        placed.add(ready[0].name)
    return ordered


def training_runs(path: str) -> list[TrainingRun]:
    """The run at `path`, or, for a train-stages folder, each stage's run in training order; []
    when `path` is neither."""
    if is_training_run(path):
        return [read_training_run(path)]
    fs, root = fsspec.core.url_to_fs(path)
    if not fs.isdir(root):
        return []
    runs = [read_training_run(_fs_join(path, sub.rstrip("/").rsplit("/", 1)[-1]))
            for sub in sorted(fs.ls(root, detail=False)) if is_training_run(_fs_join(path, sub.rstrip("/").rsplit("/", 1)[-1]))]
    return _stage_order(runs)
