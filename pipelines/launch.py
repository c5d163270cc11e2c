"""Building and running a data job on any Beam runner, then reporting it (the jobs themselves are
listed once, in `pipelines.jobs.DATA_JOBS`)."""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import math
import os
import uuid
from pathlib import Path
from typing import Any

import apache_beam as beam
import fsspec
import fsspec.asyn
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from curation.manifest import config_hash
from curation.sources import is_transient_io_error
from curation.shards import _is_local, join_url, read_manifest
from curation.tokenize import TokenizerInfo, load_tokenizer
from pipelines.config import BooksConfig, ImagesConfig, JobConfig, QAConfig, VideoConfig
from pipelines.io import NoInputFiles, match_pattern, reading_beside_outputs
from pipelines.jobs import DATA_JOBS
from pipelines.refusals import quiet_refusals
from pipelines.runners import local_runner, remote_workers

log = logging.getLogger("longctx")


class ConfigError(ValueError):
    pass


def pipeline_options(beam_args: list[str] | PipelineOptions) -> PipelineOptions:
    """Beam's own flags, unchanged; DirectRunner when no runner is named."""
    options = beam_args if isinstance(beam_args, PipelineOptions) else PipelineOptions(beam_args)
    if not options.view_as(StandardOptions).runner:
        options.view_as(StandardOptions).runner = "DirectRunner"
    return options


def job_pipeline(beam_args: list[str] | PipelineOptions) -> beam.Pipeline:
    """The Pipeline a job runs in: Beam's flags (`pipeline_options`) on the runner they name
    (`local_runner` for DirectRunner)."""
    options = pipeline_options(beam_args)
    return beam.Pipeline(runner=local_runner(options), options=options)


def check_tokenizer(spec: str) -> TokenizerInfo:
    """Load the tokenizer once before the pipeline, so that a file that is not a tokenizer is a
    one-line ConfigError here rather than a traceback from every worker."""
    try:
        _, info = load_tokenizer(spec)
    except Exception as err:  # tokenizers, sentencepiece and transformers each raise their own types
        message = " ".join(str(err).split()) or type(err).__name__
        if not message.startswith("tokenizer "):
            message = f"tokenizer {spec!r} cannot be loaded: {message}"
        raise ConfigError(message[:500]) from None
    return info


def shard_metadata(config: JobConfig, kind: str, info: TokenizerInfo | None = None) -> dict[str, dict[str, Any]]:
    """What every shard of each stage records about how it was made (a vision job's shards also
    record their vision vocabulary)."""
    if info is None:
        _, info = load_tokenizer(config.tokenizer)
    extra = {}
    if DATA_JOBS[kind].vision:
        from pipelines.vision_text import vision_metadata

        extra["vision"] = vision_metadata(getattr(config, "vision_layout", "separate"), info.vocab_size)
    return {
        stage.name: {
            "kind": kind,
            "stage": stage.name,
            "tokenizer": info.as_metadata(),
            "config_hash": config.hash(),
            **extra,
        }
        for stage in config.resolved_stages()
    }


def _one_line_error(err: BaseException) -> str:
    """An exception as `Type: message` on one line, with the cause it wraps (an aiohttp DNS error
    under gcsfs's retries, say) when its own message says little."""
    parts = []
    seen = set()
    while err is not None and id(err) not in seen and len(parts) < 3:
        seen.add(id(err))
        text = " ".join(str(err).split())
        part = f"{type(err).__name__}: {text}" if text else type(err).__name__
        if not any(part in p for p in parts):
            parts.append(part)
        err = err.__cause__ or err.__context__
    return "; ".join(parts)


REACH_TIMEOUT_S = 30  # one listing request of `check_reachable`


@contextlib.contextmanager
def _quiet_object_store_logs():
    """gcsfs logs every request it gives up on with a full traceback (`logger.exception`): the
    launcher reports that failure itself, in one line."""
    logger = logging.getLogger("gcsfs")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def check_reachable(pattern: str, what: str = "input") -> None:
    """A remote input's store must answer one listing request now: with no network, or a host
    that does not resolve, gcsfs would retry each request with backoff for about half a minute
    (and the listing makes several) before the job failed. One request here, not retried: a
    network failure is a ConfigError naming the URL and the cause. Other answers (a missing
    bucket, no permission) are left to the listing, which names them."""
    if "://" not in pattern:
        return
    fs, path = fsspec.core.url_to_fs(pattern)
    request = getattr(getattr(type(fs), "_request", None), "__wrapped__", None)  # gcsfs's, without its retries
    if request is None or not type(fs).__module__.startswith("gcsfs"):
        return
    bucket = path.split("/", 1)[0]
    try:
        with _quiet_object_store_logs():
            fsspec.asyn.sync(fs.loop, request, fs, "GET", "b/{}/o", bucket, maxResults=1, timeout=REACH_TIMEOUT_S)
    except Exception as err:  # noqa: BLE001 - only a failure to reach the store stops the job here
        if is_transient_io_error(err):
            raise ConfigError(f"{what} {pattern!r} cannot be listed: the store does not answer "
                              f"({_one_line_error(err)})"[:500]) from None


