"""The training loop: one stage, from shards to checkpoints, everything from one TrainConfig."""

from __future__ import annotations

import json
import logging
import resource
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import yaml
from jax.sharding import NamedSharding, PartitionSpec

from curation.config_errors import read_config_yaml
from training import checkpoint as ckpt
from training import distributed, run_folder
from training.config import StagePlan, TrainConfig
from training.data import check_data_folders, check_plan_data, global_arrays, open_batches
from training.mesh import make_mesh
from training.model import ModelConfig, count_params, flops_per_token, init_params
from training.step import build_optimizer, init_opt_state, jit_train_step, micro_batch, param_shardings
from training.vision import expected_vision_metadata, grow_vision_params, with_vision

log = logging.getLogger("longctx")

# bf16 dense peak per device, for the MFU estimate (vendor datasheets).
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5p": 459e12}


class ConfigMismatch(ValueError):
    """The run's config cannot work (shapes, mesh, data) — said before anything is compiled."""


def model_config_for(config: TrainConfig, base: ModelConfig | None = None) -> ModelConfig:
    model = base or ModelConfig.preset(config.model)
    changes = dict(config.model_overrides)
    if config.rope_theta is not None:
        changes["rope_theta"] = config.rope_theta
    changes["max_position_embeddings"] = max(config.seq_len, changes.get("max_position_embeddings", 0))
    model = model.with_(**changes)
    if config.vision_layout is not None:
        try:
            model = with_vision(model, config.vision_layout)
        except ValueError as err:
            raise ConfigMismatch(str(err)) from None
    return model


def check_config(config: TrainConfig) -> None:
    """What a config must satisfy whatever the devices (checked for every stage of a plan before
    the first one trains)."""
    # global_batch, grad_accum and resume_step >= 1: TrainConfig's bounds.
    if config.global_batch % config.grad_accum:
        raise ConfigMismatch(f"global_batch {config.global_batch} (rows per step) does not split into grad_accum "
                             f"{config.grad_accum} equal micro-batches; make it a multiple of {config.grad_accum}")


def check_fits(config: TrainConfig, model: ModelConfig, mesh: jax.sharding.Mesh) -> None:
    check_config(config)
    sp, dp = mesh.shape["sp"], mesh.shape["dp"] * mesh.shape["fsdp"]
    if config.seq_len % sp:
        raise ConfigMismatch(f"seq_len {config.seq_len} is not divisible by sp={sp}")
    if config.attention == "ring":
        local = config.seq_len // sp
        for name in ("q_chunk", "kv_chunk"):
            chunk = min(getattr(config, name), local)
            if local % chunk:
                raise ConfigMismatch(f"seq_len {config.seq_len} / sp {sp} = {local} is not a multiple of {name}={chunk}")
    local = config.seq_len // sp
    if local % min(config.loss_chunk, local):
        raise ConfigMismatch(f"seq_len {config.seq_len} / sp {sp} = {local} is not a multiple of loss_chunk={config.loss_chunk}")
    micro = micro_batch(config)
    if micro % dp:
        raise ConfigMismatch(f"micro-batch of {micro} rows (global_batch {config.global_batch} / grad_accum {config.grad_accum}) "
                             f"is not divisible by dp x fsdp = {dp}")
    tp = mesh.shape["tp"]
    if model.num_heads % tp or model.num_kv_heads % tp:
        raise ConfigMismatch(f"heads {model.num_heads}/{model.num_kv_heads} are not divisible by tp={tp}")


def _peak_flops(config: TrainConfig) -> float | None:
    if config.peak_flops_per_device:
        return config.peak_flops_per_device
    kind = jax.local_devices()[0].device_kind
    return next((v for k, v in PEAK_FLOPS.items() if k in kind), None)


def _memory_bytes() -> int:
    stats = jax.local_devices()[0].memory_stats() or {}
    return int(stats.get("peak_bytes_in_use") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)


