"""`longctx plan`: the trainer's real step compiled ahead of time (a small TPU slice through libtpu,
and this machine's CPU devices), its memory report, the fit verdict, ZeRO-3 over sp, the JSON."""

from __future__ import annotations

import argparse
import json
import os

import pytest

os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # compile-only libtpu use by concurrent processes

import jax  # noqa: E402
from rich.console import Console  # noqa: E402

from training.config import TrainConfig  # noqa: E402
from training.model import ModelConfig  # noqa: E402
from training.layouts import REMAT_ORDER, candidate_layouts, layout_cost, search_stage  # noqa: E402
from training.plan import compile_step, plan_stage  # noqa: E402
from training.plan_inputs import abstract_inputs, load_stages  # noqa: E402
from training.plan_report import JSON_KEYS  # noqa: E402
from training.plan_targets import TPU_CHIPS, PlanError, libtpu_available, resolve_target  # noqa: E402
from training.plan_cli import add_plan_parser, run_plan  # noqa: E402
from training.train import model_config_for  # noqa: E402

# The toy preset (2 layers, hidden 64): compiles in seconds, and every mesh axis can split it.
TOY = dict(model="toy", seq_len=128, global_batch=4, q_chunk=32, kv_chunk=32, loss_chunk=32, attention="ring")


def toy(mesh: str, **changes) -> TrainConfig:
    return TrainConfig(**{**TOY, "mesh": mesh, **changes})


def needs_devices(n: int) -> None:
    if jax.device_count() < n:
        pytest.skip(f"needs {n} (host) devices; tests/conftest.py sets XLA_FLAGS for them")


def assert_matches_xla(report, compiled) -> None:
    """The report's bytes are XLA's own memory analysis of the program, and the total adds up."""
    mem = compiled.executable.memory_analysis()
    assert report.argument_bytes == mem.argument_size_in_bytes
    assert report.output_bytes == mem.output_size_in_bytes
    assert report.alias_bytes == mem.alias_size_in_bytes
    assert report.temp_bytes == mem.temp_size_in_bytes > 0
    assert report.peak_bytes_per_device == (mem.argument_size_in_bytes + mem.output_size_in_bytes
                                            - mem.alias_size_in_bytes + mem.temp_size_in_bytes)
    # The donated state comes back in place: outputs alias (almost) all of the state arguments.
    assert report.alias_bytes >= report.state_bytes_per_device - 64


def test_tpu_slice_compiles_and_reports_xla_memory():
    if not libtpu_available():
        pytest.skip("libtpu is not installed (pip install -e '.[dev]' brings it): no TPU ahead-of-time compile")
    target = resolve_target("v5p:2x2x1")
    assert target.kind == "tpu" and target.num_devices == 4 and target.hbm_bytes == TPU_CHIPS["v5p"].hbm_bytes
    config = toy("dp=1,fsdp=2,tp=1,sp=2")
    report = plan_stage("toy", config, target, mfu=0.5)
    model = model_config_for(config)
    compiled = compile_step(config, model, target.devices, report.mesh)  # the same program (cached), to compare
    assert_matches_xla(report, compiled)
    assert report.method == "compiled" and report.fits is True and report.devices == 4
    assert report.mesh == {"dp": 1, "fsdp": 2, "tp": 1, "sp": 2}
    # Model FLOPs of the step (4 rows x 128 tokens) and the step time they take at 50% of 4 x 459 TFLOP/s.
    assert report.tokens_per_step == 512
    assert report.step_seconds == pytest.approx(report.flops_per_step / (4 * 459e12 * 0.5))
    assert report.hlo_flops_per_step > 0


def test_local_compile_matches_xla_and_fits_flips_with_hbm():
    needs_devices(8)
    config = toy("dp=1,fsdp=2,tp=1,sp=4")
    report = plan_stage("toy", config, resolve_target("local"))
    assert_matches_xla(report, compile_step(config, model_config_for(config), jax.devices(), report.mesh))
    peak = report.peak_bytes_per_device
    assert plan_stage("toy", config, resolve_target("local", hbm_bytes=peak)).fits is True
    small = plan_stage("toy", config, resolve_target("local", hbm_bytes=peak - 1))
    assert small.fits is False and small.hbm_bytes_per_device == peak - 1