def check_inputs(patterns: list[str], what: str = "input", exclude: list[str] | tuple[str, ...] = ()) -> None:
    """Every input pattern must match at least one file now, on the machine that starts the job,
    as Beam's own file reads check theirs: a mistyped path is one line here, not a failed read
    step. (The pipeline's Match step lists them again where it runs.) A folder input's longctx
    job outputs (`exclude`: this job's) are skipped, one logged line each. A store that cannot be
    reached is one line too (`check_reachable`), not the object store client's retries and
    traceback; inside the pipeline a network failure is still raised for the runner to retry."""
    for pattern in patterns:
        check_reachable(pattern, what)
        try:
            with _quiet_object_store_logs():
                match_pattern(pattern, what, exclude, log_level=logging.INFO)
        except NoInputFiles as err:
            raise ConfigError(str(err)) from None
        except Exception as err:
            problem = "the store does not answer" if is_transient_io_error(err) else "error"
            raise ConfigError(f"{what} {pattern!r} cannot be listed: {problem} ({_one_line_error(err)})"[:500]) from None


def check_id_field(config: JobConfig) -> None:
    """A --id-field other than the default that the first input record does not hold is most likely
    mistyped: every record would silently be named by its place in its file (FILE:LINE). Said in a
    warning line (a corpus may hold ids on some records only), from the first file's first record."""
    default = type(config).model_fields["id_field"].default
    if config.id_field == default or not config.inputs:
        return
    from curation.accounting import printable
    from curation.sources import SourceConfig, first_record_fields

    first = match_pattern(config.inputs[0], exclude=[config.output])[0]
    source = SourceConfig(text_field=config.text_field, id_field=config.id_field, format=config.input_format)
    try:
        fields = first_record_fields(first, source)
    except Exception:  # noqa: BLE001 - unreadable: the job itself rejects the file with its reason
        return
    if fields is not None and config.id_field not in fields:
        log.warning("--id-field %r: the first record of %s has no such field (its fields: %s); records "
                    "without it are named FILE:LINE", config.id_field, printable(os.fsdecode(first)),
                    ", ".join(fields[:12]))


def _local_path(url: str) -> bool:
    """Whether `url` names a path on this machine: no protocol, file://, or fsspec's memory://
    (this process's memory), without creating a filesystem (no credentials, no network)."""
    from fsspec.implementations.local import LocalFileSystem
    from fsspec.implementations.memory import MemoryFileSystem

    protocol = fsspec.core.split_protocol(url)[0]
    if protocol is None:
        return True
    try:
        cls = fsspec.get_filesystem_class(protocol)
    except (ImportError, ValueError):  # a protocol whose package is missing: the listing reports it
        return False
    return issubclass(cls, (LocalFileSystem, MemoryFileSystem))


def check_paths_reach_workers(config: JobConfig, beam_args: list[str] | PipelineOptions | None) -> None:
    """On a runner whose workers are other machines (Dataflow; a portable runner's containers) a
    local --input or --output is a path those workers cannot see: the job would stage and then
    fail to read, or write its shards to the workers' own disks. Refused in one line first."""
    where = remote_workers(pipeline_options(beam_args or []))
    if where is None:
        return
    named = [("output", config.output)] + [("input", p) for p in config.inputs] + [
        ("decontaminate", p) for p in getattr(config, "decontaminate", None) or []]
    for what, url in named:
        if _local_path(url):
            raise ConfigError(f"{what} {url!r} is a path on this machine, but {where} cannot see this machine's "
                              "paths: use a gs:// URL (or run with --runner DirectRunner)")
    # What each worker loads by name in its setup: a file or folder that exists only here would
    # fail there, after staging. A hub id or a package: spec names the same thing on every machine.
    loaded = [("tokenizer", getattr(config, "tokenizer", None), "a gs:// URL, a package: spec or a hub id"),
              ("vqgan", getattr(config, "vqgan", None), "a hub id (or a worker image that holds it at that path)"),
              ("vllm_chat_template", getattr(config, "vllm_chat_template", None), "a gs:// URL")]
    if getattr(config, "backend", None) == "transformers":
        loaded.append(("model", getattr(config, "model", None), "a hub id or a package: spec"))
    for what, spec, instead in loaded:
        if spec and _on_this_machine_only(spec):
            raise ConfigError(f"{what} {spec!r} is a path on this machine, but {where} cannot see this machine's "
                              f"paths: use {instead} (or run with --runner DirectRunner)")


