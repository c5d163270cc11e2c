"""Hugging Face LLaMA <-> our Flax LLaMA, with safetensors and numpy only (no torch at runtime).

Names map one to one (`model.layers.3.self_attn.q_proj.weight` <-> `layers_3/self_attn/q_proj/kernel`);
HF Linear weights are [out, in] and ours [in, out], so dense kernels are transposed. Our RoPE uses
HF's rotate_half convention, so q/k weights need no permutation (tests/test_model.py checks logits).

`export_checkpoint` (`longctx convert --to-hf`) also writes the tokenizer the run's data was made
with (tokenizer.json + tokenizer_config.json, a chat template when the tokenizer has one) and a
generation_config.json, so the folder loads in transformers and vLLM as a whole. The BOS/EOS/pad
ids come from what the data shards record (curation.tokenize.TokenizerInfo), never from a guess.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec
import jax
import jax.numpy as jnp
import numpy as np
import yaml
from safetensors import safe_open
from safetensors.numpy import save_file

from curation.shards import ShardMetadata, read_shard_headers
from training.model import ModelConfig, init_params
from training.run_folder import RunPath, data_or_stages, is_remote, is_run_folder, run_path

log = logging.getLogger("longctx")

_HUB_PATTERNS = ["config.json", "*.safetensors", "model.safetensors.index.json"]
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)  # buffers some old checkpoints saved; recomputed here


def _weight_map(config: ModelConfig) -> Iterator[tuple[tuple[str, ...], str, bool]]:
    """(our param path, HF tensor name, transpose?) for every parameter of `config`."""
    yield ("embed_tokens", "embedding"), "model.embed_tokens.weight", False
    for i in range(config.num_layers):
        ours, hf = f"layers_{i}", f"model.layers.{i}"
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            yield (ours, "self_attn", proj, "kernel"), f"{hf}.self_attn.{proj}.weight", True
        for proj in ("gate_proj", "up_proj", "down_proj"):
            yield (ours, "mlp", proj, "kernel"), f"{hf}.mlp.{proj}.weight", True
        for norm in ("input_layernorm", "post_attention_layernorm"):
            yield (ours, norm, "scale"), f"{hf}.{norm}.weight", False
    yield ("norm", "scale"), "model.norm.weight", False
    if not config.tie_embeddings:
        yield ("lm_head", "kernel"), "lm_head.weight", True


def config_from_hf(hf: Mapping[str, Any], dtype: str = "float32") -> ModelConfig:
    """ModelConfig from a transformers LlamaConfig dict (config.json), with LlamaConfig's defaults."""
    if hf.get("model_type", "llama") != "llama":
        raise ValueError(f"expected a LLaMA config (model_type 'llama'), got {hf.get('model_type')!r}")
    if hf.get("hidden_act", "silu") != "silu" or hf.get("attention_bias") or hf.get("mlp_bias"):
        raise ValueError("only silu activations without attention/MLP biases are supported")
    # transformers 5 writes `rope_parameters` (theta inside); 4.x writes `rope_theta` + `rope_scaling`.
    rope = hf.get("rope_parameters") or {}
    theta = rope.get("rope_theta", hf.get("rope_theta", 10000.0))
    scaling = dict(rope) if rope else dict(hf.get("rope_scaling") or {})
    if scaling and (scaling.get("rope_type") or scaling.get("type")) == "llama3":
        scaling.setdefault("original_max_position_embeddings", hf.get("max_position_embeddings", 2048))
    heads = hf["num_attention_heads"]
    return ModelConfig(
        vocab_size=hf["vocab_size"],
        hidden_size=hf["hidden_size"],
        intermediate_size=hf["intermediate_size"],
        num_layers=hf["num_hidden_layers"],
        num_heads=heads,
        num_kv_heads=hf.get("num_key_value_heads") or heads,
        head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
        rope_theta=theta,
        rope_scaling=scaling,
        rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        max_position_embeddings=hf.get("max_position_embeddings", 2048),
        initializer_range=hf.get("initializer_range", 0.02),
        param_dtype=dtype,
        dtype=dtype,
    )


