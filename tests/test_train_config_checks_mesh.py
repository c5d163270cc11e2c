"""A training mesh whose axes multiply to fewer devices than are visible trained on a subset
without a word (`--mesh dp=1,fsdp=1,tp=1,sp=2` on 8 devices used 2). `make_train_mesh` refuses
it in one line naming a -1 axis that takes the rest, as `longctx plan` does for its target; a
one-device mesh stays allowed. The suite's JAX has 8 host devices (tests/conftest.py XLA_FLAGS)."""

from __future__ import annotations

import jax
import pytest

from tests.conftest import cli_error, write_toy_stage
from training.mesh import MeshError, check_uses_all_devices, make_train_mesh

PROBE = ("mesh dp=1,fsdp=1,tp=1,sp=2 uses 2 of the 8 devices, leaving 6 idle: make the axes multiply to 8, or give one "
         "axis -1 to take the devices the others leave, e.g. --mesh dp=1,fsdp=-1,tp=1,sp=2 (fsdp=4)")


def test_the_suite_sees_eight_devices():
    assert jax.device_count() == 8


def test_a_mesh_on_a_subset_of_the_devices_is_refused_naming_a_minus_one():
    with pytest.raises(MeshError) as err:
        make_train_mesh("dp=1,fsdp=1,tp=1,sp=2")
    assert str(err.value) == PROBE
    with pytest.raises(MeshError) as err:
        make_train_mesh("sp=3")  # no axis of 3 divides 8: sp=-1 is the -1 that fits
    assert str(err.value) == ("mesh dp=1,fsdp=1,tp=1,sp=3 uses 3 of the 8 devices, leaving 5 idle: make the axes multiply "
                              "to 8, or give one axis -1 to take the devices the others leave, e.g. --mesh dp=1,fsdp=1,tp=1,sp=-1 (sp=8)")
    with pytest.raises(MeshError, match="uses 4 of the 16 devices"):
        check_uses_all_devices("dp=2,fsdp=1,tp=1,sp=2", 16)


def test_meshes_on_every_device_and_the_one_device_mesh_are_made():
    assert dict(make_train_mesh("dp=1,fsdp=-1,tp=1,sp=2").shape) == {"dp": 1, "fsdp": 4, "tp": 1, "sp": 2}
    assert dict(make_train_mesh("dp=2,fsdp=1,tp=1,sp=4").shape) == {"dp": 2, "fsdp": 1, "tp": 1, "sp": 4}
    assert make_train_mesh("dp=1,fsdp=1,tp=1,sp=1").size == 1  # a deliberate one-device run
    assert make_train_mesh("dp=1,fsdp=1,tp=1,sp=2", jax.devices()[:2]).size == 2  # given devices: all of them used


def test_train_refuses_the_probe_mesh_before_making_a_run_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative paths: the line holds no temporary path
    write_toy_stage(tmp_path / "data", "s64", length=64)
    lines = cli_error(["train", "--model", "toy", "--data", "data/s64", "--out", "run", "--seq-len", "64",
                       "--global-batch", "2", "--steps", "1", "--mesh", "dp=1,fsdp=1,tp=1,sp=2", "--attention", "dense",
                       "--no-progress"], capsys)
    assert lines[-1] == f"longctx train: error: {PROBE}"
    assert not (tmp_path / "run").exists()
