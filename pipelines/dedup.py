"""Duplicate and contaminated documents in Beam: thin shells over `curation/exact_duplicates.py`,
`curation/near_duplicates.py` and `curation/decontaminate.py`.

    docs -> (content hash, Copy) -> GroupByKey -> later copies: (uid, duplicate reject)
    docs -> Sketch (signature per document) -> minus the exact copies being dropped (CoGroupByKey
         on uid, sketches only) -> (band key, sketch) -> GroupByKey (band buckets) -> verified pairs
         per bucket -> connected components (pairs only) -> (dropped uid, near_duplicate reject)
    docs keyed by uid + every reject above -> CoGroupByKey -> kept docs (now named by their
         content hash) | rejects

No worker holds all signatures: a bucket holds the sketches of one band value. Only the verified
pairs (two small nodes and a similarity each, a few per near-duplicate document) meet in one place,
to form clusters. The texts cross one shuffle, the final join; everything else is keys,
signatures and decisions.

Decontamination reads the evaluation files in the same job, builds their n-gram index once
(CombineGlobally) and hands it to every worker as a side input (AsSingleton).
"""

from __future__ import annotations

import apache_beam as beam

from curation.accounting import Reject
from curation.decontaminate import CONTAMINATED, build_index, contamination, eval_ngrams
from curation.documents import Document
from curation.exact_duplicates import Copy, later_copies, named_by_content
from curation.near_duplicates import (
    NEAR_DUPLICATE,
    Decision,
    MinHashConfig,
    Node,
    SimilarPair,
    Sketch,
    band_keys,
    bucket_pairs,
    resolve_clusters,
    signature,
)
from curation.sources import SourceConfig
from pipelines.accounting import REJECTS
from pipelines.io import ReadInputs
from pipelines.refusals import JobRefused


class SketchDocument(beam.DoFn):
    def __init__(self, config: MinHashConfig):
        self.config = config

    def process(self, doc: Document):
        node = Node(doc.uid, doc.source, doc.id, len(doc.text or ""), doc.content_hash)
        yield Sketch(node, signature(doc.text or "", self.config))


class CollectPairs(beam.CombineFn):
    """Verified pairs, each once (a pair found in several bands arrives several times)."""

    def create_accumulator(self) -> dict:
        return {}

    def add_input(self, acc: dict, pair: SimilarPair) -> dict:
        acc.setdefault(pair.key, pair)
        return acc

    def merge_accumulators(self, accs) -> dict:
        out: dict = {}
        for acc in accs:
            for key, pair in acc.items():
                out.setdefault(key, pair)
        return out

    def extract_output(self, acc: dict) -> list[SimilarPair]:
        return [acc[key] for key in sorted(acc)]


def near_duplicate_reject(found: Decision) -> tuple[str, Reject]:
    dropped = found.dropped
    return dropped.uid, Reject(dropped.source, dropped.id, NEAR_DUPLICATE, found.detail, facts=found.facts)


def unless_copy(keyed):
    """A sketch, unless its document is an exact copy being dropped (copies never enter clustering)."""
    _, grouped = keyed
    if not list(grouped["copy"]):
        yield from grouped["sketch"]


def apply_rejects(keyed):
    """A document and the rejects decided for it, if any -> the document, named by its content
    from here on (`named_by_content`), or its first reject (exact copies are never sketched, so a
    document gets at most one)."""
    _, grouped = keyed
    rejects = list(grouped["reject"])
    for doc in grouped["doc"]:
        if rejects:
            yield beam.pvalue.TaggedOutput(REJECTS, rejects[0])
        else:
            yield named_by_content(doc)