def config_to_hf(config: ModelConfig, dtype: str = "float32", special: SpecialIds | None = None) -> dict[str, Any]:
    """A config.json that transformers 4.x and 5.x read as LlamaForCausalLM; token ids from
    `special` (the training tokenizer's), null when it is not known."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.num_kv_heads,
        "head_dim": config.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": config.max_position_embeddings,
        "rms_norm_eps": config.rms_norm_eps,
        # The 4.x spelling; transformers 5 converts it to rope_parameters on load.
        "rope_theta": config.rope_theta,
        "rope_scaling": None if config.rope_scaling is None else dict(config.rope_scaling),
        "tie_word_embeddings": config.tie_embeddings,
        "attention_bias": False,
        "mlp_bias": False,
        "initializer_range": config.initializer_range,
        # Written even when unknown: LlamaConfig would otherwise default to LLaMA-2's 1/2.
        "bos_token_id": None if special is None else special.bos_id,
        "eos_token_id": None if special is None else special.eos_id,
        "pad_token_id": None if special is None else special.pad_id,
        "torch_dtype": dtype,
    }


class ModelPathError(FileNotFoundError, ValueError):
    """A --checkpoint / --init-from that names no model (a run or data folder, a missing path, a
    hub id that cannot be fetched): one line. A ValueError too, so that every command that turns
    ValueErrors into `longctx CMD: error: ...` (train, the evals) prints it without a traceback."""


_MODEL_KINDS = ("a longctx params checkpoint (RUN/checkpoints/final: model.json + params/) "
                "or a Hugging Face LLaMA folder (config.json + *.safetensors)")


def _not_a_model(folder: Path, text: str) -> str | None:
    """Why the local folder `folder` (given as `text`) is not a model, or None when it is one."""
    if (folder / "config.json").is_file() or ((folder / "model.json").is_file() and (folder / "params").is_dir()):
        return None
    shown = text.rstrip("/") or text
    if is_run_folder(folder):
        final = folder / "checkpoints" / "final"
        if final.is_dir():
            return f"{text!r} is a training run; pass its checkpoint: {shown}/checkpoints/final"
        return f"{text!r} is a training run without a final checkpoint yet ({shown}/checkpoints/final does not exist)"
    if folder.name == "checkpoints" and (folder / "final").is_dir():
        return f"{text!r} is a run's checkpoints folder; pass its params checkpoint: {shown}/final"
    if folder.parent.name == "steps" and folder.parent.parent.name == "checkpoints":
        return (f"{text!r} is a step checkpoint (train state for resuming); pass the run's params checkpoint: "
                f"{folder.parent.parent / 'final'}")
    if any(folder.glob("*.arrow")) or (folder / "manifest.json").is_file():
        return f"{text!r} is a data folder, not a checkpoint; pass {_MODEL_KINDS}"
    if (folder / "model.json").is_file() or (folder / "params").is_dir():
        return f"{text!r} is an incomplete params checkpoint (it needs both model.json and params/)"
    return f"{text!r} is not a model directory: neither {_MODEL_KINDS}"


def resolve_model(path_or_hub_id: str | Path, revision: str | None = None) -> Path:
    """The local folder of a model given as --checkpoint / --init-from: a local folder (checked to
    be a model: a run or data folder, or a path that does not exist, is refused in one line saying
    what it is and what to pass), else a Hugging Face hub id, fetched (or read from the local cache
    when the hub is out of reach). Raises ModelPathError. Every command reaches it: train's
    init_from, generate and the evals (through checkpoint.load_any_params)."""
    text = str(path_or_hub_id)
    path = Path(text).expanduser()
    if path.is_dir():
        problem = _not_a_model(path, text)
        if problem:
            raise ModelPathError(problem)
        return path
    if path.exists():
        raise ModelPathError(f"{text!r} is a file, not a model directory: pass {_MODEL_KINDS}")
    if "://" in text or text.startswith(("/", ".", "~")) or text.count("/") > 1:
        raise ModelPathError(f"{text!r} is not a model directory: no such folder")
    from curation.tokenize import hub_miss, hub_unreachable

    why = hub_unreachable()  # the hub client would retry each file for ~25 s, twice, and print pages
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(text, revision=revision, allow_patterns=_HUB_PATTERNS, local_files_only=why is not None))
    except Exception as err:  # noqa: BLE001 - offline, gated, missing: one clear line either way
        missed = f"{text!r}: no such folder, and {hub_miss(err, why)}"
        if why is not None:
            raise ModelPathError(f"{missed}: pass a local folder (RUN/checkpoints/final or a Hugging Face model folder)") from None
        raise ModelPathError(f"{missed}; without network, download it elsewhere (huggingface-cli download {text} "
                             "--include '*.safetensors' config.json) and pass the folder") from None


_resolve = resolve_model


# The dtypes a checkpoint's weights are written in: an integer dtype would truncate every weight
# (|w| < 1) to zero and still "succeed", so only floats are taken.
WEIGHT_DTYPES = ("float32", "bfloat16", "float16")


def check_weight_dtype(dtype: str) -> str:
    """`dtype` when it is one of WEIGHT_DTYPES, else ValueError (one line), before anything is written."""
    if dtype not in WEIGHT_DTYPES:
        raise ValueError(f"--dtype {dtype!r} is not a weight dtype: pass one of {', '.join(WEIGHT_DTYPES)}")
    return dtype


def _params_checkpoint_problem(checkpoint: str | Path) -> str | None:
    """Why `checkpoint` is not a longctx params checkpoint (what it is and what to pass), or None."""
    from training.checkpoint import is_params_checkpoint

    if is_params_checkpoint(checkpoint):
        return None
    text = str(checkpoint)
    folder = Path(text).expanduser()
    if folder.is_dir() and (folder / "config.json").is_file():
        return (f"{text!r} is a Hugging Face model folder already; --to-hf takes a longctx params checkpoint "
                "(RUN/checkpoints/final: model.json + params/)")
    problem = _not_a_model(folder, text) if folder.is_dir() else None
    if problem and _MODEL_KINDS not in problem:  # a run, its checkpoints, a step checkpoint, half a checkpoint
        return problem
    # A missing path, a data folder, a folder that is no model: what --to-hf wants (no HF folder).
    return f"{text} is not a longctx params checkpoint (model.json + params/, e.g. RUN/checkpoints/final)"


# What `longctx convert` writes, by kind: the files that make a folder an earlier output of that kind.
_CONVERT_KINDS = {"hf": "a Hugging Face model (config.json + model.safetensors)",
                  "params": "a longctx params checkpoint (model.json + params/)"}


def _holds_kind(folder: RunPath, kind: str) -> bool:
    if kind == "hf":
        return (folder / "config.json").exists() or any(folder.glob("*.safetensors"))
    return (folder / "model.json").exists() or (folder / "params").exists()


def check_convert_out(out: str | Path, kind: str) -> None:
    """Refuse (ValueError, one line) a `longctx convert --out` folder that the converted files
    would be mixed into: a file, a training run folder or its checkpoints, a data job's output or
    a stage folder of shards, a train-stages folder, or a folder holding the other kind of
    checkpoint. A missing or empty folder, or an earlier output of the same `kind` ("hf" or
    "params", overwritten), is fine. Reads listings only, before anything is written."""
    path = run_path(out, "--out")
    if not path.exists():
        return
    hint = "pass a new (or empty) folder for the converted checkpoint"
    if not path.is_dir():
        raise ValueError(f"--out {out} is a file; {hint}")
    if is_run_folder(path):
        raise ValueError(f"--out {out} is a training run folder; {hint}")
    here = [] if is_remote(path) else [path.absolute(), *path.absolute().parents]
    if any(p.name == "checkpoints" and is_run_folder(p.parent) for p in here):  # RUN/checkpoints/final, steps/N
        raise ValueError(f"--out {out} is inside a training run's checkpoints; {hint}")
    found = data_or_stages(path)
    if found:
        raise ValueError(f"--out {out} {found[0]}; {hint}")
    other = next(k for k in _CONVERT_KINDS if k != kind)
    if _holds_kind(path, other) and not _holds_kind(path, kind):
        raise ValueError(f"--out {out} holds {_CONVERT_KINDS[other]}; {hint}")


def _tensor_files(folder: Path) -> dict[str, Path]:
    """HF tensor name -> safetensors file holding it (single file or sharded with an index)."""
    index = folder / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        return {name: folder / file for name, file in weight_map.items()}
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ModelPathError(
            f"no *.safetensors in {folder}; PyTorch .bin checkpoints are not read (no torch at runtime): "
            "re-save them with save_pretrained(..., safe_serialization=True)")
    out = {}
    for file in files:
        with safe_open(str(file), framework="np") as fh:
            out.update((name, file) for name in fh.keys())
    return out


def folder_config(folder: Path, dtype: str = "float32") -> ModelConfig:
    """The ModelConfig of a resolved Hugging Face LLaMA folder (its config.json), without its weights."""
    return config_from_hf(json.loads((folder / "config.json").read_text()), dtype)


def load_hf_llama(path_or_hub_id: str | Path, dtype: str = "float32", *,
                  revision: str | None = None) -> tuple[ModelConfig, dict[str, Any]]:
    """Read a HF LLaMA checkpoint -> (ModelConfig, params as host numpy arrays of `dtype`).

    Params stay on the host so the caller can `jax.device_put` them straight into their shardings
    (param_partition_specs) without first filling one device.
    """
    folder = resolve_model(path_or_hub_id, revision)
    config = folder_config(folder, jnp.dtype(dtype).name)
    np_dtype = jnp.dtype(dtype)
    expected = jax.eval_shape(lambda: init_params(config, jax.random.key(0)))
    files = _tensor_files(folder)

    params: dict[str, Any] = {}
    used = set()
    with contextlib.ExitStack() as stack:
        handles: dict[Path, Any] = {}  # each file opened once, tensors read one at a time (memory-mapped)
        for path, name, transpose in _weight_map(config):
            if name not in files:
                raise KeyError(f"checkpoint {folder} lacks tensor {name!r}")
            if files[name] not in handles:
                handles[files[name]] = stack.enter_context(safe_open(str(files[name]), framework="np"))
            array = handles[files[name]].get_tensor(name)
            array = np.ascontiguousarray(array.T if transpose else array).astype(np_dtype, copy=False)
            want = _get(expected, path).shape
            if array.shape != want:
                raise ValueError(f"{name}: shape {array.shape} (after transpose) but the config implies {want}")
            _set(params, path, array)
            used.add(name)

    # HF drops a tied lm_head on load; anything else left over means an architecture we would ignore.
    extra = [n for n in files if n not in used and not n.endswith(_IGNORED_SUFFIXES)
             and not (config.tie_embeddings and n == "lm_head.weight")]
    if extra:
        raise ValueError(f"checkpoint has tensors this model does not use: {sorted(extra)[:8]}")
    return config, params


def export_hf_llama(config: ModelConfig, params: Any, out_dir: str | Path, dtype: str = "float32", *,
                    special: SpecialIds | None = None, extra_config: Mapping[str, Any] | None = None) -> Path:
    """Write config.json + model.safetensors loadable by transformers' AutoModelForCausalLM.

    `special`: the training tokenizer's BOS/EOS/pad ids for config.json (null when None; the
    tokenizer files and generation_config.json are written by `export_checkpoint`). Single host:
    params are gathered to host memory (jax.device_get) one tensor at a time. A unified vision
    vocabulary exports as a larger vocabulary; a separate one has no HF counterpart.
    """
    if config.has_vision_head:
        raise ValueError("a separate vision embedding/head has no place in LlamaForCausalLM; "
                         "train with vision_layout=unified to export a vision-language model")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    np_dtype = jnp.dtype(dtype)
    tensors = {}
    for path, name, transpose in _weight_map(config):
        array = np.asarray(jax.device_get(_get(params, path))).astype(np_dtype)
        tensors[name] = np.ascontiguousarray(array.T if transpose else array)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})  # transformers wants "pt"
    hf_config = {**config_to_hf(config, np_dtype.name, special), **(extra_config or {})}
    (out / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
    return out


# ----------------------------------------------------------------------------------------------
# The tokenizer beside the weights: found from the run that made the checkpoint
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SpecialIds:
    """The special token ids a model was trained with (what TokenizerInfo records per shard)."""

    bos_id: int | None = None
    eos_id: int | None = None
    pad_id: int | None = None

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> SpecialIds:
        """From a shard's `longctx.tokenizer` record (TokenizerInfo.as_metadata())."""
        return cls(*(None if record.get(k) is None else int(record[k]) for k in ("bos_id", "eos_id", "pad_id")))

    def any(self) -> bool:
        return any(i is not None for i in (self.bos_id, self.eos_id, self.pad_id))


