"""`longctx convert` refuses what it cannot convert or where it must not write, in one line with
exit code 2 and before any folder is made: a run (or Hugging Face) folder given as --to-hf, a
--dtype that is not a float dtype, and an --out folder the converted files would be mixed into
(a run folder or its checkpoints, data shards, the other kind of checkpoint). --dtype applies to
--from-hf too, as transformers' torch_dtype would."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import pytest
import yaml

from longctx.cli import main
from tests.conftest import cli_error, write_toy_stage
from training import checkpoint as ckpt
from training.hf import export_hf_llama
from training.model import ModelConfig, init_params

SMALL = dict(num_layers=1, hidden_size=16, intermediate_size=32, num_heads=2, num_kv_heads=1, vocab_size=64)


def _params(config: ModelConfig) -> dict:
    """Random weights drawn on the host (compiling init_params' initialisers takes seconds on CPU)."""
    rng = np.random.default_rng(0)
    return jax.tree.map(lambda s: rng.normal(0, 0.02, s.shape).astype(np.float32),
                        jax.eval_shape(lambda: init_params(config, jax.random.key(0))))


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A run folder as the trainer leaves it (config.yaml, checkpoints/final) around a tiny model."""
    run = tmp_path_factory.mktemp("convert") / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({"model": "toy"}))
    config = ModelConfig(**SMALL)
    ckpt.save_params(run / "checkpoints" / "final", config, _params(config))
    return run


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory) -> Path:
    """A Hugging Face LLaMA folder (config.json + model.safetensors) of the same tiny model."""
    config = ModelConfig(**SMALL)
    return export_hf_llama(config, _params(config), tmp_path_factory.mktemp("hf") / "hf")


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def _error(argv: list[str], capsys) -> str:
    line = cli_error(argv, capsys)[-1]
    assert line.startswith("longctx convert: error: "), line
    return line


def test_to_hf_of_a_run_folder_names_its_checkpoint(run, tmp_path, capsys):
    line = _error(["convert", "--to-hf", str(run), "--out", str(tmp_path / "hf")], capsys)
    assert "is a training run; pass its checkpoint: " in line and line.endswith("/checkpoints/final"), line
    assert not (tmp_path / "hf").exists()


def test_to_hf_of_a_hugging_face_folder_says_it_is_one_already(hf_folder, tmp_path, capsys):
    line = _error(["convert", "--to-hf", str(hf_folder), "--out", str(tmp_path / "hf")], capsys)
    assert line.endswith("is a Hugging Face model folder already; --to-hf takes a longctx params checkpoint "
                         "(RUN/checkpoints/final: model.json + params/)"), line
    assert not (tmp_path / "hf").exists()


@pytest.mark.parametrize("dtype", ["flot16", "int8"])
@pytest.mark.parametrize("direction", ["--to-hf", "--from-hf"])
def test_only_float_dtypes_are_written(direction, dtype, run, hf_folder, tmp_path, capsys):
    """An int8 export would write every weight (|w| < 1) as zero; a typo failed after --out was made."""
    source = run / "checkpoints" / "final" if direction == "--to-hf" else hf_folder
    line = _error(["convert", direction, str(source), "--out", str(tmp_path / "out"), "--dtype", dtype], capsys)
    assert line == f"longctx convert: error: --dtype {dtype!r} is not a weight dtype: pass one of float32, bfloat16, float16"
    assert not (tmp_path / "out").exists()


def test_from_hf_writes_the_dtype_asked_for(hf_folder, tmp_path, capsys):
    assert main(["convert", "--from-hf", str(hf_folder), "--out", str(tmp_path / "bf16"), "--dtype", "bfloat16"]) == 0
    config, params = ckpt.load_params(tmp_path / "bf16")
    assert config.param_dtype == "bfloat16"
    assert {str(leaf.dtype) for leaf in jax.tree.leaves(params)} == {"bfloat16"}


def _out_folders(run: Path, hf_folder: Path, root: Path) -> list[tuple[str, Path, str]]:
    """(direction, --out folder the converted files would be mixed into, what its line says)."""
    stage = Path(write_toy_stage(root / "data", vocab=64))
    (root / "job").mkdir()
    (root / "job" / "manifest.json").write_text('{"stages": {}}')
    (root / "stages" / "s1").mkdir(parents=True)
    (root / "stages" / "s1" / "config.yaml").write_text("model: toy\n")
    final = run / "checkpoints" / "final"
    return [
        ("--to-hf", run, "is a training run folder"),
        ("--from-hf", run, "is a training run folder"),
        ("--from-hf", final, "is inside a training run's checkpoints"),
        ("--to-hf", final, "is inside a training run's checkpoints"),
        ("--to-hf", stage, "is a stage folder of data shards (*.arrow)"),
        ("--from-hf", stage.parent, "holds data shards (stage folders s64)"),
        ("--to-hf", root / "job", "is a data job's output (manifest.json)"),
        ("--to-hf", root / "stages", "is a train-stages folder (stages s1)"),
        ("--from-hf", hf_folder, "holds a Hugging Face model (config.json + model.safetensors)"),
    ]


def test_out_folders_of_other_things_are_refused_untouched(run, hf_folder, tmp_path, capsys):
    for direction, out, said in _out_folders(run, hf_folder, tmp_path):
        source = run / "checkpoints" / "final" if direction == "--to-hf" else hf_folder
        before = _listing(out)
        line = _error(["convert", direction, str(source), "--out", str(out)], capsys)
        assert line.endswith(f"{said}; pass a new (or empty) folder for the converted checkpoint"), (direction, line)
        assert _listing(out) == before, direction


def test_a_new_empty_or_earlier_output_folder_is_fine(run, hf_folder, tmp_path, capsys):
    final = run / "checkpoints" / "final"
    (tmp_path / "empty").mkdir()
    assert main(["convert", "--to-hf", str(final), "--out", str(tmp_path / "empty")]) == 0
    assert main(["convert", "--to-hf", str(final), "--out", str(tmp_path / "empty")]) == 0  # its own earlier output
    assert main(["convert", "--from-hf", str(hf_folder), "--out", str(tmp_path / "params")]) == 0
    assert main(["convert", "--from-hf", str(hf_folder), "--out", str(tmp_path / "params")]) == 0
    # ... but not the other kind's: the two checkpoints would be mixed in one folder.
    line = _error(["convert", "--to-hf", str(final), "--out", str(tmp_path / "params")], capsys)
    assert line.endswith("holds a longctx params checkpoint (model.json + params/); pass a new (or empty) folder "
                         "for the converted checkpoint"), line