def _on_this_machine_only(spec: str) -> bool:
    """A spec (tokenizer, model, VQGAN) that names a file or folder existing here, not a URL, a
    package: spec or a hub id (which does not exist as a local path)."""
    if spec.startswith("package:") or "://" in spec:
        return spec.startswith("file://")
    return Path(spec).expanduser().exists()


def check_output_writable(output: str) -> None:
    """A local output must be (or become) a folder we can write in; found now rather than after
    the whole job has run. Remote outputs are checked by their first write."""
    fs, root = fsspec.core.url_to_fs(output)
    if not _is_local(fs):
        return
    if fs.exists(root) and not fs.isdir(root):
        raise ConfigError(f"output {output!r} is a file, not a folder")
    probe = f"{root.rstrip('/')}/.longctx-write-check-{uuid.uuid4().hex}"
    try:
        fs.makedirs(root, exist_ok=True)
        with fs.open(probe, "wb") as fh:
            fh.write(b"")
        fs.rm(probe)
    except OSError as err:
        raise ConfigError(f"output {output!r} is not writable: {err.strerror or err}") from None


def _local_vqgan_config(path: str):
    """The VQGANConfig of a local VQGAN folder (ours or a diffusers VQModel's config.json), read
    without its weights; None for a hub id or remote path (the run itself reports those)."""
    from curation.vqgan import CONFIG_FILE, VQGANConfig

    cfg_file = Path(path).expanduser() / CONFIG_FILE
    if not cfg_file.is_file():
        return None
    try:
        meta = json.loads(cfg_file.read_text())
        if "longctx_vqgan" in meta:
            return VQGANConfig.from_dict(meta["longctx_vqgan"])
        return VQGANConfig.from_diffusers_config(meta)
    except (ValueError, TypeError, KeyError) as err:
        raise ConfigError(f"vqgan {path!r}: {cfg_file} is not a VQGAN config: {err}") from None


def check_vqgan_path(config: JobConfig) -> None:
    """A vision job's `vqgan` must name something loadable: a local folder holding a config, or a
    hub id (`owner/repo[/subfolder]`, fetched by the workers) or a URL. A path that is plainly
    local (absolute, relative with ./ or ../, ~, or one that exists) and holds no config stops
    here in one line, not after the inputs are read."""
    from curation.vqgan import CONFIG_FILE

    path = getattr(config, "vqgan", None)
    if not path:  # not a vision job (an empty vqgan is refused by pipelines.jobs.DataJob.run)
        return
    local = Path(path).expanduser()
    plainly_local = path.startswith(("/", "./", "../", "~")) or local.exists() or len(path.strip("/").split("/")) < 2
    if "://" not in path and (local / CONFIG_FILE).is_file():
        from curation.vqgan import vqgan_weights_problem

        problem = vqgan_weights_problem(local)  # missing or cut-short weights: else every worker's first encode fails
        if problem:
            raise ConfigError(f"vqgan {path!r}: {problem}")
        return
    if "://" in path or not plainly_local:
        return
    problem = "no such folder" if not local.exists() else f"no {CONFIG_FILE} in {'it' if local.is_dir() else 'a file'}"
    raise ConfigError(f"vqgan {path!r}: {problem} (expected a diffusers VQModel folder, our saved params, "
                      "or a hub id like 'owner/repo[/subfolder]')")