@dataclass(frozen=True)
class DataTokenizer:
    """What a run's training data records about its tokenizer."""

    record: dict[str, Any]  # TokenizerInfo.as_metadata(): name (the spec), sha256, vocab_size, bos/eos/pad ids
    data: str  # the run's data spec, where the record was read
    add_bos: bool  # the data jobs prepended BOS to each document (their manifests; True when they do not say)


def _stage_metadata(folder: str) -> ShardMetadata:
    """The parsed metadata of a stage folder's first shard, reading only the stream's header
    (not the rows). Any shard will do: one job's shards all record one tokenizer (and
    whether the job finished is the trainer's concern, not the export's)."""
    fs, path = fsspec.core.url_to_fs(folder.rstrip("/"))
    shards = sorted(fs.glob(f"{path}/*.arrow"))
    if not shards:
        raise FileNotFoundError(f"no *.arrow shards under {folder}")
    return read_shard_headers([fs.unstrip_protocol(shards[0])])[0].metadata


def _manifest_add_bos(stage_folder: str) -> bool | None:
    """`add_bos` of the data job that wrote a stage folder (its manifest is one level up)."""
    parent = stage_folder.rstrip("/").rpartition("/")[0] or "."
    try:
        with fsspec.open(f"{parent}/manifest.json", "r") as fh:
            value = json.load(fh).get("config", {}).get("add_bos")
    except (OSError, ValueError):  # no manifest (a bare folder of shards) or an unreadable one
        return None
    return None if value is None else bool(value)


