"""Impossible train settings are refused in one line (exit code 2) by every command that reads a
train config (`train`, `train-stages`, `plan --set`): a misspelled model preset or override key,
counts below 1, a negative learning rate, an --out that is a file, a data folder or a
train-stages folder, and `plan --mfu` outside (0, 1]. A refused run leaves no folder behind."""

from __future__ import annotations

import json

import numpy as np
import pytest

from curation.shards import write_shard
from longctx.cli import main
from tests.conftest import REPO, cli_error, toy_rows

TINY = str(REPO / "configs" / "train" / "tiny-4k.yaml")
PLAN = str(REPO / "configs" / "train" / "lwm-text.yaml")
LENGTH, VOCAB = 64, 1000
TOKENIZER = {"name": "toy", "sha256": "ab" * 32, "vocab_size": VOCAB, "bos_id": 1, "eos_id": 2, "pad_id": None}


def _train_error(argv: list[str], capsys) -> str:
    lines = cli_error(["train", *argv], capsys)
    assert lines[0].startswith("usage: longctx train "), lines
    return lines[-1]

def _plan_error(argv: list[str], capsys) -> str:
    lines = cli_error(["plan", *argv, "--estimate"], capsys)
    assert lines[0].startswith("usage: longctx plan "), lines
    return lines[-1]


def _run_args(tmp_path, *extra: str) -> list[str]:
    return ["--config", TINY, "--data", str(tmp_path / "data"), "--out", str(tmp_path / "run"), *extra]


@pytest.mark.parametrize("args", [["--model", "tooy"], ["--config", "MODEL_YAML"]])
def test_a_misspelled_model_preset_is_one_line(tmp_path, capsys, args):
    if args[0] == "--config":
        path = tmp_path / "t.yaml"
        path.write_text("model: tooy\nseq_len: 64\n")
        args = ["--config", str(path)]
        argv = [*args, "--data", str(tmp_path / "data"), "--out", str(tmp_path / "run")]
    else:
        argv = _run_args(tmp_path, *args)
    line = _train_error(argv, capsys)
    assert line.endswith("model: unknown preset 'tooy' (did you mean 'toy'?); presets: toy, tiny, 1b, llama2-7b"), line
    assert not (tmp_path / "run").exists()
    assert _plan_error(["--config", TINY, "--set", "model=tooy"], capsys).endswith(
        "model: unknown preset 'tooy' (did you mean 'toy'?); presets: toy, tiny, 1b, llama2-7b")


def test_a_misspelled_model_override_is_one_line(tmp_path, capsys):
    path = tmp_path / "t.yaml"
    path.write_text("model: toy\nmodel_overrides: {num_layerz: 1}\n")
    line = _train_error(["--config", str(path), "--data", str(tmp_path / "d"), "--out", str(tmp_path / "r")], capsys)
    assert line == f"longctx train: error: {path}: model_overrides: unknown key 'num_layerz' (did you mean 'num_layers'?)"
    # An override the model cannot take is one line too.
    path.write_text("model: toy\nmodel_overrides: {num_kv_heads: 3}\n")
    line = _train_error(["--config", str(path), "--data", str(tmp_path / "d"), "--out", str(tmp_path / "r")], capsys)
    assert line.endswith("model_overrides: num_heads 4 is not a multiple of num_kv_heads 3"), line
    assert _plan_error(["--config", TINY, "--set", "model_overrides={num_layerz: 1}"], capsys).endswith(
        "model_overrides: unknown key 'num_layerz' (did you mean 'num_layers'?)")


