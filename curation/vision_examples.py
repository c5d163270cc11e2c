"""Vision-text examples, whole: BOS/EOS around a layout, frames per example, text order.

curation/vision_layout.py lays out frames with their text; this module decides what one training
example holds, so the video and images jobs' DoFns only call it:

- `VisionFrame`: the per-worker constants of every example (BOS/EOS, the `<vision>`/`</vision>`
  text ids of the separate layout, the vision vocabulary), and the tokens they add.
- `frames_per_example`, `frame_runs`: how many frames of a video fit one example of a stage (the
  text is repeated in each), and the runs of frames a long video is cut into.
- `video_example`, `image_example`: the token, vision-mask and loss-mask arrays of one example,
  BOS first and EOS last.
- `text_first`: whether the text goes before the vision (`before`, `after`, or `auto`: a stable
  coin flip per example, so reruns agree).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from curation.vision_layout import CODES_PER_FRAME, UnifiedVocab, Vocab, layout_image, layout_video

TOKENS_PER_FRAME = CODES_PER_FRAME + 1  # a frame's codes and its <eof> / <eov>
TEXT_POSITIONS = ("before", "after", "auto")


@dataclass(frozen=True)
class VisionFrame:
    """What every vision example of a job is framed with. `bos` / `eos`: the tokenizer's ids when
    the job adds them, else empty. `start` / `end`: the `<vision>` / `</vision>` text ids
    (separate layout); empty in the unified layout, whose one special id each the layout places."""

    bos: tuple[int, ...]
    eos: tuple[int, ...]
    start: tuple[int, ...]
    end: tuple[int, ...]
    vocab: Vocab

    @property
    def markers(self) -> int:
        """Delimiter ids the unified layout adds itself (its `<vision>` and `</vision>`)."""
        return 2 if isinstance(self.vocab, UnifiedVocab) else 0

    def overhead(self, text_tokens: int) -> int:
        """Tokens of one example that are not frames: BOS, the delimiters, the text, EOS."""
        return len(self.bos) + len(self.start) + len(self.end) + self.markers + text_tokens + len(self.eos)


def frames_per_example(stage_length: int, frame: VisionFrame, text_tokens: int) -> int:
    """How many frames fit one example of `stage_length` beside the text and the frame's tokens;
    0 when not even one does (the stage cannot take this video)."""
    return max(0, (stage_length - frame.overhead(text_tokens)) // TOKENS_PER_FRAME)


def frame_runs(num_frames: int, per_example: int) -> list[range]:
    """The frames of each example, in order: runs of `per_example` frames, the last shorter."""
    if per_example < 1:
        raise ValueError(f"per_example must be >= 1, got {per_example}")
    return [range(i, min(i + per_example, num_frames)) for i in range(0, num_frames, per_example)]


def video_tokens_in(num_frames: int, text_tokens: int) -> int:
    """The tokens a video brings in (its `tokens_in`): every frame's codes with its end token, and the text once."""
    return num_frames * TOKENS_PER_FRAME + text_tokens


def text_first(position: str, key: str) -> bool:
    """Whether the text goes before the vision: `before`, `after`, or `auto`, a coin flip on
    crc32(`key`) (stable across runs and workers; the key names the example)."""
    if position not in TEXT_POSITIONS:
        raise ValueError(f"text position must be one of {TEXT_POSITIONS}, got {position!r}")
    return position == "before" or (position == "auto" and zlib.crc32(key.encode()) % 2 == 0)


def video_example(
    frame: VisionFrame, frames: Sequence[np.ndarray], text: Sequence[int], before: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`(tokens int32, vision_mask int32, loss_mask float32)` of one video example: BOS, then the
    text before or after the frames, then EOS. Loss on the frames and on what follows them (the
    text after, EOS), never on BOS or on text that conditions the frames."""
    bos, eos, text = list(frame.bos), list(frame.eos), list(text)
    return layout_video(
        frames, bos + (text if before else []), (text if not before else []) + eos, list(frame.start), list(frame.end),
        frame.vocab, loss_on_text_before=False, loss_on_vision=True, loss_on_text_after=True,
    )


def image_example(
    frame: VisionFrame, codes: np.ndarray, caption: Sequence[int], caption_first: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`(tokens int32, vision_mask int32, loss_mask float32)` of one image-text pair, BOS first and
    EOS last. Captioning (`caption_first=False`): loss on the caption and EOS; generation: loss on
    the image part only, so not on EOS either."""
    tokens, vision, loss = layout_image(codes, list(caption), list(frame.start), list(frame.end), frame.vocab, caption_first=caption_first)
    nb, ne = len(frame.bos), len(frame.eos)
    tokens = np.concatenate([np.asarray(frame.bos, np.int32), tokens, np.asarray(frame.eos, np.int32)])
    vision = np.concatenate([np.zeros(nb, np.int32), vision, np.zeros(ne, np.int32)])
    loss = np.concatenate([np.zeros(nb, np.float32), loss, np.full(ne, float(not caption_first), np.float32)])
    return tokens, vision, loss


def blank_text_reject(text: str, what: str) -> str | None:
    """The reject detail of a vision record whose text (`what`: "caption", "text") is empty or only
    whitespace, or None when it has text. A vision-text pair without its text teaches nothing
    about the pair, and in the text-after direction its only text target is the EOS right after
    the vision block; the jobs reject it as `empty` unless `allow_empty_text`."""
    if text.strip():
        return None
    return f"{'no' if not text else 'a blank'} {what}: a vision-text pair needs its text (allow_empty_text keeps it vision-only)"
