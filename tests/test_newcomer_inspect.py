"""`longctx inspect` on a training run: a real toy run (two stages with train-stages) trained here
on shards of a sample novel; every number printed is checked against metrics.jsonl and the
checkpoint folders read directly. Also --overwrite of old PNGs, and the image frame grid."""

from __future__ import annotations

import gzip
import json
import re
import struct
from pathlib import Path

import numpy as np
import pytest

from longctx.cli import main
from tests.conftest import DEMO_TOKENIZER, SAMPLE_BOOKS, cli_error

ONE_DEVICE = "dp=1,fsdp=1,tp=1,sp=1"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _flat(text: str) -> str:
    return " ".join(re.sub(r"[│┃┏┓┗┛┡┩━─╇┳╭╮╰╯└┘┌┐├┤┼┴┬]", " ", text).split())


def _png(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR", path
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def stages_run(tmp_path_factory):
    """Shards of one novel (128-token rows), then two toy stages of 4 and 3 steps (train-stages)."""
    from pipelines.config import BooksConfig
    from pipelines.launch import run_books
    from training.config import StagePlan
    from training.train import train_stages

    folder = tmp_path_factory.mktemp("train-inspect")
    with gzip.open(SAMPLE_BOOKS, "rt", encoding="utf-8") as fh:
        book = json.loads(next(fh))
    (folder / "book.jsonl").write_text(json.dumps({"id": book["id"], "text": book["text"]}) + "\n")
    run_books(BooksConfig.model_validate({"inputs": [str(folder / "book.jsonl")], "output": str(folder / "data"),
                                          "tokenizer": DEMO_TOKENIZER, "stages": ["s128=128:1000-"]}),
              ["--runner=DirectRunner", "--direct_running_mode=in_memory"])
    base = {"seq_len": 128, "global_batch": 2, "lr": 3e-3, "warmup_steps": 1, "mesh": ONE_DEVICE, "attention": "dense",
            "progress": False, "checkpoint_every": 2, "seed": 1}
    # Named so that alphabetical order is not training order: the listing must follow init_from.
    plan = StagePlan.model_validate({"out": str(folder / "runs"), "base": base, "stages": [
        {"name": "warm", "data": str(folder / "data" / "s128"), "overrides": {"steps": 4}},
        {"name": "a-next", "data": str(folder / "data" / "s128"), "overrides": {"steps": 3}},
    ]})
    train_stages(plan)
    return folder / "runs"


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_inspect_a_training_run(stages_run, tmp_path, capsys):
    run = stages_run / "warm"
    assert not (run / "manifest.json").exists()
    plots = tmp_path / "plots"
    assert main(["inspect", str(run), "--plots", str(plots)]) == 0
    out = _flat(capsys.readouterr().out)
    records = _metrics(run)
    steps = sorted(int(p.name) for p in (run / "checkpoints" / "steps").iterdir() if p.name.isdigit())
    assert steps and (run / "checkpoints" / "final").is_dir()
    assert "no manifest.json" not in out
    last = records[-1]
    assert f"warm 4 of 4 {last['loss']:.3f}" in out
    assert f"steps {', '.join(map(str, steps))}; final" in out
    mean = np.mean([r["tokens_per_s"] for r in records[-10:]])
    assert f"{mean:,.0f}" in out
    assert f"loss {records[0]['loss']:.3f} at step 1 -> {last['loss']:.3f} at step 4" in out
    # The trainer logs no learning rate today: said so, and no empty picture drawn.
    assert "not logged" in out and not (plots / "train_learning_rate.png").exists()
    for name in ("train_loss.png", "train_grad_norm.png", "train_tokens_per_s.png"):
        assert str(plots / name) in out
        width, height = _png(plots / name)
        assert width >= 600 and height >= 300 and (plots / name).stat().st_size > 10_000


def test_inspect_a_train_stages_folder_lists_stages_in_training_order(stages_run, tmp_path, capsys):
    assert main(["inspect", str(stages_run), "--plots", str(tmp_path)]) == 0
    out = _flat(capsys.readouterr().out)
    warm, nxt = _metrics(stages_run / "warm"), _metrics(stages_run / "a-next")
    assert re.search(rf"warm 4 of 4 {warm[-1]['loss']:.3f} .* a-next 3 of 3 {nxt[-1]['loss']:.3f} ", out)
    assert "training runs (from metrics.jsonl)" in out
    assert (tmp_path / "train_loss.png").exists()


def test_a_folder_that_is_neither_is_one_line(tmp_path, capsys):
    line = cli_error(["inspect", str(tmp_path), "--no-plots"], capsys)[-1]
    assert line.startswith("longctx inspect: error: ")
    assert "has no manifest.json (a data job's output) and no config.yaml + metrics.jsonl" in line


def test_overwrite_removes_old_pngs(stages_run, tmp_path, capsys):
    plots = tmp_path / "plots"
    plots.mkdir()
    old = plots / "frames_v4k_row3.png"  # a grid an earlier inspect of another output left
    old.write_bytes(PNG_SIGNATURE)
    mine = plots / "holiday.png"  # not a name inspect writes: never touched
    mine.write_bytes(PNG_SIGNATURE)
    assert main(["inspect", str(stages_run / "warm"), "--plots", str(plots)]) == 0
    assert old.exists() and "1 PNG(s) from an earlier inspect are still in" in _flat(capsys.readouterr().out)
    assert main(["inspect", str(stages_run / "warm"), "--plots", str(plots), "--overwrite"]) == 0
    out = _flat(capsys.readouterr().out)
    assert not old.exists() and mine.exists()
    assert "removed 4 PNG(s) of an earlier inspect" in out  # the old grid and the three train_*.png
    assert sorted(p.name for p in plots.glob("*.png")) == ["holiday.png", "train_grad_norm.png", "train_loss.png", "train_tokens_per_s.png"]


def test_image_grid_says_images_and_marks_frames_it_cannot_decode(tmp_path):
    """Two images in a row of an images job's shard; the second holds a code outside this VQGAN's
    codebook (shards made with a larger VQGAN): drawn as a marked panel, the first decoded."""
    from inspection.rows import RowView, SegmentView, Span
    from inspection.plots import plot_frame_grid
    from curation.vqgan import load_vqgan
    from tests.test_inspect import _random_vqgan

    vqgan = load_vqgan(_random_vqgan(tmp_path / "vqgan"))
    codebook = vqgan.config.num_vq_embeddings
    good = (np.arange(256) % codebook).reshape(1, 256)
    bad = good.copy()
    bad[0, 7] = codebook + 5
    segments = [SegmentView(i + 1, f"pair-{i}", 0, i * 270, 270, [
        Span("text", i * 270, i * 270 + 13, 0.0, text="a cat on a mat"),
        Span("vision", i * 270 + 13, i * 270 + 270, 1.0, codes=codes)]) for i, codes in enumerate((good, bad))]
    row = RowView("img", 0, "mem://x", 0, 1024, "images", DEMO_TOKENIZER, segments)
    grid = plot_frame_grid(row, vqgan, tmp_path / "grid.png")
    assert grid.titles == ["image", "image: not decoded"]
    assert grid.undecodable == [0, 1] and grid.decoded == 1
    width, height = _png(grid.path)
    assert width > 400 and height > 300
