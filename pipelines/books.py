"""The book pipeline: read -> clean -> quality and language filters -> deduplicate (exact, then near) -> decontaminate -> tokenize -> assign stages -> pack -> write.

Each DoFn is a thin shell over a pure function in `curation/`; `BuildBookShards.expand` is the
recipe. Every record read ends as exactly one `kept` or `rejected.*` event (see accounting).
"""

from __future__ import annotations

import apache_beam as beam
from apache_beam.metrics import Metrics

from curation.accounting import Reason, Reject
from curation.documents import Document
from curation.events import KEPT, TOKENS_IN, StageCount, stage_event
from curation.near_duplicates import MinHashConfig
from curation.packing import SegmentRef, StageSegment
from curation.progress import Progress
from curation.quality import LanguageRule
from curation.sources import SourceConfig
from curation.stages import Stage, StagePolicy, cut_windows, matching_stages
from curation.text import CleanConfig, Rejected, clean_text, content_hash
from curation.tokenize import encode_long, load_tokenizer
from pipelines.accounting import KEPT_EVENTS, NAMESPACE, REJECTS, ShardJob
from pipelines.config import TextFrontConfig
from pipelines.dedup import DropContaminated, DropDuplicates
from pipelines.io import ReadInputs
from pipelines.quality import DropLowQuality
from pipelines.runners import worker_count


class CleanText(beam.DoFn):
    def __init__(self, config: CleanConfig):
        self.config = config

    def process(self, doc: Document):
        try:
            text = clean_text(doc.text, self.config)
        except Rejected as err:
            yield beam.pvalue.TaggedOutput(REJECTS, Reject(doc.source, doc.id, err.reason, err.detail))
            return
        yield doc.with_(text=text, content_hash=content_hash(text))


class Tokenize(beam.DoFn):
    """Text -> int32 token ids with BOS/EOS as configured; the tokenizer loads once per worker."""

    def __init__(self, spec: str, add_bos: bool, add_eos: bool, piece_chars: int):
        self.spec = spec
        self.add_bos = add_bos
        self.add_eos = add_eos
        self.piece_chars = piece_chars

    def setup(self):
        self.progress = Progress("tokenized", "documents")
        self.tok, info = load_tokenizer(self.spec)
        self.bos = info.bos_id if self.add_bos else None
        self.eos = info.eos_id if self.add_eos else None
        self.tokens = Metrics.counter(NAMESPACE, TOKENS_IN)

    def process(self, doc: Document):
        try:
            tokens = encode_long(self.tok, doc.text, self.bos, self.eos, self.piece_chars)
        except Exception as err:  # a tokenizer failure on one text must not stop the job
            yield beam.pvalue.TaggedOutput(REJECTS, Reject(doc.source, doc.id, Reason.TOKENIZER_ERROR, f"{type(err).__name__}: {err}"))
            return
        self.tokens.inc(len(tokens))
        self.progress.add(1, len(tokens))
        yield doc.with_(text=None, tokens=tokens)


def assign_stages(doc: Document, stages: list[Stage], policy: StagePolicy, min_tail: int):
    """A tokenized document -> its windows per matching stage, plus one kept/rejected outcome."""
    n = doc.num_tokens
    matched = matching_stages(n, stages, policy)
    if not matched:
        windows = ", ".join(f"{s.name}=[{s.min_tokens},{s.max_tokens or 'inf'})" for s in stages)
        yield beam.pvalue.TaggedOutput(REJECTS, Reject(doc.source, doc.id, Reason.NO_STAGE, f"{n} tokens; stages: {windows}",
                                                          tokens=n))
        return
    event = {KEPT: 1, TOKENS_IN: n}
    for stage in matched:
        windows, dropped = cut_windows(n, stage.length, min_tail)
        event[stage_event(stage.name, StageCount.DOCUMENTS)] = 1
        event[stage_event(stage.name, StageCount.SEGMENTS)] = len(windows)
        event[stage_event(stage.name, StageCount.DROPPED_TOKENS)] = dropped
        for w in windows:
            ref = SegmentRef(key=f"{doc.uid}@{w.start}", doc_id=doc.id, start=w.start, length=w.length)
            yield StageSegment(stage.name, ref, doc.uid, doc.tokens[w.start : w.start + w.length])
    yield beam.pvalue.TaggedOutput(KEPT_EVENTS, event)


