"""curation.vqgan against diffusers' VQModel (random weights in the real checkpoint layout)."""

from __future__ import annotations

import json

import numpy as np
import pytest

jax = pytest.importorskip("jax")
pytest.importorskip("flax")
pytest.importorskip("safetensors")

import jax.numpy as jnp  # noqa: E402

from curation.vqgan import (  # noqa: E402
    VQGAN,
    VQGANConfig,
    VQModel,
    _flatten,
    init_params,
    load_diffusers_vqmodel,
    load_params,
    save_params,
)

TINY = VQGANConfig.tiny()  # (32, 64) channels, 1 layer per block, latent 8, codebook 64 x 4, 8 groups
SIZE = 32  # 32x32 images -> 16x16 codes


@pytest.fixture(scope="module")
def diffusers_tiny(tmp_path_factory):
    """A random diffusers VQModel with the tiny config, written by save_pretrained (config.json + safetensors)."""
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")

    torch.manual_seed(0)
    model = diffusers.VQModel(**{k: v for k, v in TINY.to_diffusers_config().items() if not k.startswith("_")})
    with torch.no_grad():
        # Perturb norms and biases away from their (1, 0) init and give the codebook the latents'
        # scale, so every parameter matters and codes are spread over the codebook.
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
            elif p.ndim == 1:
                p.mul_(1 + 0.1 * torch.randn_like(p))
        model.quantize.embedding.weight.normal_(0.0, 0.5)
    model.eval()
    folder = tmp_path_factory.mktemp("vqmodel")
    model.save_pretrained(folder, safe_serialization=True)
    return model, folder


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    # Smooth-ish random images: low-res noise upsampled, so the convs see structure.
    low = rng.integers(0, 256, size=(4, 8, 8, 3)).astype(np.float32)
    up = np.repeat(np.repeat(low, 4, axis=1), 4, axis=2)
    noise = rng.normal(0, 20, size=up.shape)
    return np.clip(up + noise, 0, 255).astype(np.uint8)


def test_diffusers_layout_on_disk(diffusers_tiny):
    _, folder = diffusers_tiny
    names = {p.name for p in folder.iterdir()}
    assert "config.json" in names and "diffusion_pytorch_model.safetensors" in names
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["_class_name"] == "VQModel"
    config, _ = load_diffusers_vqmodel(folder)
    assert config == TINY


def test_matches_diffusers(diffusers_tiny, images):
    import torch

    model, folder = diffusers_tiny
    config, params = load_diffusers_vqmodel(folder)
    flax_model = VQModel(config)
    x = images.astype(np.float32) / 127.5 - 1.0

    # Encoder + quant_conv (pre-quantisation latents).
    ours_h = np.asarray(flax_model.apply({"params": params}, jnp.asarray(x), method=VQModel.encode))
    with torch.no_grad():
        th = model.encode(torch.from_numpy(x).permute(0, 3, 1, 2)).latents
        ref_h = th.permute(0, 2, 3, 1).numpy()
    assert ours_h.shape == ref_h.shape == (4, 16, 16, config.embed_dim)
    np.testing.assert_allclose(ours_h, ref_h, atol=1e-4, rtol=0)

    # Codes (diffusers: argmin of cdist). Compare on the same latents so only the quantiser differs.
    ours_codes = np.asarray(flax_model.apply({"params": params}, jnp.asarray(ref_h), method=VQModel.quantize_latents))
    with torch.no_grad():
        _, _, (_, _, idx) = model.quantize(th)
    ref_codes = idx.reshape(4, 16, 16).numpy()
    assert ours_codes.dtype == np.int32
    assert (ours_codes == ref_codes).mean() >= 0.99
    assert len(np.unique(ref_codes)) > 8  # codes spread over the codebook, not a degenerate test

    # Decode from codes (diffusers: lookup_from_codebook with force_not_quantize).
    ours_img = np.asarray(flax_model.apply({"params": params}, jnp.asarray(ref_codes), method=VQModel.decode))
    with torch.no_grad():
        ref_img = model.decode(
            torch.from_numpy(ref_codes).reshape(-1).long(),
            force_not_quantize=True,
            shape=(4, 16, 16, config.embed_dim),
        ).sample.permute(0, 2, 3, 1).numpy()
    assert ours_img.shape == ref_img.shape == (4, SIZE, SIZE, 3)
    np.testing.assert_allclose(ours_img, ref_img, atol=1e-3, rtol=0)

    # The uint8 wrapper agrees with diffusers too (up to rounding at pixel boundaries).
    vq = VQGAN(config, params, batch_size=4)
    codes = vq.encode(images)
    assert (codes == ref_codes).mean() >= 0.99
    frames = vq.decode(ref_codes)
    ref_u8 = np.round((np.clip(ref_img, -1, 1) + 1) * 127.5)
    assert frames.dtype == np.uint8 and np.abs(frames.astype(np.float32) - ref_u8).max() <= 1


