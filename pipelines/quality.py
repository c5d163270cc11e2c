"""The quality and language filters in Beam: a thin shell over `curation/quality.py`.

One DoFn judges each cleaned document: language first (a German novel is rejected as `language`,
not as `low_quality:stop_words`, whose stop words are English), then the Gopher-style rules.
Counters (namespace `longctx.quality`): `checked`, `passed`, `language.rejected`,
`language.too_short` (not judged), and `failed.RULE` for every rule a document fails (a document
can fail several; its reject names the first).
"""

from __future__ import annotations

import apache_beam as beam
from apache_beam.metrics import Metrics

from curation.accounting import Reject
from curation.documents import Document
from curation.quality import (
    LANGUAGE,
    LanguageRule,
    QualityRules,
    build_detector,
    failed_rules,
    identify_language,
    language_ok,
    quality_reject,
    rule_names,
    text_stats,
)
from pipelines.accounting import REJECTS

QUALITY_NAMESPACE = "longctx.quality"


class FilterQuality(beam.DoFn):
    """Documents -> kept documents | `language` and `low_quality:RULE` rejects. `rules` None skips
    the quality rules, `language` None skips language identification."""

    def __init__(self, rules: QualityRules | None, language: LanguageRule | None):
        self.rules = rules
        self.language = language

    def setup(self):
        self.detector = build_detector() if self.language else None
        self.checked = Metrics.counter(QUALITY_NAMESPACE, "checked")
        self.passed = Metrics.counter(QUALITY_NAMESPACE, "passed")
        self.language_rejected = Metrics.counter(QUALITY_NAMESPACE, "language.rejected")
        self.language_short = Metrics.counter(QUALITY_NAMESPACE, "language.too_short")
        self.failed = {rule: Metrics.counter(QUALITY_NAMESPACE, f"failed.{rule}") for rule in rule_names()}

    def process(self, doc: Document):
        text = doc.text or ""
        self.checked.inc()
        english = True
        if self.language is not None:
            verdict = identify_language(text, self.language, self.detector)
            if not verdict.judged:
                self.language_short.inc()
            elif not language_ok(verdict, self.language):
                self.language_rejected.inc()
                yield beam.pvalue.TaggedOutput(REJECTS, Reject(doc.source, doc.id, LANGUAGE, verdict.detail(self.language)))
                return
            english = not verdict.judged or verdict.detected == "en"
        if self.rules is not None:
            failures = failed_rules(text_stats(text), self.rules, english=english)
            for failure in failures:
                self.failed[failure.rule].inc()
            if failures:
                reason, detail, facts = quality_reject(failures)
                yield beam.pvalue.TaggedOutput(REJECTS, Reject(doc.source, doc.id, reason, detail, facts=facts))
                return
        self.passed.inc()
        yield doc


class DropLowQuality(beam.PTransform):
    """Documents -> (kept documents, rejects); the config's `quality_filter`, `quality`,
    `languages` and `min_language_confidence` decide what runs."""

    def __init__(self, rules: QualityRules | None, language: LanguageRule | None):
        super().__init__()
        self.rules = rules
        self.language = language

    def expand(self, docs):
        return docs | beam.ParDo(FilterQuality(self.rules, self.language)).with_outputs(REJECTS, main="docs")