def _initial_params(config: TrainConfig, mesh, abstract_model: ModelConfig):
    """(ModelConfig, params) from init_from (our params checkpoint or a HF LLaMA folder) or random.
    A text checkpoint under a vision_layout grows the vision tables (training.vision)."""
    if not config.init_from:
        shardings = param_shardings(abstract_model, mesh, config.state_axes)
        return abstract_model, init_params(abstract_model, jax.random.key(config.seed), out_shardings=shardings)
    if ckpt.is_params_checkpoint(config.init_from):
        base = ModelConfig.from_dict(json.loads((run_folder.run_path(config.init_from, "init_from") / "model.json").read_text()))
        _, params = ckpt.load_params(config.init_from, param_shardings(base, mesh, config.state_axes))
    else:
        from training.hf import load_hf_llama

        base, host_params = load_hf_llama(config.init_from)
        params = jax.tree.map(jax.device_put, host_params, param_shardings(base, mesh, config.state_axes))
    check_preset_is_init_from(config, base)
    model = model_config_for(config, base)
    if model.vision_layout != base.vision_layout:
        log.info("growing a %s vision vocabulary (%s init) on %s", model.vision_layout, config.vision_init, config.init_from)
        grow = lambda p, key: grow_vision_params(p, base, model, key, config.vision_init)  # noqa: E731
        params = jax.jit(grow, out_shardings=param_shardings(model, mesh, config.state_axes))(params, jax.random.key(config.seed))
    return model, params


# What makes two models the same network (the vocabulary may differ: a vision stage grows it).
ARCHITECTURE_FIELDS = ("hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads")


def check_preset_is_init_from(config: TrainConfig, base: ModelConfig) -> None:
    """With init_from, the network is the checkpoint's. A model preset named as well (in the
    config or by --model) that is another network would be ignored while config.yaml and the log
    name it: refused in one line. An unnamed preset (the default) says nothing and passes."""
    if "model" not in config.model_fields_set:
        return
    shape_overrides = {k: v for k, v in config.model_overrides.items() if k in ARCHITECTURE_FIELDS}
    try:
        named = ModelConfig.preset(config.model).with_(**shape_overrides)
    except ValueError:  # overrides the preset alone cannot take: the checkpoint's shapes decide
        return
    differ = [f"{k} {getattr(named, k)} vs {getattr(base, k)}" for k in ARCHITECTURE_FIELDS if getattr(named, k) != getattr(base, k)]
    if differ:
        raise ConfigMismatch(f"model {config.model} is not the network of init_from {config.init_from} ({', '.join(differ)}): "
                             "init_from brings its own; leave model unset, or name the preset it was trained as")


RESUME_FREE_KEYS = frozenset({
    "out", "init_from", "mesh", "state_axes", "attention", "q_chunk", "kv_chunk", "load_balance", "loss_chunk", "tokenizer_sha256",
    "checkpoint_every", "keep_checkpoints", "stop_after", "log_every", "peak_flops_per_device", "progress",
    "allow_unfinished_data", "allow_config_change", "resume_step",
    "distributed", "coordinator_address", "num_processes", "process_id", "initialization_timeout",
})