class PrepareDocuments(beam.PTransform):
    """The shared front of every text pipeline: read -> clean -> drop low-quality documents and
    documents in other languages (`quality_filter`, `languages`) -> deduplicate (exact copies, then
    near-duplicates unless `near_duplicates` is off) -> drop documents holding an evaluation
    document (with `decontaminate`) -> tokenize.
    Returns (read result, tokenized documents, [rejects of each step])."""

    def __init__(self, config: TextFrontConfig):
        super().__init__()
        self.config = config

    def expand(self, pbegin):
        c = self.config
        source = SourceConfig(text_field=c.text_field, id_field=c.id_field, format=c.input_format, split_bytes=c.read_split_bytes)
        clean = CleanConfig(
            min_chars=c.min_chars,
            max_control_ratio=c.max_control_ratio,
            normalize_unicode=None if c.unicode_normalization == "none" else c.unicode_normalization,
            strip_gutenberg=c.strip_gutenberg,
        )
        read = pbegin | "Read" >> ReadInputs(c.inputs, source, c.sample)
        docs = read.docs
        if worker_count(pbegin.pipeline) != 1:
            # A compressed file is read whole, by one worker, and every step fused after the read
            # (cleaning, the quality and language verdicts, MinHash signatures) would run on that
            # worker too: a few large .jsonl.gz/.zst inputs would keep the front on a few workers.
            # Spreading the documents costs one copy of the texts, which a runner with one worker
            # (DirectRunner in memory) would pay for nothing.
            docs = docs | "SpreadDocuments" >> beam.Reshuffle()
        cleaned = docs | "Clean" >> beam.ParDo(CleanText(clean)).with_outputs(REJECTS, main="docs")
        rejects = [read.rejects, cleaned.rejects]
        docs = cleaned.docs
        # Quality and language filters come right after cleaning: they judge one document at a
        # time, so they fuse with Read/Clean and the texts they reject never cross the shuffle of
        # exact dedup (copies get the same verdict either way). They must come before the
        # near-duplicate step, which keeps one edition per cluster: a low-quality edition kept
        # there and rejected later would take the cluster's good editions with it.
        language = LanguageRule(tuple(c.languages), c.min_language_confidence) if c.languages else None
        if c.quality_filter or language is not None:
            judged = docs | "Quality" >> DropLowQuality(c.quality if c.quality_filter else None, language)
            docs = judged.docs
            rejects.append(judged[REJECTS])
        near = MinHashConfig(c.near_dup_threshold, c.near_dup_ngram, c.near_dup_bands, c.near_dup_rows) if c.near_duplicates else None
        unique = docs | "Deduplicate" >> DropDuplicates(near)
        rejects.append(unique.rejects)
        docs = unique.docs
        if c.decontaminate:
            eval_source = SourceConfig(text_field=c.decontaminate_text_field, format="auto")
            clean = docs | "Decontaminate" >> DropContaminated(
                c.decontaminate, eval_source, c.decontaminate_ngram, c.decontaminate_threshold
            )
            docs = clean.docs
            rejects.append(clean[REJECTS])
        tokenized = docs | "Tokenize" >> beam.ParDo(
            Tokenize(c.tokenizer, c.add_bos, c.add_eos, c.encode_piece_chars)
        ).with_outputs(REJECTS, main="docs")
        return read, tokenized.docs, rejects + [tokenized.rejects]


class BuildBookShards(ShardJob):
    """Book files -> stage shards + rejects + manifest.json under `config.output`."""

    kind = "books"

    def expand(self, pbegin):
        c = self.config
        read, docs, rejects = pbegin | "Prepare" >> PrepareDocuments(c)
        assigned = docs | "AssignStages" >> beam.FlatMap(
            assign_stages, self.stages, c.stage_policy, c.min_tail_tokens
        ).with_outputs(REJECTS, KEPT_EVENTS, main="segments")
        return self.pack_and_finish(pbegin, read, rejects + [assigned.rejects], assigned[KEPT_EVENTS], assigned.segments)