def test_state_is_sharded_over_sequence_devices():
    """ZeRO-3 over fsdp x sp: adding sequence devices divides each device's params + Adam moments."""
    needs_devices(8)
    local = resolve_target("local")
    replicated = plan_stage("toy", toy("dp=8,fsdp=1,tp=1,sp=1", global_batch=8), local)
    over_sp = plan_stage("toy", toy("dp=2,fsdp=1,tp=1,sp=4", global_batch=8), local)
    assert over_sp.state_bytes_total == replicated.state_bytes_total
    assert replicated.state_bytes_per_device == replicated.state_bytes_total  # dp alone replicates the state
    # Per-device argument bytes (state + batch shard) as compiled: the state part is divided by sp = 4.
    assert over_sp.argument_bytes < replicated.argument_bytes / 3
    assert over_sp.state_bytes_per_device < replicated.state_bytes_per_device / 3.5
    # The old layout (state over fsdp only) keeps a full copy on every sequence device.
    model = model_config_for(toy("dp=2,fsdp=1,tp=1,sp=4"))
    sizes = {"dp": 2, "fsdp": 1, "tp": 1, "sp": 4}
    fsdp_only = abstract_inputs(toy("dp=2,fsdp=1,tp=1,sp=4"), model, sizes, ("fsdp",))
    assert fsdp_only.state_bytes_per_device() == replicated.state_bytes_per_device


def test_two_depths_extrapolate_to_the_full_depth():
    """Compile time grows with depth: `layers=(1, 2)` compiles two cut models and extends their
    bytes linearly to the model's depth; the state part is exact (the full model's own compile
    has the same argument bytes)."""
    needs_devices(8)
    config = toy("dp=1,fsdp=2,tp=1,sp=4", model_overrides={"num_layers": 4})
    local = resolve_target("local")
    report = plan_stage("toy", config, local, layers=(1, 2))
    (n0, a0, t0), (n1, a1, t1) = report.compiled_points
    assert (n0, n1) == (1, 2) and report.compiled_layers == (1, 2)
    assert report.method == "extrapolated" and report.layers == 4 and "extrapolated to 4 layers" in report.note
    assert report.temp_bytes == t0 + 3 * (t1 - t0) and report.argument_bytes == a0 + 3 * (a1 - a0)
    full = plan_stage("toy", config, local)
    assert full.method == "compiled" and full.layers == 4
    assert report.argument_bytes == full.argument_bytes
    assert report.state_bytes_per_device == full.state_bytes_per_device


def test_cli_writes_json_with_every_stage_key(tmp_path):
    needs_devices(8)
    config = tmp_path / "toy.yaml"
    config.write_text("\n".join(f"{k}: {v}" for k, v in {**TOY, "mesh": "dp=1,fsdp=2,tp=1,sp=4"}.items()))
    parser = argparse.ArgumentParser()
    add_plan_parser(parser.add_subparsers(dest="command"))
    out = tmp_path / "plan.json"
    args = parser.parse_args(["plan", "--config", str(config), "--topology", "local", "--json", str(out)])
    console = Console(record=True, width=200)
    assert run_plan(args, console) == 0
    stages = json.loads(out.read_text())["stages"]
    assert len(stages) == 1 and set(JSON_KEYS) <= set(stages[0])
    stage = stages[0]
    assert stage["name"] == "toy" and stage["seq_len"] == 128 and stage["devices"] == 8 and stage["fits"] is True
    assert stage["mesh"] == {"dp": 1, "fsdp": 2, "tp": 1, "sp": 4}
    assert stage["peak_bytes_per_device"] == stage["argument_bytes"] + stage["output_bytes"] - stage["alias_bytes"] + stage["temp_bytes"]
    text = console.export_text()
    assert "toy" in text and "compiled" in text


