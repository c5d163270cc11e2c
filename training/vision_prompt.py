"""Vision-language prompts for generation, laid out exactly as the video pipeline lays out its
training rows (curation.vision_layout), and generated frames written as pictures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from curation.vision_layout import VISION_END, VISION_START, layout_video
from training.model import ModelConfig
from training.vision import model_vision_vocab


def _vocab(config: ModelConfig):
    vocab = model_vision_vocab(config)
    if vocab is None:
        raise ValueError("this checkpoint is a text-only model: train a vision stage (vision_layout) to use --video/--image")
    return vocab


def _markers(config: ModelConfig, tokenizer) -> tuple[list[int], list[int]]:
    """`<vision>` / `</vision>` as the layout takes them: text ids (separate) or none (unified: the
    layout places its single delimiter ids itself)."""
    if _vocab(config).mode == "unified":
        return [], []
    encode = lambda s: tokenizer.encode(s, add_special_tokens=False).ids  # noqa: E731
    return encode(VISION_START), encode(VISION_END)


def vision_text_prompt(config: ModelConfig, tokenizer, bos_id: int | None, frame_codes: list[np.ndarray],
                       text: str) -> tuple[list[int], list[int]]:
    """(ids, vision_mask) of `[BOS] <vision> frames </vision> text`: the training layout of a
    video or image followed by its text, which the model continues in text."""
    start, end = _markers(config, tokenizer)
    after = tokenizer.encode(text, add_special_tokens=False).ids if text else []
    tokens, vision, _ = layout_video(frame_codes, [] if bos_id is None else [bos_id], after, start, end, _vocab(config))
    return tokens.tolist(), vision.tolist()


def vision_start_prompt(config: ModelConfig, tokenizer, bos_id: int | None, text: str) -> list[int]:
    """`[BOS] text <vision>`: a prompt after which the model writes frames (--generate-vision)."""
    vocab = _vocab(config)
    start, _ = _markers(config, tokenizer)
    if vocab.mode == "unified":
        start = [vocab.vision_start]
    ids = tokenizer.encode(text, add_special_tokens=False).ids if text else []
    return ([] if bos_id is None else [bos_id]) + ids + start


def check_vqgan_path(path: str) -> None:
    """Refuse (ValueError, one line naming --vqgan) a VQGAN that plainly cannot load, before any
    model loads: a local path (absolute, ./, ../, ~, or one that exists) that is not there or holds
    no config.json, or a folder whose weights are missing or cut short
    (`curation.vqgan.vqgan_weights_problem`). The rules of the vision jobs' own check
    (pipelines.launch.check_vqgan_path, which training may not import); a hub id or URL is left to
    the loader."""
    from curation.vqgan import CONFIG_FILE, vqgan_weights_problem

    local = Path(path).expanduser()
    if "://" not in path and (local / CONFIG_FILE).is_file():
        problem = vqgan_weights_problem(local)
        if problem:
            raise ValueError(f"--vqgan {path!r}: {problem}")
        return
    plainly_local = path.startswith(("/", "./", "../", "~")) or local.exists() or len(path.strip("/").split("/")) < 2
    if "://" in path or not plainly_local:
        return
    problem = "no such folder" if not local.exists() else f"no {CONFIG_FILE} in {'it' if local.is_dir() else 'a file'}"
    raise ValueError(f"--vqgan {path!r}: {problem} (expected a diffusers VQModel folder, our saved params, "
                     "or a hub id like 'owner/repo[/subfolder]')")


def load_checked_vqgan(path: str):
    """`curation.vqgan.load_vqgan(path)`, its failures (a hub id that cannot be fetched, a config
    it cannot build) as a one-line ValueError naming --vqgan."""
    from curation.vqgan import load_vqgan

    try:
        return load_vqgan(path)
    except (OSError, ValueError, KeyError) as err:  # FileNotFoundError is an OSError
        text = " ".join(str(err).split()) or type(err).__name__
        raise ValueError(text if text.startswith("--vqgan") else f"--vqgan {path!r}: {text}") from None


def check_vqgan_codebook(config: ModelConfig, codebook_size: int, path: str, generates: bool) -> str | None:
    """The VQGAN's codebook against the model's vision vocabulary, before generating. A video or
    image encoded into codes the model has no ids for is refused (ValueError, one line). Frames the
    model writes (`generates`) are drawn from the codes both have (`generate_frames`'
    `codebook_size`): a note says so when the VQGAN's codebook is the smaller; else None."""
    vocab = _vocab(config)
    if codebook_size == vocab.codebook_size:
        return None
    if generates and codebook_size < vocab.codebook_size:
        return (f"note: the VQGAN's codebook ({path}) has {codebook_size:,} codes, the model's vision vocabulary "
                f"{vocab.codebook_size:,}: generated frames use only codes 0..{codebook_size - 1}")
    if generates or codebook_size < vocab.codebook_size:
        return None  # every code the model writes is one the VQGAN decodes; every code it encodes has an id
    raise ValueError(f"--vqgan {path!r}: its codebook has {codebook_size:,} codes, but the model's vision vocabulary "
                     f"holds {vocab.codebook_size:,}: the frames would encode to codes the model has no ids for; "
                     "give the VQGAN the vision stage's data was encoded with")


def save_frames(frames: np.ndarray, path: str | Path, fps: float = 4.0) -> list[Path]:
    """uint8 frames [n, h, w, 3] -> image files; returns the files written.

    `.gif`: one animation. GIF writers fold identical consecutive frames into one longer frame,
    so the animation's total duration (not its frame count) says how many frames it shows.
    Any other suffix (`.png`): one file per frame, `path` itself for one frame, else
    `stem-000.png`, `stem-001.png`, ... beside it, so every generated frame is kept as a file.
    """
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    images = [Image.fromarray(np.asarray(f, np.uint8)) for f in frames]
    if path.suffix.lower() == ".gif":
        images[0].save(path, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
        return [path]
    if len(images) == 1:
        images[0].save(path)
        return [path]
    paths = [path.with_name(f"{path.stem}-{i:03d}{path.suffix}") for i in range(len(images))]
    for image, frame_path in zip(images, paths):
        image.save(frame_path)
    return paths


def load_media_codes(vqgan: Any, video: str | None = None, image: str | None = None, *, fps: float | None = 1.0,
                     frame_count: int | None = None, max_frames: int = 64, frame_size: int = 256) -> list[np.ndarray]:
    """A video's sampled frames or one image, VQGAN-encoded with the pipelines' own code."""
    from curation.vision_encode import decode_image, video_codes

    if video is not None:
        return video_codes(video, vqgan, fps, frame_count, max_frames, frame_size)
    import fsspec

    with fsspec.open(image, "rb") as fh:
        frame = decode_image(fh.read(), frame_size)
    return list(vqgan.encode(frame[None]))
