"""Video frames (sampling, resize + crop, streaming through decord, corrupt inputs) and the vision
token layout. The test videos are written here with PyAV, so no sample files are needed."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

# The synthetic video writer is shared with benchmarks/video_throughput.py (tests/test_video_pipeline.py
# and tests/test_vision_rejects.py import `_write_video` from here).
from benchmarks.synthetic import square_center as _square_center, write_video as _write_video
from curation.vision_layout import VisionVocab, layout_image, layout_video
from curation.video import (
    VideoError,
    iter_video_frames,
    probe_video,
    resize_center_crop,
    sample_indices,
)

av = pytest.importorskip("av", reason="PyAV writes the test videos (pip install av)")
decord = pytest.importorskip("decord", reason="decord reads videos (pip install decord)")

FPS = 10
NUM = 40


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("videos")
    return {
        "landscape": _write_video(d / "landscape.mp4", 320, 180),
        "portrait": _write_video(d / "portrait.mp4", 180, 320),
        "faststart": _write_video(d / "faststart.mp4", 320, 180, n=200, faststart=True),
    }


# ----------------------------------------------------------------------------- sampling


def test_sample_indices_counts_and_uniformity():
    # 40 frames at 10 fps = 4 s; 1 fps -> 4 frames, one in the middle of each second.
    assert sample_indices(40, 10, target_fps=1).tolist() == [5, 15, 25, 35]
    assert len(sample_indices(40, 10, target_fps=2.5)) == 10
    assert sample_indices(40, 10).tolist() == list(range(40))          # every frame
    assert sample_indices(40, 10, target_fps=30).tolist() == list(range(40))  # capped
    assert sample_indices(40, 10, count=8).tolist() == [2, 7, 12, 17, 22, 27, 32, 37]
    assert sample_indices(5, 10, count=100).tolist() == [0, 1, 2, 3, 4]
    assert len(sample_indices(3, 30, target_fps=0.01)) == 1              # at least one frame
    assert sample_indices(0, 10, target_fps=1).size == 0
    # max_frames keeps the whole span, not a prefix.
    capped = sample_indices(10_000, 25, target_fps=4, max_frames=16)
    assert len(capped) == 16 and capped[0] < 10_000 / 16 and capped[-1] > 10_000 * 15 / 16
    for n, c in [(1000, 7), (997, 64), (64, 64), (65, 64), (12_345, 1000)]:
        idx = sample_indices(n, 30, count=c)
        gaps = np.diff(idx)
        assert len(idx) == c and idx.dtype == np.int64
        assert idx[0] >= 0 and idx[-1] < n and np.all(gaps >= 1)
        assert gaps.max() - gaps.min() <= 1                               # uniform
        np.testing.assert_array_equal(idx, sample_indices(n, 30, count=c))  # deterministic
    with pytest.raises(ValueError):
        sample_indices(40, 10, target_fps=1, count=4)
    with pytest.raises(ValueError):
        sample_indices(40, 0, target_fps=1)
    with pytest.raises(ValueError):
        sample_indices(40, 10, count=0)


# ----------------------------------------------------------------------------- resize


def test_resize_center_crop_shapes_and_content():
    rng = np.random.default_rng(0)
    land = rng.integers(0, 255, (3, 180, 320, 3), dtype=np.uint8)
    port = rng.integers(0, 255, (2, 320, 180, 3), dtype=np.uint8)
    assert resize_center_crop(land).shape == (3, 256, 256, 3)
    assert resize_center_crop(port, size=64).shape == (2, 64, 64, 3)
    assert resize_center_crop(land[0]).shape == (256, 256, 3)
    assert resize_center_crop(land).dtype == np.uint8
    # The crop keeps the center: a frame whose side bands are black and center white.
    f = np.zeros((1, 100, 300, 3), np.uint8)
    f[:, :, 100:200] = 255
    out = resize_center_crop(f, size=50)
    # (the bicubic kernel reaches a pixel past the crop's edge, as a resize-then-crop would)
    assert out[:, :, 1:-1].min() >= 250 and out.min() >= 200
    # Already square at the target size: unchanged.
    sq = rng.integers(0, 255, (1, 32, 32, 3), dtype=np.uint8)
    np.testing.assert_array_equal(resize_center_crop(sq, size=32), sq)
    with pytest.raises(ValueError):
        resize_center_crop(land.astype(np.float32))


# ----------------------------------------------------------------------------- streaming


def _bright_centroid(frame: np.ndarray) -> tuple[float, float]:
    ys, xs = np.nonzero(frame.mean(-1) > 200)
    assert xs.size, "the bright square is missing"
    return float(xs.mean()), float(ys.mean())


@pytest.mark.parametrize("name,w,h", [("landscape", 320, 180), ("portrait", 180, 320)])
def test_streamed_frames_match_decord_and_geometry(videos, name, w, h):
    path = videos[name]
    info = probe_video(path)
    assert (info.num_frames, info.height, info.width) == (NUM, h, w)
    assert info.fps == pytest.approx(FPS)
    idx = sample_indices(info.num_frames, info.fps, target_fps=5)   # 20 frames
    batches = list(iter_video_frames(path, idx, batch=6))
    assert [len(b) for b in batches] == [6, 6, 6, 2]
    frames = np.concatenate(batches)
    assert frames.shape == (20, 256, 256, 3) and frames.dtype == np.uint8

    direct = decord.VideoReader(str(path), ctx=decord.cpu(0)).get_batch(idx.tolist()).asnumpy()
    np.testing.assert_array_equal(frames, resize_center_crop(direct, 256))

    # The square lands where short-side resize + center crop puts it.
    side = min(w, h)
    scale = 256 / side
    left, top = (w - side) / 2, (h - side) / 2
    for frame, t in zip(frames, idx):
        cx, cy = _square_center(int(t), w, h)
        gx, gy = _bright_centroid(frame)
        assert abs(gx - (cx - left) * scale + 0.5) < 3 and abs(gy - (cy - top) * scale + 0.5) < 3


def test_streaming_asks_decord_for_at_most_batch_frames(videos, monkeypatch):
    asked: list[int] = []
    real = decord.VideoReader

    class Spy(real):
        def get_batch(self, indices):
            asked.append(len(indices))
            return super().get_batch(indices)

    monkeypatch.setattr(decord, "VideoReader", Spy)
    it = iter_video_frames(videos["landscape"], range(NUM), batch=4)
    first = next(it)
    assert first.shape == (4, 256, 256, 3) and asked == [4]  # lazy: one batch decoded so far
    rest = list(it)
    assert sum(len(b) for b in rest) == NUM - 4
    assert max(asked) <= 4 and sum(asked) == NUM


def test_callable_indices_size_none_and_fsspec_url(videos):
    import fsspec

    data = videos["portrait"].read_bytes()
    fs = fsspec.filesystem("memory")
    with fs.open("/videos/portrait.mp4", "wb") as fh:
        fh.write(data)
    url = "memory://videos/portrait.mp4"
    a = np.concatenate(list(iter_video_frames(
        url, lambda n, fps: sample_indices(n, fps, count=5), batch=2)))
    b = np.concatenate(list(iter_video_frames(videos["portrait"], sample_indices(NUM, FPS, count=5))))
    assert a.shape == (5, 256, 256, 3)
    np.testing.assert_array_equal(a, b)
    raw = next(iter_video_frames(videos["portrait"], [0, 1], size=None))
    assert raw.shape == (2, 320, 180, 3)
    with pytest.raises(IndexError):
        next(iter_video_frames(videos["portrait"], [0, NUM]))


# ----------------------------------------------------------------------------- corrupt inputs


def _reason(path, indices=range(NUM)) -> str:
    with pytest.raises(VideoError) as err:
        for _ in iter_video_frames(path, indices, batch=8):
            pass
    return err.value.reason


def test_corrupt_inputs_raise_video_error(videos, tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(np.random.default_rng(1).integers(0, 256, 50_000, dtype=np.uint8).tobytes())
    data = videos["landscape"].read_bytes()            # index (moov) at the end
    half = tmp_path / "half.mp4"
    half.write_bytes(data[: len(data) // 2])

    assert _reason(empty) == "unreadable_video"
    assert _reason(garbage) == "unreadable_video"
    assert _reason(half) == "unreadable_video"
    assert _reason(tmp_path / "missing.mp4") == "unreadable_video"
    assert _reason("memory://no/such/video.mp4") == "unreadable_video"
    with pytest.raises(VideoError) as err:
        probe_video(garbage)
    assert err.value.reason == "unreadable_video" and "garbage.mp4" in err.value.detail

    # Index at the front (faststart), cut in half: decord 0.6 scans every packet when it opens
    # the file, so this fails in the constructor too (a DECORDError there, not a RuntimeError).
    fs_data = videos["faststart"].read_bytes()
    cut = tmp_path / "cut_after_index.mp4"
    cut.write_bytes(fs_data[: len(fs_data) // 2])
    assert _reason(cut, indices=range(200)) in ("decode_error", "unreadable_video")
    # Intact container, damaged frame data: opens, then decoding raises DECORDError.
    zeroed = tmp_path / "zeroed.mp4"
    zeroed.write_bytes(_zero_middle(fs_data))
    assert probe_video(zeroed).num_frames == 200
    assert _reason(zeroed, indices=range(200)) == "decode_error"


def _zero_middle(data: bytes, span: int = 4000) -> bytes:
    mid = len(data) // 2
    return data[:mid] + bytes(span) + data[mid + span:]


def test_corrupt_inputs_never_crash_the_process(videos, tmp_path):
    """The same corrupt files in a fresh interpreter: it must exit normally, printing reasons."""
    data = videos["faststart"].read_bytes()
    land = videos["landscape"].read_bytes()
    files = {
        "empty": b"",
        "garbage": bytes(range(256)) * 200,
        "half": land[: len(land) // 2],
        "cut": data[: len(data) // 2],
        "tail": data[len(data) // 3:],
        "zeroed": _zero_middle(data),
    }
    for name, payload in files.items():
        (tmp_path / f"{name}.mp4").write_bytes(payload)
    code = textwrap.dedent(f"""
        import sys
        from curation.video import VideoError, iter_video_frames
        for name in {sorted(files)!r}:
            try:
                n = sum(len(b) for b in iter_video_frames(r"{tmp_path}/" + name + ".mp4", range(200)))
                print(name, "ok", n)
            except (VideoError, IndexError) as err:
                print(name, getattr(err, "reason", "index_error"))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = dict(line.split(" ", 1) for line in proc.stdout.strip().splitlines())
    assert set(lines) == set(files)
    assert lines["empty"] == lines["garbage"] == lines["half"] == "unreadable_video"
    assert lines["zeroed"] == "decode_error"


