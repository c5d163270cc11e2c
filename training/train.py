"""The training loop: one stage, from shards to checkpoints, everything from one TrainConfig."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import resource
import signal
import sys
import threading
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
from training.config import StagePlan, TrainConfig, check_vision_settings
from training.data import check_data_folders, check_plan_data, global_arrays, open_batches
from training.mesh import make_train_mesh
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


def check_layout(config: TrainConfig, mesh: jax.sharding.Mesh) -> None:
    """What the sequence layout needs of the mesh (no model needed): checked before the run folder
    is made, so a refused layout leaves nothing behind. The same rules as `longctx plan`'s."""
    sp = mesh.shape["sp"]
    if config.seq_len % sp:
        raise ConfigMismatch(f"seq_len {config.seq_len} is not divisible by sp={sp}")
    if config.attention == "dense" and sp > 1:
        raise ConfigMismatch(f"dense attention needs sp=1 (ring attention splits the sequence); the mesh has sp={sp}: "
                             "use --attention ring, or a mesh with sp=1")
    if config.attention == "ring" and sp > 1:
        if config.load_balance == "zigzag" and config.seq_len % (2 * sp):
            raise ConfigMismatch(f"zigzag load balancing needs seq_len ({config.seq_len}) divisible by 2 x sp = {2 * sp}; "
                                 "change seq_len or sp, or use --load-balance none")
        if config.load_balance == "striped" and config.seq_len % (sp * sp):
            raise ConfigMismatch(f"striped load balancing needs seq_len ({config.seq_len}) divisible by sp x sp = {sp * sp}; "
                                 "change seq_len or sp, or use --load-balance none")


def check_fits(config: TrainConfig, model: ModelConfig, mesh: jax.sharding.Mesh) -> None:
    check_config(config)
    check_layout(config, mesh)
    sp, dp = mesh.shape["sp"], mesh.shape["dp"] * mesh.shape["fsdp"]
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


# init_from is not free: config.yaml would record a starting point the checkpoint's params did not
# come from (and another network cannot be restored at all: check_same_network).
RESUME_FREE_KEYS = frozenset({
    "out", "mesh", "state_axes", "attention", "q_chunk", "kv_chunk", "load_balance", "loss_chunk", "tokenizer_sha256",
    "checkpoint_every", "keep_checkpoints", "stop_after", "log_every", "peak_flops_per_device", "progress",
    "allow_unfinished_data", "allow_config_change", "resume_step",
    "distributed", "coordinator_address", "num_processes", "process_id", "initialization_timeout",
})


def config_changes(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """`key old -> new` for each setting that differs between a checkpoint's config and this run's,
    except RESUME_FREE_KEYS. Keys only one side knows (a config from an older version) are skipped."""
    keys = [k for k in current if k in saved and k not in RESUME_FREE_KEYS]
    same = lambda k: _location(saved[k]) == _location(current[k]) if k == "init_from" else saved[k] == current[k]  # noqa: E731
    return [f"{k} {saved[k]!r} -> {current[k]!r}" for k in keys if not same(k)]


def _location(value: Any) -> Any:
    """A path spelled either way (`a/b/`, `./a/b`) is the same init_from."""
    if not isinstance(value, str) or not value:
        return value
    return value.rstrip("/") if run_folder.is_url(value) else os.path.normpath(value)


# ModelConfig fields that shape the params (the rest, e.g. rope_theta or the compute dtype, do not).
SHAPE_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads", "head_dim",
                "tie_embeddings", "param_dtype", "vision_layout", "vision_vocab_size")


def _network(config: TrainConfig) -> ModelConfig | None:
    """The network a config trains: init_from's (its model.json or config.json, read without the
    weights) or the preset's, with model_overrides, rope_theta and vision_layout applied; None when
    init_from cannot be read now (moved, offline): the restore then compares the arrays' shapes."""
    try:
        base = ckpt.any_model_config(config.init_from) if config.init_from else None
        return model_config_for(config, base)
    except Exception:  # noqa: BLE001 - whatever stops reading it, the shapes check stays
        return None


def _saved_config(saved: dict[str, Any]) -> TrainConfig | None:
    try:
        return TrainConfig.model_validate({k: v for k, v in saved.items() if k in TrainConfig.model_fields})
    except ValueError:
        return None


def _origin(config: TrainConfig) -> str:
    return f"init_from {config.init_from}" if config.init_from else f"model {config.model} (random init)"