def run_data_tokenizer(checkpoint: str | Path) -> tuple[DataTokenizer | None, str]:
    """(what the data of the run that made `checkpoint` records about its tokenizer, "") or
    (None, why it is not known). A params checkpoint `RUN/checkpoints/final` has the run's
    `RUN/config.yaml` two levels up; its `data` names the stage folders, whose shards carry the
    tokenizer in their schema metadata (`longctx.tokenizer`). Raises ValueError when the run's
    data sources were made with different tokenizers: such a model has no one tokenizer."""
    from training.data import parse_data_mix

    ckpt = Path(checkpoint).absolute()
    run = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else None
    if run is None or not (run / "config.yaml").is_file():
        return None, f"{checkpoint} is not in a training run folder (RUN/checkpoints/final beside RUN/config.yaml)"
    run_config = yaml.safe_load((run / "config.yaml").read_text()) or {}
    data = run_config.get("data") if isinstance(run_config, dict) else None
    if not data:
        return None, f"{run / 'config.yaml'} names no training data"
    found: list[tuple[str, dict[str, Any], bool | None]] = []
    for folder, _ in parse_data_mix(str(data)):
        try:
            record = _stage_metadata(folder).tokenizer or None
        except (OSError, ValueError) as err:  # moved, deleted or not a shard (pyarrow's errors are ValueErrors)
            return None, f"the run's data {folder} cannot be read ({err})"
        if not isinstance(record, dict) or not record.get("name"):
            return None, f"the shards of {folder} record no tokenizer"
        found.append((folder, record, _manifest_add_bos(folder)))
    if len({(r.get("sha256"), r.get("vocab_size")) for _, r, _ in found}) > 1:
        made = "; ".join(f"{f}: {r['name']!r} (sha256 {str(r.get('sha256'))[:12]})" for f, r, _ in found)
        raise ValueError(f"the run's data sources were made with different tokenizers ({made}): no one tokenizer to export")
    said = {b for _, _, b in found} - {None}
    # BOS first, as `longctx generate` prompts, unless the data jobs say their documents had none.
    return DataTokenizer(found[0][1], str(data), add_bos=said != {False}), ""


