"""The QA pipeline: books -> ~1,000-token chunks -> a QA pair per chunk (RunInference) ->
long chat examples per stage, loss on the answers only -> the same shards as books.

Two tokenizers: the training tokenizer (`--tokenizer`) measures and cuts chunks and encodes the
examples; the generator model sees only text. Accounting runs at two levels: every book read is
kept (at least one of its chunks reached an example) or rejected (`no_valid_chunks` when none
did), and every chunk ends in an example or in rejects (`chunk.*` counters).

Generation is the slow step (seconds per chunk on a CPU), so it reports progress: a log line
with chunks generated / to generate, the rate and an ETA (local runs), and the Beam counters
`longctx:chunk.to_generate` and `longctx:chunk.generated` (live in the Dataflow UI).
`max_chunks` limits generation to the first N chunks of each book, to try a model quickly;
the chunks not generated are still read and accounted, as one `not_generated` chunk reject per
book (records = how many), so `chunks.read = accepted + rejected` holds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference

from curation.accounting import Reason, Reject
from curation.chat_format import tokenizer_chat_format
from curation.documents import Document
from curation.events import CHUNK, KEPT, TOKENS_IN, PartCount, StageCount, part_event, rejected_event, stage_event
from curation.progress import Progress
from curation.stages import Stage
from curation.tokenize import load_tokenizer
from pipelines.accounting import KEPT_EVENTS, NAMESPACE, REJECTS, ShardJob
from pipelines.books import PrepareDocuments
from pipelines.config import QAConfig
from pipelines.qa_backends import chat_messages, completion_text, make_handler
from qa_synth.assemble import ChatFormat, assemble_examples, example_to_segment
from qa_synth.chunking import Chunk, make_chunks
from qa_synth.parse import InvalidQA, QuestionDeduper, parse_qa, validate
from qa_synth.prompts import DEFAULT_TEMPLATE, PromptTemplate

BOOKS = "books"


@dataclass(frozen=True)
class BookInfo:
    """What the book-level outcome needs once its chunks are judged: where it came from, its size."""

    source: str
    id: str
    tokens: int
    chunks: int


def chunk_reject(chunk: Chunk, source: str, reason: Reason, detail: str = "") -> Reject:
    return Reject(source, f"{chunk.book_id}#chunk{chunk.index}", reason, detail, unit=CHUNK)


def split_max_chunks(chunks: list[Chunk], max_chunks: int | None, source: str) -> tuple[list[Chunk], Reject | None]:
    """The chunks to generate (the first `max_chunks`, all when None) and one reject standing for
    the rest (records = how many), or None when nothing is left out. One reject per book, not one
    per chunk: a trial run on a long book would otherwise write hundreds of identical lines."""
    if max_chunks is None or len(chunks) <= max_chunks:
        return chunks, None
    kept, rest = chunks[:max_chunks], chunks[max_chunks:]
    first, last = rest[0], rest[-1]
    detail = f"max_chunks={max_chunks}: {len(rest)} of the book's {len(chunks)} chunks were not sent to the generator"
    reject = Reject(source, f"{first.book_id}#chunk{first.index}-{last.index}", Reason.NOT_GENERATED, detail, unit=CHUNK, records=len(rest))
    return kept, reject


class ChunkBooks(beam.DoFn):
    """A tokenized book -> its chunks (with text for the generator), and its BookInfo keyed by its
    uid: whether the book is kept is decided in AssembleBook, once its chunks are judged."""

    def __init__(self, config: QAConfig):
        self.config = config

    def setup(self):
        self.tok, info = load_tokenizer(self.config.tokenizer)
        self.special = {i for i in (info.bos_id, info.eos_id) if i is not None}

    def process(self, doc: Document):
        c = self.config
        chunks = make_chunks(doc.id, doc.uid, doc.tokens, self.tok, c.chunk_tokens, c.chunk_min_tokens, c.chunk_max_tokens, self.special)
        if not chunks:
            yield beam.pvalue.TaggedOutput(REJECTS, Reject(doc.source, doc.id, Reason.EMPTY, "no tokens to chunk"))
            return
        yield beam.pvalue.TaggedOutput(KEPT_EVENTS, {part_event(CHUNK, PartCount.READ): len(chunks)})
        yield beam.pvalue.TaggedOutput(BOOKS, (doc.uid, BookInfo(doc.source, doc.id, doc.num_tokens, len(chunks))))
        to_generate, skipped = split_max_chunks(chunks, c.max_chunks, doc.source)
        if skipped is not None:
            yield beam.pvalue.TaggedOutput(REJECTS, skipped)
        Metrics.counter(NAMESPACE, part_event(CHUNK, PartCount.TO_GENERATE)).inc(len(to_generate))
        for chunk in to_generate:
            yield doc.source, chunk


class ToExample(beam.DoFn):
    """(source, chunk) -> ((source, chunk), model input): the bare text for extractive, the prompt
    for transformers (its handler applies the chat template), the prompt as one user chat message
    for vllm (the server applies the chat template)."""

    def __init__(self, backend: str, template: str):
        self.backend = backend
        self.template = PromptTemplate(template)

    def process(self, item):
        source, chunk = item
        if self.backend == "extractive":
            yield (source, chunk), chunk.text
            return
        prompt = self.template.render(chunk.text)
        yield (source, chunk), chat_messages(prompt) if self.backend == "vllm" else prompt


class ReportGenerated(beam.DoFn):
    """Counts generated chunks as they leave the generator: a progress line with done/total, rate
    and ETA in this worker's log, and the `chunk.generated` counter. `total` (a side input) is the
    job's number of chunks to generate; with several workers each one logs its own count against
    it, so a worker's ETA is then an upper bound."""

    def __init__(self, every_s: float = 10.0):
        self.every_s = every_s
        self.progress: Progress | None = None

    def setup(self):
        self.generated = Metrics.counter(NAMESPACE, part_event(CHUNK, PartCount.GENERATED))
        self.started: float | None = None

    def start_bundle(self):
        # The clock starts before the first batch is generated (the total arrives with the first chunk).
        if self.started is None:
            self.started = time.monotonic()

    def process(self, item, total: int):
        if self.progress is None:
            self.progress = Progress("generated", "chunks", self.every_s, total=total, start=self.started)
        self.generated.inc()
        self.progress.add(1)
        yield item


