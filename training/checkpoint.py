"""Checkpoints with Orbax: step checkpoints for exact resume, and params-only exports between stages.

A step checkpoint (`RUN/checkpoints/steps/{step}/`) holds the train state (params, optimiser
state, step) and, as JSON, the data iterator's position and the run's config (so a resume can tell
what changed); a params checkpoint (`RUN/checkpoints/final/`) holds the params and `model.json`,
and is what the next stage (or `longctx convert --to-hf`) starts from.

A step checkpoint that cannot be read raises CheckpointError, one line naming the checkpoint
and the file or array that failed, instead of Orbax's and TensorStore's long tracebacks.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from training import run_folder
from training.model import ModelConfig
from training.run_folder import RunPath

log = logging.getLogger("longctx")

# Orbax's JSON files in a step checkpoint; a damaged one fails the restore with a bare JSONDecodeError
# that names no file. (_CHECKPOINT_METADATA is left out: Orbax restores without it, logging its damage.)
_JSON_FILES = {"_METADATA", "_sharding", "metadata"}
_TENSORSTORE_READ = re.compile(r'Error reading "(?P<key>[^"]+)" in \S+ database at (?:local file )?"(?P<where>[^"]+)"')


class CheckpointError(ValueError):
    """A step checkpoint cannot be read (or the resume asked for cannot be done); one line."""


def step_manager(run_dir: str | RunPath, keep: int) -> ocp.CheckpointManager:
    """Orbax's manager of `RUN/checkpoints/steps`; a gs:// (s3://...) run goes to Orbax as an
    etils.epath.Path, which Orbax and TensorStore write to themselves."""
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=True)
    steps = run_folder.absolute(run_folder.run_path(run_dir)) / "checkpoints" / "steps"
    run_folder.forget_listings(steps)  # steps saved by another process since a listing was cached
    return ocp.CheckpointManager(steps, options=options)


def save_step(manager: ocp.CheckpointManager, step: int, state: Any, data_state: dict, run_config: dict | None = None) -> None:
    """Save the train state with the iterator position and the run's config (plain JSON)."""
    data = {"iterator": data_state, "config": run_config}
    manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data)))


def available_steps(manager: ocp.CheckpointManager) -> list[int]:
    return sorted(manager.all_steps())


def step_path(manager: ocp.CheckpointManager, step: int) -> RunPath:
    return run_folder.run_path(str(manager.directory)) / str(step)


def read_step_data(manager: ocp.CheckpointManager, step: int) -> tuple[dict, dict | None]:
    """(iterator state, run config) of a step checkpoint, without its arrays. The config is None
    for a checkpoint saved before configs were kept in it. Every JSON file of the checkpoint is
    checked here, so a damaged one is found before a model is built to restore into."""
    path = step_path(manager, step)
    _check_json_files(path / "data")
    _check_json_files(path / "state")
    try:
        data = manager.restore(step, args=ocp.args.Composite(data=ocp.args.JsonRestore())).data
    except Exception as err:  # noqa: BLE001 (Orbax raises many types; all mean "unreadable")
        raise CheckpointError(f"checkpoint {path} cannot be read: {_relative(describe_failure(err), path)}") from None
    if isinstance(data, dict) and "iterator" in data:
        return data["iterator"], data.get("config")
    return data, None


def restore_state(manager: ocp.CheckpointManager, step: int, abstract_state: Any) -> Any:
    """The train state of a step checkpoint, restored into `abstract_state`'s shapes and shardings."""
    path = step_path(manager, step)
    _check_json_files(path / "state")
    try:
        restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))
    except Exception as err:  # noqa: BLE001
        log.debug("restoring %s failed", path, exc_info=True)
        raise CheckpointError(f"checkpoint {path} cannot be read: {_relative(describe_failure(err), path)}") from None
    return restored.state


