"""One Reason enum, one home for event keys, and the vision examples' pure framing functions."""

from __future__ import annotations

import ast
import pickle
import zlib
from pathlib import Path

import numpy as np
import pytest

from curation.accounting import Reason, Reject, as_reason
from curation.events import (
    CHUNK,
    PartCount,
    StageCount,
    is_max,
    max_event,
    part_event,
    rejected_counts,
    rejected_event,
    stage_event,
)
from curation.manifest import job_counts, part_counts
from curation.video import VIDEO_ERROR_REASONS, VideoError
from curation.vision_examples import (
    VisionFrame,
    frame_runs,
    frames_per_example,
    image_example,
    text_first,
    video_example,
    video_tokens_in,
)
from curation.vision_layout import CODES_PER_FRAME, DEFAULT_VISION_VOCAB, UnifiedVocab, decode_layout
from qa_synth.parse import QA_REASONS, InvalidQA

ROOT = Path(__file__).resolve().parents[1]
CODE_DIRS = ("curation", "pipelines", "qa_synth", "inspection", "evals", "training", "longctx")
EVENT_WRITERS = ("curation", "pipelines", "qa_synth")  # where job events are built and summed


def _sources(dirs: tuple[str, ...] = CODE_DIRS):
    for folder in dirs:
        for path in sorted((ROOT / folder).rglob("*.py")):
            yield path, ast.parse(path.read_text(), str(path))


# ----------------------------------------------------------------------------- reasons


@pytest.mark.parametrize("reason", list(Reason))
def test_every_reason_makes_a_reject_that_writes_its_plain_value(reason):
    for given in (reason, reason.value):
        reject = Reject("src", "id", given)
        assert reject.reason is reason
        assert reject.as_json()["reason"] == reason.value and type(reject.as_json()["reason"]) is str
        assert reject.counter == f"rejected.{reason.value}"


def test_an_unknown_reason_is_refused_where_the_reject_is_made():
    with pytest.raises(ValueError, match="unknown reject reason 'no_such_reason'"):
        Reject("src", "id", "no_such_reason")
    with pytest.raises(ValueError, match="unknown reject reason"):
        Reject("src", "id", None)  # type: ignore[arg-type]
    assert as_reason("near_duplicate") is Reason.NEAR_DUPLICATE


def test_reasons_every_job_writes_are_members_with_unchanged_values():
    # The strings the rejects files and manifests held before the enum took them in.
    written = {"unreadable_video", "no_frames", "decode_error", "unreadable_image", "no_valid_chunks", "not_generated",
               "does_not_fit", "unparsable", "empty_question", "empty_answer", "answer_too_long",
               "answer_not_grounded", "duplicate_question", "invalid_unicode", "no_stage", "corrupt_file"}
    assert written <= {r.value for r in Reason}
    assert {r.value for r in VIDEO_ERROR_REASONS} == {"unreadable_video", "no_frames", "decode_error"}
    assert {r.value for r in QA_REASONS} == {"unparsable", "empty_question", "empty_answer", "answer_too_long",
                                             "answer_not_grounded", "duplicate_question", "invalid_unicode"}


def test_no_reject_in_the_code_names_a_reason_by_a_bare_string():
    """Every `Reject(...)` reason in the code is an expression (Reason.X, err.reason, ...), never a
    string literal; and every `Reason.X` the code names exists."""
    literal, missing = [], []
    for path, tree in _sources():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Reject":
                args = node.args[2:3] + [k.value for k in node.keywords if k.arg == "reason"]
                literal += [f"{path.name}:{node.lineno}" for a in args if isinstance(a, ast.Constant)]
            if isinstance(node, ast.Attribute) and getattr(node.value, "id", None) == "Reason" and node.attr.isupper():
                if node.attr not in Reason.__members__:
                    missing.append(f"{path.name}:{node.lineno} Reason.{node.attr}")
    assert literal == [] and missing == []


