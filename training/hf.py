"""Hugging Face LLaMA <-> our Flax LLaMA, with safetensors and numpy only (no torch at runtime).

Names map one to one (`model.layers.3.self_attn.q_proj.weight` <-> `layers_3/self_attn/q_proj/kernel`);
HF Linear weights are [out, in] and ours [in, out], so dense kernels are transposed. Our RoPE uses
HF's rotate_half convention, so q/k weights need no permutation (tests/test_model.py checks logits).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from training.model import ModelConfig, init_params

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


def config_to_hf(config: ModelConfig, dtype: str = "float32") -> dict[str, Any]:
    """A config.json that transformers 4.x and 5.x read as LlamaForCausalLM."""
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
        "bos_token_id": 1,  # LLaMA-2 tokenizer (MISSION.md); override with extra_config
        "eos_token_id": 2,
        "torch_dtype": dtype,
    }


def _resolve(path_or_hub_id: str | Path, revision: str | None) -> Path:
    path = Path(path_or_hub_id).expanduser()
    if path.is_dir():
        return path
    text = str(path_or_hub_id)
    if path.exists() or text.startswith(("/", ".", "~")) or text.count("/") > 1:
        raise FileNotFoundError(f"{text!r} is not a model directory (expected config.json + *.safetensors)")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(text, revision=revision, allow_patterns=_HUB_PATTERNS))
    except Exception as err:  # offline, gated, missing: one clear message either way
        raise FileNotFoundError(
            f"{text!r} is not a local directory and downloading it from the Hugging Face Hub failed "
            f"({type(err).__name__}: {err}). Without network, download it elsewhere "
            f"(huggingface-cli download {text} --include '*.safetensors' config.json) and pass the folder."
        ) from err


def _tensor_files(folder: Path) -> dict[str, Path]:
    """HF tensor name -> safetensors file holding it (single file or sharded with an index)."""
    index = folder / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        return {name: folder / file for name, file in weight_map.items()}
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(
            f"no *.safetensors in {folder}; PyTorch .bin checkpoints are not read (no torch at runtime): "
            "re-save them with save_pretrained(..., safe_serialization=True)")
    out = {}
    for file in files:
        with safe_open(str(file), framework="np") as fh:
            out.update((name, file) for name in fh.keys())
    return out


def load_hf_llama(path_or_hub_id: str | Path, dtype: str = "float32", *,
                  revision: str | None = None) -> tuple[ModelConfig, dict[str, Any]]:
    """Read a HF LLaMA checkpoint -> (ModelConfig, params as host numpy arrays of `dtype`).

    Params stay on the host so the caller can `jax.device_put` them straight into their shardings
    (param_partition_specs) without first filling one device.
    """
    folder = _resolve(path_or_hub_id, revision)
    config = config_from_hf(json.loads((folder / "config.json").read_text()), jnp.dtype(dtype).name)
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
                    extra_config: Mapping[str, Any] | None = None) -> Path:
    """Write config.json + model.safetensors loadable by transformers' AutoModelForCausalLM.

    Single host: params are gathered to host memory (jax.device_get) one tensor at a time. A
    unified vision vocabulary exports as a larger vocabulary; a separate one has no HF counterpart.
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
    hf_config = {**config_to_hf(config, np_dtype.name), **(extra_config or {})}
    (out / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
    return out


def _get(tree: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def _set(tree: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value