def tree_shapes(tree: Any) -> dict[str, tuple[tuple[int, ...], str]]:
    """`params/layers_0/...` -> (shape, dtype) of every array of a state tree (arrays, ShapeDtypeStructs
    or Orbax's array metadata), with the same path spelling for all three."""
    def name(key: Any) -> str:
        for attr in ("key", "idx", "name"):
            if hasattr(key, attr):
                return str(getattr(key, attr))
        return str(key)

    return {"/".join(name(k) for k in path): (tuple(leaf.shape), str(leaf.dtype))
            for path, leaf in jax.tree_util.tree_leaves_with_path(tree) if hasattr(leaf, "shape")}


def saved_state_shapes(manager: ocp.CheckpointManager, step: int) -> dict[str, tuple[tuple[int, ...], str]] | None:
    """tree_shapes of a step checkpoint's train state, from its metadata only (no array is read),
    or None when that metadata cannot be read (restore_state then names what is damaged)."""
    try:
        with ocp.PyTreeCheckpointer() as reader:
            meta = reader.metadata(step_path(manager, step) / "state")
    except Exception:  # noqa: BLE001 - unreadable metadata is restore_state's to report
        return None
    tree = getattr(meta, "item_metadata", meta)
    tree = getattr(tree, "tree", tree)
    return tree_shapes(tree) if tree is not None else None


def restore_step(manager: ocp.CheckpointManager, abstract_state: Any) -> tuple[int, Any, dict] | None:
    """The latest step checkpoint restored into `abstract_state`'s shapes and shardings, or None."""
    step = manager.latest_step()
    if step is None:
        return None
    iterator, _ = read_step_data(manager, step)
    return step, restore_state(manager, step, abstract_state), iterator


def _check_json_files(folder: RunPath) -> None:
    for path in run_folder.files_under(folder):
        if path.name in _JSON_FILES or path.parent.name == "array_metadatas":
            try:
                json.loads(path.read_bytes())
            except (ValueError, UnicodeDecodeError) as err:
                raise CheckpointError(f"checkpoint {folder.parent} cannot be read: {path.relative_to(folder.parent)} is damaged "
                                      f"(not JSON: {err})") from None


def _relative(text: str, root: RunPath) -> str:
    """Paths inside the checkpoint, relative to it (the message names the checkpoint first)."""
    return text.replace(f"{root}/", "")


def describe_failure(err: BaseException) -> str:
    """One line from an Orbax/TensorStore failure: the array and file it was reading, if named,
    and the innermost cause (the outer messages embed pages of TensorStore specs)."""
    chain, seen = [], set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        chain.append(err)
        err = err.__cause__ or err.__context__
    texts = [str(e) for e in chain]
    for text in texts:
        match = _TENSORSTORE_READ.search(text)
        if match:
            rest = text[match.end():].lstrip(": ").splitlines()
            cause = f" ({rest[0][:200]})" if rest and rest[0] else ""
            return f"array {match['key']} in {match['where']} is damaged{cause}{_files_of_size(match['where'], text)}"
    inner = chain[-1]
    filename = getattr(inner, "filename", None)
    first = (str(inner).strip().splitlines() or [type(inner).__name__])[0][:300]
    return f"{filename}: {first}" if filename and str(filename) not in first else f"{type(inner).__name__}: {first}"


def _files_of_size(folder: str, message: str) -> str:
    """TensorStore names the array and the database, not the file: a read past the end of a value
    gives the value's size, and the (cut) data file of that size is the one to name."""
    size = re.search(r"value of size (\d+)", message)
    root = Path(folder)
    if not size or not root.is_dir():
        return ""
    files = [str(f) for f in sorted(root.rglob("*")) if f.is_file() and f.stat().st_size == int(size[1])]
    return f"; file {files[0]}" if len(files) == 1 else ""


