"""A YAML config naming a key twice (`seq_len: 128` then `seq_len: 256`) kept the last value
without a word. The project's one YAML reader (curation.config_errors) refuses it, naming the file,
the line and the key, for every config it reads (train configs, plans, data jobs, inline flags)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from curation.config_errors import read_config_yaml, read_inline_yaml
from tests.conftest import cli_error

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative paths: the lines hold no temporary path


def test_a_duplicated_key_is_refused_with_its_file_line_and_key():
    Path("c.yaml").write_text("model: toy\nseq_len: 128\nsteps: 3\nseq_len: 256\n")
    with pytest.raises(ValueError) as err:
        read_config_yaml("c.yaml")
    assert str(err.value) == "c.yaml:4:1: not valid YAML (key 'seq_len' given twice, first on line 2)"


def test_train_config_with_a_duplicated_key_is_one_cli_line(capsys):
    Path("c.yaml").write_text("model: toy\nseq_len: 128\nseq_len: 256\n")
    lines = cli_error(["train", "--config", "c.yaml", "--data", "data/s128", "--out", "run"], capsys)
    assert lines[-1] == "longctx train: error: c.yaml:3:1: not valid YAML (key 'seq_len' given twice, first on line 2)"
    assert not Path("run").exists()


def test_a_duplicate_inside_a_nested_mapping_of_a_plan(capsys):
    Path("plan.yaml").write_text("out: runs\nstages:\n  - name: a\n    data: d\n    overrides: {steps: 2, steps: 3}\n")
    lines = cli_error(["train-stages", "--plan", "plan.yaml"], capsys)
    assert lines[-1] == "longctx train-stages: error: plan.yaml:5:27: not valid YAML (key 'steps' given twice, first on line 5)"


def test_an_inline_flag_value_with_a_duplicate():
    with pytest.raises(ValueError) as err:
        read_inline_yaml("{min_words: 50, min_words: 60}", "--quality")
    assert str(err.value) == "--quality: not valid YAML (key 'min_words' given twice, first on line 1)"


def test_safe_load_semantics_are_kept_merges_included():
    text = "a: &x {b: 1, c: 2}\nd:\n  <<: *x\n  b: 3\nn: null\nl: [1, 1]\n"
    Path("m.yaml").write_text(text)
    assert read_config_yaml("m.yaml") == yaml.safe_load(text) == {"a": {"b": 1, "c": 2}, "d": {"b": 3, "c": 2}, "n": None, "l": [1, 1]}
    Path("p.yaml").write_text("x: !!python/object:os.system {}\n")
    with pytest.raises(ValueError, match=r"^p\.yaml:1:4: not valid YAML"):
        read_config_yaml("p.yaml")  # still no arbitrary Python objects


def test_no_shipped_config_has_a_duplicated_key():
    files = sorted((REPO / "configs").rglob("*.yaml")) + sorted((REPO / "configs").rglob("*.yml"))
    assert files
    for path in files:
        assert read_config_yaml(path) == yaml.safe_load(path.read_text()), path
