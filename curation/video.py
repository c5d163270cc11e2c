"""Video frames for the vision-language stages: uniform sampling, resize + center crop, streaming.

Frames are read with decord (as in the LWM release), a few at a time: `iter_video_frames` asks
decord for at most `batch` frames per call, so a long video is never decoded into memory at once.
Each frame is resized so its short side is `size` (256) and center-cropped to `size` x `size`.

Remote inputs (`gs://...`, `https://...`, anything fsspec opens) are handed to decord as a
file-like object; local paths are passed as paths.

Corrupt inputs raise `VideoError(reason, detail)`, never anything else from decord:

- `unreadable_video`: the container cannot be opened (zero bytes, garbage, missing file, a file
  cut before its index): decord's constructor raises `RuntimeError`.
- `no_frames`: the file opens but holds no video frames.
- `decode_error`: frames cannot be decoded (a file cut after its index): decord raises
  `decord._ffi.base.DECORDError`, which is not a `RuntimeError`, so both are caught.

A `VideoError`'s detail names the video and quotes decord's message without what differs from
run to run (log timestamps, source locations, backtraces: `stable_message`), so the rejects of
two runs over the same files are identical. Local files whose names are not UTF-8 are read too.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import numpy as np

from curation.accounting import Reason, as_reason, printable

# The reasons a VideoError carries (members of the one Reason enum).
VIDEO_ERROR_REASONS = (Reason.UNREADABLE_VIDEO, Reason.NO_FRAMES, Reason.DECODE_ERROR)

try:  # decord's own error type; not a subclass of RuntimeError.
    from decord._ffi.base import DECORDError as _DECORDError
except Exception:  # pragma: no cover - decord missing or laid out differently
    class _DECORDError(Exception):  # type: ignore[no-redef]
        pass

_DECODE_ERRORS = (RuntimeError, _DECORDError)


# What makes a decoder's message differ between two runs over the same file, removed so that
# rejects files are byte-identical across reruns: dmlc/decord log timestamps and C++ source
# locations, backtraces (addresses differ per process), and object addresses in Python reprs.
_NOISE = (
    (re.compile(r"\s*Stack trace.*", re.S), ""),
    (re.compile(r"\[\d{1,2}:\d{2}:\d{2}(?:\.\d+)?\]\s*"), ""),
    (re.compile(r"[\w./-]+\.(?:cc|cpp|cu|c|h|hpp):\d+:\s*"), ""),
    (re.compile(r"\s+at 0x[0-9a-fA-F]+"), ""),
    (re.compile(r"0x[0-9a-fA-F]{8,}"), "0x?"),
)


def stable_message(err: BaseException, limit: int = 300) -> str:
    """`str(err)` on one line, without what changes from run to run (timestamps, addresses,
    backtraces), cut to `limit` characters: a reject detail that reruns reproduce exactly."""
    text = str(err)
    for pattern, replacement in _NOISE:
        text = pattern.sub(replacement, text)
    text = " ".join(text.split())
    return printable(text[:limit])


class VideoError(Exception):
    """A video that cannot be used. `reason` is one of `VIDEO_ERROR_REASONS` (a `Reason`, the
    reject's reason; its value string is accepted too); `detail` is a human-readable explanation."""

    def __init__(self, reason: Reason | str, detail: str = ""):
        if reason not in VIDEO_ERROR_REASONS:
            raise ValueError(f"unknown VideoError reason {reason!r}")
        reason = as_reason(reason)
        super().__init__(f"{reason}: {detail}" if detail else str(reason))
        self.reason = reason
        self.detail = detail

    def __reduce__(self):  # picklable across Beam workers / processes
        return (type(self), (self.reason, self.detail))


# ----------------------------------------------------------------------------- sampling


def sample_indices(
    num_frames: int,
    fps: float,
    target_fps: float | None = None,
    count: int | None = None,
    max_frames: int | None = None,
) -> np.ndarray:
    """Frame indices sampled uniformly over the whole video (deterministic, sorted, unique, int64).

    - `target_fps`: about `duration * target_fps` frames (`duration = num_frames / fps`), at least
      one; never more than `num_frames` (a target above the source fps keeps every frame).
    - `count`: exactly `min(count, num_frames)` frames.
    - neither: every frame.
    - `max_frames`: an upper bound applied last; the frames still span the whole video (the
      effective rate drops rather than the end being cut).

    The video is split into `n` equal segments and the frame at each segment's middle is taken:
    index_k = floor((k + 1/2) * num_frames / n), computed in integers.
    """
    if target_fps is not None and count is not None:
        raise ValueError("give target_fps or count, not both")
    num_frames = int(num_frames)
    if num_frames < 0:
        raise ValueError(f"num_frames must be >= 0, got {num_frames}")
    if num_frames == 0:
        return np.zeros(0, np.int64)
    if target_fps is not None:
        if not (target_fps > 0 and math.isfinite(target_fps)):
            raise ValueError(f"target_fps must be a positive number, got {target_fps}")
        if not (fps and fps > 0 and math.isfinite(fps)):
            raise ValueError(f"the video's fps must be a positive number, got {fps}")
        n = max(1, int(round(num_frames * float(target_fps) / float(fps))))
    elif count is not None:
        if int(count) < 1:
            raise ValueError(f"count must be >= 1, got {count}")
        n = int(count)
    else:
        n = num_frames
    if max_frames is not None:
        if int(max_frames) < 1:
            raise ValueError(f"max_frames must be >= 1, got {max_frames}")
        n = min(n, int(max_frames))
    n = min(n, num_frames)
    k = np.arange(n, dtype=np.int64)
    return ((2 * k + 1) * num_frames) // (2 * n)


# ----------------------------------------------------------------------------- resizing


def resize_center_crop(frames: np.ndarray, size: int = 256) -> np.ndarray:
    """[n, h, w, 3] uint8 -> [n, size, size, 3] uint8: short side resized to `size`, center crop.

    Done in one PIL bicubic resample per frame (antialiased when shrinking): the source box is the
    centered `min(h, w)` square, which is the same region a resize-then-crop keeps, without
    rounding the intermediate size. A single frame [h, w, 3] is also accepted (returns [size,
    size, 3]).
    """
    from PIL import Image

    frames = np.asarray(frames)
    single = frames.ndim == 3
    if single:
        frames = frames[None]
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected frames [n, h, w, 3], got shape {frames.shape}")
    if frames.dtype != np.uint8:
        raise ValueError(f"expected uint8 frames, got {frames.dtype}")
    n, h, w, _ = frames.shape
    if h < 1 or w < 1:
        raise ValueError(f"empty frames of shape {frames.shape}")
    side = min(h, w)
    left, top = (w - side) / 2.0, (h - side) / 2.0
    box = (left, top, left + side, top + side)
    out = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        img = Image.fromarray(np.ascontiguousarray(frames[i]))
        out[i] = np.asarray(img.resize((size, size), Image.Resampling.BICUBIC, box=box))
    return out[0] if single else out


# ----------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class VideoInfo:
    num_frames: int
    fps: float
    height: int
    width: int


def _is_url(path: Any) -> bool:
    return isinstance(path, str) and "://" in path and not path.startswith("file://")


def _open_reader(path_or_url: Any, stack: ExitStack):
    """A decord VideoReader, with the file object (for URLs) kept open by `stack`."""
    import decord

    source: Any = path_or_url
    name = _name(path_or_url)
    if _is_url(path_or_url):
        import fsspec

        try:
            source = stack.enter_context(fsspec.open(path_or_url, "rb"))
        except (OSError, ValueError) as err:
            raise VideoError(Reason.UNREADABLE_VIDEO, f"{name}: {stable_message(err)}") from err
    elif isinstance(path_or_url, str) and path_or_url.startswith("file://"):
        source = path_or_url[len("file://"):]
    elif not isinstance(path_or_url, str) and not hasattr(path_or_url, "read"):
        source = os.fspath(path_or_url)  # os.PathLike
    if isinstance(source, str) and printable(source) != source:
        # decord hands a path to C as strict UTF-8; a file name that is not UTF-8 (Python holds it
        # with surrogate escapes) is opened here and given to decord as a file object instead.
        try:
            source = stack.enter_context(open(source, "rb"))
        except (OSError, ValueError) as err:  # missing; or a surrogate no file name can hold
            raise VideoError(Reason.UNREADABLE_VIDEO, f"{name}: {stable_message(err)}") from err
    try:
        vr = decord.VideoReader(source, ctx=decord.cpu(0))
    except _DECODE_ERRORS as err:
        raise VideoError(Reason.UNREADABLE_VIDEO, f"{name}: {stable_message(err)}") from err
    try:
        num = len(vr)
    except _DECODE_ERRORS as err:
        raise VideoError(Reason.UNREADABLE_VIDEO, f"{name}: {stable_message(err)}") from err
    if num <= 0:
        raise VideoError(Reason.NO_FRAMES, f"{name}: the video has no frames")
    return vr


def _name(path_or_url: Any) -> str:
    """How details name a video: its path or URL, writable as UTF-8 whatever its bytes."""
    return printable(str(os.fspath(path_or_url) if isinstance(path_or_url, os.PathLike) else path_or_url))


def _info(vr) -> VideoInfo:
    try:
        fps = float(vr.get_avg_fps())
        h, w = _frame_shape(vr)
    except _DECODE_ERRORS as err:
        raise VideoError(Reason.DECODE_ERROR, stable_message(err)) from err
    return VideoInfo(num_frames=len(vr), fps=fps, height=int(h), width=int(w))


def _frame_shape(vr) -> tuple[int, int]:
    # Decoding one frame is cheap and gives the decoded (rotation-free) size decord will yield.
    frame = vr.get_batch([0]).asnumpy()
    return int(frame.shape[1]), int(frame.shape[2])


def probe_video(path_or_url: Any) -> VideoInfo:
    """Number of frames, average fps and frame size (decodes one frame). Raises `VideoError`."""
    with ExitStack() as stack:
        return _info(_open_reader(path_or_url, stack))


def iter_video_frames(
    path_or_url: Any,
    indices: Sequence[int] | np.ndarray | Callable[[int, float], Sequence[int]],
    batch: int = 16,
    size: int | None = 256,
) -> Iterator[np.ndarray]:
    """Yield the frames at `indices`, in order, as [<= batch, size, size, 3] uint8 arrays.

    `indices` is a sequence of frame indices, or a callable `(num_frames, fps) -> indices` (e.g.
    `lambda n, fps: sample_indices(n, fps, target_fps=1)`) so one open serves both probing and
    reading. decord is asked for at most `batch` frames per call. `size=None` yields the frames
    at their decoded size, unresized. Indices outside `[0, num_frames)` raise `IndexError`
    before anything is decoded; unusable files raise `VideoError`.
    """
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    with ExitStack() as stack:
        vr = _open_reader(path_or_url, stack)
        num_frames = len(vr)
        if callable(indices):
            try:
                fps = float(vr.get_avg_fps())
            except _DECODE_ERRORS as err:
                raise VideoError(Reason.DECODE_ERROR, f"{_name(path_or_url)}: {stable_message(err)}") from err
            indices = indices(num_frames, fps)
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= num_frames):
            raise IndexError(
                f"frame indices must lie in [0, {num_frames}), got [{idx.min()}, {idx.max()}]")
        for start in range(0, idx.size, batch):
            chunk = idx[start:start + batch]
            try:
                frames = vr.get_batch(chunk.tolist()).asnumpy()
            except _DECODE_ERRORS as err:
                raise VideoError(
                    Reason.DECODE_ERROR, f"{_name(path_or_url)}: frames {chunk[0]}..{chunk[-1]}: {stable_message(err)}"
                ) from err
            if frames.ndim != 4 or frames.shape[0] != chunk.size:
                raise VideoError(
                    Reason.DECODE_ERROR,
                    f"{_name(path_or_url)}: asked for {chunk.size} frames, got shape {frames.shape}")
            yield resize_center_crop(frames, size) if size is not None else frames