def config_changes(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """`key old -> new` for each setting that differs between a checkpoint's config and this run's,
    except RESUME_FREE_KEYS. Keys only one side knows (a config from an older version) are skipped."""
    keys = [k for k in current if k in saved and k not in RESUME_FREE_KEYS]
    return [f"{k} {saved[k]!r} -> {current[k]!r}" for k in keys if saved[k] != current[k]]


def truncate_metrics(path: run_folder.RunPath, step: int) -> int:
    """Keep the metrics of steps <= `step` (what the restored state has trained): a resumed run
    logs the lost steps again, so their old lines would repeat step numbers. The dropped lines
    (and a line cut by a kill) move to metrics.discarded.jsonl. Returns how many were dropped.
    `path` may be on an object store (see run_folder: rewrites instead of appends and renames)."""
    if not path.exists():
        return 0
    kept, dropped = [], []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
            ok = isinstance(record, dict) and int(record["step"]) <= step
        except (ValueError, KeyError, TypeError):
            ok = False
        (kept if ok else dropped).append(line)
    if dropped:
        run_folder.append_text(path.with_name("metrics.discarded.jsonl"), "".join(line + "\n" for line in dropped))
        # atomic: a kill now leaves the old or the new file, whole
        run_folder.replace_text(path, "".join(line + "\n" for line in kept))
    return len(dropped)


def _resume_hint(steps: list[int], bad: int) -> str:
    others = [s for s in steps if s != bad]
    if not others:
        return "no other step checkpoint is left: start again in a new --out (or move this one away)"
    return (f"other step checkpoints: {', '.join(map(str, others))}; resume from the latest good one with "
            f"--resume-step {others[-1]} (config key resume_step: {others[-1]})")


def _plan_resume(config: TrainConfig, run: run_folder.RunPath, manager) -> tuple[Any, int, dict | None, int | None]:
    """(manager, step, iterator state, deferred) of the checkpoint to resume from, (manager, 0, None,
    None) for a fresh run; read from the checkpoint's JSON only, before any model is built.

    resume_step N restores step N and moves later step checkpoints aside. A rerun of the same
    command must not roll back again: when the latest checkpoint was saved by a run with that
    resume_step, it is resumed instead, and N is returned as `deferred` (rolled back to only if
    the latest turns out unreadable). Refuses a checkpoint saved with other optimisation settings
    (ConfigMismatch) unless allow_config_change."""
    steps = ckpt.available_steps(manager)
    if not steps:
        if config.resume_step is not None:
            raise ConfigMismatch(f"resume_step {config.resume_step}: {run} has no step checkpoints")
        return manager, 0, None, None
    target, want, deferred = steps[-1], config.resume_step, None
    if want is not None and want != target:
        if want not in steps:
            raise ConfigMismatch(f"resume_step {want} is not a step checkpoint of {run}; it has steps {', '.join(map(str, steps))}")
        if _saved_resume_step(manager, target) == want:
            log.info("resume_step %d was applied by the run that saved step %d: resuming at %d", want, target, target)
            deferred = want
        else:
            manager, target = _roll_back(manager, want)
    try:
        return manager, target, _checked_data(config, run, manager, target), deferred
    except ckpt.CheckpointError:
        if deferred is None:
            raise
        manager, target = _roll_back(manager, deferred)
        return manager, target, _checked_data(config, run, manager, target), None


def _saved_resume_step(manager, step: int) -> int | None:
    try:
        return (ckpt.read_step_data(manager, step)[1] or {}).get("resume_step")
    except ckpt.CheckpointError:
        return None


def _roll_back(manager, step: int) -> tuple[Any, int]:
    if jax.process_index() == 0:  # one process moves the shared folders; the others wait for it
        dest, moved = ckpt.set_aside_steps_after(manager, step)
        log.warning("resume_step %d: moved step checkpoints %s (and any final params) to %s", step, moved, dest)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(f"longctx-rollback-{step}")
    run_folder.forget_listings(run_folder.run_path(str(manager.directory)))  # on a bucket: listings from before the move
    manager.reload()
    return manager, step


def _checked_data(config: TrainConfig, run: run_folder.RunPath, manager, step: int) -> dict:
    """The iterator state of a step checkpoint, once its saved config agrees with this run's."""
    try:
        iterator, saved = ckpt.read_step_data(manager, step)
    except ckpt.CheckpointError as err:
        raise ckpt.CheckpointError(f"{err}; {_resume_hint(ckpt.available_steps(manager), step)}") from None
    if saved is None and (run / "config.yaml").exists():  # a checkpoint from before configs were saved in it
        saved = yaml.safe_load((run / "config.yaml").read_text())
    changes = config_changes(saved or {}, config.model_dump(mode="json"))
    if changes and not config.allow_config_change:
        raise ConfigMismatch(f"{run} was trained to step {step} with other settings: {'; '.join(changes)}; resume with "
                             "its settings, train in a new --out, or set allow_config_change: true (--allow-config-change)")
    if changes:
        log.warning("resuming %s at step %d with changed settings (allow_config_change): %s", run, step, "; ".join(changes))
    return iterator


def _restored_state(config: TrainConfig, run: run_folder.RunPath, manager, step: int, deferred: int | None, abstract_state):
    """(manager, step, state, iterator state or None when _plan_resume's stands) of the planned
    checkpoint; when it is unreadable and a resume_step was deferred, of that step instead."""
    try:
        return manager, step, _restore_or_hint(manager, step, abstract_state), None
    except ckpt.CheckpointError:
        if deferred is None:
            raise
    manager, step = _roll_back(manager, deferred)
    iterator = _checked_data(config, run, manager, step)
    return manager, step, _restore_or_hint(manager, step, abstract_state), iterator


def _restore_or_hint(manager, step: int, abstract_state):
    try:
        return ckpt.restore_state(manager, step, abstract_state)
    except ckpt.CheckpointError as err:
        raise ckpt.CheckpointError(f"{err}; {_resume_hint(ckpt.available_steps(manager), step)}") from None


def train(config: TrainConfig) -> dict[str, Any]:
    """Train one stage. Resumes from the run's latest step checkpoint if there is one (or from
    resume_step), after checking that it was saved with the same optimisation settings."""
    if not config.data or not config.out:
        raise ConfigMismatch("a training run needs data (a stage folder of shards) and out (a run folder)")
    # Joining a multi-process job must come before anything touches a device.
    distributed.initialize(config.distributed, config.coordinator_address, config.num_processes, config.process_id,
                           config.initialization_timeout)
    check_config(config)
    run = run_folder.run_path(config.out)  # a local folder or a gs:// (s3://, az://) URL
    # A wrong --out (a file, a data folder, a train-stages folder) or --data (a job's output folder
    # instead of one of its stages) is refused before the run folder exists: nothing is left behind.
    run_folder.check_out_folder(run)
    check_data_folders(config.data)
    primary = distributed.is_primary()  # process 0 writes the run's own files; Orbax saves collectively
    existed = run.exists()
    run_folder.make_dirs(run)
    try:
        # Which checkpoint to resume from, and whether its settings agree, before building anything.
        manager = ckpt.step_manager(run, config.keep_checkpoints)
        manager, resume_at, data_state, deferred = _plan_resume(config, run, manager)
        mesh = make_mesh(config.mesh)
        model_cfg, params = _initial_params(config, mesh, model_config_for(config))
        check_fits(config, model_cfg, mesh)
        data, batches = open_batches(
            config.data, config.global_batch, config.seed, config.seq_len, model_cfg.vocab_size, config.tokenizer_sha256,
            expected_vision_metadata(model_cfg), allow_unfinished=config.allow_unfinished_data,
        )
        if config.init_from:
            # Params trained on another tokenizer's ids would read this data as other text.
            from training.hf import check_data_tokenizer

            check_data_tokenizer(config.init_from, config.data, data.info.tokenizer)
    except Exception:  # refused before anything was written: leave no folder this run made
        if primary:
            run_folder.remove_if_untouched(run, existed)
        raise

    optimizer = build_optimizer(config)
    replicated = NamedSharding(mesh, PartitionSpec())
    state = {
        "params": params,
        "opt_state": init_opt_state(optimizer, params, replicated),
        "step": jax.device_put(np.zeros((), np.int32), replicated),  # host value: fine for every process's devices
    }
    if resume_at:
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
        manager, resume_at, state, rolled_back = _restored_state(config, run, manager, resume_at, deferred, abstract)
        batches.restore(rolled_back or data_state, allow_change=config.allow_config_change)
        log.info("resumed %s at step %d", run, resume_at)
    start = int(state["step"])
    dropped = truncate_metrics(run / "metrics.jsonl", start) if primary else 0
    if dropped:
        log.info("metrics.jsonl: %d lines after step %d (lost with the run that wrote them) moved to metrics.discarded.jsonl",
                 dropped, start)
    run_config = config.model_dump(mode="json")
    if primary:
        (run / "config.yaml").write_text(yaml.safe_dump(run_config, sort_keys=False))

    step_fn, batch_sharding = jit_train_step(config, model_cfg, mesh, jax.tree.map(lambda x: x.sharding, state))
    tokens_per_step = config.global_batch * config.seq_len  # each row of the step once, whatever grad_accum is
    flops = flops_per_token(model_cfg, config.seq_len) * tokens_per_step
    peak = _peak_flops(config)
    # With init_from the network is the checkpoint's (check_preset_is_init_from), whatever preset is the default.
    log.info("model %s: %s params; mesh %s; %d rows of %d tokens; %d rows a step in %d micro-batches",
             f"of {config.init_from}" if config.init_from else config.model, f"{count_params(params):,}", dict(mesh.shape), data.num_rows, data.length, config.global_batch, config.grad_accum)

    history = []
    last = start
    end = config.steps if config.stop_after is None else min(config.steps, start + config.stop_after)
    with run_folder.MetricsLog(run / "metrics.jsonl", enabled=primary) as metrics_log, \
            _progress(config, start, config.steps, primary) as advance:
        for step in range(start, end):
            # Every process names the same rows; each reads only the pieces its devices hold.
            batch = global_arrays(batches.next_rows(), batch_sharding, config.grad_accum)
            t0 = time.perf_counter()
            with jax.set_mesh(mesh):  # the model's activation sharding constraints act under the mesh
                state, metrics = step_fn(state, batch)
            metrics = jax.device_get(metrics)
            seconds = time.perf_counter() - t0
            record = {
                "step": step + 1,
                "loss": float(metrics["loss"]),
                "grad_norm": float(metrics["grad_norm"]),
                **({"text_loss": float(metrics["text_loss"]), "vision_loss": float(metrics["vision_loss"]),
                    "vision_tokens": int(metrics["vision_tokens"])} if model_cfg.vision_layout != "none" else {}),
                "tokens_per_s": tokens_per_step / seconds,
                "mfu": (flops / seconds / (peak * jax.device_count())) if peak else None,
                "memory_bytes": _memory_bytes(),
                "seconds": seconds,
            }
            history.append(record)
            if (step + 1) % config.log_every == 0 or step + 1 == end:
                metrics_log.write(record)
            advance(record)
            if (step + 1) % config.checkpoint_every == 0 or step + 1 == config.steps or step + 1 == end:
                ckpt.save_step(manager, step + 1, state, batches.state(), run_config)
                metrics_log.flush()  # an object store's metrics.jsonl is rewritten at checkpoints
            last = step + 1
    manager.wait_until_finished()
    manager.close()
    final = None
    if last == config.steps:
        final = ckpt.save_params(run / "checkpoints" / "final", model_cfg, state["params"])
    return {"run": str(run), "steps": last, "history": history, "final": str(final) if final else None, "model": model_cfg.to_dict()}


class _progress:
    """A rich progress bar showing the loss, or nothing when disabled."""

    def __init__(self, config: TrainConfig, start: int, total: int, primary: bool = True):
        self.enabled = config.progress and primary  # one bar per job, not one per process
        self.start, self.total = start, total

    def __enter__(self):
        if not self.enabled:
            return lambda record: None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), transient=False)
        self.bar.start()
        task = self.bar.add_task("train", total=self.total, completed=self.start)

        def advance(record):
            self.bar.update(task, advance=1, description=f"loss {record['loss']:.3f} | {record['tokens_per_s']:,.0f} tok/s")

        return advance

    def __exit__(self, *exc):
        if self.enabled:
            self.bar.stop()
        return False