def test_gpu_targets_are_estimates_from_the_same_shapes():
    config = toy("dp=1,fsdp=-1,tp=1,sp=4")
    report = plan_stage("toy", config, resolve_target("gpu:h100x8"))
    assert report.method == "estimate" and "analytic" in report.note and report.compile_seconds is None
    sizes = {"dp": 1, "fsdp": 2, "tp": 1, "sp": 4}
    abstract = abstract_inputs(config, model_config_for(config), sizes)
    assert report.argument_bytes == abstract.state_bytes_per_device() + abstract.batch_bytes_per_device()
    assert report.hbm_bytes_per_device == 80 * 2**30 and report.fits is True
    assert report.step_seconds == pytest.approx(report.flops_per_step / (8 * 989e12 * 0.4))
    # An estimate only counts as fitting with ESTIMATE_MARGIN (30%) of the memory to spare.
    peak = report.peak_bytes_per_device
    assert plan_stage("toy", config, resolve_target("gpu:h100x8", hbm_bytes=peak)).fits is False
    assert plan_stage("toy", config, resolve_target("gpu:h100x8", hbm_bytes=int(peak / 0.7) + 1)).fits is True


def test_the_7b_stage_needs_its_state_sharded_over_sequence_devices():
    """configs/train/stage-32k.yaml's mesh (sp=8 on 8 GPUs, fsdp=1): 81 GB of fp32 params and Adam
    moments (108 GB with the gradients) are only divided by 8 when sharded over sp too (ZeRO-3);
    over fsdp alone each device holds them all."""
    [(name, config)] = load_stages("configs/train/stage-32k.yaml")
    target = resolve_target("gpu:h100x8")
    sharded = plan_stage(name, config, target, estimate=True)
    assert sharded.mesh == {"dp": 1, "fsdp": 1, "tp": 1, "sp": 8}
    assert 80.8e9 < sharded.state_bytes_total < 80.9e9  # 6,738,415,616 params x (4 + 4 + 4) bytes
    assert sharded.state_bytes_per_device == pytest.approx(sharded.state_bytes_total / 8, rel=0.01)
    replicated = plan_stage(name, config, target, estimate=True, state_axes=("fsdp",))
    assert replicated.state_bytes_per_device == sharded.state_bytes_total and replicated.fits is False