def test_file_names_that_are_not_utf8(videos, tmp_path):
    """A local file whose name is not UTF-8 (Python holds it with a lone surrogate, `\\udcff`)
    is read like any other; a missing one is a VideoError whose detail is valid UTF-8."""
    import os

    odd = os.fsdecode(os.fsencode(str(tmp_path)) + b"/clip\xff.mp4")
    assert "\udcff" in odd
    Path(odd).write_bytes(videos["landscape"].read_bytes())
    frames = np.concatenate(list(iter_video_frames(odd, range(0, NUM, 10), batch=2)))
    expected = np.concatenate(list(iter_video_frames(videos["landscape"], range(0, NUM, 10), batch=2)))
    assert np.array_equal(frames, expected)
    assert probe_video(Path(odd)).num_frames == NUM
    for missing in (odd.replace("clip", "gone"), str(tmp_path / "gone\ud800.mp4")):
        with pytest.raises(VideoError) as err:
            for _ in iter_video_frames(missing, [0]):
                pass
        assert err.value.reason == "unreadable_video"
        err.value.detail.encode("utf-8")  # writable as is: the surrogate is escaped
        assert "\\udc" in err.value.detail or "\\ud800" in err.value.detail


def test_video_error_reasons_and_pickling():
    import pickle

    err = VideoError("no_frames", "x.mp4: the video has no frames")
    again = pickle.loads(pickle.dumps(err))
    assert (again.reason, again.detail) == ("no_frames", "x.mp4: the video has no frames")
    with pytest.raises(ValueError):
        VideoError("whatever")