@pytest.mark.parametrize("override, expected", [
    ("{num_layers: two}", "num_layers must be a whole number >= 1, got 'two'"),
    ("{num_layers: 2.5}", "num_layers must be a whole number >= 1, got 2.5"),
    ("{vocab_size: -5}", "vocab_size must be a whole number >= 1, got -5"),
    ("{rope_theta: abc}", "rope_theta must be a number > 0, got 'abc'"),
    ("{tie_embeddings: maybe}", "tie_embeddings must be true or false, got 'maybe'"),
    ("{dtype: flot32}", "dtype must be a dtype name such as float32 or bfloat16, got 'flot32'"),
    ("{rope_scaling: 3}", "rope_scaling must be a mapping such as {rope_type: linear, factor: 4}, got 3"),
    ("{remat: [full]}", "remat must be one of ['dots_saveable', 'full', 'none'], got ['full']"),
])
def test_a_model_override_of_the_wrong_type_is_one_line(tmp_path, capsys, override, expected):
    path = tmp_path / "t.yaml"
    path.write_text(f"model: toy\nmodel_overrides: {override}\n")
    line = _train_error(["--config", str(path), "--data", str(tmp_path / "d"), "--out", str(tmp_path / "r")], capsys)
    assert line == f"longctx train: error: {path}: model_overrides: {expected}"
    # The stages of a plan after the first start from the previous stage's params (init_from), so
    # only each value on its own can be checked there: it is, before anything is built.
    assert _plan_error(["--plan", PLAN, "--set", f"model_overrides={override}"], capsys).endswith(f"model_overrides: {expected}")


def test_a_preset_name_missing_from_the_library_is_a_value_error():
    from training.model import ModelConfig

    with pytest.raises(ValueError, match=r"unknown model preset 'tooy' \(did you mean 'toy'\?\)"):
        ModelConfig.preset("tooy")


@pytest.mark.parametrize("flag, value, expected", [
    ("--steps", "0", "steps: Input should be greater than or equal to 1 (got 0)"),
    ("--steps", "-1", "steps: Input should be greater than or equal to 1 (got -1)"),
    ("--lr", "-1", "lr: Input should be greater than or equal to 0 (got -1.0)"),
    ("--seq-len", "-1", "seq_len: Input should be greater than or equal to 1 (got -1)"),
    ("--global-batch", "0", "global_batch: Input should be greater than or equal to 1 (got 0)"),
    ("--grad-accum", "0", "grad_accum: Input should be greater than or equal to 1 (got 0)"),
    ("--checkpoint-every", "0", "checkpoint_every: Input should be greater than or equal to 1 (got 0)"),
    ("--log-every", "0", "log_every: Input should be greater than or equal to 1 (got 0)"),
    ("--q-chunk", "0", "q_chunk: Input should be greater than or equal to 1 (got 0)"),
])
def test_impossible_numbers_are_refused_by_train(tmp_path, capsys, flag, value, expected):
    line = _train_error(_run_args(tmp_path, flag, value), capsys)
    # The flag gave the value: the line names its key, not the --config file beside it.
    assert line == f"longctx train: error: {expected}", line
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("setting, expected", [
    ("seq_len=-1", "seq_len: Input should be greater than or equal to 1 (got -1)"),
    ("global_batch=0", "global_batch: Input should be greater than or equal to 1 (got 0)"),
    ("steps=0", "steps: Input should be greater than or equal to 1 (got 0)"),
    ("lr=-0.1", "lr: Input should be greater than or equal to 0 (got -0.1)"),
])
def test_impossible_numbers_are_refused_by_plan_set(capsys, setting, expected):
    assert _plan_error(["--config", TINY, "--set", setting], capsys).endswith(expected)
    # A stage plan's stages get --set as an update: checked all the same, unknown keys too.
    assert _plan_error(["--plan", PLAN, "--set", setting], capsys).endswith(expected)


def test_plan_set_on_a_stage_plan_refuses_an_unknown_key(capsys):
    assert _plan_error(["--plan", PLAN, "--set", "global_bach=2"], capsys) == (
        "longctx plan: error: --set: unknown key 'global_bach' (did you mean 'global_batch'?)")


def test_train_stages_refuses_impossible_numbers(tmp_path, capsys):
    plan = tmp_path / "plan.yaml"
    plan.write_text(f"out: {tmp_path / 'runs'}\nbase: {{model: toy, lr: -1}}\nstages:\n  - {{name: a, data: d}}\n")
    with pytest.raises(SystemExit) as err:
        main(["train-stages", "--plan", str(plan)])
    assert err.value.code == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line == f"longctx train-stages: error: {plan}: base.lr: Input should be greater than or equal to 0 (got -1)"