def _check_same_tokenizer(info: Any, recorded: Mapping[str, Any], spec: str, strict: bool = False) -> str:
    """Refuse a tokenizer whose vocabulary size or special ids differ from the data's; return a
    warning (else "") when it is another file than the one the data was made with, or with
    `strict` (a model run on text, where other ids mean other words) refuse that too."""
    names = ("vocab_size", "bos_id", "eos_id", "pad_id")
    ours, theirs = tuple(getattr(info, n) for n in names), tuple(recorded.get(n) for n in names)
    if ours != theirs:
        diff = ", ".join(f"{n} {a} != {b}" for n, a, b in zip(names, ours, theirs) if a != b)
        what = ("has changed since the training data was made with it" if spec == recorded.get("name")
                else f"is not the one the training data was made with ({recorded.get('name')!r})")
        raise ValueError(f"tokenizer {spec!r} {what}: {diff}; pass --tokenizer SPEC with the data's tokenizer")
    if recorded.get("sha256") and info.sha256 != recorded["sha256"]:
        what = "has changed since the data was made" if spec == recorded.get("name") else \
            f"is another file than the data's {recorded.get('name')!r}"
        if strict:
            what = ("has changed since the training data was made with it" if spec == recorded.get("name")
                    else f"is not the one the training data was made with ({recorded.get('name')!r})")
            raise ValueError(f"tokenizer {spec!r} {what} (sha256 {info.sha256[:12]} != {str(recorded['sha256'])[:12]}): "
                             "its ids stand for other text; pass --tokenizer with the data's tokenizer")
        return (f"tokenizer {spec!r} {what} (sha256 {info.sha256[:12]} != {str(recorded['sha256'])[:12]}); "
                "its vocabulary size and special ids match, so it is written")
    return ""


