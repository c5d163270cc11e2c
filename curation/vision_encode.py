"""Pixels -> VQGAN codes, the one way every user of vision does it (the video and image pipelines,
`longctx generate`): uniform frame sampling, short side resized and center-cropped, fixed batches."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import numpy as np

from curation.video import iter_video_frames, resize_center_crop, sample_indices


def frame_sampler(fps: float | None, frame_count: int | None, max_frames: int):
    """`(num_frames, video_fps) -> indices`: exactly `frame_count` frames, else `fps` frames a second,
    uniformly over the whole video and at most `max_frames`."""
    def indices(num_frames: int, video_fps: float) -> np.ndarray:
        if frame_count is not None:
            return sample_indices(num_frames, video_fps, count=frame_count, max_frames=max_frames)
        return sample_indices(num_frames, video_fps, target_fps=fps, max_frames=max_frames)

    return indices


def video_codes(url: Any, vqgan, fps: float | None = 1.0, frame_count: int | None = None, max_frames: int = 512,
                frame_size: int = 256, batch: int = 8,
                on_frames: Callable[[int, int], None] | None = None) -> list[np.ndarray]:
    """The sampled frames' codes ([16, 16] each), decoded and encoded `batch` frames at a time, so
    an hour of video never sits in memory. Raises `curation.video.VideoError` on unreadable input.

    `on_frames(encoded, total)`, if given, is called after each batch with the frames encoded so
    far and the number sampled from this video (known once the video is opened): the progress of
    a long video, which takes minutes through a VQGAN."""
    sampler = frame_sampler(fps, frame_count, max_frames)
    sampled = [0]

    def counted(num_frames: int, video_fps: float) -> np.ndarray:
        indices = sampler(num_frames, video_fps)
        sampled[0] = len(indices)
        return indices

    codes: list[np.ndarray] = []
    for frames in iter_video_frames(url, counted, batch, frame_size):
        codes.extend(vqgan.encode(frames))
        if on_frames is not None:
            on_frames(len(codes), sampled[0])
    return codes


def decode_image(data: bytes, size: int) -> np.ndarray:
    """Any PIL-readable image -> uint8 [size, size, 3] (short side resized, center-cropped)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        rgb = np.asarray(img.convert("RGB"))
    return resize_center_crop(rgb[None], size)[0]