def test_search_picks_the_cheapest_layout_that_fits():
    config = toy("dp=1,fsdp=-1,tp=1,sp=1")
    target = resolve_target("gpu:h100x8")
    best, tried = search_stage("toy", config, target)
    # Everything fits an H100: the first candidate wins, the one of least estimated step time.
    model = model_config_for(config)
    layouts = candidate_layouts(config, model, 8)
    assert {layout.grad_accum for layout in layouts} == {1, 2, 4} and {layout.remat for layout in layouts} == set(REMAT_ORDER)
    cheapest = min(layouts, key=lambda x: layout_cost(config, model.with_(remat=x.remat), x, target))
    assert best is tried[0] and best.remat == cheapest.remat and best.grad_accum == cheapest.grad_accum
    assert best.mesh == dict(cheapest.sizes) and "search:" in best.note
    # Every candidate divides the devices and the 4-row batch into micro-batches the mesh can split.
    for layout in layouts:
        sizes = dict(layout.sizes)
        assert sizes["dp"] * sizes["fsdp"] * sizes["tp"] * sizes["sp"] == 8
        assert (4 // layout.grad_accum) % (sizes["dp"] * sizes["fsdp"]) == 0
    tight = resolve_target("gpu:h100x8", hbm_bytes=int(best.peak_bytes_per_device / 0.7) - 1)
    best2, tried2 = search_stage("toy", config, tight)
    assert tried2[0].fits is False and len(tried2) > 1
    assert best2 is tried2[-1] and best2.fits and best2.peak_bytes_per_device < best.peak_bytes_per_device
    assert all(not r.fits for r in tried2[:-1])
    assert search_stage("toy", config, resolve_target("gpu:h100x8", hbm_bytes=1000))[0] is None


def test_bad_targets_and_layouts_are_one_line_errors():
    with pytest.raises(PlanError, match="unknown target"):
        resolve_target("v9x:2x2")
    with pytest.raises(PlanError, match="gpu:NAMExCOUNT"):
        resolve_target("gpu:h100")
    with pytest.raises(PlanError, match="micro-batch of 4 rows is not divisible by dp x fsdp = 8"):
        plan_stage("toy", toy("dp=1,fsdp=8,tp=1,sp=1"), resolve_target("gpu:h100x8"))
    with pytest.raises(PlanError, match="uses 4 of the target's 8 devices"):
        plan_stage("toy", toy("dp=1,fsdp=2,tp=1,sp=2"), resolve_target("gpu:h100x8"))
    with pytest.raises(PlanError, match="--config.*--plan|one of them"):
        load_stages()
    with pytest.raises(PlanError, match="between 1 and 2"):
        plan_stage("toy", toy("dp=1,fsdp=2,tp=1,sp=4"), resolve_target("gpu:h100x8"), layers=(2, 4))


def test_stage_plan_lists_every_stage():
    stages = load_stages(plan_path="configs/train/lwm-text.yaml")
    assert [name for name, _ in stages] == ["32k", "128k", "256k", "512k", "1m"]
    assert [c.seq_len for _, c in stages] == [32768, 131072, 262144, 524288, 1048576]
    assert isinstance(model_config_for(stages[0][1]), ModelConfig)


def test_the_lwm_text_plan_states_a_slice_its_stages_fill_and_fit():
    """configs/train/lwm-text.yaml names its TPU slice; every stage's mesh uses all of it, and the
    analytic estimate (the search's pre-screen; the compiled 7B table is in benchmarks/RESULTS.md)
    puts every stage under the chip's HBM with the state sharded over fsdp x sp."""
    if not libtpu_available():
        pytest.skip("libtpu is not installed (pip install -e '.[dev]' brings it)")
    import yaml

    with open("configs/train/lwm-text.yaml") as fh:
        topology = yaml.safe_load(fh)["topology"]
    target = resolve_target(topology)
    assert target.kind == "tpu" and target.num_devices == 256
    for name, config in load_stages(plan_path="configs/train/lwm-text.yaml"):
        report = plan_stage(name, config, target, estimate=True)
        assert report.method == "estimate" and report.devices == 256, name
        assert report.mesh["dp"] * report.mesh["fsdp"] * report.mesh["tp"] * report.mesh["sp"] == 256, name
        assert report.fits is True and report.peak_bytes_per_device < target.hbm_bytes, (name, report.peak_bytes_per_device)
        # ZeRO-3 over every chip: 6.74e9 params x (fp32 weights + two fp32 moments) / 256 chips.
        assert report.state_bytes_per_device < 1.1 * report.state_bytes_total / 256, name


def test_a_program_xla_refuses_for_lack_of_hbm_is_reported_as_not_fitting():
    """XLA's TPU compiler refuses a program whose temporaries exceed the chip (RESOURCE_EXHAUSTED):
    the plan reads how much it asked for from the refusal instead of crashing."""
    from training.plan import _exhausted_temp_bytes

    message = ("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO temporaries "
               "(99.22G) exceeds available HBM (95.74G).")
    assert _exhausted_temp_bytes(RuntimeError(message)) == int(99.22 * 2**30)
    assert _exhausted_temp_bytes(RuntimeError("INTERNAL: something else")) is None


def test_scanned_layers_need_no_more_memory_than_the_loop_on_tpu():
    """The layer scan once held every chunk pair's causal mask of every ring step at once (JAX hoists
    loop-invariant residuals out of a differentiated scan; see LlamaModel._scanned_layers): the
    scanned step must need no more temporaries per chip than the same step with layers as a loop."""
    if not libtpu_available():
        pytest.skip("libtpu is not installed (pip install -e '.[dev]' brings it)")
    target = resolve_target("v5p:2x2x1")
    temp = {}
    for scan in (False, True):
        config = toy("dp=1,fsdp=2,tp=1,sp=2", seq_len=4096, q_chunk=256, kv_chunk=256, loss_chunk=256,
                     model_overrides={"num_layers": 4, "remat": "full", "scan_layers": scan})
        temp[scan] = plan_stage("toy", config, target).temp_bytes
    assert 0 < temp[True] <= temp[False], temp