def check_vqgan_grid(config: JobConfig) -> None:
    """A vision job's frames must become the 16x16 grid of codes (256 a frame) the vision layout
    holds: a VQGAN whose grid at --frame-size is another shape stops here in one line, not in
    every worker's encode."""
    from curation.vision_layout import CODES_PER_FRAME

    path, size = getattr(config, "vqgan", None), getattr(config, "frame_size", None)
    if not path or not size:
        return
    vq = _local_vqgan_config(path)
    if vq is None:
        return
    factor, side = vq.downsample_factor, math.isqrt(CODES_PER_FRAME)
    fits = f"pass --frame-size {side * factor} (this VQGAN downsamples by {factor})"
    if size % factor:
        raise ConfigError(f"frame_size {size} is not a multiple of the VQGAN's downsampling factor {factor}: {fits}")
    grid = size // factor
    if grid != side:
        raise ConfigError(f"VQGAN {path} turns a {size}x{size} frame into a {grid}x{grid} grid of codes, but the vision "
                          f"layout holds {side}x{side} ({CODES_PER_FRAME} codes a frame): {fits}")


def check_chat_template(config: JobConfig) -> None:
    """A QA job writing its examples in the training tokenizer's chat template needs one: a
    tokenizer without it stops here in one line, not in every worker's setup."""
    if getattr(config, "chat_format", None) != "tokenizer":
        return
    from curation.chat_format import tokenizer_chat_format

    try:
        tokenizer_chat_format(config.tokenizer)
    except ValueError as err:
        raise ConfigError(str(err)) from None


def check_generator(config: JobConfig, beam_args: list[str] | PipelineOptions | None = None) -> None:
    """A QA job's generator must be loadable where it runs: the transformers backend's model (a
    folder, a GGUF file or a hub id), and on a local runner the vllm package for the vllm
    backend's server. Either would otherwise fail in every worker's RunInference, after the inputs
    are read, with pages of tracebacks. On Dataflow the workers' container may hold vllm."""
    from pipelines.qa_backends import GENERATOR_KINDS, generator_model_problem, vllm_installed

    backend = getattr(config, "backend", "extractive")
    if backend == "extractive":
        return
    if not config.model:
        raise ConfigError(f"the {backend} backend needs --model (a local model folder or a Hugging Face hub id)")
    if backend == "transformers":
        problem = generator_model_problem(config.model, config.gguf_file)
        if problem:
            raise ConfigError(f"model {config.model!r}: {problem}; pass {GENERATOR_KINDS}"[:500])
    elif backend == "vllm" and runs_locally(beam_args) and not vllm_installed():
        raise ConfigError("the vllm backend needs the vllm package on this machine, where the DirectRunner starts its "
                          "server: pip install 'longctx[vllm]' (a GPU machine), or run on Dataflow with workers that have it")


def runs_locally(beam_args: list[str] | PipelineOptions | None) -> bool:
    """Whether the job runs on this machine (DirectRunner, also when no runner is named)."""
    return local_runner(pipeline_options(beam_args or [])) is not None


def validate(config: JobConfig, beam_args: list[str] | PipelineOptions | None = None) -> TokenizerInfo:
    """Every check that can be made before the pipeline starts (`beam_args` name the runner);
    returns the tokenizer's info."""
    missing = [name for name in ("inputs", "output", "tokenizer") if not getattr(config, name)]
    if missing:
        raise ConfigError(f"missing required setting(s): {', '.join(missing)} (flags --input/--output/--tokenizer or a --config file)")
    try:
        config.resolved_stages()
    except ValueError as err:
        raise ConfigError(str(err)) from None
    check_paths_reach_workers(config, beam_args)  # before any listing or staging
    check_inputs(config.inputs, exclude=[config.output])
    check_inputs(getattr(config, "decontaminate", []), "decontaminate", exclude=[config.output])
    check_id_field(config)
    info = check_tokenizer(config.tokenizer)
    check_vqgan_path(config)
    check_vqgan_grid(config)
    check_chat_template(config)
    check_generator(config, beam_args)
    check_output_writable(config.output)  # last: it creates the output folder
    return info


def shown_difference(old: str, new: str, width: int = 60, before: int = 20) -> tuple[str, str]:
    """`old` and `new` as a line shows them: whole when both fit in `width` characters, else the
    same window of each, from `before` characters ahead of where they first differ, with `...`
    where a side is cut (two long values that differ only near the end show that end)."""
    if len(old) <= width and len(new) <= width:
        return old, new
    first = next((i for i, (a, b) in enumerate(zip(old, new)) if a != b), min(len(old), len(new)))
    start = max(0, first - before)
    if start <= 3:  # "..." would hide no more than itself
        start = 0
    span = width - 3 - (3 if start else 0)

    def cut(text: str) -> str:
        piece = text[start:start + span]
        return ("..." if start else "") + piece + ("..." if start + span < len(text) else "")

    return cut(old), cut(new)


