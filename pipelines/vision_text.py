"""What the video and images pipelines share: records named by their content, the per-worker
VQGAN / tokenizer / vision vocabulary setup of their encoding DoFns, the shards' vision metadata,
and media paths."""

from __future__ import annotations

import posixpath

import apache_beam as beam

from curation.documents import Document
from curation.exact_duplicates import named_copies, record_hash
from curation.tokenize import load_tokenizer
from curation.vision_examples import VisionFrame
from curation.vision_layout import VISION_END, VISION_START, UnifiedVocab, vision_vocab, vocab_metadata


def media_url(doc: Document, field: str) -> str:
    """The URL of a record's video or image file: a relative path is taken relative to the
    manifest that names it."""
    path = str(doc.meta[field])
    if "://" in path or path.startswith("/"):
        return path
    return posixpath.join(posixpath.dirname(doc.source), path)


class NameByContent(beam.PTransform):
    """Records -> the same records, each uid now its `record_hash` (`named_copies`): the example's
    text position and its place in the packing then follow the record, not the folder it was read
    from. One shuffle of the records (paths and captions; an image's bytes when the record holds them)."""

    def expand(self, docs):
        return (
            docs
            | "ByRecord" >> beam.Map(lambda d: (record_hash(d), d))
            | "GroupByRecord" >> beam.GroupByKey()
            | "Name" >> beam.FlatMap(lambda kv: named_copies(*kv))
        )


def vision_metadata(layout: str = "separate", text_vocab_size: int = 0) -> dict:
    """What a vision shard of this layout says about its ids (curation.vision_layout.vocab_metadata)."""
    return vocab_metadata(vision_vocab(layout, text_vocab_size))


class VisionTextDoFn(beam.DoFn):
    """Loads, once per worker, what every vision pipeline needs: the VQGAN, the training tokenizer,
    and `frame` (curation.vision_examples.VisionFrame: BOS/EOS, the vision vocabulary and its
    `<vision>`/`</vision>` markers), which the examples are built with."""

    def __init__(self, config, stages):
        self.config = config
        self.stages = stages

    def setup(self):
        from curation.vqgan import load_vqgan

        c = self.config
        self.vqgan = load_vqgan(c.vqgan, batch_size=c.encode_batch)
        self.tok, info = load_tokenizer(c.tokenizer)
        vocab = vision_vocab(c.vision_layout, info.vocab_size)
        unified = isinstance(vocab, UnifiedVocab)
        # Separate layout: <vision>/</vision> are text; unified: one id each, placed by the layout.
        self.frame = VisionFrame(
            bos=(info.bos_id,) if c.add_bos and info.bos_id is not None else (),
            eos=(info.eos_id,) if c.add_eos and info.eos_id is not None else (),
            start=() if unified else tuple(self.tok.encode(VISION_START, add_special_tokens=False).ids),
            end=() if unified else tuple(self.tok.encode(VISION_END, add_special_tokens=False).ids),
            vocab=vocab,
        )

    def text_ids(self, text: str) -> list[int]:
        """The record's text as training-tokenizer ids (none for blank text)."""
        return self.tok.encode(text, add_special_tokens=False).ids if text.strip() else []
