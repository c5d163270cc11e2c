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

Two layout modes, chosen by the `vocab` object passed to `layout_video` / `layout_image`:

- **separate** (`VisionVocab`, the default; the LWM release's layout): described above. Vision
  ids live in their own id space, `<vision>` / `</vision>` are text ids the caller passes in.
- **unified** (`UnifiedVocab(text_vocab_size=T)`, for models with one vocabulary): every id is in
  one vocabulary of size `T + 8196`:

  | ids                | meaning                                   |
  |--------------------|-------------------------------------------|
  | `0 .. T-1`         | text (the text tokenizer's own ids)       |
  | `T + 0 .. T + 8191`| VQGAN code `v` is id `T + v`              |
  | `T + 8192`         | `<eof>`                                   |
  | `T + 8193`         | `<eov>`                                   |
  | `T + 8194`         | `<vision>` (an added special token)       |
  | `T + 8195`         | `</vision>` (an added special token)      |

  E.g. LLaMA-2 (T = 32,000): codes 32000..40191, `<eof>` 40192, `<eov>` 40193, `<vision>` 40194,
  `</vision>` 40195, vocabulary 40196. The delimiters are the single ids above, so
  `vision_start_ids` / `vision_end_ids` must be empty / None (or exactly `[vocab.vision_start]` /
  `[vocab.vision_end]`); anything else raises `ValueError`. Text ids must be `< T`.
  `vision_mask` is still 1 exactly on the codes and `<eof>` / `<eov>` (not on the delimiters), and
  the delimiters' loss follows `loss_on_vision`, as the markers do in separate mode.

`decode_layout(tokens, vision_mask, vocab)` is the exact inverse: it turns a row back into a list
of `Block`s, `("text", ids)` and `("vision", codes [frames, 256])`, in order. In separate mode the
`<vision>` / `</vision>` text ids stay in the neighbouring text blocks; in unified mode the
delimiter ids are consumed. Malformed rows raise `ValueError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import NamedTuple

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


    # Mode interface shared with `UnifiedVocab`: vision id = offset + code.
    @property
    def mode(self) -> str:
        return "separate"

    @property
    def offset(self) -> int:
        return 0


DEFAULT_VISION_VOCAB = VisionVocab()

UNIFIED_EXTRA = 8196  # ids a unified vocabulary adds after the text ids (codes, eof, eov, delimiters)


@dataclass(frozen=True)
class UnifiedVocab:
    """One vocabulary for text and vision: text ids `[0, text_vocab_size)`, then code `v` at
    `text_vocab_size + v` (v < 8192), `<eof>` = T+8192, `<eov>` = T+8193, `<vision>` = T+8194,
    `</vision>` = T+8195; `size` = T + 8196."""

    text_vocab_size: int
    codebook_size: int = 8192

    def __post_init__(self):
        if self.text_vocab_size <= 0 or self.codebook_size <= 0:
            raise ValueError(f"inconsistent unified vocabulary {self}")
        if self.size - 1 > np.iinfo(np.int32).max:
            raise ValueError(f"unified vocabulary {self} does not fit int32")

    @property
    def mode(self) -> str:
        return "unified"

    @property
    def offset(self) -> int:
        return self.text_vocab_size

    @property
    def eof(self) -> int:
        return self.text_vocab_size + self.codebook_size

    @property
    def eov(self) -> int:
        return self.text_vocab_size + self.codebook_size + 1

    @property
    def vision_start(self) -> int:
        return self.text_vocab_size + self.codebook_size + 2

    @property
    def vision_end(self) -> int:
        return self.text_vocab_size + self.codebook_size + 3

    @property
    def size(self) -> int:
        return self.text_vocab_size + self.codebook_size + 4


Vocab = VisionVocab | UnifiedVocab

# The strings a separate-layout row spells its delimiters with (as text, in the text tokenizer).
VISION_START, VISION_END = "<vision>", "</vision>"


def vision_vocab(layout: str, text_vocab_size: int) -> Vocab:
    """The vocabulary of a layout mode: "separate" (LWM's own 8448 ids) or "unified" (after T text ids)."""
    if layout not in ("separate", "unified"):
        raise ValueError(f"vision layout must be 'separate' or 'unified', got {layout!r}")
    return UnifiedVocab(text_vocab_size) if layout == "unified" else DEFAULT_VISION_VOCAB


def vocab_metadata(vocab: Vocab) -> dict:
    """What a vision shard says about its ids (`longctx.vision`): written by the vision pipelines,
    read by decode_layout users, and compared key by key by the trainer before it reads a shard."""
    meta = {"layout": vocab.mode, "offset": vocab.offset, "eof": vocab.eof, "eov": vocab.eov, "vocab_size": vocab.size,
            "codes_per_frame": CODES_PER_FRAME}
    if isinstance(vocab, UnifiedVocab):
        meta.update(vision_start_id=vocab.vision_start, vision_end_id=vocab.vision_end)
    else:
        meta.update(vision_start=VISION_START, vision_end=VISION_END)
    return meta


class Block(NamedTuple):
    """One piece of a decoded row: `("text", ids int32 [n])` or `("vision", codes int32
    [frames, 256])` (codes in `[0, codebook_size)`, offset removed)."""

    kind: str
    data: np.ndarray


def _ids(values: Sequence[int] | np.ndarray | None, what: str) -> np.ndarray:
    arr = np.asarray([] if values is None else values, dtype=np.int64).reshape(-1)
    if arr.size and arr.min() < 0:
        raise ValueError(f"{what}: negative token id {arr.min()}")
    if arr.size and arr.max() > np.iinfo(np.int32).max:
        raise ValueError(f"{what}: token id {arr.max()} does not fit int32")
    return arr


def _frame(codes: np.ndarray, i: int, vocab: Vocab) -> np.ndarray:
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
    vision_start_ids: Sequence[int] | np.ndarray | None = None,
    vision_end_ids: Sequence[int] | np.ndarray | None = None,
    vocab: Vocab = DEFAULT_VISION_VOCAB,
    *,
    loss_on_text_before: bool = False,
    loss_on_vision: bool = True,
    loss_on_text_after: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lay out one video (or image) with its text; returns `(tokens int32, vision_mask int32,
    loss_mask float32)`, all of the same length
    `len(before) + len(start) + frames * 257 + len(end) + len(after)` (in unified mode `start` and
    `end` are the single delimiter ids, see the module docstring).

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
    if vocab.mode == "unified":
        for arr, want, what in ((start, vocab.vision_start, "vision_start_ids"),
                                (end, vocab.vision_end, "vision_end_ids")):
            if arr.size and arr.tolist() != [want]:
                raise ValueError(
                    f"{what}: unified mode uses the single special id {want}; pass None / [] "
                    f"(or [{want}]), got {arr.tolist()}")
        start = np.asarray([vocab.vision_start], np.int64)
        end = np.asarray([vocab.vision_end], np.int64)
        for arr, what in ((before, "text_before_ids"), (after, "text_after_ids")):
            if arr.size and arr.max() >= vocab.text_vocab_size:
                raise ValueError(f"{what}: text id {arr.max()} is not below the text vocabulary "
                                 f"size {vocab.text_vocab_size} (unified mode)")

    n = len(frame_codes)
    per = CODES_PER_FRAME + 1
    vision = np.empty(n * per, np.int64)
    for i, codes in enumerate(frame_codes):
        vision[i * per:i * per + CODES_PER_FRAME] = _frame(codes, i, vocab) + vocab.offset
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
    vision_start_ids: Sequence[int] | np.ndarray | None = None,
    vision_end_ids: Sequence[int] | np.ndarray | None = None,
    vocab: Vocab = DEFAULT_VISION_VOCAB,
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


def _decode_video(seg: np.ndarray, start: int, vocab: Vocab) -> np.ndarray:
    """Codes [frames, 256] of one video: `(256 codes, <eof>)* 256 codes, <eov>` in absolute ids."""
    per = CODES_PER_FRAME + 1
    if len(seg) % per:
        raise ValueError(f"position {start}: a video of {len(seg)} vision tokens is not a whole "
                         f"number of {per}-token frames (a frame of the wrong length)")
    frames = seg.reshape(-1, per)
    ends = frames[:, -1]
    want = np.full(len(frames), vocab.eof, np.int64)
    want[-1] = vocab.eov
    bad = np.flatnonzero(ends != want)
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"position {start + i * per + CODES_PER_FRAME}: frame {i} ends with "
                         f"{int(ends[i])}, expected {'<eov>' if i == len(frames) - 1 else '<eof>'} "
                         f"({int(want[i])})")
    codes = frames[:, :CODES_PER_FRAME] - vocab.offset
    bad = np.flatnonzero((codes < 0) | (codes >= vocab.codebook_size))
    if bad.size:
        f, c = divmod(int(bad[0]), CODES_PER_FRAME)
        raise ValueError(f"position {start + f * per + c}: token {int(frames[f, c])} in frame {f} "
                         f"is not a vision code (a frame of the wrong length, or a stray id)")
    return codes.astype(np.int32)


def decode_layout(
    tokens: Sequence[int] | np.ndarray,
    vision_mask: Sequence[int] | np.ndarray,
    vocab: Vocab = DEFAULT_VISION_VOCAB,
) -> list[Block]:
    """The inverse of `layout_video` / `layout_image` (and of rows concatenating such layouts):
    `[Block("text", ids), Block("vision", codes [frames, 256]), ...]` in order; empty text is
    not emitted. Separate mode: `<vision>` / `</vision>` are text ids, left in the text blocks; a
    vision run may hold several videos back to back, each ending at `<eov>`, each its own block.
    Unified mode: every video sits between the `<vision>` and `</vision>` ids, which are consumed.

    Raises `ValueError` on a malformed row: lengths or mask values that disagree, a frame of the
    wrong length, a missing `<eof>` / `<eov>`, a vision id where `vision_mask` is 0 (or a text id
    where it is 1), unmatched delimiters (unified), ids outside the vocabulary.
    """
    tok = np.asarray(tokens)
    mask = np.asarray(vision_mask)
    if tok.ndim != 1 or mask.ndim != 1 or len(tok) != len(mask):
        raise ValueError(f"tokens {tok.shape} and vision_mask {mask.shape} must be 1-D of one length")
    if tok.size and not np.issubdtype(tok.dtype, np.integer):
        raise ValueError(f"tokens must be integers, got {tok.dtype}")
    tok = tok.astype(np.int64)
    if mask.size and not np.isin(mask, (0, 1)).all():
        raise ValueError("vision_mask must hold only 0 and 1")
    mask = mask.astype(bool)
    if tok.size and tok.min() < 0:
        raise ValueError(f"position {int(np.argmin(tok))}: negative token id {tok.min()}")
    unified = vocab.mode == "unified"
    vis = tok[mask]
    vis_ok = (((vis >= vocab.offset) & (vis < vocab.offset + vocab.codebook_size))
              | (vis == vocab.eof) | (vis == vocab.eov))
    if not vis_ok.all():
        pos = int(np.flatnonzero(mask)[np.flatnonzero(~vis_ok)[0]])
        raise ValueError(f"position {pos}: token {int(tok[pos])} has vision_mask 1 but is not a "
                         f"vision id (vision_mask inconsistent)")
    if unified:
        txt = tok[~mask]
        txt_ok = (txt < vocab.text_vocab_size) | (txt == vocab.vision_start) | (txt == vocab.vision_end)
        if not txt_ok.all():
            pos = int(np.flatnonzero(~mask)[np.flatnonzero(~txt_ok)[0]])
            raise ValueError(f"position {pos}: token {int(tok[pos])} has vision_mask 0 but is a "
                             f"vision id or outside the vocabulary (vision_mask inconsistent)")

    # Runs of equal mask value.
    n = len(tok)
    cuts = np.flatnonzero(np.diff(mask.astype(np.int8))) + 1 if n else np.empty(0, np.int64)
    bounds = [0, *cuts.tolist(), n] if n else [0]
    blocks: list[Block] = []
    for a, b in pairwise(bounds):
        if mask[a]:
            seg = tok[a:b]
            if unified:
                if a == 0 or tok[a - 1] != vocab.vision_start:
                    raise ValueError(f"position {a}: vision tokens not preceded by <vision> "
                                     f"({vocab.vision_start})")
                if b == n or tok[b] != vocab.vision_end:
                    raise ValueError(f"position {b}: vision tokens not followed by </vision> "
                                     f"({vocab.vision_end})")
                if (seg[:-1] == vocab.eov).any():
                    raise ValueError(f"position {a}: <eov> inside a video (unified mode holds one "
                                     f"video between <vision> and </vision>)")
            if seg[-1] != vocab.eov:
                raise ValueError(f"position {b - 1}: vision tokens end with {int(seg[-1])}, not "
                                 f"<eov> ({vocab.eov}) (missing <eov>)")
            eov_at = np.flatnonzero(seg == vocab.eov)
            lo = 0
            for e in eov_at.tolist():
                blocks.append(Block("vision", _decode_video(seg[lo:e + 1], a + lo, vocab)))
                lo = e + 1
            continue
        seg = tok[a:b]
        if not unified:
            blocks.append(Block("text", seg.astype(np.int32)))
            continue
        # Unified: split the text at the delimiters, which must sit right against a vision run.
        lo = 0
        for j in range(len(seg)):
            t = seg[j]
            if t != vocab.vision_start and t != vocab.vision_end:
                continue
            pos = a + j
            if t == vocab.vision_start and not (pos + 1 < n and mask[pos + 1]):
                raise ValueError(f"position {pos}: <vision> not followed by vision tokens")
            if t == vocab.vision_end and not (pos > 0 and mask[pos - 1]):
                raise ValueError(f"position {pos}: </vision> not preceded by vision tokens")
            if j > lo:
                blocks.append(Block("text", seg[lo:j].astype(np.int32)))
            lo = j + 1
        if len(seg) > lo:
            blocks.append(Block("text", seg[lo:].astype(np.int32)))
    return blocks