def set_aside_steps_after(manager: ocp.CheckpointManager, step: int) -> tuple[RunPath, list[int]]:
    """Move the step checkpoints after `step` (and the run's final params, made after them) to
    `checkpoints/set-aside/after-{step}[-n]/`, so a resume from `step` starts a new history there;
    nothing is deleted. The caller reloads the manager."""
    steps_dir = run_folder.run_path(str(manager.directory))
    later = [s for s in available_steps(manager) if s > step]
    final = steps_dir.parent / "final"
    dest = steps_dir.parent / "set-aside" / f"after-{step}"
    n = 1
    while dest.exists():
        n += 1
        dest = steps_dir.parent / "set-aside" / f"after-{step}-{n}"
    run_folder.make_dirs(dest)
    for s in later:
        run_folder.move_tree(step_path(manager, s), dest / str(s))
    if final.exists():
        run_folder.move_tree(final, dest / "final")
    return dest, later


def save_params(path: str | RunPath, config: ModelConfig, params: Any) -> RunPath:
    """Params-only checkpoint (atomic: Orbax writes a temporary folder and renames it; on an
    object store it marks the finished save with a commit file instead). Every process of a job
    calls it (Orbax saves collectively); process 0 writes model.json. `path` may be a gs:// URL."""
    path = run_folder.absolute(run_folder.run_path(path, "checkpoint"))
    run_folder.make_dirs(path)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(path / "params", params, force=True)
    if jax.process_index() == 0:
        (path / "model.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    return path


def is_params_checkpoint(path: str | RunPath) -> bool:
    folder = run_folder.run_path(path, "checkpoint")
    return (folder / "model.json").is_file() and (folder / "params").is_dir()


def load_params(path: str | RunPath, shardings: Any = None) -> tuple[ModelConfig, Any]:
    """(ModelConfig, params) of a params checkpoint (a local folder or a gs:// URL), placed with
    `shardings` when given."""
    path = run_folder.absolute(run_folder.run_path(path, "checkpoint"))
    config = _params_config(path)
    from training.model import init_params

    abstract = jax.eval_shape(lambda: init_params(config, jax.random.key(0)))
    if shardings is not None:
        abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
    with ocp.StandardCheckpointer() as ckptr:
        params = ckptr.restore(path / "params", abstract)
    return config, params


def _params_config(path: RunPath) -> ModelConfig:
    return ModelConfig.from_dict(json.loads((path / "model.json").read_text()))


def any_model_config(path: str) -> ModelConfig:
    """The ModelConfig `load_any_params(path)` returns (a params checkpoint's model.json, a Hugging
    Face folder's or hub id's config.json), without reading its weights."""
    if is_params_checkpoint(path):
        return _params_config(run_folder.absolute(run_folder.run_path(path, "checkpoint")))
    from training.hf import folder_config, resolve_model

    return folder_config(resolve_model(path))


def weights_saved(path: str) -> str | None:
    """When the weights `load_any_params(path)` reads were saved (ISO 8601 UTC), read without
    loading them: a params checkpoint's Orbax commit time (the newest of its files' modification
    times where Orbax's record of it is missing or damaged), a local Hugging Face folder's newest
    weight file (`curation.hf_models.weights_written`). None for a hub id. Retraining into the same
    run folder changes it, so evaluations that record it tell the two models apart."""
    from curation.units import utc_time_ns

    if is_params_checkpoint(path):
        folder = run_folder.absolute(run_folder.run_path(path, "checkpoint")) / "params"
        try:
            with ocp.StandardCheckpointer() as ckptr:
                committed = ckptr.metadata(folder).commit_timestamp_nsecs
        except Exception:  # noqa: BLE001 - Orbax restores without its metadata file; so does this
            committed = None
        if committed:
            return utc_time_ns(committed)
        if run_folder.is_remote(folder):
            return None
        times = [f.stat().st_mtime_ns for f in folder.rglob("*") if f.is_file()]
        return utc_time_ns(max(times)) if times else None
    from curation.hf_models import weights_written

    return weights_written(path)


def load_any_params(path: str) -> tuple[ModelConfig, Any]:
    """(ModelConfig, params) of a longctx params checkpoint or a Hugging Face LLaMA folder / hub id."""
    if is_params_checkpoint(path):
        return load_params(path)
    from training.hf import load_hf_llama

    return load_hf_llama(path)