class NearDuplicateRejects(beam.PTransform):
    """Documents, less the exact copies being dropped (`copies`: (uid, reject)) -> (uid,
    near_duplicate reject) of every document dropped in favour of its cluster's kept one."""

    def __init__(self, config: MinHashConfig, copies):
        super().__init__()
        self.config = config
        self.copies = copies

    def expand(self, docs):
        c = self.config
        sketches = docs | "Sketch" >> beam.ParDo(SketchDocument(c))
        pairs = (
            {"sketch": sketches | "SketchByUid" >> beam.Map(lambda s: (s.node.uid, s)), "copy": self.copies}
            | "LeaveOutCopies" >> beam.CoGroupByKey()
            | "UniqueSketches" >> beam.FlatMap(unless_copy)
            | "BandKeys" >> beam.FlatMap(lambda s: ((key, s) for key in band_keys(s.signature, c.bands, c.rows)))
            | "GroupByBand" >> beam.GroupByKey()
            | "VerifyPairs" >> beam.FlatMap(lambda kv: bucket_pairs(kv[1], c.threshold))
        )
        return (
            pairs
            | "CollectPairs" >> beam.CombineGlobally(CollectPairs())
            | "Clusters" >> beam.FlatMap(lambda found: (near_duplicate_reject(d) for d in resolve_clusters(found)))
        )


class DropDuplicates(beam.PTransform):
    """Documents -> (kept documents, rejects): exact copies (`duplicate`, the first read is kept),
    then, with `near`, near-duplicates among the rest (`near_duplicate`, one kept per cluster).
    The kept documents leave named by their content hash (`named_by_content`)."""

    def __init__(self, near: MinHashConfig | None = None):
        super().__init__()
        self.near = near

    def expand(self, docs):
        copies = (
            docs
            | "ByContent" >> beam.Map(lambda d: (d.content_hash, Copy.of(d)))
            | "GroupByContent" >> beam.GroupByKey()
            | "LaterCopies" >> beam.FlatMap(lambda kv: later_copies(kv[1]))
        )
        rejects = [copies]
        if self.near is not None:
            rejects.append(docs | "NearDuplicates" >> NearDuplicateRejects(self.near, copies))
        return (
            {"doc": docs | "ByUid" >> beam.Map(lambda d: (d.uid, d)), "reject": rejects | "AllRejects" >> beam.Flatten()}
            | "JoinRejects" >> beam.CoGroupByKey()
            | "Apply" >> beam.FlatMap(apply_rejects).with_outputs(REJECTS, main="docs")
        )


class UnreadableEvaluationInput(JobRefused):
    """An evaluation record that cannot be read: decontaminating without it would be silently partial."""


def refuse_unreadable(reject: Reject):
    raise UnreadableEvaluationInput(
        f"decontamination input {reject.source} record {reject.id} is unreadable ({reject.reason}: {reject.detail})"
    )


class BuildEvalIndex(beam.CombineFn):
    """(name, n-gram hashes) of every evaluation document -> one EvalIndex."""

    def __init__(self, ngram: int):
        self.ngram = ngram

    def create_accumulator(self) -> list:
        return []

    def add_input(self, acc: list, item) -> list:
        acc.append(item)
        return acc

    def merge_accumulators(self, accs) -> list:
        return [item for acc in accs for item in acc]

    def extract_output(self, acc: list):
        return build_index(acc, self.ngram)


class CheckContamination(beam.DoFn):
    def __init__(self, threshold: float):
        self.threshold = threshold

    def process(self, doc: Document, index):
        found = contamination(doc.text or "", index, self.threshold)
        if found is not None:
            yield beam.pvalue.TaggedOutput(REJECTS, Reject(doc.source, doc.id, CONTAMINATED, found.detail, facts=found.facts))
            return
        yield doc


class DropContaminated(beam.PTransform):
    """Documents -> (clean documents, contaminated rejects), against the evaluation files `patterns`."""

    def __init__(self, patterns: list[str], source: SourceConfig, ngram: int, threshold: float):
        super().__init__()
        self.patterns = list(patterns)
        self.source = source
        self.ngram = ngram
        self.threshold = threshold

    def expand(self, docs):
        n = self.ngram
        evals = docs.pipeline | "ReadEvaluation" >> ReadInputs(self.patterns, self.source)
        _ = evals[REJECTS] | "RefuseUnreadable" >> beam.Map(refuse_unreadable)
        index = (
            evals.docs
            | "EvalNgrams" >> beam.Map(lambda d: (f"{d.source} id={d.id}", eval_ngrams(d.text or "", n)))
            | "Index" >> beam.CombineGlobally(BuildEvalIndex(n))
        )
        return docs | "Check" >> beam.ParDo(CheckContamination(self.threshold), beam.pvalue.AsSingleton(index)).with_outputs(
            REJECTS, main="docs"
        )
