"""The video pipeline: manifest rows (a video and its text) -> frames sampled and streamed through
decord -> VQGAN codes -> `<vision>` codes + `<eof>`/`<eov>` `</vision>` laid out with the text ->
the same packer, shards (with a `vision_mask` column), rejects and manifest as books.

By default vision codes keep their own id space (the LWM release's "separate" layout): at
positions where `vision_mask` is 1, `input_ids` index the vision vocabulary (codes 0..8191,
`<eof>` 8192, `<eov>` 8193); elsewhere the text vocabulary. `vision_layout: unified` puts them
after the text ids instead (curation/vision_layout.py). `loss_mask` is 0/1: weighing text against
vision is the trainer's job (it averages each modality on its own). A video longer than a stage is
cut at frame boundaries into several examples, each with the text (the arithmetic and the BOS/EOS
framing are curation/vision_examples.py's; this DoFn only calls it).

Progress: the VQGAN is the slow step (an hour of video is minutes of encoding), so a worker logs
`[pid N] URL: encoded 96/240 frames (40%), 3.10 frames/s, ETA 46s, elapsed 31s` at most every
`progress_every_s` seconds while a video encodes, and always when one is done; the counter
`longctx:video.frames_encoded` counts frames through the VQGAN as they go (live on Dataflow),
`longctx:video.frames` the frames of the videos kept.
"""

from __future__ import annotations

import logging
import os
import time

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics

from curation.accounting import Reason, Reject
from curation.documents import Document
from curation.events import KEPT, TOKENS_IN, StageCount, stage_event
from curation.packing import SegmentRef, StageSegment
from curation.progress import progress_line
from curation.sources import SourceConfig
from curation.video import VideoError
from curation.vision_encode import video_codes
from curation.vision_examples import (blank_text_reject, frame_runs, frames_per_example, text_first, video_example,
                                      video_tokens_in)
from curation.vision_layout import CODES_PER_FRAME
from pipelines.accounting import KEPT_EVENTS, NAMESPACE, REJECTS, ShardJob
from pipelines.io import ReadInputs
from pipelines.refusals import JobRefused
from pipelines.vision_text import NameByContent, VisionTextDoFn, media_url

log = logging.getLogger("longctx")


class EncodeVideos(VisionTextDoFn):
    """A manifest row -> its frames' codes (streamed in fixed batches through the VQGAN) -> one
    example per stage-sized run of frames, or a reject with the reason."""

    def __init__(self, config, stages, progress_every_s: float = 5.0):
        super().__init__(config, stages)
        self.progress_every_s = progress_every_s

    def setup(self):
        super().setup()
        self.frames = Metrics.counter(NAMESPACE, "video.frames")
        self.frames_encoded = Metrics.counter(NAMESPACE, "video.frames_encoded")
        self.last_line = time.monotonic()  # one clock per worker: its lines, not each video's, are spaced

    def _progress(self, url: str):
        """`on_frames` for one video: the counter, and a line at most every progress_every_s
        seconds on this worker, plus one when the video's last frame is encoded."""
        started = time.monotonic()
        reported = [0]

        def on_frames(done: int, total: int) -> None:
            self.frames_encoded.inc(done - reported[0])
            reported[0] = done
            now = time.monotonic()
            if done < total and now - self.last_line < self.progress_every_s:
                return
            self.last_line = now
            log.info("[pid %d] %s", os.getpid(), progress_line(f"{url}: encoded", "frames", done, total, now - started))

        return on_frames

    def process(self, doc: Document):
        c = self.config
        if isinstance(doc.meta[c.video_field], bytes):  # a binary Parquet column: frames are streamed from a file
            yield beam.pvalue.TaggedOutput(REJECTS, Reject(doc.source, doc.id, Reason.WRONG_TYPE,
                                                           f"{c.video_field!r} holds bytes; a video is read from a path or URL"))
            return
        blank = None if c.allow_empty_text else blank_text_reject(doc.text, "text")
        if blank:  # before the frames are decoded: nothing of the video would be kept
            yield beam.pvalue.TaggedOutput(REJECTS, Reject(doc.source, doc.id, Reason.EMPTY, blank))
            return
        url = media_url(doc, c.video_field)
        try:
            codes = video_codes(url, self.vqgan, c.fps, c.frame_count, c.max_frames, c.frame_size, c.encode_batch,
                                on_frames=self._progress(url))
        except VideoError as err:
            # err.detail names the video and holds no run-specific text (curation.video.stable_message).
            yield beam.pvalue.TaggedOutput(REJECTS, Reject(doc.source, doc.id, err.reason, err.detail))
            return
        if not codes:
            yield beam.pvalue.TaggedOutput(REJECTS, Reject(doc.source, doc.id, Reason.NO_FRAMES, f"{url}: no frames sampled"))
            return
        if codes[0].size != CODES_PER_FRAME:
            raise JobRefused(f"the VQGAN gives {codes[0].shape} codes per {c.frame_size}px frame; the layout needs 16x16")
        self.frames.inc(len(codes))
        text = self.text_ids(doc.text)
        event = {KEPT: 1, TOKENS_IN: video_tokens_in(len(codes), len(text))}
        placed = False
        for stage in self.stages:
            per_example = frames_per_example(stage.length, self.frame, len(text))
            if per_example < 1:
                continue  # not one frame and the text fit this stage
            runs = frame_runs(len(codes), per_example)
            event[stage_event(stage.name, StageCount.DOCUMENTS)] = 1
            event[stage_event(stage.name, StageCount.SEGMENTS)] = len(runs)
            for run in runs:
                yield self._example(doc, stage.name, run.start, codes[run.start : run.stop], text)
            placed = True
        if not placed:
            n = event[TOKENS_IN]
            yield beam.pvalue.TaggedOutput(REJECTS, Reject(doc.source, doc.id, Reason.NO_STAGE,
                                                           f"{n} tokens; no stage holds one frame and the text", tokens=n))
            return
        yield beam.pvalue.TaggedOutput(KEPT_EVENTS, event)

    def _example(self, doc: Document, stage: str, first_frame: int, frames: list[np.ndarray], text: list[int]) -> StageSegment:
        before = text_first(self.config.text_position, f"{doc.uid}@{first_frame}")
        tokens, vision, loss = video_example(self.frame, frames, text, before)
        ref = SegmentRef(key=f"{doc.uid}@f{first_frame}", doc_id=doc.id, start=first_frame, length=len(tokens))
        return StageSegment(stage, ref, doc.uid, tokens, loss_mask=loss, vision_mask=vision)


class BuildVideoShards(ShardJob):
    """Video manifests -> vision-text shards per stage + rejects + manifest.json."""

    kind = "video"

    progress_every_s = 5.0  # seconds between a worker's encoding progress lines (and a line per video done)

    def expand(self, pbegin):
        c = self.config
        source = SourceConfig(text_field=c.text_field, id_field=c.id_field, format=c.input_format, split_bytes=c.read_split_bytes, meta_fields=(c.video_field,))
        read = pbegin | "Read" >> ReadInputs(c.inputs, source, c.sample)
        encoded = read.docs | "Name" >> NameByContent() | "Encode" >> beam.ParDo(EncodeVideos(c, self.stages, self.progress_every_s)).with_outputs(REJECTS, KEPT_EVENTS, main="segments")
        return self.pack_and_finish(pbegin, read, [read.rejects, encoded.rejects], encoded[KEPT_EVENTS], encoded.segments)
