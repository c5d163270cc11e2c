"""The image-text pipeline: pairs -> decoded, resized, center-cropped images -> VQGAN codes in
fixed batches (BatchElements) -> one-frame vision layouts with their captions -> shards, in
either vision layout (`vision_layout`: separate or unified, as for video).

Progress: a worker logs `[pid N] encoded 512 images, 131072 tokens (2048 tokens/s)` at most every
`progress_every_s` seconds and at the end of each bundle (the number of pairs is not known ahead,
so there is no ETA); the counter `longctx:images.encoded` counts images through the VQGAN."""

from __future__ import annotations

import apache_beam as beam
import fsspec
import numpy as np
from apache_beam.metrics import Metrics

from curation.accounting import Reason, Reject
from curation.documents import Document
from curation.events import KEPT, TOKENS_IN, StageCount, stage_event
from curation.packing import SegmentRef, StageSegment
from curation.progress import Progress
from curation.sources import SourceConfig
from curation.video import stable_message
from curation.vision_encode import decode_image
from curation.vision_examples import blank_text_reject, image_example, text_first
from pipelines.accounting import KEPT_EVENTS, NAMESPACE, REJECTS, ShardJob
from pipelines.config import ImagesConfig
from pipelines.io import ReadInputs
from pipelines.vision_text import NameByContent, VisionTextDoFn, media_url


def image_bytes(doc: Document, field: str) -> bytes:
    value = doc.meta[field]
    if isinstance(value, bytes):
        return value
    with fsspec.open(media_url(doc, field), "rb") as fh:
        return fh.read()


class DecodeImages(beam.DoFn):
    def __init__(self, config: ImagesConfig):
        self.config = config

    def process(self, doc: Document):
        blank = None if self.config.allow_empty_text else blank_text_reject(doc.text, "caption")
        if blank:
            yield beam.pvalue.TaggedOutput(REJECTS, Reject(doc.source, doc.id, Reason.EMPTY, blank))
            return
        try:
            frame = decode_image(image_bytes(doc, self.config.image_field), self.config.frame_size)
        except Exception as err:  # missing file, not an image, truncated data, ...
            # A stable message (no object addresses), so reruns write identical rejects.
            yield beam.pvalue.TaggedOutput(REJECTS, Reject(doc.source, doc.id, Reason.UNREADABLE_IMAGE, f"{type(err).__name__}: {stable_message(err)}"))
            return
        yield doc, frame


class EncodeImages(VisionTextDoFn):
    """A batch of (pair, frame) -> VQGAN codes in one fixed-shape call -> a layout per pair and stage."""

    def __init__(self, config, stages, progress_every_s: float = 5.0):
        super().__init__(config, stages)
        self.progress_every_s = progress_every_s

    def setup(self):
        super().setup()
        self.encoded = Metrics.counter(NAMESPACE, "images.encoded")
        # One per worker, so its lines are spaced over all the bundles it runs.
        self.progress = Progress("encoded", "images", self.progress_every_s)

    def process(self, batch):
        codes = self.vqgan.encode(np.stack([frame for _, frame in batch]))
        self.encoded.inc(len(batch))
        self.progress.add(len(batch), tokens=int(codes[0].size) * len(batch))
        for (doc, _), frame_codes in zip(batch, codes):
            yield from self._pair(doc, frame_codes)

    def finish_bundle(self):
        self.progress.flush()  # no total to finish on: the bundle's end reports the count

    def _pair(self, doc: Document, codes: np.ndarray):
        caption_first = text_first(self.config.caption_position, doc.uid)
        tokens, vision, loss = image_example(self.frame, codes, self.text_ids(doc.text), caption_first)
        fits = [s for s in self.stages if len(tokens) <= s.length]
        if not fits:
            yield beam.pvalue.TaggedOutput(REJECTS, Reject(doc.source, doc.id, Reason.NO_STAGE, f"{len(tokens)} tokens",
                                                                  tokens=len(tokens)))
            return
        event = {KEPT: 1, TOKENS_IN: len(tokens)}
        for stage in fits:
            event[stage_event(stage.name, StageCount.DOCUMENTS)] = 1
            ref = SegmentRef(key=f"{doc.uid}@0", doc_id=doc.id, start=0, length=len(tokens))
            yield StageSegment(stage.name, ref, doc.uid, tokens, loss_mask=loss, vision_mask=vision)
        yield beam.pvalue.TaggedOutput(KEPT_EVENTS, event)


class BuildImageShards(ShardJob):
    """Image-text pairs -> vision-text shards per stage + rejects + manifest.json."""

    kind = "images"

    progress_every_s = 5.0  # seconds between a worker's encoding progress lines

    def expand(self, pbegin):
        c = self.config
        source = SourceConfig(text_field=c.text_field, id_field=c.id_field, format=c.input_format, split_bytes=c.read_split_bytes, meta_fields=(c.image_field,))
        read = pbegin | "Read" >> ReadInputs(c.inputs, source, c.sample)
        decoded = read.docs | "Name" >> NameByContent() | "Decode" >> beam.ParDo(DecodeImages(c)).with_outputs(REJECTS, main="frames")
        encoded = (
            decoded.frames
            | "Batch" >> beam.BatchElements(min_batch_size=c.encode_batch, max_batch_size=c.encode_batch)
            | "Encode" >> beam.ParDo(EncodeImages(c, self.stages, self.progress_every_s)).with_outputs(REJECTS, KEPT_EVENTS, main="segments")
        )
        rejects = [read.rejects, decoded.rejects, encoded.rejects]
        return self.pack_and_finish(pbegin, read, rejects, encoded[KEPT_EVENTS], encoded.segments)