@pytest.mark.parametrize("mfu", ["0", "-1", "1.5"])
def test_plan_refuses_an_mfu_outside_zero_to_one(capsys, mfu):
    assert _plan_error(["--config", TINY, "--mfu", mfu], capsys) == (
        f"longctx plan: error: --mfu {float(mfu)}: model FLOPs utilisation is a fraction, 0 < mfu <= 1 (e.g. 0.4)")


def test_out_that_is_a_file_is_one_line(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("mine\n")
    line = _train_error(["--config", TINY, "--data", str(tmp_path / "data"), "--out", str(afile)], capsys)
    assert line == f"longctx train: error: out {afile} is a file, not a run folder; pass a new or existing run folder"
    assert afile.read_text() == "mine\n"


def _shard(out, stage: str = "s64", length: int = LENGTH) -> None:
    rows = toy_rows(np.random.default_rng(0), 8, length, VOCAB, "d0")
    write_shard(str(out), stage, 0, 1, rows, {"tokenizer": TOKENIZER})


def test_out_that_is_a_data_folder_or_a_stages_folder_is_refused(tmp_path, capsys):
    job = tmp_path / "books"
    _shard(job)
    (job / "manifest.json").write_text(json.dumps({"stages": {"s64": {"shards": []}}}))
    before = sorted(p.relative_to(job) for p in job.rglob("*"))
    argv = ["--config", TINY, "--data", str(job / "s64"), "--seq-len", str(LENGTH)]
    line = _train_error([*argv, "--out", str(job)], capsys)
    assert line == (f"longctx train: error: out {job} is a data job's output (manifest.json), not a run folder; "
                    "train into a new (or empty) folder")
    line = _train_error([*argv, "--out", str(job / "s64")], capsys)
    assert line == (f"longctx train: error: out {job / 's64'} is a stage folder of data shards (*.arrow), not a run "
                    "folder; train into a new (or empty) folder")
    (job / "manifest.json").unlink()
    line = _train_error([*argv, "--out", str(job)], capsys)
    assert line.endswith(f"out {job} holds data shards (stage folders s64), not a run folder; train into a new (or empty) folder")
    assert sorted(p.relative_to(job) for p in job.rglob("*")) == [p for p in before if p.name != "manifest.json"]

    stages = tmp_path / "runs"
    for name in ("32k", "4k"):
        (stages / name).mkdir(parents=True)
        (stages / name / "config.yaml").write_text("model: toy\n")
        (stages / name / "metrics.jsonl").write_text("")
    line = _train_error([*argv, "--out", str(stages)], capsys)
    assert line == (f"longctx train: error: out {stages} is a train-stages folder (stages 32k, 4k), not a run folder; "
                    f"pass one stage's folder to resume it (e.g. {stages / '32k'}), or train into a new (or empty) folder")
    assert sorted(p.name for p in stages.iterdir()) == ["32k", "4k"]


def test_a_run_refused_by_the_data_checks_leaves_no_folder(tmp_path, capsys):
    data = tmp_path / "books"
    _shard(data)
    run = tmp_path / "run"
    # seq_len 128 against 64-token shards: refused when the data is opened, after the run folder was made.
    argv = ["--data", str(data / "s64"), "--seq-len", "128", "--global-batch", "2", "--steps", "1",
            "--mesh", "dp=1,fsdp=1,tp=1,sp=1", "--attention", "dense", "--no-progress", "--allow-unfinished-data"]
    line = _train_error([*argv, "--out", str(run)], capsys)
    assert line.startswith("longctx train: error: ") and "128" in line, line
    assert not run.exists()
    # An existing empty folder stays, empty.
    run.mkdir()
    _train_error([*argv, "--out", str(run)], capsys)
    assert run.is_dir() and list(run.iterdir()) == []


@pytest.mark.parametrize("mesh, expected", [
    ("dp=0,fsdp=-1", "mesh axis dp=0: a size is a whole number >= 1, or -1 for the devices the other axes leave"),
    ("dp=1,fsdp=1,tp=1,sp=0", "mesh axis sp=0: a size is a whole number >= 1, or -1 for the devices the other axes leave"),
    ("sp=-2", "mesh axis sp=-2: a size is a whole number >= 1, or -1 for the devices the other axes leave"),
    ("dp=2,dp=1", "mesh 'dp=2,dp=1' names axis dp twice"),
])
def test_impossible_mesh_sizes_are_one_line(tmp_path, capsys, mesh, expected):
    # Sizes 0 and -2 were a ZeroDivisionError traceback; a repeated axis kept its last value.
    line = _train_error(_run_args(tmp_path, "--mesh", mesh), capsys)
    assert line == f"longctx train: error: mesh: {expected} (got {mesh!r})", line
    assert not (tmp_path / "run").exists()
    assert expected in _plan_error(["--config", TINY, "--topology", "local", "--mesh", mesh], capsys)


@pytest.mark.parametrize("weight", ["nan", "inf", "x"])
def test_a_mixture_weight_that_is_not_a_finite_number_is_refused(tmp_path, capsys, weight):
    _shard(tmp_path / "books")
    folder = str(tmp_path / "books" / "s64")
    # `@nan` alone trained as if unweighted; next to another source it was "cannot convert float NaN to integer".
    for spec in (f"{folder}@{weight}", f"{folder}@{weight},{folder}@0.5"):
        line = _train_error(["--config", TINY, "--seq-len", str(LENGTH), "--data", spec, "--out", str(tmp_path / "run")], capsys)
        assert line.endswith("with finite weights > 0"), line
        assert not (tmp_path / "run").exists()


def test_a_preset_that_is_not_the_init_from_network_is_refused(tmp_path, capsys):
    import jax

    from training import checkpoint as ckpt
    from training.model import ModelConfig, init_params
    from training.train import ARCHITECTURE_FIELDS

    _shard(tmp_path / "books")
    toy = ModelConfig.preset("toy")
    params = jax.tree.map(lambda s: np.zeros(s.shape, np.float32), jax.eval_shape(lambda: init_params(toy, jax.random.key(0))))
    final = tmp_path / "toy" / "checkpoints" / "final"
    ckpt.save_params(final, toy, params)
    argv = ["--data", str(tmp_path / "books" / "s64"), "--seq-len", str(LENGTH), "--global-batch", "2", "--steps", "1",
            "--mesh", "dp=1,fsdp=1,tp=1,sp=1", "--attention", "dense", "--no-progress", "--init-from", str(final)]
    tiny = ModelConfig.preset("tiny")
    line = _train_error([*argv, "--model", "tiny", "--out", str(tmp_path / "run")], capsys)
    differ = ", ".join(f"{k} {getattr(tiny, k)} vs {getattr(toy, k)}" for k in ARCHITECTURE_FIELDS)
    assert line.endswith(f"model tiny is not the network of init_from {final} ({differ}): init_from brings its own; "
                         "leave model unset, or name the preset it was trained as"), line
    assert not (tmp_path / "run").exists()
    # Naming the checkpoint's own preset, or none, trains it.
    from longctx.cli import main as cli

    assert cli(["train", *argv, "--model", "toy", "--out", str(tmp_path / "named")]) in (0, None)
    assert cli(["train", *argv, "--out", str(tmp_path / "unnamed")]) in (0, None)
    assert (tmp_path / "unnamed" / "checkpoints" / "final" / "model.json").is_file()


def test_a_wrong_typed_plan_set_value_is_one_line_without_a_serializer_warning(capsys):
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        line = _plan_error(["--plan", PLAN, "--set", "global_batch=abc"], capsys)
    assert line.endswith("stage 32k: --set: global_batch: Input should be a valid integer, unable to parse string as an "
                         "integer (got 'abc')"), line
    assert [str(w.message) for w in caught if "serializ" in str(w.message)] == []