def checkpoint_tokenizer_record(checkpoint: str | Path) -> dict[str, Any] | None:
    """What the data of the run that made `checkpoint` records about its tokenizer, or None when
    it records none that can be read (a Hugging Face folder, a moved run, data of several
    tokenizers): then nothing can be checked against it."""
    try:
        recorded, _ = run_data_tokenizer(checkpoint)
    except (OSError, ValueError):
        return None
    return None if recorded is None else recorded.record


def check_checkpoint_tokenizer(checkpoint: str | Path, info: Any, spec: str) -> None:
    """Refuse (ValueError, one line) a tokenizer that is not the one `checkpoint`'s training data
    was made with (by sha256, vocabulary size and special ids), as `longctx convert --to-hf` does;
    `generate` and the evals would otherwise run and print results read with the wrong ids. A
    checkpoint whose run records no tokenizer is not checked."""
    record = checkpoint_tokenizer_record(checkpoint)
    if record is not None:
        _check_same_tokenizer(info, record, spec, strict=True)


def check_data_tokenizer(checkpoint: str | Path, data: str, shard_record: Mapping[str, Any] | None) -> None:
    """Refuse shards (`data`, whose first shard records `shard_record`) made with another
    tokenizer than `checkpoint`'s training data; not checked when either side records none."""
    record = checkpoint_tokenizer_record(checkpoint)
    theirs = (shard_record or {}).get("sha256")
    if record is None or not record.get("sha256") or not theirs or theirs == record["sha256"]:
        return
    raise ValueError(f"--data {data} was made with tokenizer {(shard_record or {}).get('name')!r} (sha256 {str(theirs)[:12]}), "
                     f"not the one the checkpoint's training data was made with ({record.get('name')!r}, sha256 "
                     f"{str(record['sha256'])[:12]}): its ids stand for other text")


