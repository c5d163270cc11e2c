"""Where a training run lives: a local folder, or a URL on an object store (gs://, s3://, az://, hf://).

A local location stays a `pathlib.Path` and is written exactly as before (appends, atomic renames).
A URL becomes an `etils.epath.Path`: Orbax takes it as is (TensorStore writes the arrays through
its own gcs/s3 drivers) and our small text files (config.yaml, metrics.jsonl, model.json) go
through the same epath object, which reaches the store through fsspec (gcsfs for gs://).

Object stores have no directories, no appends and no renames, so the few operations that need
them are here, with a local and a remote form:
- `append_text`: read + rewrite the object (used for metrics.discarded.jsonl, written once per resume);
- `replace_text`: one object write, which is all-or-nothing like the local temp-file rename;
- `move_tree`: server-side copies of every object under a prefix, then deletes (nothing is
  deleted before every copy succeeded);
- `MetricsLog`: metrics.jsonl (see its docstring for why it is rewritten at checkpoints).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Union

from etils import epath
from etils.epath import backend as epath_backend

# The URL schemes etils.epath handles (its fsspec backends); Orbax/TensorStore write arrays there too.
URL_SCHEMES = ("gs", "s3", "az", "hf")

RunPath = Union[Path, epath.Path]


class RunFolderError(ValueError):
    """A run location that cannot be used (an unsupported URL scheme); one line."""


def is_url(location: str | os.PathLike) -> bool:
    return "://" in os.fspath(location)


def run_path(location: str | os.PathLike, what: str = "out") -> RunPath:
    """`pathlib.Path` for a local folder (or file:// URL), `etils.epath.Path` for a gs:// (s3://,
    az://, hf://) URL. `what` names the setting in the error for any other URL: `Path("gs://b/x")`
    would otherwise silently be the local folder `gs:/b/x`."""
    if isinstance(location, Path):
        return location
    text = os.fspath(location)
    if not is_url(text):
        return Path(text)
    scheme = text.split("://", 1)[0]
    if scheme == "file":
        return Path(text[len("file://"):])
    if scheme not in URL_SCHEMES:
        supported = ", ".join(f"{s}://" for s in URL_SCHEMES)
        raise RunFolderError(f"{what} {text}: {scheme}:// is not supported here; use a local path or {supported}")
    return epath.Path(text)


def is_remote(path: RunPath) -> bool:
    return not isinstance(path, Path)


def absolute(path: RunPath) -> RunPath:
    """A local path made absolute (as Orbax wants it); a URL is already absolute."""
    return path if is_remote(path) else path.absolute()


def is_run_folder(path: RunPath) -> bool:
    """A folder `longctx train` wrote (its config.yaml, or its checkpoints)."""
    return (path / "config.yaml").exists() or (path / "checkpoints").is_dir()


def data_or_stages(path: RunPath) -> tuple[str, list[str]] | None:
    """What an existing folder that is not itself a run holds, when nothing may be written into it
    (a run, a converted checkpoint): ("is a data job's output (manifest.json)" and the like, the
    stage names of a train-stages folder), or None. Reads listings only."""
    if (path / "manifest.json").exists():
        return "is a data job's output (manifest.json)", []
    if any(path.glob("*.arrow")):
        return "is a stage folder of data shards (*.arrow)", []
    subfolders = sorted((p for p in path.iterdir() if p.is_dir()), key=lambda p: p.name)
    stages = [p.name for p in subfolders if is_run_folder(p)]
    if stages:
        return f"is a train-stages folder (stages {', '.join(stages)})", stages
    from training.data import stage_folders

    shards = stage_folders(str(path))  # no manifest.json here: the sub-folders holding shards
    if shards:
        return f"holds data shards (stage folders {', '.join(shards)})", []
    return None


def check_out_folder(path: RunPath, what: str = "out") -> None:
    """Refuse (RunFolderError, one line) a run location that is not a training run's folder: a
    file, a data job's output (manifest.json, stage folders of shards), a stage folder of shards,
    or a `train-stages` folder (its stages' runs in sub-folders). A missing or empty folder, or a
    run of `longctx train` (resumed), is fine. Reads listings only, before anything is written.
    A params checkpoint (model.json + params/) is refused too: it is what --init-from takes. So is
    a new folder below a file (`runs/afile/sub`), which could not be made."""
    if not path.exists():
        if not is_remote(path):
            parent = next((p for p in path.parents if p.exists()), None)
            if parent is not None and not parent.is_dir():
                raise RunFolderError(f"{what} {path} cannot be made: {parent} is a file, not a folder; "
                                     "pass a run folder whose parent folders are folders")
        return
    if not path.is_dir():
        raise RunFolderError(f"{what} {path} is a file, not a run folder; pass a new or existing run folder")
    if (path / "model.json").is_file() and (path / "params").is_dir():
        raise RunFolderError(f"{what} {path} is a params checkpoint (model.json, params/), not a run folder; to start "
                             "from it pass it as --init-from (config key init_from) and train into a new (or empty) --out")
    if is_run_folder(path):
        return
    found = data_or_stages(path)
    if found:
        kind, stages = found
        hint = "train into a new (or empty) folder"
        if stages:
            hint = f"pass one stage's folder to resume it (e.g. {path / stages[0]}), or {hint}"
        raise RunFolderError(f"{what} {path} {kind}, not a run folder; {hint}")


def remove_if_untouched(path: RunPath, existed: bool) -> None:
    """After a run was refused before it wrote anything: remove the local folders it made (`path`
    itself when it did not exist before, else its empty checkpoints/ tree). Any file keeps all."""
    if is_remote(path) or not path.is_dir() or files_under(path):
        return
    if not existed:
        shutil.rmtree(path, ignore_errors=True)
    elif (path / "checkpoints").is_dir():
        shutil.rmtree(path / "checkpoints", ignore_errors=True)


def make_dirs(path: RunPath) -> None:
    """Create a local folder (and its parents); an object store has no folders to create."""
    if not is_remote(path):
        path.mkdir(parents=True, exist_ok=True)


def append_text(path: RunPath, text: str) -> None:
    """Append to a local file; on an object store (no appends) rewrite the object with the text added."""
    if not is_remote(path):
        with path.open("a") as fh:
            fh.write(text)
        return
    old = path.read_text() if path.exists() else ""
    path.write_text(old + text)


def replace_text(path: RunPath, text: str) -> None:
    """Replace a file's content so that a kill leaves the old or the new content, whole: a local
    temp file renamed over it; on an object store one object write, all-or-nothing by itself."""
    if is_remote(path):
        path.write_text(text)
        return
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _filesystem(path: epath.Path):
    """The fsspec filesystem epath itself uses for `path` (so listings it caches, and Orbax reads
    through it, see our moves), and the path in that filesystem's own spelling."""
    fs = epath_backend.fsspec_backend.fs(path)
    return fs, fs._strip_protocol(os.fspath(path))


def move_tree(src: RunPath, dst: RunPath) -> None:
    """Move a folder to `dst` (which must not exist). Locally a rename; on an object store, which
    cannot rename, each object is copied server-side and the source deleted once all copies are made."""
    if not is_remote(src):
        shutil.move(str(src), str(dst))
        return
    fs, source = _filesystem(src)
    _, target = _filesystem(dst)
    fs.invalidate_cache(source)  # objects written by TensorStore never went through fsspec's listing cache
    objects = sorted(fs.find(source))
    if not objects:
        raise FileNotFoundError(f"{src}: nothing to move")
    for key in objects:
        fs.copy(key, target + key[len(source):])
    fs.rm(source, recursive=True)
    fs.invalidate_cache(source)
    fs.invalidate_cache(target)


def files_under(folder: RunPath) -> list[RunPath]:
    """Every file below `folder`, sorted ([] if there is none). On an object store one listing
    of the prefix (epath refuses recursive globs on gs://)."""
    if not is_remote(folder):
        return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []
    fs, prefix = _filesystem(folder)
    fs.invalidate_cache(prefix)  # TensorStore's own writes are not in fsspec's listing cache
    return [folder / key[len(prefix):].lstrip("/") for key in sorted(fs.find(prefix))]


def forget_listings(path: RunPath) -> None:
    """Drop fsspec's cached listings under a URL: TensorStore (Orbax's arrays) and other processes
    write objects fsspec never saw, and a listing cached before them would hide them."""
    if is_remote(path):
        fs, key = _filesystem(path)
        fs.invalidate_cache(key)


class MetricsLog:
    """metrics.jsonl of a run: one JSON line per logged step, written by process 0 only.

    Local: each line is appended and flushed when it is logged (as before: `tail -f` works and a
    kill cuts at most the line being written).

    Object store: objects cannot be appended to, and rewriting the whole file at every step costs
    O(steps^2) bytes. So the lines are kept here and the whole object is rewritten at `flush()`,
    which the trainer calls when it saves a step checkpoint and at the end of the run. Nothing a
    resume keeps is lost: a run that dies resumes from its last checkpoint and logs the later
    steps again (locally their old lines would be moved to metrics.discarded.jsonl anyway). The
    cost is one object write of the file per checkpoint, small next to the checkpoint itself;
    live progress is in the log and progress bar, not in the file. Each rewrite is one object
    write, so a reader sees the old or the new file, never a cut line.
    """

    def __init__(self, path: RunPath, enabled: bool = True):
        self.path, self.enabled, self.remote = path, enabled, is_remote(path)
        self._fh: Any = None
        self._text: str = ""
        self._pending = False

    def __enter__(self) -> MetricsLog:
        if self.enabled and not self.remote:
            self._fh = self.path.open("a")
        elif self.enabled:
            self._text = self.path.read_text() if self.path.exists() else ""
        return self

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        line = json.dumps(record) + "\n"
        if self._fh is not None:
            self._fh.write(line)
            self._fh.flush()
        else:
            self._text += line
            self._pending = True

    def flush(self) -> None:
        """Write the lines logged since the last flush (object store; a local file is already up to date)."""
        if self.enabled and self.remote and self._pending:
            self.path.write_text(self._text)
            self._pending = False

    def __exit__(self, *exc) -> bool:
        try:
            self.flush()
        finally:
            if self._fh is not None:
                self._fh.close()
                self._fh = None
        return False
