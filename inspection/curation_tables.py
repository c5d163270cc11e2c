"""The curation tables of `longctx inspect`: near-duplicate clusters, quality rules and
contamination by evaluation document, drawn from `inspection.curation_rejects.CurationRejects`.
Ids and names are the input's own text: Text objects, never parsed as rich markup."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from inspection.curation_rejects import CurationRejects, NearDuplicateCluster

MAX_CLUSTERS = 10  # clusters shown, the largest first; the rest are counted in a last row
MAX_DROPPED = 5  # dropped ids shown per cluster


def _table(title: str, columns: tuple[str, ...], numeric: tuple[str, ...], **options) -> Table:
    """A table with `columns`, the `numeric` ones right-aligned, long cells folded."""
    table = Table(title=title, header_style="bold", **options)
    for col in columns:
        table.add_column(col, justify="right" if col in numeric else "left", overflow="fold")
    return table


def _dropped_cell(cluster: NearDuplicateCluster, max_dropped: int) -> Text:
    lines = []
    for copy in cluster.dropped[:max_dropped]:
        via = f" (via {copy.via_id})" if copy.via_id is not None else ""
        lines.append(f"{copy.id}: {copy.similarity:.3f}{via}")
    if len(cluster.dropped) > max_dropped:
        lines.append(f"... {len(cluster.dropped) - max_dropped} more")
    return Text("\n".join(lines))


def near_duplicate_table(curation: CurationRejects, max_clusters: int = MAX_CLUSTERS, max_dropped: int = MAX_DROPPED) -> Table | None:
    """One row per kept document: its id, source and characters, the copies dropped for it with
    their estimated Jaccard similarity, and the cluster's size; the largest clusters first."""
    clusters = curation.clusters
    if not clusters:
        return None
    dropped = sum(len(c.dropped) for c in clusters)
    table = _table(f"near-duplicate clusters ({len(clusters):,} kept document(s), {dropped:,} dropped)",
                   ("kept id", "kept source", "kept chars", "dropped: estimated similarity", "cluster size"),
                   ("kept chars", "cluster size"), show_lines=True)
    for cluster in clusters[:max_clusters]:
        table.add_row(Text(cluster.kept_id), Text(cluster.kept_source), f"{cluster.kept_chars:,}",
                      _dropped_cell(cluster, max_dropped), f"{cluster.size:,}")
    if len(clusters) > max_clusters:
        rest = clusters[max_clusters:]
        table.add_row(f"... {len(rest):,} more", "", "", f"{sum(len(c.dropped) for c in rest):,} dropped", "")
    return table


def quality_rule_table(curation: CurationRejects) -> Table | None:
    """Per quality rule: documents rejected for it (the first rule they failed, their reason),
    documents failing it at all, and examples with the measured value."""
    rules = curation.rules
    if not rules:
        return None
    table = _table("quality rules (low_quality:<rule> rejects)", ("rule", "rejected for it", "failing it", "examples (id: value)"),
                   ("rejected for it", "failing it"))
    for rule in rules:
        examples = ", ".join(f"{doc}: {'-' if value is None else format(value, '.4g')}" for doc, value in rule.examples)
        table.add_row(Text(rule.rule), f"{rule.first:,}", f"{rule.failed:,}", Text(examples))
    return table


def contamination_table(curation: CurationRejects) -> Table | None:
    """Per evaluation document: training documents rejected as contaminated by it, and the most
    of its n-grams one of them held."""
    rows = curation.contamination
    if not rows:
        return None
    table = _table("contamination by evaluation document", ("evaluation document", "documents", "max shared n-grams", "examples"),
                   ("documents", "max shared n-grams"))
    for row in rows:
        shared = f"{row.max_shared_ngrams:,} of {row.eval_ngrams:,}" if row.eval_ngrams else f"{row.max_shared_ngrams:,}"
        table.add_row(Text(row.eval_document), f"{row.documents:,}", shared, Text(", ".join(row.examples)))
    return table


def print_curation_tables(curation: CurationRejects, console: Console) -> None:
    """The three tables, each only when such rejects exist."""
    for table in (near_duplicate_table(curation), quality_rule_table(curation), contamination_table(curation)):
        if table is not None:
            console.print(table)
    for reason, n in sorted(curation.without_facts.items()):
        console.print(f"[yellow]{n:,} {escape(reason)} reject(s) carry no facts (written before rejects had them): "
                      "not in the tables above[/yellow]")