class ValidateQA(beam.DoFn):
    """The model's raw text -> a validated QA pair, or a chunk reject with the reason."""

    def __init__(self, config: QAConfig):
        self.config = config

    def process(self, item):
        (source, chunk), result = item
        raw = completion_text(result.inference)
        try:
            pair = validate(parse_qa(raw), chunk.text, self.config.max_answer_words, self.config.min_grounding)
        except InvalidQA as err:
            detail = err.detail + (f" | raw: {raw[:2000]!r}" if self.config.keep_raw_output else "")
            Metrics.counter(NAMESPACE, rejected_event(err.reason, CHUNK)).inc()
            yield beam.pvalue.TaggedOutput(REJECTS, chunk_reject(chunk, source, err.reason, detail))
            return
        yield chunk.book_uid, (source, chunk, pair)


def chat_format(config: QAConfig) -> ChatFormat:
    """The LWM plain format, or the training tokenizer's own chat template when asked for (checked
    before the job starts: `pipelines.launch.validate`)."""
    if config.chat_format == "lwm":
        return ChatFormat()
    return tokenizer_chat_format(config.tokenizer)


class AssembleBook(beam.DoFn):
    """A book and all of its validated chunks -> its chat examples per stage (as StageSegments);
    duplicate questions and chunks that fit no example are rejected. The book is kept if at
    least one example holds one of its chunks, else rejected as `no_valid_chunks`."""

    def __init__(self, config: QAConfig, stages: list[Stage]):
        self.config = config
        self.stages = stages

    def setup(self):
        self.tok, self.info = load_tokenizer(self.config.tokenizer)
        self.format = chat_format(self.config)

    def process(self, keyed):
        book_uid, grouped = keyed
        (book,) = grouped[BOOKS]
        items = sorted(grouped["pairs"], key=lambda it: it[1].index)
        source = book.source
        dedup = QuestionDeduper()
        kept = []
        for _, chunk, pair in items:
            try:
                dedup.check(book_uid, pair.question)
            except InvalidQA as err:
                yield beam.pvalue.TaggedOutput(REJECTS, chunk_reject(chunk, source, err.reason, err.detail))
                continue
            kept.append((chunk, pair))
        used = set()
        for stage in self.stages:
            examples = assemble_examples(
                kept, self.tok, self.info, stage.length, self.config.qa_order, self.config.shuffle_seed, self.format
            )
            if examples:
                yield beam.pvalue.TaggedOutput(KEPT_EVENTS, {stage_event(stage.name, StageCount.DOCUMENTS): len(examples)})
            for example in examples:
                used.update(range(example.first_chunk, example.first_chunk + example.num_chunks))
                yield example_to_segment(example, stage.name)
        for chunk, _ in kept:
            if chunk.index not in used:
                yield beam.pvalue.TaggedOutput(
                    REJECTS, chunk_reject(chunk, source, Reason.DOES_NOT_FIT, "chunk and its QA pair exceed every stage length")
                )
        if used:
            yield beam.pvalue.TaggedOutput(KEPT_EVENTS, {KEPT: 1, TOKENS_IN: book.tokens, part_event(CHUNK, PartCount.ACCEPTED): len(used)})
        else:
            detail = f"none of its {book.chunks} chunks reached an example (see its chunk rejects)"
            yield beam.pvalue.TaggedOutput(REJECTS, Reject(book.source, book.id, Reason.NO_VALID_CHUNKS, detail))