def _changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The config keys whose values differ, as `key: old -> new` (long values shortened to the
    part where they differ)."""
    def text(value: Any) -> str:
        return json.dumps(value, sort_keys=True, default=str)

    missing = object()
    keys = sorted(set(old) | set(new))
    return [f"{k}: {' -> '.join(shown_difference(text(old.get(k)), text(new.get(k))))}"
            for k in keys if old.get(k, missing) != new.get(k, missing)]


def check_finished(output: str, finished: dict[str, Any], config: JobConfig) -> None:
    """A finished job in `output` made with another config must not pass for this one."""
    current = json.loads(json.dumps(config.data_config(), default=str))  # as the manifest stores it
    old = finished.get("config") or {}
    if finished.get("config_hash", config_hash(old)) == config_hash(current):
        return
    changes = _changes(old, current)
    listed = "; ".join(changes[:5]) + (f"; and {len(changes) - 5} more" if len(changes) > 5 else "")
    raise ConfigError(
        f"{output} holds a finished job made with a different config ({listed or 'config hash differs'}): "
        "pass --overwrite to redo it, or choose another --output"
    )


def prepare_output(output: str, overwrite: bool) -> dict[str, Any] | None:
    """The finished job's manifest if there is one and we may not overwrite; otherwise remove
    everything a job of ours writes there (a killed run's partial shards and temporary files,
    or the previous run's outputs), so the new run's files are the only ones."""
    fs, root = fsspec.core.url_to_fs(output)
    root = root.rstrip("/")
    if fs.exists(f"{root}/manifest.json") and not overwrite:
        return read_manifest(output)
    base = glob.escape(root)  # an output path may itself hold glob characters ("out[1]")
    ours = [f"{base}/manifest.json", f"{base}/.manifest.json.tmp-*", f"{base}/*/train-*-of-*.arrow",
            f"{base}/*/.train-*-of-*.arrow.tmp-*", f"{base}/rejects/rejects-*-of-*.jsonl", f"{base}/rejects/.rejects-*.tmp-*"]
    stale = sorted({p for pattern in ours for p in fs.glob(pattern)})
    for path in stale:
        fs.rm(path)
    if stale:
        log.info("removed %d files of an earlier run under %s", len(stale), join_url(output))
    remove_empty_folder(fs, f"{root}/rejects")  # rejects/ exists only when this run rejects something
    return None


def remove_empty_folder(fs: fsspec.AbstractFileSystem, folder: str) -> None:
    """Remove a local `folder` left empty (object stores have no empty folders to remove)."""
    if _is_local(fs) and fs.isdir(folder) and not fs.ls(folder):
        fs.rmdir(folder)


def run_job(kind: str, transform, config: JobConfig, beam_args: list[str] | PipelineOptions | None = None) -> dict[str, Any]:
    """Run a data job to completion and return its manifest. A finished job (its manifest exists)
    made with the same config is not redone unless `config.overwrite` (one made with another
    config is a ConfigError); an unfinished one's leftovers are removed first."""
    info = validate(config, beam_args)
    finished = prepare_output(config.output, config.overwrite)
    if finished is not None:
        check_finished(config.output, finished, config)
        log.warning("%s is already complete (manifest.json exists): nothing to do; pass --overwrite to redo it", config.output)
        return finished
    metadata = shard_metadata(config, kind, info)
    # A folder input holding this job's output folder does not read it back (`pipelines.io`).
    with quiet_refusals(), reading_beside_outputs([config.output]), job_pipeline(beam_args or []) as pipeline:
        _ = pipeline | kind.capitalize() >> transform(config, metadata)
    return read_manifest(config.output)


# The jobs as functions (tests, notebooks): each is its DATA_JOBS entry's run.
def run_books(config: BooksConfig, beam_args: list[str] | PipelineOptions | None = None) -> dict[str, Any]:
    return DATA_JOBS["books"].run(config, beam_args)


def run_qa(config: QAConfig, beam_args: list[str] | PipelineOptions | None = None) -> dict[str, Any]:
    return DATA_JOBS["qa"].run(config, beam_args)


def run_video(config: VideoConfig, beam_args: list[str] | PipelineOptions | None = None) -> dict[str, Any]:
    return DATA_JOBS["video"].run(config, beam_args)


def run_images(config: ImagesConfig, beam_args: list[str] | PipelineOptions | None = None) -> dict[str, Any]:
    return DATA_JOBS["images"].run(config, beam_args)