def _folder_chat_template(folder: Path) -> str | dict[str, str] | None:
    """A Hugging Face tokenizer folder's chat template: chat_template.jinja (transformers >= 4.47
    writes it there) or tokenizer_config.json's `chat_template` (a string, or named templates)."""
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text()
    config = folder / "tokenizer_config.json"
    if not config.is_file():
        return None
    template = json.loads(config.read_text()).get("chat_template")
    if isinstance(template, list):  # [{"name": ..., "template": ...}], as transformers saves several
        return {t["name"]: t["template"] for t in template}
    return template or None


def tokenizer_chat_template(spec: str) -> str | dict[str, str] | None:
    """The chat template that comes with a tokenizer spec, if any: from a local tokenizer folder
    (or its tokenizer.json / tokenizer.model), or a hub id's. Single files (package:, URLs, a
    bare SentencePiece model) have none."""
    if spec.startswith("package:") or "://" in spec:
        return None
    path = Path(spec).expanduser()
    if path.is_dir():
        return _folder_chat_template(path)
    if path.is_file():
        return _folder_chat_template(path.parent) if path.name in ("tokenizer.json", "tokenizer.model") else None
    if spec.startswith((".", "/", "~")):
        return None
    try:  # a hub id: load_tokenizer fetched it through transformers already, so this reads the cache
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(spec, trust_remote_code=False).chat_template or None
    except Exception:  # noqa: BLE001 - offline or gated: the tokenizer is written without a template
        return None


def write_hf_tokenizer(out_dir: str | Path, tokenizer: Any, special: SpecialIds, *, add_bos: bool = True,
                       chat_template: str | dict[str, str] | None = None, model_max_length: int | None = None) -> None:
    """tokenizer.json + tokenizer_config.json (+ chat_template.jinja) that AutoTokenizer and vLLM
    load: `tokenizer` (a tokenizers.Tokenizer) with the given special tokens. With `add_bos`, the
    tokenizer prepends BOS as the training documents had it and `longctx generate` does."""
    from tokenizers import Tokenizer, processors
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer.from_str(tokenizer.to_str())  # a private copy: the loader's object may be shared

    def token(token_id: int | None) -> str | None:
        return None if token_id is None else tok.id_to_token(token_id)

    bos = token(special.bos_id)
    if add_bos and bos is not None:
        probe = tok.encode("a", add_special_tokens=True).ids
        if not probe or probe[0] != special.bos_id:  # its post-processor (if any) does not add BOS already
            template = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                     special_tokens=[(bos, special.bos_id)])
            tok.post_processor = template if tok.post_processor is None else processors.Sequence([tok.post_processor, template])
    unk = getattr(tok.model, "unk_token", None)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=bos, eos_token=token(special.eos_id), pad_token=token(special.pad_id),
        unk_token=unk if unk is not None and tok.token_to_id(unk) is not None else None,
        chat_template=chat_template, **({} if model_max_length is None else {"model_max_length": model_max_length}))
    out = Path(out_dir)
    fast.save_pretrained(out)
    config_path = out / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    # transformers 5 names its class TokenizersBackend, which 4.x (vLLM's pins) does not know; both
    # read PreTrainedTokenizerFast. Older 4.x read the chat template only from this file.
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    if chat_template is not None:
        config["chat_template"] = chat_template if isinstance(chat_template, str) else [
            {"name": k, "template": v} for k, v in chat_template.items()]
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def write_generation_config(out_dir: str | Path, special: SpecialIds) -> None:
    """generation_config.json with the training tokenizer's ids (transformers' and vLLM's stop token)."""
    from transformers import GenerationConfig

    GenerationConfig(bos_token_id=special.bos_id, eos_token_id=special.eos_id, pad_token_id=special.pad_id).save_pretrained(out_dir)