def check_same_network(config: TrainConfig, run: run_folder.RunPath, step: int, saved: dict[str, Any] | None) -> None:
    """Refuse (ConfigMismatch, one line) a resume whose network (init_from's model, the preset,
    model_overrides, vision_layout) is not the one the run's step checkpoint `step` was trained as:
    its arrays could not be restored into it. Named with the difference and the fix; whatever
    allow_config_change says (no setting makes another network restorable)."""
    theirs_config = _saved_config(saved) if saved else None
    if theirs_config is None:
        return
    theirs, ours = _network(theirs_config), _network(config)
    if theirs is None or ours is None or theirs == ours:
        return
    shapes = lambda m: ckpt.tree_shapes(jax.eval_shape(lambda: init_params(m, jax.random.key(0))))  # noqa: E731
    if shapes(theirs) == shapes(ours):
        return
    fields = [f.name for f in dataclasses.fields(ModelConfig)]
    differ = [k for k in SHAPE_FIELDS if getattr(theirs, k) != getattr(ours, k)] or \
        [k for k in fields if getattr(theirs, k) != getattr(ours, k)]
    what = ", ".join(f"{k} {getattr(theirs, k)} in the run, {getattr(ours, k)} here" for k in differ)
    fixes = []
    if _location(theirs_config.init_from) != _location(config.init_from):
        fixes.append(f"pass the run's own --init-from {theirs_config.init_from} again" if theirs_config.init_from
                     else "leave --init-from out (the run started from a random init)")
    if (theirs_config.model, theirs_config.model_overrides) != (config.model, config.model_overrides):
        fixes.append(f"use its model {theirs_config.model} with model_overrides {theirs_config.model_overrides}")
    if theirs_config.vision_layout != config.vision_layout:
        fixes.append(f"use its vision_layout {theirs_config.vision_layout}")
    fix = " and ".join(fixes) if fixes else "resume with the run's own settings (its config.yaml)"
    raise ConfigMismatch(f"{run} was trained to step {step} as another network ({what}; the run's is from "
                         f"{_origin(theirs_config)}, this one's from {_origin(config)}): to resume it, {fix}; "
                         "or train into a new --out")


def _check_restorable(run: run_folder.RunPath, manager, step: int, abstract_state) -> None:
    """Refuse (ConfigMismatch) restoring a readable step checkpoint whose arrays are another tree
    than the state this run built (what check_same_network could not tell from the configs, e.g.
    an init_from that has moved): a checkpoint of another network is not a damaged one."""
    saved = ckpt.saved_state_shapes(manager, step)
    if saved is None:
        return
    built = ckpt.tree_shapes(abstract_state)
    if saved == built:
        return
    differ = sorted(k for k in saved.keys() & built.keys() if saved[k][0] != built[k][0])
    only_saved, only_built = sorted(saved.keys() - built.keys()), sorted(built.keys() - saved.keys())
    details = [f"{k} {saved[k][0]} in the checkpoint, {built[k][0]} here" for k in differ[:2]]
    details += [f"{len(only_saved)} arrays only in the checkpoint (e.g. {only_saved[0]})"] if only_saved else []
    details += [f"{len(only_built)} arrays only here (e.g. {only_built[0]})"] if only_built else []
    dtypes = [k for k in sorted(saved) if saved[k] != built.get(k, saved[k])]
    details = details or [f"{k} {saved[k][1]} in the checkpoint, {built[k][1]} here" for k in dtypes[:2]]
    raise ConfigMismatch(f"{run}: step checkpoint {step} holds another network than this run builds ({'; '.join(details)}); "
                         "resume with the run's own init_from, model and model_overrides (its config.yaml), "
                         "or train into a new --out")


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
            manager, target = _roll_back(config, run, manager, want)
    try:
        return manager, target, _checked_data(config, run, manager, target), deferred
    except ckpt.CheckpointError:
        if deferred is None:
            raise
        manager, target = _roll_back(config, run, manager, deferred)
        return manager, target, _checked_data(config, run, manager, target), None


def _saved_resume_step(manager, step: int) -> int | None:
    try:
        return (ckpt.read_step_data(manager, step)[1] or {}).get("resume_step")
    except ckpt.CheckpointError:
        return None


def _roll_back(config: TrainConfig, run: run_folder.RunPath, manager, step: int) -> tuple[Any, int]:
    try:  # nothing is moved for a resume that could not restore step `step` anyway
        check_same_network(config, run, step, ckpt.read_step_data(manager, step)[1])
    except ckpt.CheckpointError:
        pass  # _checked_data names it after the move, with the other steps
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
    check_same_network(config, run, step, saved)  # before the settings: no setting makes it restorable
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
        return manager, step, _restore_or_hint(manager, step, abstract_state, run), None
    except ckpt.CheckpointError:
        if deferred is None:
            raise
    manager, step = _roll_back(config, run, manager, deferred)
    iterator = _checked_data(config, run, manager, step)
    return manager, step, _restore_or_hint(manager, step, abstract_state, run), iterator


def _restore_or_hint(manager, step: int, abstract_state, run: run_folder.RunPath | None = None):
    _check_restorable(run if run is not None else ckpt.step_path(manager, step).parent.parent.parent, manager, step,
                      abstract_state)
    try:
        return ckpt.restore_state(manager, step, abstract_state)
    except ckpt.CheckpointError as err:
        raise ckpt.CheckpointError(f"{err}; {_resume_hint(ckpt.available_steps(manager), step)}") from None


class TrainInterrupted(SystemExit):
    """Ctrl-C (SIGINT) stopped a run: exit status 130 (128 + SIGINT), after one line on stderr
    saying after which step and which step checkpoint the same command resumes from."""

    def __init__(self, message: str):
        super().__init__(130)
        self.message = message