def test_save_load_round_trip(tmp_path):
    params = init_params(TINY, seed=1)
    save_params(tmp_path / "vq", TINY, params)
    assert sorted(p.name for p in (tmp_path / "vq").iterdir()) == ["config.json", "params.safetensors"]
    config2, params2 = load_params(tmp_path / "vq")
    assert config2 == TINY
    a, b = _flatten(params), _flatten(params2)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]))


def test_encode_deterministic_and_fixed_batch_padding(images):
    params = init_params(TINY, seed=2)
    vq = VQGAN(TINY, params, batch_size=4)
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, size=(5, SIZE, SIZE, 3), dtype=np.uint8)
    five = vq.encode(frames)  # one full batch + one padded batch of 1
    three = vq.encode(frames[:3])  # one padded batch
    assert five.shape == (5, 16, 16) and five.dtype == np.int32
    np.testing.assert_array_equal(five[:3], three)
    np.testing.assert_array_equal(five, vq.encode(frames))
    assert vq._encode._cache_size() == 1  # every call reused the same compiled shape
    out = vq.decode(five)
    assert out.shape == (5, SIZE, SIZE, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[:3], vq.decode(three))
    assert vq._decode._cache_size() == 1


def test_amused_256_shapes():
    config = VQGANConfig()  # aMUSEd 256px VQ-GAN
    assert config.block_out_channels == (128, 256, 256, 512, 768) and config.embed_dim == 64
    assert config.code_shape(256, 256) == (16, 16)
    params = jax.eval_shape(lambda: init_params(config, image_size=256))
    codes = jax.eval_shape(
        lambda p, x: VQModel(config).apply({"params": p}, x, method=VQModel.tokenize),
        params,
        jax.ShapeDtypeStruct((2, 256, 256, 3), jnp.float32),
    )
    assert codes.shape == (2, 16, 16) and codes.dtype == jnp.int32
    images = jax.eval_shape(
        lambda p, c: VQModel(config).apply({"params": p}, c, method=VQModel.decode),
        params,
        jax.ShapeDtypeStruct((2, 16, 16), jnp.int32),
    )
    assert images.shape == (2, 256, 256, 3)
    flat = {k: v.shape for k, v in _flatten(params).items()}
    assert flat["quantize/embedding"] == (8192, 64)
    assert flat["encoder/conv_in/kernel"] == (3, 3, 3, 128)
    assert flat["encoder/conv_out/kernel"] == (3, 3, 768, 64)
    assert flat["quant_conv/kernel"] == (1, 1, 64, 64)
    assert flat["decoder/conv_in/kernel"] == (3, 3, 64, 768)
    assert flat["decoder/up_blocks_0/resnets_2/conv2/kernel"] == (3, 3, 768, 768)
    assert flat["decoder/up_blocks_4/resnets_0/conv_shortcut/kernel"] == (1, 1, 256, 128)
    assert flat["decoder/conv_out/kernel"] == (3, 3, 128, 3)
    assert "encoder/down_blocks_3/downsamplers_0/conv/kernel" in flat
    assert "encoder/down_blocks_4/downsamplers_0/conv/kernel" not in flat  # 4 downsamplings
    assert len(flat) == 277 and sum(int(np.prod(s)) for s in flat.values()) == 146_244_675


def test_amused_256_names_match_diffusers():
    """Every tensor of diffusers' aMUSEd-shaped VQModel maps onto ours (built on torch's meta device)."""
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    from curation.vqgan import _diffusers_key_to_path

    config = VQGANConfig()
    with torch.device("meta"):
        model = diffusers.VQModel(**{k: v for k, v in config.to_diffusers_config().items() if not k.startswith("_")})
    theirs = {}
    for key, t in model.state_dict().items():
        path, leaf = _diffusers_key_to_path(key)
        shape = tuple(t.shape)
        if path == ("quantize", "embedding"):
            theirs["quantize/embedding"] = shape
            continue
        name = "bias" if leaf == "bias" else ("kernel" if len(shape) == 4 else "scale")
        if len(shape) == 4:
            shape = (shape[2], shape[3], shape[1], shape[0])
        theirs["/".join(path + (name,))] = shape
    ours = {k: tuple(v.shape) for k, v in _flatten(jax.eval_shape(lambda: init_params(config, image_size=256))).items()}
    assert theirs == ours


def test_load_vqgan_reads_a_diffusers_folder(tmp_path):
    """The public entry point: a diffusers VQModel folder -> encode/decode with the issue's shapes."""
    import numpy as np
    import torch
    from diffusers import VQModel

    from curation.vqgan import load_vqgan

    torch.manual_seed(0)
    cfg = VQGANConfig.tiny()
    VQModel(**cfg.to_diffusers_config()).save_pretrained(tmp_path / "vq")
    vq = load_vqgan(tmp_path / "vq", batch_size=2)
    frames = np.random.default_rng(0).integers(0, 255, (3, 32, 32, 3), dtype=np.uint8)
    codes = vq.encode(frames)
    assert codes.shape == (3, 16, 16) and codes.dtype == np.int32
    assert vq.decode(codes).shape == (3, 32, 32, 3)
