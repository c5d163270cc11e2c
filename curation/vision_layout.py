"""Token layout of vision-language examples (LWM): text, `<vision>`, frames, `</vision>`, text.

    [text_before] [<vision> text ids] [f0: 256 codes, <eof>] ... [fN-1: 256 codes, <eov>]
    [</vision> text ids] [text_after]

Two vocabularies share one int32 `tokens` array, told apart by `vision_mask`:

- `vision_mask == 1`: the token indexes the **vision vocabulary** (size `VisionVocab.size`,
  8448): VQGAN codes `0..8191` (codebook 8192), `<eof>` = 8192 ends every frame but the last,
  `<eov>` = 8193 ends the last frame (ids 8194..8447 are unused padding of the embedding table).
  The model embeds these with its vision embedding and predicts them with its vision head.
- `vision_mask == 0`: the token indexes the **text vocabulary** (the LLaMA tokenizer). This
  includes the `<vision>` / `</vision>` markers, which are ordinary text tokens (the ids the
  text tokenizer gives the strings "<vision>" and "</vision>", passed in by the caller).

So `vision_mask` is 1 exactly on the frames' codes and their `<eof>` / `<eov>` tokens:
`frames * 257` positions.

`loss_mask` (float32) chooses which positions are trained on: by default everything after the
conditioning text `text_before` (the `<vision>` marker, the frames, `</vision>` and the text after
it). Flags switch parts on or off, e.g. video->text: `loss_on_vision=False`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

CODES_PER_FRAME = 256  # a 256x256 frame -> VQGAN 16x16


@dataclass(frozen=True)
class VisionVocab:
    """The vision vocabulary: codebook ids `[0, codebook_size)`, then `<eof>` and `<eov>`."""

    eof: int = 8192
    eov: int = 8193
    size: int = 8448
    codebook_size: int = 8192

    def __post_init__(self):
        if not (self.codebook_size <= min(self.eof, self.eov) and max(self.eof, self.eov) < self.size):
            raise ValueError(f"inconsistent vision vocabulary {self}")
        if self.eof == self.eov:
            raise ValueError("eof and eov must differ")


DEFAULT_VISION_VOCAB = VisionVocab()


def _ids(values: Sequence[int] | np.ndarray | None, what: str) -> np.ndarray:
    arr = np.asarray([] if values is None else values, dtype=np.int64).reshape(-1)
    if arr.size and arr.min() < 0:
        raise ValueError(f"{what}: negative token id {arr.min()}")
    if arr.size and arr.max() > np.iinfo(np.int32).max:
        raise ValueError(f"{what}: token id {arr.max()} does not fit int32")
    return arr


def _frame(codes: np.ndarray, i: int, vocab: VisionVocab) -> np.ndarray:
    arr = np.asarray(codes)
    if arr.shape not in ((16, 16), (CODES_PER_FRAME,)):
        raise ValueError(f"frame {i}: expected codes of shape (16, 16) or (256,), got {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"frame {i}: codes must be integers, got {arr.dtype}")
    flat = arr.reshape(-1).astype(np.int64)  # row-major: raster order of the 16x16 grid
    if flat.min() < 0 or flat.max() >= vocab.codebook_size:
        raise ValueError(
            f"frame {i}: codes must lie in [0, {vocab.codebook_size}), got "
            f"[{flat.min()}, {flat.max()}]")
    return flat


def layout_video(
    frame_codes: Sequence[np.ndarray],
    text_before_ids: Sequence[int] | np.ndarray | None,
    text_after_ids: Sequence[int] | np.ndarray | None,
    vision_start_ids: Sequence[int] | np.ndarray,
    vision_end_ids: Sequence[int] | np.ndarray,
    vocab: VisionVocab = DEFAULT_VISION_VOCAB,
    *,
    loss_on_text_before: bool = False,
    loss_on_vision: bool = True,
    loss_on_text_after: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lay out one video (or image) with its text; returns `(tokens int32, vision_mask int32,
    loss_mask float32)`, all of the same length
    `len(before) + len(start) + frames * 257 + len(end) + len(after)`.

    Each frame's codes ([16, 16] in raster order, or [256]) are followed by `<eof>`, the last
    frame's by `<eov>`. `loss_on_vision` covers the `<vision>` marker, the frames and the
    `</vision>` marker; the two text flags cover `text_before_ids` / `text_after_ids`.
    """
    if len(frame_codes) == 0:
        raise ValueError("a video needs at least one frame")
    before = _ids(text_before_ids, "text_before_ids")
    after = _ids(text_after_ids, "text_after_ids")
    start = _ids(vision_start_ids, "vision_start_ids")
    end = _ids(vision_end_ids, "vision_end_ids")

    n = len(frame_codes)
    per = CODES_PER_FRAME + 1
    vision = np.empty(n * per, np.int64)
    for i, codes in enumerate(frame_codes):
        vision[i * per:i * per + CODES_PER_FRAME] = _frame(codes, i, vocab)
        vision[i * per + CODES_PER_FRAME] = vocab.eof
    vision[-1] = vocab.eov

    parts = [before, start, vision, end, after]
    tokens = np.concatenate(parts).astype(np.int32)
    vision_mask = np.concatenate(
        [np.zeros(len(before) + len(start), np.int32), np.ones(len(vision), np.int32),
         np.zeros(len(end) + len(after), np.int32)])
    loss_flags = [loss_on_text_before, loss_on_vision, loss_on_vision, loss_on_vision,
                  loss_on_text_after]
    loss_mask = np.concatenate(
        [np.full(len(p), 1.0 if flag else 0.0, np.float32) for p, flag in zip(parts, loss_flags)])
    return tokens, vision_mask, loss_mask


def layout_image(
    codes: np.ndarray,
    caption_ids: Sequence[int] | np.ndarray,
    vision_start_ids: Sequence[int] | np.ndarray,
    vision_end_ids: Sequence[int] | np.ndarray,
    vocab: VisionVocab = DEFAULT_VISION_VOCAB,
    *,
    caption_first: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image-text pair: a single frame (its codes end with `<eov>`).

    `caption_first=False` (image -> text, captioning): `<vision> image </vision> caption`, loss on
    the caption only. `caption_first=True` (text -> image, generation): `caption <vision> image
    </vision>`, loss on the image part only.
    """
    if caption_first:
        return layout_video([codes], caption_ids, None, vision_start_ids, vision_end_ids, vocab,
                            loss_on_text_before=False, loss_on_vision=True)
    return layout_video([codes], None, caption_ids, vision_start_ids, vision_end_ids, vocab,
                        loss_on_vision=False, loss_on_text_after=True)
