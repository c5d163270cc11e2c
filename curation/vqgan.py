"""VQGAN image tokenizer in JAX/Flax (Linen), compatible with diffusers' `VQModel`.

The Large World Model turns every 256x256 frame into 16x16 = 256 discrete codes (codebook 8192,
code dimension 64). The aMUSEd 256px VQ-GAN (`amused/amused-256`, subfolder `vqvae`) has exactly
these shapes: encoder channels 128 x (1, 2, 2, 4, 6), 2 residual blocks per level, no attention,
4 downsamplings. This module re-implements diffusers' `VQModel` (Encoder / VectorQuantizer /
Decoder built from ResnetBlock2D, Downsample2D, Upsample2D, GroupNorm and SiLU, with
`quant_conv` / `post_quant_conv`) closely enough that outputs match diffusers in fp32.

Weights:

* `load_diffusers_vqmodel(path_or_hub_id)` reads a diffusers checkpoint (`config.json` +
  `diffusion_pytorch_model.safetensors`) with safetensors' numpy backend; torch is not needed.
* `save_params` / `load_params` store our own layout: `config.json` + `params.safetensors`
  (flattened parameter names joined by "/"). Nothing here is pickled.
* The LWM release's own VQGAN checkpoint is a pickle; it is deliberately **not** loaded here
  (unpickling runs arbitrary code). Convert it yourself in a trusted environment into a diffusers
  `VQModel` folder or into our safetensors layout, then load that.

Layout conventions: images are NHWC; pixels in [-1, 1] inside the model (`x / 127.5 - 1`);
codes are int32 [batch, h, w].
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "VQGANConfig",
    "VQModel",
    "VQGAN",
    "load_diffusers_vqmodel",
    "convert_diffusers_state_dict",
    "save_params",
    "load_params",
    "init_params",
]

DIFFUSERS_WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "model.safetensors")
PARAMS_FILE = "params.safetensors"
CONFIG_FILE = "config.json"


# ----------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class VQGANConfig:
    """Shapes of a diffusers `VQModel`; the defaults are the aMUSEd 256px VQ-GAN (`amused/amused-256/vqvae`).

    `mid_block_add_attention` must be False (aMUSEd and LWM's VQGAN have no attention); `norm_type`
    must be "group". `lookup_from_codebook` and `force_upcast` are carried for fidelity with the
    diffusers config: we always decode from codebook entries and always compute in float32.
    """

    in_channels: int = 3
    out_channels: int = 3
    block_out_channels: tuple[int, ...] = (128, 256, 256, 512, 768)
    layers_per_block: int = 2
    latent_channels: int = 64
    num_vq_embeddings: int = 8192
    vq_embed_dim: int | None = None  # None: same as latent_channels (diffusers' convention)
    norm_num_groups: int = 32
    act_fn: str = "silu"
    norm_type: str = "group"
    mid_block_add_attention: bool = False
    lookup_from_codebook: bool = True
    force_upcast: bool = True

    def __post_init__(self):
        object.__setattr__(self, "block_out_channels", tuple(int(c) for c in self.block_out_channels))
        if self.act_fn != "silu":
            raise ValueError(f"only act_fn='silu' is supported, got {self.act_fn!r}")
        if self.norm_type != "group":
            raise ValueError(f"only norm_type='group' is supported, got {self.norm_type!r}")
        if self.mid_block_add_attention:
            raise ValueError(
                "mid_block_add_attention=True is not supported (the aMUSEd / LWM VQGAN has no attention)"
            )
        for c in self.block_out_channels:
            if c % self.norm_num_groups:
                raise ValueError(f"channels {c} not divisible by norm_num_groups {self.norm_num_groups}")

    @property
    def embed_dim(self) -> int:
        return self.vq_embed_dim if self.vq_embed_dim is not None else self.latent_channels

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)

    def code_shape(self, height: int, width: int) -> tuple[int, int]:
        f = self.downsample_factor
        if height % f or width % f:
            raise ValueError(f"image size {height}x{width} not divisible by {f}")
        return height // f, width // f

    @classmethod
    def amused_256(cls) -> "VQGANConfig":
        return cls()

    @classmethod
    def tiny(cls) -> "VQGANConfig":
        """A small config for tests: 32x32 images -> 16x16 codes, codebook 64."""
        return cls(
            block_out_channels=(32, 64),
            layers_per_block=1,
            latent_channels=8,
            num_vq_embeddings=64,
            vq_embed_dim=4,
            norm_num_groups=8,
        )

    @classmethod
    def from_diffusers_config(cls, cfg: dict[str, Any]) -> "VQGANConfig":
        """From a diffusers `VQModel` config.json dict (diffusers' own defaults for missing keys)."""
        cls_name = cfg.get("_class_name", "VQModel")
        if cls_name != "VQModel":
            raise ValueError(f"expected a diffusers VQModel config, got _class_name={cls_name!r}")
        blocks = tuple(cfg.get("block_out_channels", (64,)))
        down = tuple(cfg.get("down_block_types", ("DownEncoderBlock2D",) * len(blocks)))
        up = tuple(cfg.get("up_block_types", ("UpDecoderBlock2D",) * len(blocks)))
        if set(down) != {"DownEncoderBlock2D"} or set(up) != {"UpDecoderBlock2D"} or len(down) != len(blocks) or len(up) != len(blocks):
            raise ValueError(f"unsupported block types: down={down} up={up}")
        return cls(
            in_channels=int(cfg.get("in_channels", 3)),
            out_channels=int(cfg.get("out_channels", 3)),
            block_out_channels=blocks,
            layers_per_block=int(cfg.get("layers_per_block", 1)),
            latent_channels=int(cfg.get("latent_channels", 3)),
            num_vq_embeddings=int(cfg.get("num_vq_embeddings", 256)),
            vq_embed_dim=cfg.get("vq_embed_dim"),
            norm_num_groups=int(cfg.get("norm_num_groups", 32)),
            act_fn=cfg.get("act_fn", "silu"),
            norm_type=cfg.get("norm_type", "group"),
            mid_block_add_attention=bool(cfg.get("mid_block_add_attention", True)),
            lookup_from_codebook=bool(cfg.get("lookup_from_codebook", False)),
            force_upcast=bool(cfg.get("force_upcast", False)),
        )

    def to_diffusers_config(self) -> dict[str, Any]:
        n = len(self.block_out_channels)
        return {
            "_class_name": "VQModel",
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "down_block_types": ["DownEncoderBlock2D"] * n,
            "up_block_types": ["UpDecoderBlock2D"] * n,
            "block_out_channels": list(self.block_out_channels),
            "layers_per_block": self.layers_per_block,
            "act_fn": self.act_fn,
            "latent_channels": self.latent_channels,
            "num_vq_embeddings": self.num_vq_embeddings,
            "norm_num_groups": self.norm_num_groups,
            "vq_embed_dim": self.vq_embed_dim,
            "norm_type": self.norm_type,
            "mid_block_add_attention": self.mid_block_add_attention,
            "lookup_from_codebook": self.lookup_from_codebook,
            "force_upcast": self.force_upcast,
        }

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["block_out_channels"] = list(self.block_out_channels)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "VQGANConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


# ----------------------------------------------------------------------------------------------
# Modules (NHWC). Submodule names mirror diffusers' state-dict names ("down_blocks.0" -> "down_blocks_0").
# ----------------------------------------------------------------------------------------------


def _group_norm(groups: int, name: str) -> nn.GroupNorm:
    # Exact two-pass variance, like torch's GroupNorm.
    return nn.GroupNorm(num_groups=groups, epsilon=1e-6, use_fast_variance=False, name=name)


def _conv(features: int, kernel: int, name: str | None, stride: int = 1, padding: Any = "SAME") -> nn.Conv:
    if kernel == 1:
        padding = "VALID"
    elif padding == "SAME":
        padding = ((kernel // 2, kernel // 2), (kernel // 2, kernel // 2))
    return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=padding, name=name)


class ResnetBlock(nn.Module):
    """diffusers `ResnetBlock2D` without time embedding: norm-silu-conv, norm-silu-conv, (1x1) shortcut."""

    out_channels: int
    groups: int

    @nn.compact
    def __call__(self, x):
        h = nn.silu(_group_norm(self.groups, "norm1")(x))
        h = _conv(self.out_channels, 3, "conv1")(h)
        h = nn.silu(_group_norm(self.groups, "norm2")(h))
        h = _conv(self.out_channels, 3, "conv2")(h)
        if x.shape[-1] != self.out_channels:
            x = _conv(self.out_channels, 1, "conv_shortcut")(x)
        return x + h


class Downsample(nn.Module):
    """diffusers `Downsample2D(padding=0)`: pad right/bottom by one, 3x3 conv with stride 2."""

    channels: int

    @nn.compact
    def __call__(self, x):
        x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
        return _conv(self.channels, 3, "conv", stride=2, padding="VALID")(x)


class Upsample(nn.Module):
    """diffusers `Upsample2D`: nearest-neighbour x2, then a 3x3 conv."""

    channels: int

    @nn.compact
    def __call__(self, x):
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
        return _conv(self.channels, 3, "conv")(x)


class MidBlock(nn.Module):
    """diffusers `UNetMidBlock2D(add_attention=False)`: two residual blocks."""

    channels: int
    groups: int

    @nn.compact
    def __call__(self, x):
        for j in range(2):
            x = ResnetBlock(self.channels, self.groups, name=f"resnets_{j}")(x)
        return x


class DownBlock(nn.Module):
    """diffusers `DownEncoderBlock2D`."""

    out_channels: int
    num_layers: int
    groups: int
    add_downsample: bool

    @nn.compact
    def __call__(self, x):
        for j in range(self.num_layers):
            x = ResnetBlock(self.out_channels, self.groups, name=f"resnets_{j}")(x)
        if self.add_downsample:
            x = Downsample(self.out_channels, name="downsamplers_0")(x)
        return x


class UpBlock(nn.Module):
    """diffusers `UpDecoderBlock2D`."""

    out_channels: int
    num_layers: int
    groups: int
    add_upsample: bool

    @nn.compact
    def __call__(self, x):
        for j in range(self.num_layers):
            x = ResnetBlock(self.out_channels, self.groups, name=f"resnets_{j}")(x)
        if self.add_upsample:
            x = Upsample(self.out_channels, name="upsamplers_0")(x)
        return x


class Encoder(nn.Module):
    config: VQGANConfig

    @nn.compact
    def __call__(self, x):
        c = self.config
        chans = c.block_out_channels
        x = _conv(chans[0], 3, "conv_in")(x)
        for i, ch in enumerate(chans):
            x = DownBlock(ch, c.layers_per_block, c.norm_num_groups, i < len(chans) - 1, name=f"down_blocks_{i}")(x)
        x = MidBlock(chans[-1], c.norm_num_groups, name="mid_block")(x)
        x = nn.silu(_group_norm(c.norm_num_groups, "conv_norm_out")(x))
        return _conv(c.latent_channels, 3, "conv_out")(x)


class Decoder(nn.Module):
    config: VQGANConfig

    @nn.compact
    def __call__(self, z):
        c = self.config
        rev = tuple(reversed(c.block_out_channels))
        x = _conv(rev[0], 3, "conv_in")(z)
        x = MidBlock(rev[0], c.norm_num_groups, name="mid_block")(x)
        for i, ch in enumerate(rev):
            x = UpBlock(ch, c.layers_per_block + 1, c.norm_num_groups, i < len(rev) - 1, name=f"up_blocks_{i}")(x)
        x = nn.silu(_group_norm(c.norm_num_groups, "conv_norm_out")(x))
        return _conv(c.out_channels, 3, "conv_out")(x)


class VectorQuantizer(nn.Module):
    """Nearest codebook entry by L2 distance (diffusers `VectorQuantizer`, `argmin(cdist(z, E))`)."""

    num_embeddings: int
    embed_dim: int

    def setup(self):
        n = self.num_embeddings
        self.embedding = self.param(
            "embedding", nn.initializers.uniform(scale=2.0 / n), (n, self.embed_dim)
        )

    def codes(self, z):
        """z [b, h, w, d] -> codes [b, h, w] int32."""
        e = self.embedding.astype(jnp.float32)
        z = z.astype(jnp.float32)
        # ||z - e||^2 = ||z||^2 - 2 z.e + ||e||^2 ; ||z||^2 does not change the argmin.
        dist = jnp.sum(e * e, axis=-1) - 2.0 * jnp.einsum("bhwd,nd->bhwn", z, e, precision="highest")
        return jnp.argmin(dist, axis=-1).astype(jnp.int32)

    def lookup(self, codes):
        """codes [b, h, w] -> embeddings [b, h, w, d]."""
        return jnp.take(self.embedding, codes, axis=0)

    def __call__(self, z):
        return self.codes(z)


class VQModel(nn.Module):
    """diffusers `VQModel` in NHWC. Methods: `encode` (pre-quant latents), `quantize_latents`, `tokenize`, `decode`."""

    config: VQGANConfig

    def setup(self):
        c = self.config
        self.encoder = Encoder(c)
        self.quant_conv = _conv(c.embed_dim, 1, None)
        self.quantize = VectorQuantizer(c.num_vq_embeddings, c.embed_dim)
        self.post_quant_conv = _conv(c.latent_channels, 1, None)
        self.decoder = Decoder(c)

    def encode(self, x):
        """Images in [-1, 1], [b, H, W, 3] -> pre-quantisation latents [b, h, w, vq_embed_dim]."""
        return self.quant_conv(self.encoder(x))

    def quantize_latents(self, h):
        """Latents [b, h, w, d] -> codes [b, h, w] int32."""
        return self.quantize.codes(h)

    def tokenize(self, x):
        """Images in [-1, 1] -> codes [b, h, w] int32."""
        return self.quantize_latents(self.encode(x))

    def decode(self, codes):
        """Codes [b, h, w] -> images [b, H, W, 3] (about [-1, 1]; not clipped)."""
        quant = self.quantize.lookup(codes)
        return self.decoder(self.post_quant_conv(quant))

    def __call__(self, x):
        return self.decode(self.tokenize(x))


def init_params(config: VQGANConfig, seed: int = 0, image_size: int | None = None) -> dict:
    """Random parameters (for tests and shape checks)."""
    size = image_size or config.downsample_factor
    x = jnp.zeros((1, size, size, config.in_channels), jnp.float32)
    return jax.jit(VQModel(config).init)(jax.random.PRNGKey(seed), x)["params"]


# ----------------------------------------------------------------------------------------------
# Parameter I/O
# ----------------------------------------------------------------------------------------------


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in tree.items():
        key = f"{prefix}/{k}" if prefix else str(k)
        if isinstance(v, dict) or hasattr(v, "items"):
            out.update(_flatten(dict(v), key))
        else:
            out[key] = v
    return out


def _unflatten(flat: dict[str, Any]) -> dict:
    tree: dict = {}
    for key, v in flat.items():
        node = tree
        parts = key.split("/")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = v
    return tree


def _diffusers_key_to_path(key: str) -> tuple[tuple[str, ...], str]:
    """'encoder.down_blocks.0.resnets.1.conv1.weight' -> (('encoder','down_blocks_0','resnets_1','conv1'), 'weight')."""
    parts = key.split(".")
    *mods, leaf = parts
    path: list[str] = []
    for p in mods:
        if p.isdigit() and path:
            path[-1] = f"{path[-1]}_{p}"
        else:
            path.append(p)
    return tuple(path), leaf


def convert_diffusers_state_dict(state: dict[str, np.ndarray], config: VQGANConfig) -> dict:
    """diffusers `VQModel` state dict (numpy, NCHW/OIHW) -> our Flax params (NHWC/HWIO), float32.

    Checks that every parameter of our model is present with the right shape and that no
    diffusers weight is left over.
    """
    flat: dict[str, np.ndarray] = {}
    for key, value in state.items():
        value = np.asarray(value, dtype=np.float32)
        path, leaf = _diffusers_key_to_path(key)
        if path == ("quantize", "embedding") and leaf == "weight":
            flat["quantize/embedding"] = value
            continue
        if leaf == "bias":
            name = "bias"
        elif leaf == "weight" and value.ndim == 4:
            name, value = "kernel", np.transpose(value, (2, 3, 1, 0))  # OIHW -> HWIO
        elif leaf == "weight" and value.ndim == 1:
            name = "scale"  # GroupNorm
        else:
            raise ValueError(f"unexpected diffusers parameter {key} with shape {value.shape}")
        flat["/".join(path + (name,))] = value

    expected = _flatten(jax.eval_shape(lambda: init_params(config)))
    missing = sorted(set(expected) - set(flat))
    extra = sorted(set(flat) - set(expected))
    if missing or extra:
        raise ValueError(f"checkpoint does not match config: missing={missing[:8]} unexpected={extra[:8]}")
    for k, spec in expected.items():
        if tuple(flat[k].shape) != tuple(spec.shape):
            raise ValueError(f"shape mismatch for {k}: checkpoint {flat[k].shape}, model {spec.shape}")
    return _unflatten({k: jnp.asarray(v) for k, v in flat.items()})


def _resolve_diffusers_dir(path: str | os.PathLike) -> Path:
    local = Path(path)
    if local.is_dir():
        return local
    if local.exists() or str(path).startswith(("/", "./", "../", "~")):  # plainly local: never a hub id
        raise FileNotFoundError(f"VQGAN {str(path)!r}: {'not a folder' if local.exists() else 'no such folder'} "
                                "(expected a diffusers VQModel folder or our saved params)")
    # A hub id, optionally with a subfolder: "amused/amused-256/vqvae".
    parts = str(path).strip("/").split("/")
    if len(parts) < 2:
        raise FileNotFoundError(f"{path}: not a local directory, and not a hub id like 'owner/repo[/subfolder]'")
    repo_id, sub = "/".join(parts[:2]), "/".join(parts[2:])
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:  # pragma: no cover
        raise FileNotFoundError(f"{path}: not a local directory and huggingface_hub is not installed") from e
    patterns = [f"{sub}/{CONFIG_FILE}", *(f"{sub}/{w}" for w in DIFFUSERS_WEIGHT_FILES)] if sub else [
        CONFIG_FILE,
        *DIFFUSERS_WEIGHT_FILES,
    ]
    try:
        root = Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as e:
        raise FileNotFoundError(
            f"could not download VQGAN {path!r} from the Hugging Face Hub ({type(e).__name__}: {e}). "
            "Offline? Download the diffusers VQModel folder (config.json + diffusion_pytorch_model.safetensors) "
            "elsewhere and pass its local path."
        ) from e
    return root / sub if sub else root


def load_diffusers_vqmodel(path: str | os.PathLike) -> tuple[VQGANConfig, dict]:
    """Load a diffusers `VQModel` folder (or hub id, e.g. "amused/amused-256/vqvae") without torch."""
    from safetensors.numpy import load_file

    folder = _resolve_diffusers_dir(path)
    cfg_file = folder / CONFIG_FILE
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{cfg_file} not found")
    config = VQGANConfig.from_diffusers_config(json.loads(cfg_file.read_text()))
    for name in DIFFUSERS_WEIGHT_FILES:
        if (folder / name).is_file():
            state = _read_weights(folder / name, load_file)
            break
    else:
        raise FileNotFoundError(
            f"no safetensors weights in {folder} (looked for {', '.join(DIFFUSERS_WEIGHT_FILES)}); "
            "pickled .bin checkpoints are not loaded"
        )
    return config, convert_diffusers_state_dict(state, config)


def save_params(path: str | os.PathLike, config: VQGANConfig, params: dict) -> Path:
    """Write `config.json` + `params.safetensors` (flattened names joined by '/') into folder `path`."""
    from safetensors.numpy import save_file

    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    flat = {k: np.asarray(v) for k, v in _flatten(params).items()}
    save_file(flat, str(folder / PARAMS_FILE), metadata={"format": "longctx-vqgan"})
    (folder / CONFIG_FILE).write_text(json.dumps({"longctx_vqgan": config.to_dict()}, indent=2) + "\n")
    return folder


def load_params(path: str | os.PathLike) -> tuple[VQGANConfig, dict]:
    """Read what `save_params` wrote. Returns (config, params)."""
    from safetensors.numpy import load_file

    folder = Path(path)
    meta = json.loads((folder / CONFIG_FILE).read_text())
    if "longctx_vqgan" not in meta:
        raise ValueError(f"{folder / CONFIG_FILE} is not a longctx VQGAN config (use load_diffusers_vqmodel?)")
    config = VQGANConfig.from_dict(meta["longctx_vqgan"])
    if not (folder / PARAMS_FILE).is_file():
        raise FileNotFoundError(f"VQGAN {str(folder)!r}: no {PARAMS_FILE} beside its {CONFIG_FILE} (our saved params "
                                "are both files, as save_params writes them)")
    flat = _read_weights(folder / PARAMS_FILE, load_file)
    return config, _unflatten({k: jnp.asarray(v) for k, v in flat.items()})


def _read_weights(path: Path, load_file) -> dict[str, np.ndarray]:
    """`load_file(path)`, with a file safetensors cannot read (cut short, or not safetensors) said
    as a one-line ValueError naming it rather than the library's SafetensorError."""
    from safetensors import SafetensorError

    try:
        return load_file(str(path))
    except SafetensorError as err:
        raise ValueError(f"VQGAN weights {path} cannot be read ({err}): a copy cut short? copy the folder again") from None


def vqgan_weights_problem(folder: str | os.PathLike) -> str | None:
    """Why the local VQGAN `folder` (its config.json is there) holds no weights that can be loaded,
    or None. Reads the safetensors header only (it also says whether the file is whole), so a
    vision job finds a missing or cut-short weights file before it starts, not in every worker."""
    from safetensors import SafetensorError, safe_open

    folder = Path(folder)
    names = (PARAMS_FILE,) if _our_config(folder) else DIFFUSERS_WEIGHT_FILES
    found = next((folder / n for n in names if (folder / n).is_file()), None)
    if found is None:
        return f"no {' or '.join(names)} beside its {CONFIG_FILE}"
    try:
        with safe_open(str(found), framework="np"):
            pass
    except SafetensorError as err:  # a header that cannot be read, or a file shorter than its header says
        return f"{found.name} cannot be read ({err}): a copy cut short? copy the folder again"
    return None


def load_vqgan_params(path: str | os.PathLike) -> tuple[VQGANConfig, dict]:
    """Either layout: our own (`params.safetensors`, or a config.json of ours) or a diffusers
    VQModel folder / hub id."""
    if (Path(path) / PARAMS_FILE).is_file() or _our_config(Path(path)):
        return load_params(path)
    return load_diffusers_vqmodel(path)


def _our_config(folder: Path) -> bool:
    """Whether `folder` holds a config.json that save_params wrote (a JSON object with `longctx_vqgan`)."""
    try:
        meta = json.loads((folder / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and "longctx_vqgan" in meta


# ----------------------------------------------------------------------------------------------
# Batch wrapper
# ----------------------------------------------------------------------------------------------


class VQGAN:
    """Frames <-> codes with fixed-size jitted batches (the last batch is padded, padding stripped).

    >>> vq = VQGAN(*load_vqgan_params("amused/amused-256/vqvae"), batch_size=16)
    >>> codes = vq.encode(frames)   # uint8 [n, 256, 256, 3] -> int32 [n, 16, 16]
    >>> frames2 = vq.decode(codes)  # int32 [n, 16, 16] -> uint8 [n, 256, 256, 3]
    """

    def __init__(self, config: VQGANConfig, params: dict, batch_size: int = 8):
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.config = config
        self.params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float32), params)
        self.batch_size = int(batch_size)
        self.model = VQModel(config)

        def _encode(params, frames_u8):
            x = frames_u8.astype(jnp.float32) / 127.5 - 1.0
            return self.model.apply({"params": params}, x, method=VQModel.tokenize)

        def _decode(params, codes):
            img = self.model.apply({"params": params}, codes, method=VQModel.decode)
            img = (jnp.clip(img, -1.0, 1.0) + 1.0) * 127.5
            return jnp.round(img).astype(jnp.uint8)

        self._encode = jax.jit(_encode)
        self._decode = jax.jit(_decode)

    @classmethod
    def load(cls, path: str | os.PathLike, batch_size: int = 8) -> "VQGAN":
        return cls(*load_vqgan_params(path), batch_size=batch_size)

    def _batched(self, fn, inputs: np.ndarray, out_tail: tuple[int, ...], out_dtype) -> np.ndarray:
        n = inputs.shape[0]
        out = np.empty((n, *out_tail), out_dtype)
        bs = self.batch_size
        for start in range(0, n, bs):
            chunk = inputs[start : start + bs]
            k = chunk.shape[0]
            if k < bs:  # pad with copies of zeros so the jitted shape never changes
                pad = np.zeros((bs - k, *chunk.shape[1:]), chunk.dtype)
                chunk = np.concatenate([chunk, pad], axis=0)
            out[start : start + k] = np.asarray(fn(self.params, chunk))[:k]
        return out

    def encode(self, frames: np.ndarray) -> np.ndarray:
        """uint8 frames [n, H, W, 3] (H, W divisible by the downsample factor) -> int32 codes [n, h, w]."""
        frames = np.asarray(frames)
        if frames.dtype != np.uint8:
            raise TypeError(f"frames must be uint8, got {frames.dtype}")
        if frames.ndim != 4 or frames.shape[-1] != self.config.in_channels:
            raise ValueError(f"frames must be [n, H, W, {self.config.in_channels}], got {frames.shape}")
        h, w = self.config.code_shape(frames.shape[1], frames.shape[2])
        return self._batched(self._encode, frames, (h, w), np.int32)

    def decode(self, codes: Sequence | np.ndarray) -> np.ndarray:
        """int32 codes [n, h, w] -> uint8 frames [n, H, W, 3]."""
        codes = np.asarray(codes, dtype=np.int32)
        if codes.ndim != 3:
            raise ValueError(f"codes must be [n, h, w], got {codes.shape}")
        if codes.size and (codes.min() < 0 or codes.max() >= self.config.num_vq_embeddings):
            raise ValueError(f"codes out of range [0, {self.config.num_vq_embeddings})")
        f = self.config.downsample_factor
        tail = (codes.shape[1] * f, codes.shape[2] * f, self.config.out_channels)
        return self._batched(self._decode, codes, tail, np.uint8)


def load_vqgan(path: str | os.PathLike, batch_size: int = 8) -> VQGAN:
    """A diffusers-layout `VQModel` folder (config.json + safetensors; local or hub id) or our own
    saved VQGAN, ready to `encode(frames) -> codes` and `decode(codes) -> frames`."""
    return VQGAN.load(path, batch_size=batch_size)