def test_video_and_qa_errors_carry_members_and_survive_pickling():
    err = VideoError("no_frames", "x.mp4: the video has no frames")
    assert err.reason is Reason.NO_FRAMES and str(err) == "no_frames: x.mp4: the video has no frames"
    with pytest.raises(ValueError, match="unknown VideoError reason"):
        VideoError("no_stage")  # a member, but not a video's
    qa = InvalidQA("unparsable", "no JSON")
    assert qa.reason is Reason.UNPARSABLE and str(qa) == "unparsable: no JSON"
    with pytest.raises(ValueError, match="unknown InvalidQA reason"):
        InvalidQA("does_not_fit")
    for obj in (err, qa):
        back = pickle.loads(pickle.dumps(obj))
        assert (type(back), back.reason, back.detail, str(back)) == (type(obj), obj.reason, obj.detail, str(obj))
    reject = Reject("s", "b#chunk3", Reason.DOES_NOT_FIT, unit=CHUNK, records=2)
    assert pickle.loads(pickle.dumps(reject)) == reject
    assert reject.counter == "chunk.rejected.does_not_fit"


# ----------------------------------------------------------------------------- events


def test_event_keys_keep_their_spelling():
    assert stage_event("v2k", StageCount.DOCUMENTS) == "stage.v2k.documents" == stage_event("v2k", "documents")
    assert max_event(stage_event("1k", StageCount.GROUP_TOKENS)) == "max.stage.1k.group_tokens"
    assert is_max("max.stage.1k.group_tokens") and not is_max("stage.1k.rows")
    assert part_event(CHUNK, PartCount.ACCEPTED) == "chunk.accepted"
    assert rejected_event(Reason.NO_STAGE) == "rejected.no_stage"
    assert rejected_event("unparsable", CHUNK) == "chunk.rejected.unparsable"
    with pytest.raises(ValueError):
        stage_event("1k", "document")  # a typo cannot make a new key


def test_readers_parse_what_the_writers_build():
    counters = {
        "read": 5, "kept": 2,
        rejected_event(Reason.NO_STAGE): 1, rejected_event(Reason.MALFORMED_JSON): 2, rejected_event(Reason.EMPTY): 0,
        part_event(CHUNK, PartCount.READ): 7, part_event(CHUNK, PartCount.ACCEPTED): 4,
        rejected_event(Reason.UNPARSABLE, CHUNK): 2, rejected_event(Reason.NOT_GENERATED, CHUNK): 1,
    }
    assert rejected_counts(counters) == {"no_stage": 1, "malformed_json": 2}
    counts = job_counts(counters)
    counts.check()
    assert dict(counts.rejected) == {"no_stage": 1, "malformed_json": 2}
    assert part_counts(counters, CHUNK) == {"read": 7, "accepted": 4, "rejected": {"not_generated": 1, "unparsable": 2}}


def test_no_event_key_is_spelled_as_an_fstring_outside_events():
    """Event keys are built by curation/events.py only: no f-string elsewhere in the jobs' code
    starts like one."""
    prefixes = ("stage.", "max.", "rejected.", "chunk.")
    found = []
    for path, tree in _sources(EVENT_WRITERS):
        if path.name == "events.py":
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.JoinedStr) and node.values:
                head = node.values[0]
                text = head.value if isinstance(head, ast.Constant) and isinstance(head.value, str) else ""
                if text.startswith(prefixes) or any(isinstance(v, ast.Constant) and ".rejected." in str(v.value) for v in node.values):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert found == []


# ----------------------------------------------------------------------------- vision examples


def _frame(unified: bool = False) -> VisionFrame:
    if unified:
        return VisionFrame(bos=(1,), eos=(2,), start=(), end=(), vocab=UnifiedVocab(1000))
    return VisionFrame(bos=(1,), eos=(2,), start=(30, 31, 32), end=(40, 41, 42, 43), vocab=DEFAULT_VISION_VOCAB)


def _codes(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 8192, (16, 16)).astype(np.int32) for _ in range(n)]


def test_frames_per_example_counts_the_text_and_delimiters():
    # bos 1 + <vision> 3 + </vision> 4 + text 10 + eos 1 = 19; (2048 - 19) // 257 = 7.
    assert frames_per_example(2048, _frame(), 10) == 7
    # unified: bos 1 + 2 special ids + text 10 + eos 1 = 14; (2048 - 14) // 257 = 7; 1812 - 14 = 1798 = 6 * 257 + 256.
    assert frames_per_example(2048, _frame(unified=True), 10) == 7
    assert frames_per_example(1812, _frame(unified=True), 10) == 6
    assert frames_per_example(200, _frame(), 10) == 0  # not one frame fits