def train_stages(plan: StagePlan, after_stage: Callable[[str, TrainConfig], dict[str, Any] | None] | None = None
                 ) -> list[dict[str, Any]]:
    """Each stage in order, initialised from the previous stage's final params (fresh optimiser).
    `after_stage(name, config)` runs when a stage ends (the plan's `eval:` section, wired by the
    front door: training does not import evaluation); its result is kept under "eval"."""
    results = []
    configs = plan.stage_configs()
    for name, config in configs:  # a bad later stage is said now, not after the earlier ones trained
        try:
            check_config(config)
        except ConfigMismatch as err:
            raise ConfigMismatch(f"stage {name}: {err}") from None
    # So is a later stage's missing or mismatched data.
    check_plan_data([(name, config.data, config.seq_len, config.allow_unfinished_data) for name, config in configs])
    for name, config in configs:
        log.info("stage %s: seq_len %d, rope_theta %s, init_from %s", name, config.seq_len, config.rope_theta, config.init_from)
        result = {"stage": name, **train(config)}
        if after_stage is not None:
            if jax.process_count() > 1:  # one process cannot drive a multi-host model alone
                log.warning("stage %s: the plan's eval: runs in single-process runs only; run `longctx eval` on %s",
                            name, result.get("final"))
            else:
                evaluation = after_stage(name, config)
                if evaluation is not None:
                    result["eval"] = evaluation
        results.append(result)
    return results


def load_stage_plan(path: str) -> StagePlan:
    """The stage plan at `path`, every stage's config checked. A mistake (a typo'd key anywhere,
    a wrong value, bad YAML, no file) is one ValueError line naming the file and the place:
    `plan.yaml: stages[0].overrides: unknown key 'step' (did you mean 'steps'?)`."""
    data = read_config_yaml(path, "the plan")
    try:
        return StagePlan.from_data(data)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