# ----------------------------------------------------------------------------- layout


def _codes(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 8192, (16, 16)) for _ in range(n)]


def test_layout_video_positions_and_masks():
    vocab = VisionVocab()
    frames = _codes(3)
    before, start, end, after = [1, 5, 6], [100, 101], [102, 103], [7, 8, 9, 2]
    tokens, vmask, loss = layout_video(frames, before, after, start, end)
    n = 3
    assert tokens.dtype == np.int32 and vmask.dtype == np.int32 and loss.dtype == np.float32
    assert len(tokens) == len(vmask) == len(loss) == 3 + 2 + n * 257 + 2 + 4
    assert vmask.sum() == n * 257
    v0 = len(before) + len(start)
    assert vmask[:v0].sum() == 0 and vmask[v0:v0 + n * 257].all() and vmask[v0 + n * 257:].sum() == 0
    assert tokens[:v0].tolist() == before + start
    assert tokens[v0 + n * 257:].tolist() == end + after
    for i in range(n):
        block = tokens[v0 + i * 257: v0 + (i + 1) * 257]
        np.testing.assert_array_equal(block[:256], frames[i].reshape(-1))  # raster order
        assert block[256] == (vocab.eov if i == n - 1 else vocab.eof)
    assert (tokens == vocab.eof).sum() == n - 1 and (tokens == vocab.eov).sum() == 1
    # Default loss: not on the conditioning text, on everything after it.
    assert loss[:3].sum() == 0 and loss[3:].all()
    # video -> text: loss only on the text after.
    _, _, loss2 = layout_video(frames, before, after, start, end, loss_on_vision=False)
    assert loss2.sum() == len(after) and loss2[-len(after):].all()
    # Flat [256] codes give the same layout.
    flat = layout_video([f.reshape(-1) for f in frames], before, after, start, end)
    np.testing.assert_array_equal(flat[0], tokens)


