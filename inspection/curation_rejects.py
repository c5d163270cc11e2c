"""What the curation steps' rejects say, gathered from their structured `facts` (never from the
human detail): near-duplicate clusters (the kept document and the copies dropped for it, with
their estimated similarity), per-rule quality counts, and contamination by evaluation document.

The facts are what `curation.accounting.Reject.facts` holds, as pipelines/dedup.py and
pipelines/quality.py write them:
- near_duplicate: kept_source, kept_id, kept_chars, similarity, cluster_size, optional via_id;
- low_quality:<rule>: rules (every failed rule, the reason's first), values ({rule: value});
- contaminated: eval_document, shared_ngrams, eval_ngrams.
A reject of one of these reasons without facts (an output written before they existed) is counted
in `without_facts`, so nothing is silently left out.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from curation.accounting import Reason
from curation.quality import LOW_QUALITY as LOW_QUALITY_REASON

NEAR_DUPLICATE = Reason.NEAR_DUPLICATE.value
CONTAMINATED = Reason.CONTAMINATED.value
LOW_QUALITY = f"{LOW_QUALITY_REASON}:"  # every quality rule's reason is `low_quality:<rule>`
EXAMPLES = 3  # example ids kept per quality rule and per evaluation document


@dataclass(frozen=True)
class DroppedCopy:
    """A document dropped as a near-duplicate of its cluster's kept one. `similarity` is the
    estimated Jaccard with the kept document, or with `via_id` when the copy reached the cluster
    through a chain (not itself similar enough to the kept one)."""

    source: str
    id: str
    similarity: float
    via_id: str | None = None


@dataclass
class NearDuplicateCluster:
    """One kept document and the copies dropped for it. `size` counts the whole cluster (kept
    included) as the pipeline measured it."""

    kept_source: str
    kept_id: str
    kept_chars: int
    size: int
    dropped: list[DroppedCopy] = field(default_factory=list)

    @property
    def sort_key(self) -> tuple[int, int, str, str]:
        return (-self.size, -len(self.dropped), self.kept_id, self.kept_source)


@dataclass
class QualityRuleCount:
    """One quality rule: documents whose reject names it (their first failed rule), documents
    failing it at all (first or not), and the first few failing it with the measured value."""

    rule: str
    first: int = 0
    failed: int = 0
    examples: list[tuple[str, float | None]] = field(default_factory=list)  # (doc id, value)


@dataclass
class ContaminationCount:
    """Training documents rejected for holding one evaluation document's n-grams."""

    eval_document: str
    documents: int = 0
    max_shared_ngrams: int = 0
    eval_ngrams: int = 0
    examples: list[str] = field(default_factory=list)  # doc ids


@dataclass
class CurationRejects:
    """The three views, filled one reject record at a time by `add` (records of other reasons are
    ignored). Lists are ordered for display by the properties."""

    by_kept: dict[tuple[str, str], NearDuplicateCluster] = field(default_factory=dict)
    by_rule: dict[str, QualityRuleCount] = field(default_factory=dict)
    by_eval: dict[str, ContaminationCount] = field(default_factory=dict)
    without_facts: Counter = field(default_factory=Counter)  # reason -> rejects that carry no facts

    def add(self, record: dict[str, Any]) -> None:
        """Take one line of a rejects file (parsed JSON)."""
        if record.get("unit", "record") != "record":
            return
        reason = str(record.get("reason", ""))
        if reason != NEAR_DUPLICATE and reason != CONTAMINATED and not reason.startswith(LOW_QUALITY):
            return
        facts = record.get("facts")
        if not isinstance(facts, dict):
            self.without_facts[reason] += 1
            return
        doc = (str(record.get("source", "")), str(record.get("id", "")))
        if reason == NEAR_DUPLICATE:
            self._near_duplicate(doc, facts)
        elif reason == CONTAMINATED:
            self._contaminated(doc, facts)
        else:
            self._low_quality(doc, reason, facts)

    def _near_duplicate(self, doc: tuple[str, str], facts: dict[str, Any]) -> None:
        key = (str(facts.get("kept_source", "")), str(facts.get("kept_id", "")))
        size = int(facts.get("cluster_size") or 0)
        cluster = self.by_kept.get(key)
        if cluster is None:
            cluster = self.by_kept[key] = NearDuplicateCluster(key[0], key[1], int(facts.get("kept_chars") or 0), size)
        cluster.size = max(cluster.size, size)
        via = facts.get("via_id")
        cluster.dropped.append(DroppedCopy(doc[0], doc[1], float(facts.get("similarity") or 0.0), None if via is None else str(via)))

    def _low_quality(self, doc: tuple[str, str], reason: str, facts: dict[str, Any]) -> None:
        rules = [str(r) for r in facts.get("rules") or []] or [reason.removeprefix(LOW_QUALITY)]
        values = facts.get("values") if isinstance(facts.get("values"), dict) else {}
        for position, rule in enumerate(dict.fromkeys(rules)):
            count = self.by_rule.setdefault(rule, QualityRuleCount(rule))
            count.failed += 1
            count.first += position == 0
            if len(count.examples) < EXAMPLES:
                value = values.get(rule)
                count.examples.append((doc[1], float(value) if isinstance(value, (int, float)) else None))

    def _contaminated(self, doc: tuple[str, str], facts: dict[str, Any]) -> None:
        name = str(facts.get("eval_document", ""))
        count = self.by_eval.setdefault(name, ContaminationCount(name))
        count.documents += 1
        count.max_shared_ngrams = max(count.max_shared_ngrams, int(facts.get("shared_ngrams") or 0))
        count.eval_ngrams = max(count.eval_ngrams, int(facts.get("eval_ngrams") or 0))
        if len(count.examples) < EXAMPLES:
            count.examples.append(doc[1])

    @property
    def clusters(self) -> list[NearDuplicateCluster]:
        """Largest clusters first (then most copies dropped, then kept id); in each, the dropped
        copies most similar first (then by id), so the order never depends on the rejects' order."""
        out = sorted(self.by_kept.values(), key=lambda c: c.sort_key)
        for cluster in out:
            cluster.dropped.sort(key=lambda d: (-d.similarity, d.id, d.source))
        return out

    @property
    def rules(self) -> list[QualityRuleCount]:
        """Rules that named the most rejects first, then those failed most often, then by name."""
        return sorted(self.by_rule.values(), key=lambda r: (-r.first, -r.failed, r.rule))

    @property
    def contamination(self) -> list[ContaminationCount]:
        """Evaluation documents with the most contaminated training documents first."""
        return sorted(self.by_eval.values(), key=lambda c: (-c.documents, -c.max_shared_ngrams, c.eval_document))

    @property
    def empty(self) -> bool:
        return not (self.by_kept or self.by_rule or self.by_eval or self.without_facts)