class BuildQAShards(ShardJob):
    """Book files -> QA chat shards per stage + rejects (books and chunks) + manifest.json."""

    kind = "qa"

    progress_every_s = 10.0  # seconds between generation progress lines (a worker's log)

    def expand(self, pbegin):
        c = self.config
        handler = make_handler(
            c.backend, c.model, **({} if c.backend == "extractive" else self._handler_kwargs())
        )
        read, docs, rejects = pbegin | "Prepare" >> PrepareDocuments(c)
        chunked = docs | "Chunk" >> beam.ParDo(ChunkBooks(c)).with_outputs(REJECTS, KEPT_EVENTS, BOOKS, main="chunks")
        # The total for the progress line; it also makes every chunk exist before generation starts.
        total = chunked.chunks | "CountToGenerate" >> beam.combiners.Count.Globally()
        generated = (
            chunked.chunks
            # Spread one book's chunks over workers (fused, they would stay on the worker that
            # chunked the book), and keep generation apart from chunking so the count is known.
            | "Spread" >> beam.Reshuffle()
            | "ToExample" >> beam.ParDo(ToExample(c.backend, c.prompt_template or DEFAULT_TEMPLATE))
            | "Generate" >> RunInference(KeyedModelHandler(handler), inference_args=self._inference_args())
            | "Progress" >> beam.ParDo(ReportGenerated(self.progress_every_s), total=beam.pvalue.AsSingleton(total))
        )
        validated = generated | "Validate" >> beam.ParDo(ValidateQA(c)).with_outputs(REJECTS, main="pairs")
        assembled = (
            {BOOKS: chunked[BOOKS], "pairs": validated.pairs}
            | "GroupByBook" >> beam.CoGroupByKey()
            | "Assemble" >> beam.ParDo(AssembleBook(c, self.stages)).with_outputs(REJECTS, KEPT_EVENTS, main="segments")
        )
        kept_events = (chunked[KEPT_EVENTS], assembled[KEPT_EVENTS]) | "KeptEvents" >> beam.Flatten()
        all_rejects = rejects + [chunked.rejects, validated.rejects, assembled.rejects]
        return self.pack_and_finish(pbegin, read, all_rejects, kept_events, assembled.segments)

    def _handler_kwargs(self) -> dict:
        c = self.config
        if c.backend == "vllm":
            return {"server_kwargs": c.vllm_server_kwargs, "chat_template": c.vllm_chat_template}
        return dict(gguf_file=c.gguf_file, device=c.device, max_new_tokens=c.max_new_tokens,
                    temperature=c.temperature, batch_size=c.batch_size, trust_remote_code=c.trust_remote_code)

    def _inference_args(self) -> dict | None:
        if self.config.backend == "vllm":
            return {"max_tokens": self.config.max_new_tokens, "temperature": self.config.temperature}
        return None