def test_layout_single_frame_and_validation():
    [codes] = _codes(1, seed=3)
    tokens, vmask, loss = layout_video([codes], [], [], [100], [101])
    assert len(tokens) == 1 + 257 + 1 and tokens[257] == 8193 and vmask.sum() == 257
    assert 8192 not in tokens.tolist()
    for bad in ([np.full((16, 16), 8192)], [np.zeros((8, 8), np.int64)], [np.full(256, -1)],
                [np.zeros((16, 16), np.float32)], []):
        with pytest.raises(ValueError):
            layout_video(bad, [], [], [100], [101])


def test_layout_image_both_directions():
    [codes] = _codes(1, seed=4)
    caption = [11, 12, 13]
    # image -> caption: loss only on the caption.
    tokens, vmask, loss = layout_image(codes, caption, [100], [101])
    assert tokens[:1].tolist() == [100] and tokens[-4:].tolist() == [101, 11, 12, 13]
    assert tokens[257] == 8193 and vmask.sum() == 257
    assert loss.sum() == 3 and loss[-3:].all()
    # caption -> image: loss on the image part only.
    tokens, vmask, loss = layout_image(codes, caption, [100], [101], caption_first=True)
    assert tokens[:4].tolist() == [11, 12, 13, 100] and tokens[-1] == 101
    assert vmask[4:4 + 257].all() and vmask.sum() == 257
    assert loss[:3].sum() == 0 and loss[3:].all() and loss.sum() == 1 + 257 + 1


