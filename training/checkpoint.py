"""Checkpoints with Orbax: step checkpoints for exact resume, and params-only exports between stages.

A step checkpoint (`RUN/checkpoints/{step}/`) holds the train state (params, optimiser state,
step) and the data iterator's position; a params checkpoint (`RUN/checkpoints/final/`) holds the
params and `model.json`, and is what the next stage (or `longctx convert --to-hf`) starts from.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from training.model import ModelConfig


def step_manager(run_dir: str | Path, keep: int) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=True)
    return ocp.CheckpointManager(Path(run_dir).absolute() / "checkpoints" / "steps", options=options)


def save_step(manager: ocp.CheckpointManager, step: int, state: Any, data_state: dict) -> None:
    manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)))


def restore_step(manager: ocp.CheckpointManager, abstract_state: Any) -> tuple[int, Any, dict] | None:
    """The latest step checkpoint restored into `abstract_state`'s shapes and shardings, or None."""
    step = manager.latest_step()
    if step is None:
        return None
    restored = manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore())
    )
    return step, restored.state, restored.data


def save_params(path: str | Path, config: ModelConfig, params: Any) -> Path:
    """Params-only checkpoint (atomic: Orbax writes a temporary folder and renames it)."""
    path = Path(path).absolute()
    path.mkdir(parents=True, exist_ok=True)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(path / "params", params, force=True)
    (path / "model.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    return path


def is_params_checkpoint(path: str | Path) -> bool:
    return (Path(path) / "model.json").is_file() and (Path(path) / "params").is_dir()


def load_params(path: str | Path, shardings: Any = None) -> tuple[ModelConfig, Any]:
    """(ModelConfig, params) of a params checkpoint, placed with `shardings` when given."""
    path = Path(path).absolute()
    config = ModelConfig.from_dict(json.loads((path / "model.json").read_text()))
    from training.model import init_params

    abstract = jax.eval_shape(lambda: init_params(config, jax.random.key(0)))
    if shardings is not None:
        abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
    with ocp.StandardCheckpointer() as ckptr:
        params = ckptr.restore(path / "params", abstract)
    return config, params


def load_any_params(path: str) -> tuple[ModelConfig, Any]:
    """(ModelConfig, params) of a longctx params checkpoint or a Hugging Face LLaMA folder / hub id."""
    if is_params_checkpoint(path):
        return load_params(path)
    from training.hf import load_hf_llama

    return load_hf_llama(path)
