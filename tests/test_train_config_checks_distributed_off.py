"""`--distributed off` never joins a job, so `--coordinator-address`, `--num-processes` and
`--process-id` given with it were ignored (two such processes trained alone into one run folder).
They are refused with it, in one line naming them; auto and on still take them."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import cli_error
from training.config import TrainConfig
from training.distributed import DistributedConfigError, initialize

ALL_THREE = ("--distributed off (distributed: off) trains as one process and never joins a job, but --coordinator-address "
             "127.0.0.1:1234, --num-processes 2, --process-id 0 (coordinator_address, num_processes, process_id) describe "
             "a multi-process one: remove them, or use --distributed auto (the default) or on")


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative paths: the lines hold no temporary path
    yield
    assert not (tmp_path / "run").exists()  # refused before a run folder was made


def test_the_probe_command_is_refused_naming_the_three_flags(capsys):
    lines = cli_error(["train", "--data", "data/s128", "--out", "run", "--distributed", "off", "--coordinator-address",
                       "127.0.0.1:1234", "--num-processes", "2", "--process-id", "0"], capsys)
    assert lines[-1] == f"longctx train: error: {ALL_THREE}"


def test_one_key_in_a_config_file_is_named_with_the_file(capsys):
    Path("c.yaml").write_text("distributed: 'off'\nnum_processes: 2\n")
    lines = cli_error(["train", "--config", "c.yaml", "--data", "data/s128", "--out", "run"], capsys)
    assert lines[-1] == ("longctx train: error: c.yaml: --distributed off (distributed: off) trains as one process and never "
                         "joins a job, but --num-processes 2 (num_processes) describes a multi-process one: remove it, or use "
                         "--distributed auto (the default) or on")


def test_a_plan_base_with_distributed_off_and_a_coordinator_is_refused(capsys):
    Path("plan.yaml").write_text("out: runs\nbase: {model: toy, distributed: 'off', coordinator_address: '10.0.0.2:1234'}\n"
                                 "stages: [{name: a, data: data/a}]\n")
    lines = cli_error(["train-stages", "--plan", "plan.yaml"], capsys)
    assert lines[-1] == ("longctx train-stages: error: plan.yaml: stages[0]: --distributed off (distributed: off) trains as "
                         "one process and never joins a job, but --coordinator-address 10.0.0.2:1234 (coordinator_address) "
                         "describes a multi-process one: remove it, or use --distributed auto (the default) or on")


def test_initialize_off_refuses_them_too_before_anything_connects():
    with pytest.raises(DistributedConfigError) as err:
        initialize("off", "127.0.0.1:1234", 2, 0, timeout_s=5)
    assert str(err.value) == ALL_THREE
    assert initialize("off") is False  # alone: a plain single-process run, as before


@pytest.mark.parametrize("mode", ["auto", "on"])
def test_auto_and_on_still_take_the_explicit_settings(mode):
    config = TrainConfig(distributed=mode, coordinator_address="127.0.0.1:1234", num_processes=2, process_id=0)
    assert (config.coordinator_address, config.num_processes, config.process_id) == ("127.0.0.1:1234", 2, 0)
    assert TrainConfig(distributed="off").distributed == "off"  # off alone is fine