# ----------------------------------------------------------------------------- layout modes, decoder

from hypothesis import given, settings
from hypothesis import strategies as st

from curation.vision_layout import UnifiedVocab, decode_layout

_SEP = VisionVocab()
_UNI = UnifiedVocab(32000)
_START, _END = [32001, 32002], [32003]  # separate mode: the text ids of "<vision>" / "</vision>"


def _lay(mode: str, frames, before, after, **kw):
    if mode == "separate":
        return layout_video(frames, before, after, _START, _END, vocab=_SEP, **kw)
    return layout_video(frames, before, after, None, None, vocab=_UNI, **kw)


def _expected(mode: str, frames, before, after) -> list[tuple[str, list]]:
    pre, post = (before + _START, _END + after) if mode == "separate" else (before, after)
    out = [("text", pre)] if pre else []
    out.append(("vision", np.stack([np.asarray(f).reshape(-1) for f in frames]).tolist()))
    return out + ([("text", post)] if post else [])


def _plain(blocks) -> list[tuple[str, list]]:
    for b in blocks:
        assert b.data.dtype == np.int32
        assert b.data.ndim == (2 if b.kind == "vision" else 1)
    return [(b.kind, b.data.tolist()) for b in blocks]


def _frames_from(seed: int, n: int, pattern: str) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    if pattern == "edges":  # the codebook's first and last ids, next to eof/eov
        return [rng.choice(np.array([0, 1, 8190, 8191]), (16, 16)) for _ in range(n)]
    return [rng.integers(0, 8192, (16, 16) if i % 2 else 256) for i in range(n)]


@settings(max_examples=60, deadline=None)
@given(mode=st.sampled_from(["separate", "unified"]), n=st.integers(1, 5),
       seed=st.integers(0, 2**32 - 1), pattern=st.sampled_from(["random", "edges"]),
       before=st.lists(st.integers(0, 31999), max_size=6),
       after=st.lists(st.integers(0, 31999), max_size=6))
def test_decode_layout_round_trip(mode, n, seed, pattern, before, after):
    frames = _frames_from(seed, n, pattern)
    vocab = _SEP if mode == "separate" else _UNI
    tokens, vmask, loss = _lay(mode, frames, before, after)
    assert vmask.sum() == n * 257 and len(loss) == len(tokens)
    assert _plain(decode_layout(tokens, vmask, vocab)) == _expected(mode, frames, before, after)
    # The image layout (one frame, both directions) inverts too.
    start, end = (_START, _END) if mode == "separate" else (None, None)
    for caption_first in (False, True):
        t, m, _ = layout_image(frames[0], before, start, end, vocab, caption_first=caption_first)
        b, a = (before, []) if caption_first else ([], before)
        assert _plain(decode_layout(t, m, vocab)) == _expected(mode, frames[:1], b, a)


def test_unified_layout_ids_and_masks():
    frames = _codes(2, seed=7)
    tokens, vmask, loss = layout_video(frames, [1, 5], [7, 2], None, None, vocab=_UNI)
    assert (_UNI.eof, _UNI.eov, _UNI.vision_start, _UNI.vision_end, _UNI.size) == (
        40192, 40193, 40194, 40195, 40196)
    assert tokens.dtype == np.int32 and len(tokens) == 2 + 1 + 2 * 257 + 1 + 2
    assert tokens[:3].tolist() == [1, 5, 40194] and tokens[-3:].tolist() == [40195, 7, 2]
    np.testing.assert_array_equal(tokens[3:3 + 256], frames[0].reshape(-1) + 32000)
    assert tokens[3 + 256] == 40192 and tokens[3 + 2 * 257 - 1] == 40193
    assert vmask[3:3 + 2 * 257].all() and vmask.sum() == 2 * 257  # delimiters are not vision
    assert loss[:2].sum() == 0 and loss[2:].all()
    # The delimiters may also be passed as their own single ids; anything else is refused.
    same = layout_video(frames, [1, 5], [7, 2], [40194], [40195], vocab=_UNI)
    np.testing.assert_array_equal(same[0], tokens)
    with pytest.raises(ValueError):
        layout_video(frames, [1], [2], [100], None, vocab=_UNI)
    with pytest.raises(ValueError):
        layout_video(frames, [1], [2], None, [40194, 40195], vocab=_UNI)
    with pytest.raises(ValueError):  # text ids must lie below the text vocabulary
        layout_video(frames, [32000], [2], None, None, vocab=_UNI)
    # The separate default is unchanged.
    sep = layout_video(frames, [1, 5], [7, 2], [100], [101])
    assert sep[0][3 + 256] == 8192 and sep[0][3 + 2 * 257 - 1] == 8193


