"""A LLaMA-2/3 style decoder in Flax Linen, small enough to read in one sitting.

Layout and names follow Hugging Face `LlamaForCausalLM` so conversion is a rename plus a transpose of
the dense kernels (ours are [in, out], HF's are [out, in]); see `training/hf.py`.

Two things differ from a plain language model because of long-context training:
- positions are explicit ([batch, seq] int32) so packed rows can restart positions per document;
- attention is pluggable: `attention_fn(q, k, v, segment_ids)` (the trainer passes Blockwise
  RingAttention); the default `dense_attention` is causal and never attends across segments. A
  caller that reorders the sequence (the trainer's load-balanced ring layout) passes `token_order`,
  each token's index in the original row, and attention masks causally by it
  (`attention_fn(..., token_order=...)`).

With `scan_layers` the layers run as one `jax.lax.scan` over a stacked view of their params, so
compile time does not grow with depth; the stored tree stays `layers_0..N-1`.

Vision-language models (LWM) read rows whose `vision_mask` marks VQGAN codes (see
`curation/vision_layout.py`). With `vision_layout="separate"` the model has a second embedding
table and output head of `vision_vocab_size` ids, chosen per position by `vision_mask`; with
`"unified"` the vision ids are simply the last `vision_vocab_size` ids of one larger vocabulary.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.core import FrozenDict
from jax.sharding import PartitionSpec as P

from curation.config_errors import did_you_mean
from training.mesh import STATE_AXES, shard_activation
from training.ring_attention import attention_reference

# attention_fn(q, k, v, segment_ids) -> out; called with a `token_order=` keyword too when the model got one.
AttentionFn = Callable[..., jax.Array]

REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,  # recompute the whole layer in the backward pass
    "dots_saveable": jax.checkpoint_policies.dots_saveable,  # keep matmul outputs, recompute the rest
}
ROPE_TYPES = ("linear", "llama3")
VISION_LAYOUTS = ("none", "separate", "unified")


# ----------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------

PRESETS: dict[str, dict[str, Any]] = {
    "toy": dict(num_layers=2, hidden_size=64, intermediate_size=172, num_heads=4, num_kv_heads=2,
                max_position_embeddings=2048),
    "tiny": dict(num_layers=4, hidden_size=256, intermediate_size=688, num_heads=8, num_kv_heads=4,
                 max_position_embeddings=4096),
    # TinyLlama-1.1B shape: 22 x (2048 hidden, 5632 MLP, 32 heads of 64, 4 KV heads).
    "1b": dict(num_layers=22, hidden_size=2048, intermediate_size=5632, num_heads=32, num_kv_heads=4,
               max_position_embeddings=4096),
    # Exactly LLaMA-2 7B (6,738,415,616 parameters).
    "llama2-7b": dict(num_layers=32, hidden_size=4096, intermediate_size=11008, num_heads=32, num_kv_heads=32,
                      max_position_embeddings=4096),
}


class UnknownPresetError(KeyError, ValueError):
    """A model preset name that is not in PRESETS: a ValueError (the command line's one-line user
    mistake) and, as before, a KeyError; its text is the plain message, not KeyError's repr."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def _normalize_rope_scaling(scaling: Mapping[str, Any] | None) -> FrozenDict | None:
    """Accept transformers' spellings ("type" or "rope_type"); keep only what our RoPE reads."""
    if scaling is None:
        return None
    if not isinstance(scaling, Mapping):
        raise ValueError(f"rope_scaling must be a mapping such as {{rope_type: linear, factor: 4}}, got {scaling!r}")
    # Other keys (e.g. transformers 5's rope_theta inside rope_parameters) are not ours to keep.
    kind = scaling.get("rope_type") or scaling.get("type")
    if kind in (None, "default"):
        return None
    if kind not in ROPE_TYPES:
        raise NotImplementedError(f"rope_scaling type {kind!r} is not supported (supported: {ROPE_TYPES})")
    need = ("factor",) if kind == "linear" else ("factor", "low_freq_factor", "high_freq_factor",
                                                  "original_max_position_embeddings")
    missing = [k for k in need if k not in scaling]
    if missing:
        raise ValueError(f"rope_scaling {kind!r} lacks {missing}")
    # FrozenDict keeps the config hashable, so it can be a static argument of jax.jit.
    return FrozenDict({"rope_type": kind, **{k: scaling[k] for k in need}})