@pytest.mark.parametrize("unified", [False, True])
@pytest.mark.parametrize("length,text", [(2048, 10), (1100, 0), (600, 57)])
def test_an_example_of_frames_per_example_frames_fits_and_one_more_does_not(unified, length, text):
    frame, ids = _frame(unified), list(range(100, 100 + text))
    per = frames_per_example(length, frame, text)
    assert per >= 1
    tokens, _, _ = video_example(frame, _codes(per), ids, before=True)
    assert len(tokens) <= length < len(video_example(frame, _codes(per + 1), ids, before=True)[0])


def test_frame_runs_cut_a_long_video_into_stage_sized_runs():
    assert frame_runs(20, 7) == [range(0, 7), range(7, 14), range(14, 20)]
    assert frame_runs(7, 7) == [range(0, 7)]
    assert frame_runs(0, 3) == []
    with pytest.raises(ValueError):
        frame_runs(5, 0)
    assert video_tokens_in(5, 10) == 5 * (CODES_PER_FRAME + 1) + 10


@pytest.mark.parametrize("unified", [False, True])
@pytest.mark.parametrize("before", [True, False])
def test_video_example_wraps_bos_eos_and_decodes_back(unified, before):
    frame, text, codes = _frame(unified), [100, 101, 102], _codes(3, seed=1)
    tokens, vision, loss = video_example(frame, codes, text, before)
    assert tokens.dtype == np.int32 and vision.dtype == np.int32 and loss.dtype == np.float32
    assert tokens[0] == 1 and tokens[-1] == 2 and loss[0] == 0 and loss[-1] == 1 and vision[[0, -1]].tolist() == [0, 0]
    assert len(tokens) == frame.overhead(len(text)) + 3 * (CODES_PER_FRAME + 1)
    blocks = decode_layout(tokens, vision, frame.vocab)
    (video,) = [b.data for b in blocks if b.kind == "vision"]
    np.testing.assert_array_equal(video, np.stack([c.reshape(-1) for c in codes]))
    text_ids = np.concatenate([b.data for b in blocks if b.kind == "text"]).tolist()
    delimiters = [] if unified else [30, 31, 32, 40, 41, 42, 43]
    assert sorted(text_ids) == sorted([1, 2, *text, *delimiters])
    # Loss on the text only when it follows the frames.
    text_at = [i for i, t in enumerate(tokens.tolist()) if t in text and not vision[i]]
    assert {float(loss[i]) for i in text_at} == {0.0 if before else 1.0}


@pytest.mark.parametrize("unified", [False, True])
def test_image_example_loss_follows_the_task(unified):
    frame, caption, codes = _frame(unified), [100, 101, 102, 103], _codes(1, seed=2)[0]
    delimiters = 2 if unified else 7
    captioning = image_example(frame, codes, caption, caption_first=False)
    generation = image_example(frame, codes, caption, caption_first=True)
    for tokens, vision, loss in (captioning, generation):
        assert len(tokens) == 1 + len(caption) + delimiters + CODES_PER_FRAME + 1 + 1
        assert tokens[0] == 1 and tokens[-1] == 2 and vision[[0, -1]].tolist() == [0, 0] and loss[0] == 0
        assert int(vision.sum()) == CODES_PER_FRAME + 1
    # Captioning trains on the caption and EOS; generation on the image and its delimiters, not EOS.
    assert captioning[2][-1] == 1 and float(captioning[2].sum()) == len(caption) + 1
    assert generation[2][-1] == 0 and float(generation[2].sum()) == delimiters + CODES_PER_FRAME + 1


def test_text_first_is_a_stable_choice_per_key():
    assert text_first("before", "k") and not text_first("after", "k")
    keys = [f"doc{i}@f0" for i in range(16)]
    assert [text_first("auto", k) for k in keys] == [zlib.crc32(k.encode()) % 2 == 0 for k in keys]
    assert len({text_first("auto", k) for k in keys}) == 2
    with pytest.raises(ValueError, match="text position"):
        text_first("middle", "k")