def test_decode_layout_back_to_back_videos_separate():
    a, b = _codes(2, seed=8), _codes(1, seed=9)
    t1, m1, _ = layout_video(a, [3], [], None, None)
    t2, m2, _ = layout_video(b, [], [4], None, None)
    blocks = _plain(decode_layout(np.concatenate([t1, t2]), np.concatenate([m1, m2])))
    assert [k for k, _ in blocks] == ["text", "vision", "vision", "text"]
    assert np.array_equal(blocks[1][1], np.stack([f.reshape(-1) for f in a]))
    assert np.array_equal(blocks[2][1], b[0].reshape(1, -1))
    assert decode_layout([], []) == []


def _corrupt(mode: str):
    """(tokens, vision_mask) variants of a valid 2-frame row, each malformed in one way."""
    tokens, vmask, _ = _lay(mode, _codes(2, seed=11), [1, 2], [3])
    vocab = _SEP if mode == "separate" else _UNI
    v0 = int(np.flatnonzero(vmask)[0])
    eof_at, eov_at = v0 + 256, v0 + 2 * 257 - 1

    def edit(pos, value=None, mask=None):
        t, m = tokens.copy(), vmask.copy()
        if value is not None:
            t[pos] = value
        if mask is not None:
            m[pos] = mask
        return t, m

    cases = {
        "code dropped (frame of the wrong length)": (np.delete(tokens, v0 + 5), np.delete(vmask, v0 + 5)),
        "eof replaced by a code": edit(eof_at, vocab.offset + 5),
        "eov replaced by eof": edit(eov_at, vocab.eof),
        "eov replaced by a code": edit(eov_at, vocab.offset + 5),
        "eov dropped": (np.delete(tokens, eov_at), np.delete(vmask, eov_at)),
        "code in the reserved range": edit(v0 + 3, vocab.eov + 1 if mode == "separate" else 40195),
        "mask off on a code": edit(v0 + 3, mask=0),
        "mask off on eov": edit(eov_at, mask=0),
        "mask on a text token": edit(0, mask=1),
        "mask value 2": edit(v0, mask=2),
        "mask too short": (tokens, vmask[:-1]),
        "negative id": edit(0, -1),
    }
    if mode == "unified":  # (in separate mode this is two videos back to back, a valid row)
        cases.update({
            "eof replaced by eov": edit(eof_at, vocab.eov),
            "<vision> replaced by text": edit(v0 - 1, 5),
            "</vision> replaced by text": edit(eov_at + 1, 5),
            "stray </vision> in the text": edit(0, _UNI.vision_end),
            "stray <vision> at the end": edit(len(tokens) - 1, _UNI.vision_start),
            "vision id where the mask is 0": edit(0, 32000 + 7),
            "id beyond the vocabulary": edit(0, _UNI.size),
        })
    return cases


@pytest.mark.parametrize("mode", ["separate", "unified"])
def test_decode_layout_rejects_malformed_rows(mode):
    vocab = _SEP if mode == "separate" else _UNI
    for name, (t, m) in _corrupt(mode).items():
        with pytest.raises(ValueError):
            decode_layout(t, m, vocab)
            pytest.fail(f"{mode}: {name} was accepted")