# Fields a model config holds, by the kind of value each takes (checked when a config is made, so a
# YAML override of the wrong type is one line, not an error deep inside JAX).
_SIZES = ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads", "head_dim",
          "max_position_embeddings")
_POSITIVE = ("rope_theta", "rms_norm_eps")
_FLAGS = ("tie_embeddings", "logits_fp32", "scan_layers")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def _is_whole(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def value_problem(values: Mapping[str, Any]) -> str | None:
    """Why one of `values` (ModelConfig fields by name; any subset) is impossible for its field,
    whatever the other fields hold (None: each is possible)."""
    for name, value in values.items():
        if name in _SIZES and not (value is None and name == "head_dim") and not (_is_whole(value) and value >= 1):
            return f"{name} must be a whole number >= 1, got {value!r}"
        if name in _POSITIVE and not (_is_number(value) and value > 0):
            return f"{name} must be a number > 0, got {value!r}"
        if name == "initializer_range" and not (_is_number(value) and value >= 0):
            return f"initializer_range must be a number >= 0, got {value!r}"
        if name == "vision_vocab_size" and not (_is_whole(value) and value >= 0):
            return f"vision_vocab_size must be a whole number >= 0, got {value!r}"
        if name in _FLAGS and not isinstance(value, bool):  # a YAML "yes"/"no" string would be truthy either way
            return f"{name} must be true or false, got {value!r}"
        if name in ("param_dtype", "dtype"):
            try:
                jnp.dtype(value)
            except TypeError:
                return f"{name} must be a dtype name such as float32 or bfloat16, got {value!r}"
        if name == "rope_scaling":
            try:
                _normalize_rope_scaling(value)
            except ValueError as err:  # NotImplementedError (a scaling type we lack) goes up as it is
                return str(err)
        if name == "remat" and not (isinstance(value, str) and value in REMAT_POLICIES):
            return f"remat must be one of {sorted(REMAT_POLICIES)}, got {value!r}"
        if name == "vision_layout" and not (isinstance(value, str) and value in VISION_LAYOUTS):
            return f"vision_layout must be one of {VISION_LAYOUTS}, got {value!r}"
    return None


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_layers: int = 32
    num_heads: int = 32
    num_kv_heads: int = 32
    head_dim: int | None = None  # None: hidden_size // num_heads
    rope_theta: float = 10000.0
    rope_scaling: Mapping[str, Any] | None = None  # None, or transformers-style {"rope_type": "linear"|"llama3", ...}
    rms_norm_eps: float = 1e-5
    tie_embeddings: bool = False
    max_position_embeddings: int = 4096
    initializer_range: float = 0.02
    param_dtype: str = "float32"
    dtype: str = "float32"  # compute dtype of activations and matmuls
    logits_fp32: bool = True
    remat: str = "none"  # "none" | "full" | "dots_saveable"
    # Run the layers as one jax.lax.scan over a stacked view of the per-layer params (the stored tree
    # stays layers_0..N-1): compile time no longer grows with depth; same losses and gradients.
    # Generation's KV-cache path (mutable "cache") and init keep the Python loop.
    scan_layers: bool = False
    # "none": text only. "separate": own vision embedding + head of vision_vocab_size ids (LWM's 8448).
    # "unified": the last vision_vocab_size ids of vocab_size are vision (8196 after the text ids).
    vision_layout: str = "none"
    vision_vocab_size: int = 0

    def __post_init__(self) -> None:
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 (frozen dataclass)
        problem = value_problem({f.name: getattr(self, f.name) for f in dataclasses.fields(self)})
        if problem:
            raise ValueError(problem)
        if self.head_dim is None:
            set_("head_dim", self.hidden_size // self.num_heads)
        set_("rope_scaling", _normalize_rope_scaling(self.rope_scaling))
        set_("param_dtype", jnp.dtype(self.param_dtype).name)
        set_("dtype", jnp.dtype(self.dtype).name)
        set_("rope_theta", float(self.rope_theta))
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads {self.num_heads} is not a multiple of num_kv_heads {self.num_kv_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for RoPE, got {self.head_dim}")
        if (self.vision_layout == "none") != (self.vision_vocab_size == 0):
            raise ValueError(f"vision_layout {self.vision_layout!r} with vision_vocab_size {self.vision_vocab_size}")
        if self.vision_layout == "unified" and self.vision_vocab_size >= self.vocab_size:
            raise ValueError(f"unified vocabulary {self.vocab_size} must hold more than its {self.vision_vocab_size} vision ids")

    @property
    def has_vision_head(self) -> bool:
        return self.vision_layout == "separate"

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> ModelConfig:
        if name not in PRESETS:
            raise UnknownPresetError(f"unknown model preset {name!r}{did_you_mean(name, list(PRESETS))}; "
                                     f"presets: {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe (plain dict for rope_scaling, dtype names as strings)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["rope_scaling"] = None if self.rope_scaling is None else dict(self.rope_scaling)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:  # a typo in a YAML override should fail loudly, not train the wrong model
            raise ValueError(f"unknown ModelConfig fields {unknown}")
        return cls(**data)

    def with_(self, **changes: Any) -> ModelConfig:
        # A derived head_dim stays derived when hidden_size or num_heads change.
        if "head_dim" not in changes and self.head_dim == self.hidden_size // self.num_heads:
            changes["head_dim"] = None
        return dataclasses.replace(self, **changes)


# ----------------------------------------------------------------------------------------------
# RoPE (rotate_half convention, as HF LLaMA: the two halves of head_dim form the rotation pairs)
# ----------------------------------------------------------------------------------------------


def rope_inv_freq(config: ModelConfig) -> np.ndarray:
    """Inverse frequencies [head_dim // 2], with linear or llama3 scaling; a float32 constant."""
    dim = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
    s = config.rope_scaling
    if s is not None and s["rope_type"] == "linear":
        inv_freq = inv_freq / s["factor"]  # same as dividing positions by factor
    elif s is not None and s["rope_type"] == "llama3":
        # Llama 3.1: keep high frequencies, divide low ones by factor, blend smoothly in between.
        factor, low, high = s["factor"], s["low_freq_factor"], s["high_freq_factor"]
        old_len = s["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv_freq
        smooth = (old_len / wavelen - low) / (high - low)
        blended = (1 - smooth) * inv_freq / factor + smooth * inv_freq
        inv_freq = np.where(wavelen > old_len / low, inv_freq / factor,
                            np.where(wavelen < old_len / high, inv_freq, blended))
    return inv_freq.astype(np.float32)


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq: np.ndarray) -> jax.Array:
    """Rotate x [batch, seq, heads, head_dim] by angle position * inv_freq; computed in float32."""
    angles = positions.astype(jnp.float32)[:, :, None, None] * inv_freq  # [b, s, 1, d/2]
    cos, sin = jnp.cos(angles), jnp.sin(angles)
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    # x * cos + rotate_half(x) * sin, with rotate_half(x) = [-x2, x1]
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)


# ----------------------------------------------------------------------------------------------
# Attention core
# ----------------------------------------------------------------------------------------------


def dense_attention(q: jax.Array, k: jax.Array, v: jax.Array, segment_ids: jax.Array | None = None, *,
                    token_order: jax.Array | None = None) -> jax.Array:
    """Causal softmax attention with GQA; tokens attend only within their own segment.

    q [b, s, heads, d], k/v [b, s, kv_heads, d] -> [b, s, heads, d]. Memory is O(s^2): this is the
    reference and the short-context path; long contexts use ring attention. `token_order` [s]: each
    token's index in the original row when the caller reordered the sequence (None: as laid out).
    """
    b, s, h, d = q.shape
    kv = k.shape[2]
    q = q.reshape(b, s, kv, h // kv, d)  # query heads grouped by the KV head they share
    scores = jnp.einsum("bqhgd,bkhd->bhgqk", q, k, preferred_element_type=jnp.float32) / math.sqrt(d)
    if token_order is None:
        mask = jnp.tril(jnp.ones((s, s), dtype=bool))[None]  # [1, q, k]
    else:
        mask = (token_order[:, None] >= token_order[None, :])[None]
    if segment_ids is not None:
        mask = mask & (segment_ids[:, :, None] == segment_ids[:, None, :])
    # The diagonal is always visible, so no row is fully masked and softmax never sees only -inf.
    scores = jnp.where(mask[:, None, None], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bhgqk,bkhd->bqhgd", probs, v)
    return out.reshape(b, s, h, d)


# ----------------------------------------------------------------------------------------------
# Modules
# ----------------------------------------------------------------------------------------------


def _hidden(x: jax.Array) -> jax.Array:
    """The residual stream [batch, seq, hidden]: batch over dp x fsdp, sequence over sp (under a mesh)."""
    return shard_activation(x, "batch", "seq", "embed")


def _lookup(embed: nn.Embed, ids: jax.Array, dtype: str) -> jax.Array:
    """`embed(ids)` (the table cast to the compute dtype, then rows taken), with the table gathered
    whole on each device first when a mesh is in context. Why: the table is sharded along its
    hidden dim; a lookup into that layout gives hidden-sharded rows that XLA can only turn into
    batch/sequence-sharded ones by replicating the whole [batch, seq, hidden] activation."""
    table = shard_activation(embed.embedding.astype(dtype), "vocab", "embed")
    return _hidden(jnp.take(table, ids, axis=0))


def _dense(config: ModelConfig, features: int, name: str) -> nn.Dense:
    return nn.Dense(features, use_bias=False, dtype=config.dtype, param_dtype=config.param_dtype,
                    kernel_init=nn.initializers.normal(config.initializer_range), name=name)


class RMSNorm(nn.Module):
    eps: float = 1e-5
    dtype: str = "float32"
    param_dtype: str = "float32"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), self.param_dtype)
        x32 = x.astype(jnp.float32)  # statistics in fp32 even under bf16 compute
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (x32 * scale.astype(jnp.float32)).astype(self.dtype)


class Attention(nn.Module):
    config: ModelConfig
    attention_fn: AttentionFn | None = None

    @nn.compact
    def __call__(self, x: jax.Array, positions: jax.Array, segment_ids: jax.Array | None,
                 token_order: jax.Array | None = None) -> jax.Array:
        c = self.config
        b, s, _ = x.shape
        heads = lambda y: shard_activation(y, "batch", "seq", "heads", "head_dim")  # noqa: E731
        q = heads(_dense(c, c.num_heads * c.head_dim, "q_proj")(x).reshape(b, s, c.num_heads, c.head_dim))
        k = heads(_dense(c, c.num_kv_heads * c.head_dim, "k_proj")(x).reshape(b, s, c.num_kv_heads, c.head_dim))
        v = heads(_dense(c, c.num_kv_heads * c.head_dim, "v_proj")(x).reshape(b, s, c.num_kv_heads, c.head_dim))
        inv_freq = rope_inv_freq(c)
        q, k = apply_rope(q, positions, inv_freq), apply_rope(k, positions, inv_freq)
        if self.is_mutable_collection("cache") and not self.is_initializing():
            out = self._cached_attention(q, k, v, positions, segment_ids)
        else:
            attend = self.attention_fn or dense_attention
            order = {} if token_order is None else {"token_order": token_order}
            out = attend(q, k, v, segment_ids, **order)
        out = heads(out).reshape(b, s, c.num_heads * c.head_dim)
        return shard_activation(_dense(c, c.hidden_size, "o_proj")(out), "batch", "seq", "embed")

    def _cached_attention(self, q: jax.Array, k: jax.Array, v: jax.Array, positions: jax.Array,
                          segment_ids: jax.Array | None) -> jax.Array:
        """The KV cache of generation (training/generate.py), in the mutable "cache" collection.

        One slot per position: each batch row decodes one document whose positions count from 0. The
        first call (the prefill, over the whole buffer: prompts plus room for new tokens, each row
        padded on the right) stores its keys/values and attends as training does, so a long prompt
        goes through ring attention. Each later call writes its keys/values at its row's own
        positions (rows of different prompt lengths decode at different positions) and attends to
        every slot up to its own position; slots past it (the prefill's padding) stay invisible
        until overwritten.
        """
        if not self.has_variable("cache", "k"):
            self.put_variable("cache", "k", k)
            self.put_variable("cache", "v", v)
            return (self.attention_fn or dense_attention)(q, k, v, segment_ids)
        slots = jnp.arange(self.get_variable("cache", "k").shape[1], dtype=jnp.int32)
        # Slot j of row b takes this call's token j - positions[b, 0] when that is one of them: an
        # elementwise select along the sequence, so a cache sharded over sp is updated in place.
        offset = slots[None, :] - positions[:, :1]  # [b, slots]
        written = ((offset >= 0) & (offset < q.shape[1]))[:, :, None, None]
        index = jnp.clip(offset, 0, q.shape[1] - 1)[:, :, None, None]
        k_all = jnp.where(written, jnp.take_along_axis(k, index, axis=1), self.get_variable("cache", "k"))
        v_all = jnp.where(written, jnp.take_along_axis(v, index, axis=1), self.get_variable("cache", "v"))
        self.put_variable("cache", "k", k_all)
        self.put_variable("cache", "v", v_all)

        def attend(q_row, k_row, v_row, positions_row):  # one row: its own causal limit
            return attention_reference(q_row[None], k_row[None], v_row[None], q_positions=positions_row,
                                       kv_positions=slots)[0]

        return jax.vmap(attend)(q, k_all, v_all, positions).astype(v.dtype)


class MLP(nn.Module):
    config: ModelConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = self.config
        columns = lambda y: shard_activation(y, "batch", "seq", "mlp")  # noqa: E731
        gate = columns(_dense(c, c.intermediate_size, "gate_proj")(x))
        up = columns(_dense(c, c.intermediate_size, "up_proj")(x))
        out = _dense(c, c.hidden_size, "down_proj")(columns(nn.silu(gate) * up))  # SwiGLU
        return shard_activation(out, "batch", "seq", "embed")


class DecoderLayer(nn.Module):
    config: ModelConfig
    attention_fn: AttentionFn | None = None

    @nn.compact
    def __call__(self, x: jax.Array, positions: jax.Array, segment_ids: jax.Array | None,
                 token_order: jax.Array | None = None) -> jax.Array:
        c = self.config
        norm = lambda name: RMSNorm(c.rms_norm_eps, c.dtype, c.param_dtype, name=name)  # noqa: E731
        x = _hidden(x)
        h = Attention(c, self.attention_fn, name="self_attn")(norm("input_layernorm")(x), positions, segment_ids,
                                                              token_order)
        x = _hidden(x + h)
        return _hidden(x + MLP(c, name="mlp")(norm("post_attention_layernorm")(x)))


class LlamaModel(nn.Module):
    config: ModelConfig

    @nn.compact
    def __call__(self, input_ids: jax.Array, positions: jax.Array, segment_ids: jax.Array | None = None,
                 vision_mask: jax.Array | None = None, *, attention_fn: AttentionFn | None = None,
                 token_order: jax.Array | None = None, deterministic: bool = True,
                 return_hidden: bool = False) -> jax.Array | tuple[jax.Array, jax.Array]:
        """input_ids, positions, segment_ids, vision_mask: [batch, seq] int -> logits [batch, seq, vocab].

        With a separate vision vocabulary, `vision_mask` picks the embedding table per position and
        the result is `(text_logits, vision_logits)`: both heads at every position (the caller
        knows which modality comes next).

        With `return_hidden`, the final normed hidden states [batch, seq, hidden] instead: the trainer
        then applies the output layer a chunk at a time (`output_kernel`), so [seq, vocab] logits of
        a million-token row never exist at once. `token_order` [seq]: each token's index in the
        original row when the caller reordered the sequence (attention masks causally by it; the
        trainer's ring layout). `deterministic` is accepted for trainer symmetry;
        LLaMA has no dropout.
        """
        del deterministic
        c = self.config
        embedding = lambda n, name: nn.Embed(  # noqa: E731
            n, c.hidden_size, dtype=c.dtype, param_dtype=c.param_dtype,
            embedding_init=nn.initializers.normal(c.initializer_range), name=name)
        embed = embedding(c.vocab_size, "embed_tokens")
        if c.has_vision_head:
            is_vision = jnp.zeros(input_ids.shape, bool) if vision_mask is None else vision_mask > 0
            # Each table only ever sees ids of its own vocabulary (0 stands in at the other positions).
            text_x = _lookup(embed, jnp.where(is_vision, 0, input_ids), c.dtype)
            vision_x = _lookup(embedding(c.vision_vocab_size, "vision_embed"), jnp.where(is_vision, input_ids, 0), c.dtype)
            x = jnp.where(is_vision[..., None], vision_x, text_x)
        else:
            x = _lookup(embed, input_ids, c.dtype)
        x = _hidden(x)
        # init creates the per-layer params and the KV cache is per-layer mutable state: both loop.
        if c.scan_layers and not self.is_initializing() and not self.is_mutable_collection("cache"):
            x = self._scanned_layers(x, positions, segment_ids, token_order, attention_fn)
        else:
            # attention_fn is a module attribute, not a call argument, so nn.remat needs no static_argnums.
            layer_cls = DecoderLayer
            if c.remat != "none":
                layer_cls = nn.remat(DecoderLayer, policy=REMAT_POLICIES[c.remat], prevent_cse=True)
            for i in range(c.num_layers):
                x = layer_cls(c, attention_fn, name=f"layers_{i}")(x, positions, segment_ids, token_order)
        x = _hidden(RMSNorm(c.rms_norm_eps, c.dtype, c.param_dtype, name="norm")(x))
        if return_hidden and not self.is_initializing():
            return x

        out_type = jnp.float32 if c.logits_fp32 else jnp.dtype(c.dtype)
        # bf16 inputs with fp32 accumulation/output: a stable loss without an fp32 copy of the head.
        dot = functools.partial(jax.lax.dot_general, preferred_element_type=out_type)
        head = lambda n, name: nn.Dense(n, use_bias=False, dtype=c.dtype, param_dtype=c.param_dtype, dot_general=dot,  # noqa: E731
                                        kernel_init=nn.initializers.normal(c.initializer_range), name=name)
        if c.tie_embeddings:
            logits = jnp.einsum("bsh,vh->bsv", x, embed.embedding.astype(c.dtype), preferred_element_type=out_type)
        else:
            logits = head(c.vocab_size, "lm_head")(x)
        vocab = lambda y: shard_activation(y, "batch", "seq", "vocab")  # noqa: E731
        if c.has_vision_head:
            return vocab(logits), vocab(head(c.vision_vocab_size, "vision_head")(x))
        return vocab(logits)

    def _scanned_layers(self, x: jax.Array, positions: jax.Array, segment_ids: jax.Array | None,
                        token_order: jax.Array | None, attention_fn: AttentionFn | None) -> jax.Array:
        """The decoder layers as one `jax.lax.scan`: XLA traces, partitions and compiles one layer body
        whatever the depth (a Python loop inlines num_layers copies of it).

        The params keep their per-layer tree (`layers_0..N-1`, what checkpoints, the HF converter,
        vision growth and `param_partition_specs` see); each leaf is stacked here into a
        [num_layers, ...] view and one unbound `DecoderLayer` is applied functionally per slice. The
        gradient of the stack is the per-layer slices, so gradients land on the per-layer leaves.
        Cost: the stacked view is one more copy of each device's param shard (kept for the backward
        pass; kernels in the compute dtype, so half the fp32 size under bf16), and the backward pass
        builds the stacked gradient before slicing it per layer.

        Positions, segment ids and token order enter each step as scanned inputs (one copy per layer,
        a few bytes per token), not as values the body closes over. Why: when JAX differentiates a
        scan it hoists every residual that depends only on loop constants out of the loop, and for
        blockwise attention those are the causal masks of every (query chunk, key chunk) pair of
        every ring step at once (compiled for TPU, a 2-layer 7B-shaped step at 32K went from 8 GiB
        of temporaries per chip to 118 GiB). Data that arrives with the layer stays inside it; for
        the same reason a ring needs `token_order` here rather than deriving it per device.
        """
        c = self.config
        params = self.variables.get("params", {})
        missing = [f"layers_{i}" for i in range(c.num_layers) if f"layers_{i}" not in params]
        if missing:
            raise KeyError(f"params lack {missing[:3]}{'...' if len(missing) > 3 else ''} for num_layers={c.num_layers}")
        # Kernels (every 2-D layer param is a Dense kernel) are cast to the compute dtype first, as the
        # Dense would cast them anyway: same numbers, and under bf16 the stacked copy is half the size.
        # Norm scales stay in param_dtype (RMSNorm reads them in fp32).
        cast = lambda leaf: leaf.astype(c.dtype) if leaf.ndim >= 2 else leaf  # noqa: E731
        stacked = jax.tree.map(lambda *leaves: jnp.stack([cast(leaf) for leaf in leaves]),
                               *(params[f"layers_{i}"] for i in range(c.num_layers)))
        block = DecoderLayer(c, attention_fn, parent=None)  # unbound: not a child of this module

        def layer(layer_params: Any, h: jax.Array, per_layer: tuple) -> jax.Array:
            return block.apply({"params": layer_params}, h, *per_layer)

        if c.remat != "none":
            # The same per-layer policy as nn.remat in the loop. scan already keeps XLA from merging
            # the recomputation with the forward pass, so no CSE barrier is needed.
            layer = jax.checkpoint(layer, policy=REMAT_POLICIES[c.remat], prevent_cse=False)
        def each_layer(x: jax.Array | None, *logical: str) -> jax.Array | None:
            """x repeated once per layer [num_layers, ...], laid out as x is."""
            if x is None:
                return None
            return shard_activation(jnp.broadcast_to(x, (c.num_layers, *x.shape)), None, *logical)

        per_layer = (each_layer(positions, "batch", "seq"), each_layer(segment_ids, "batch", "seq"),
                     each_layer(token_order, "seq"))
        x, _ = jax.lax.scan(lambda h, xs: (layer(xs[0], h, xs[1]), None), x, (stacked, per_layer))
        return x


# ----------------------------------------------------------------------------------------------
# Helpers: init, counting, FLOPs, sharding
# ----------------------------------------------------------------------------------------------


def output_kernel(config: ModelConfig, params: Any) -> jax.Array:
    """The output layer as a [hidden, vocab] matrix (the transposed embedding when tied)."""
    if config.tie_embeddings:
        return params["embed_tokens"]["embedding"].T
    return params["lm_head"]["kernel"]


def vision_output_kernel(config: ModelConfig, params: Any) -> jax.Array | None:
    """The vision head [hidden, vision_vocab] of a separate-vocabulary model, else None."""
    return params["vision_head"]["kernel"] if config.has_vision_head else None


def init_params(config: ModelConfig, rng: jax.Array, out_shardings: Any = None) -> dict[str, Any]:
    """Random parameters (the "params" collection). Jitted, so it also works under jax.eval_shape and
    can create parameters directly sharded (pass out_shardings, e.g. from param_partition_specs)."""
    ids = jnp.zeros((1, 1), jnp.int32)

    def init(key):
        return LlamaModel(config).init(key, ids, ids)["params"]

    return jax.jit(init, out_shardings=out_shardings)(rng)


def count_params(params: Any) -> int:
    """Number of scalars; works on arrays and on jax.ShapeDtypeStruct trees."""
    return sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(params))


def flops_per_token(config: ModelConfig, seq_len: int, causal: bool = True) -> float:
    """Training FLOPs per token: 6 x (matmul parameters) + attention scores and mixing.

    Matmul parameters exclude the input embedding (a lookup) but include the LM head (tied or not).
    Attention per layer and token: QK^T and PV, 2 x 2 x seq x heads x head_dim forward, x3 for
    forward+backward; causal masking halves it (as PaLM's 6N + 12LHQT, halved).
    """
    c = config
    attn = c.hidden_size * c.head_dim * (2 * c.num_heads + 2 * c.num_kv_heads)
    mlp = 3 * c.hidden_size * c.intermediate_size
    # Both output heads run at every position (the modality of the next token picks the loss).
    n = c.num_layers * (attn + mlp) + c.hidden_size * (c.vocab_size + (c.vision_vocab_size if c.has_vision_head else 0))
    attention = 12 * c.num_layers * c.num_heads * c.head_dim * seq_len
    return 6.0 * n + (attention / 2 if causal else attention)


# Logical axes of each parameter (by module and param name), then logical -> mesh axis.
_LOGICAL_AXES = {
    ("embed_tokens", "embedding"): ("vocab", "embed"),
    ("lm_head", "kernel"): ("embed", "vocab"),
    ("vision_embed", "embedding"): ("vocab", "embed"),
    ("vision_head", "kernel"): ("embed", "vocab"),
    ("q_proj", "kernel"): ("embed", "heads"),  # column-parallel
    ("k_proj", "kernel"): ("embed", "heads"),
    ("v_proj", "kernel"): ("embed", "heads"),
    ("o_proj", "kernel"): ("heads", "embed"),  # row-parallel
    ("gate_proj", "kernel"): ("embed", "mlp"),
    ("up_proj", "kernel"): ("embed", "mlp"),
    ("down_proj", "kernel"): ("mlp", "embed"),
    ("scale",): ("norm",),
}


def param_partition_specs(params: Any, mesh: jax.sharding.Mesh | None = None,
                          fsdp_axes: str | tuple[str, ...] = STATE_AXES) -> Any:
    """A PartitionSpec per parameter over mesh axes (dp, fsdp, tp, sp).

    The `fsdp_axes` (default `training.mesh.STATE_AXES` = fsdp x sp: ZeRO-3 over the sequence-parallel
    devices too, as LWM does) shard the model (hidden) dim, TP the heads / intermediate / vocab dim;
    norms are replicated, and so is everything over dp. Gradients and Adam moments take the same
    layout. With `mesh`, a dim that its axes do not divide is left unsharded (e.g. the toy model's
    odd sizes on a big mesh).
    """
    rules = {"embed": fsdp_axes, "vocab": "tp", "heads": "tp", "mlp": "tp", "norm": None}

    def spec(path, leaf):
        names = tuple(getattr(k, "key", str(k)) for k in path)
        logical = _LOGICAL_AXES.get(names[-2:]) or _LOGICAL_AXES.get(names[-1:])
        if logical is None or len(logical) != len(leaf.shape):
            raise KeyError(f"no partition rule for parameter {'/'.join(names)} {tuple(leaf.shape)}")
        axes = [rules[name] for name in logical]
        if mesh is not None:
            for i, (axis, dim) in enumerate(zip(axes, leaf.shape)):
                group = (axis,) if isinstance(axis, str) else (axis or ())
                if dim % math.prod(mesh.shape[a] for a in group):
                    axes[i] = None
        return P(*axes)

    return jax.tree_util.tree_map_with_path(spec, params)