class _Where:
    """How far a run got, for the line an interrupt prints; and Ctrl-C held back while a checkpoint
    is being saved (`saving()`): Orbax interrupted mid-save logs its own tracebacks and leaves the
    save half done, so the interrupt is raised once the save call has returned."""

    def __init__(self, config: TrainConfig):
        self.config, self.run, self.manager, self.done, self.primary = config, None, None, None, True
        self._saving = self._pending = False
        self._previous = None
        if threading.current_thread() is threading.main_thread():  # only the main thread may set handlers
            self._previous = signal.signal(signal.SIGINT, self._on_sigint)

    def _on_sigint(self, signum, frame):
        if self._saving:
            self._pending = True
        else:
            raise KeyboardInterrupt

    def saving(self) -> _Saving:
        return _Saving(self)

    def restore_handler(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def interrupted(self) -> TrainInterrupted:
        saved = []
        if self.manager is not None:
            # A save under way is finished (a second Ctrl-C abandons it: Orbax never commits a partial one).
            for act in (self.manager.wait_until_finished, lambda: saved.extend(ckpt.available_steps(self.manager)),
                        self.manager.close):
                try:
                    act()
                except (Exception, KeyboardInterrupt):  # noqa: BLE001 - the line below is all that is left to say
                    pass
        steps = self.config.steps
        when = "before its first step" if self.done is None else f"after step {self.done} of {steps}"
        if saved:
            again = (f"the same command resumes from step checkpoint {self.run / 'checkpoints' / 'steps' / str(saved[-1])}"
                     + (f" (steps {saved[-1] + 1}-{self.done} are trained again)" if self.done and self.done > saved[-1] else ""))
        else:
            again = "no step checkpoint was saved yet: the same command starts the run again from step 0"
        message = f"longctx: training {self.run or self.config.out} interrupted {when}; {again}"
        if self.primary:
            print(message, file=sys.stderr, flush=True)
        return TrainInterrupted(message)


class _Saving:
    def __init__(self, where: _Where):
        self.where = where

    def __enter__(self):
        self.where._saving = True

    def __exit__(self, *exc):
        self.where._saving = False
        if self.where._pending and exc[0] is None:
            self.where._pending = False
            raise KeyboardInterrupt
        return False


def train(config: TrainConfig) -> dict[str, Any]:
    """Train one stage. Resumes from the run's latest step checkpoint if there is one (or from
    resume_step), after checking that it was saved with the same optimisation settings.
    Ctrl-C ends it with TrainInterrupted (a SystemExit, status 130) after one line on stderr."""
    where = _Where(config)
    try:
        return _train(config, where)
    except KeyboardInterrupt:
        where.restore_handler()  # a second Ctrl-C while the last save finishes abandons it
        raise where.interrupted() from None
    finally:
        where.restore_handler()


def _train(config: TrainConfig, where: _Where) -> dict[str, Any]:
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
    # So is a mesh that does not fit the devices, or a sequence layout it cannot run (as `longctx plan` says).
    mesh = make_train_mesh(config.mesh)  # every device: a mesh leaving some idle is refused
    check_layout(config, mesh)
    primary = distributed.is_primary()  # process 0 writes the run's own files; Orbax saves collectively
    where.run, where.primary = run, primary
    existed = run.exists()
    run_folder.make_dirs(run)
    try:
        # Which checkpoint to resume from, and whether its settings agree, before building anything.
        manager = where.manager = ckpt.step_manager(run, config.keep_checkpoints)
        manager, resume_at, data_state, deferred = _plan_resume(config, run, manager)
        where.manager = manager
        model_cfg, params = _initial_params(config, mesh, model_config_for(config))
        if config.init_from:  # the checkpoint decides whether the model has a vision vocabulary
            check_vision_settings(config, model_cfg.vision_layout, f"the model of init_from {config.init_from}")
        check_fits(config, model_cfg, mesh)
        data, batches = open_batches(
            config.data, config.global_batch, config.seed, config.seq_len, model_cfg.vocab_size, config.tokenizer_sha256,
            expected_vision_metadata(model_cfg), allow_unfinished=config.allow_unfinished_data,
        )
        if config.init_from:
            # Params trained on another tokenizer's ids would read this data as other text.
            from training.hf import check_data_tokenizer

            check_data_tokenizer(config.init_from, config.data, data.info.tokenizer)
    except (Exception, KeyboardInterrupt):  # refused (or stopped) before anything was written: leave no folder this run made
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
        where.manager = manager
        batches.restore(rolled_back or data_state, allow_change=config.allow_config_change)
        log.info("resumed %s at step %d", run, resume_at)
    start = where.done = int(state["step"])
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
            where.done = step + 1
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
                with where.saving():
                    ckpt.save_step(manager, step + 1, state, batches.state(), run_config)
                    metrics_log.flush()  # an object store's metrics.jsonl is rewritten at checkpoints
            last = step + 1
    with where.saving():
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