def export_checkpoint(checkpoint: str | Path, out_dir: str | Path, dtype: str = "float32",
                      tokenizer: str | None = None) -> Path:
    """`longctx convert --to-hf`: a params checkpoint -> a Hugging Face folder with weights,
    config.json, the training tokenizer and generation_config.json.

    The tokenizer is `tokenizer` (a spec, as for `longctx books`) or else the one the run's data
    shards record (`run_data_tokenizer`); its BOS/EOS/pad ids are the recorded ones. A given
    tokenizer whose vocabulary size or special ids differ from the recorded ones is refused. When
    no tokenizer is found, the weights and config.json (with null token ids) are still written and
    a one-line warning names the flag to add; ids are never guessed.
    """
    from curation.tokenize import load_tokenizer
    from training.checkpoint import load_params

    check_weight_dtype(dtype)
    problem = _params_checkpoint_problem(checkpoint)
    if problem:  # a run folder, an HF folder, a missing path: one line saying what to pass
        raise ModelPathError(problem)
    check_convert_out(out_dir, "hf")
    out = Path(out_dir)
    recorded, why = run_data_tokenizer(checkpoint)
    spec = tokenizer or (recorded.record["name"] if recorded else None)
    tok = info = None
    warnings = []
    if spec:
        try:
            tok, info = load_tokenizer(spec)
        except Exception as err:  # noqa: BLE001 - a recorded spec may be a path of another machine
            if tokenizer:
                raise
            why = f"the tokenizer the run's data records, {spec!r}, cannot be loaded here ({err})"
    if info is not None and recorded is not None:
        warnings.append(_check_same_tokenizer(info, recorded.record, spec))
    special = SpecialIds.from_record(recorded.record) if recorded else (
        SpecialIds(info.bos_id, info.eos_id, info.pad_id) if info is not None else None)

    vocab_size = json.loads((Path(checkpoint) / "model.json").read_text())["vocab_size"]
    if info is not None and info.vocab_size > vocab_size:  # said before the weights are read
        raise ValueError(f"tokenizer {spec!r} has {info.vocab_size} ids but the model only {vocab_size}")
    config, params = load_params(checkpoint)
    export_hf_llama(config, params, out, dtype, special=special)
    if special is not None and special.any():
        write_generation_config(out, special)
    if tok is not None:
        write_hf_tokenizer(out, tok, special, add_bos=recorded.add_bos if recorded else True,
                           chat_template=tokenizer_chat_template(spec), model_max_length=config.max_position_embeddings)
        log.info("wrote tokenizer %s (%s) to %s", spec, "from --tokenizer" if tokenizer else f"recorded by {recorded.data}", out)
    else:
        ids = "the data's token ids are in config.json" if special is not None else "config.json has no token ids"
        warnings.append(f"no tokenizer written ({ids}): {why}; add --tokenizer SPEC, the tokenizer the training data was made with")
    for warning in filter(None, warnings):
        log.warning(warning)
    return out


def _get(tree: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def _set(tree: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value
