"""`longctx inspect` on a real books job whose curation steps rejected documents: near-duplicate
clusters (kept vs dropped ids with their similarity), per-rule quality counts and contamination
by evaluation document, built from the rejects' structured facts."""

from __future__ import annotations

import gzip
import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
from rich.console import Console

from benchmarks.near_duplicates import edition_corpus, read_novels
from inspection.curation_tables import near_duplicate_table
from inspection.output import summarize_output
from longctx.cli import main
from pipelines.config import BooksConfig
from pipelines.launch import run_books
from tests.conftest import DEMO_TOKENIZER

IN_MEMORY = ["--runner=DirectRunner", "--direct_running_mode=in_memory"]
THRESHOLD = BooksConfig.model_fields["near_dup_threshold"].default
# A text failing several quality rules at once (bullets, repeated lines, repeated n-grams): its
# reason names the first, the facts every one.
SPAM = "\n".join(["• Buy cheap watches online today with free shipping!"] * 300)


def _write_jsonl_gz(records: list[dict[str, str]], path: Path) -> Path:
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
    return path


@pytest.fixture(scope="module")
def curated(tmp_path_factory) -> tuple[Path, list[dict], list[dict]]:
    """(output, input records, reject lines) of one books job: emma with three editions and
    mansfieldpark with one (two near-duplicate clusters), mobydick alone, two novels holding an
    evaluation passage each, and two texts made to fail quality rules."""
    novels = {n["id"]: n["text"] for n in read_novels(chars=30_000)}
    corpus = edition_corpus([{"id": "emma", "text": novels["emma"]}], ["reflowed", "preface", "edited_1pct"])
    corpus += edition_corpus([{"id": "mansfieldpark", "text": novels["mansfieldpark"]}], ["reflowed"])
    story = novels["prideprejudice"][5_000:25_000].split("\n")
    corpus += [
        {"id": "mobydick", "text": novels["mobydick"]},
        {"id": "persuasion", "text": novels["persuasion"]},
        {"id": "northangerabbey", "text": novels["northangerabbey"]},
        {"id": "spam", "text": SPAM},
        {"id": "repeated", "text": "\n".join(f"{line}\nSubscribe to our newsletter for more stories!" for line in story)},
    ]
    folder = tmp_path_factory.mktemp("curated")
    evals = folder / "haystacks.jsonl"
    evals.write_text("".join(json.dumps({"id": name, "text": novels[novel][8_000:14_000]}) + "\n"
                             for name, novel in (("hay-persuasion", "persuasion"), ("hay-northanger", "northangerabbey"))))
    out = folder / "out"
    config = BooksConfig.model_validate({
        "inputs": [str(_write_jsonl_gz(corpus, folder / "in.jsonl.gz"))], "output": str(out), "tokenizer": DEMO_TOKENIZER,
        "stages": ["s=2048:1000-10000000"], "languages": [], "decontaminate": [str(evals)],
    })
    manifest = run_books(config, IN_MEMORY)
    assert manifest["read"] == len(corpus) == manifest["kept"] + manifest["rejected_total"]
    rejects = [json.loads(line) for f in sorted((out / "rejects").glob("*.jsonl")) for line in f.read_text().splitlines()]
    return out, corpus, rejects


def _inspect(out: Path, capsys) -> str:
    assert main(["inspect", str(out), "--no-plots"]) == 0
    return capsys.readouterr().out


def test_near_duplicate_clusters_name_kept_and_dropped_ids(curated, capsys):
    out, corpus, rejects = curated
    clusters = summarize_output(str(out)).curation.clusters
    # Largest first: emma's cluster of four, then mansfieldpark's of two.
    assert [(c.size, len(c.dropped)) for c in clusters] == [(4, 3), (2, 1)]
    by_work = {c.kept_id.split("~")[0]: c for c in clusters}
    assert set(by_work) == {"emma", "mansfieldpark"}
    for work, cluster in by_work.items():
        members = {r["id"] for r in corpus if r["id"].split("~")[0] == work}
        assert {d.id for d in cluster.dropped} == members - {cluster.kept_id}
        assert cluster.kept_chars == len(next(r["text"] for r in corpus if r["id"] == cluster.kept_id))
        assert all(THRESHOLD <= d.similarity <= 1.0 for d in cluster.dropped)
        assert [d.similarity for d in cluster.dropped] == sorted((d.similarity for d in cluster.dropped), reverse=True)
    # Every near_duplicate reject is in exactly one cluster, with its own similarity.
    near = {r["id"]: r["facts"] for r in rejects if r["reason"] == "near_duplicate"}
    shown = {d.id: (c.kept_id, d.similarity) for c in clusters for d in c.dropped}
    assert shown == {i: (f["kept_id"], f["similarity"]) for i, f in near.items()}

    printed = _inspect(out, capsys)
    assert "near-duplicate clusters (2 kept document(s), 4 dropped)" in printed
    for cluster in clusters:
        assert cluster.kept_id in printed
        for copy in cluster.dropped:
            assert f"{copy.id}: {copy.similarity:.3f}" in printed


def test_the_cluster_table_is_capped_with_a_count_of_the_rest(curated):
    out, _, _ = curated
    curation = summarize_output(str(out)).curation
    console = Console(record=True, width=200)
    console.print(near_duplicate_table(curation, max_clusters=1, max_dropped=2))
    text = console.export_text()
    assert "... 1 more" in text  # emma's third copy, and mansfieldpark's cluster
    assert "1 dropped" in text and "mansfieldpark" not in text


def test_quality_rules_count_first_and_every_failed_rule(curated, capsys):
    out, _, rejects = curated
    rules = {r.rule: r for r in summarize_output(str(out)).curation.rules}
    quality = {r["id"]: r for r in rejects if r["reason"].startswith("low_quality:")}
    assert {i: r["reason"] for i, r in quality.items()} == {"spam": "low_quality:bullet_lines", "repeated": "low_quality:dup_lines"}
    assert len(quality["spam"]["facts"]["rules"]) > 1  # the spam fails more than its reason's rule
    # Per rule: documents whose reason names it, and documents failing it at all.
    first = Counter(r["reason"].removeprefix("low_quality:") for r in quality.values())
    failed = Counter(rule for r in quality.values() for rule in r["facts"]["rules"])
    assert {name: (r.first, r.failed) for name, r in rules.items()} == {rule: (first[rule], n) for rule, n in failed.items()}
    assert rules["bullet_lines"].first == 1 and rules["dup_lines"].failed >= 1
    assert rules["bullet_lines"].examples == [("spam", quality["spam"]["facts"]["values"]["bullet_lines"])]

    printed = _inspect(out, capsys)
    assert "quality rules (low_quality:<rule> rejects)" in printed
    for name in failed:
        assert name in printed


def test_contamination_by_evaluation_document(curated, capsys):
    out, _, rejects = curated
    rows = summarize_output(str(out)).curation.contamination
    contaminated = {r["id"]: r["facts"] for r in rejects if r["reason"] == "contaminated"}
    assert set(contaminated) == {"persuasion", "northangerabbey"}
    assert {row.eval_document: (row.documents, row.max_shared_ngrams, row.examples) for row in rows} == {
        f["eval_document"]: (1, f["shared_ngrams"], [doc]) for doc, f in contaminated.items()}
    # Each passage lies inside its novel (all but n-grams at a word cut at either end are shared).
    assert all(0.9 * row.eval_ngrams <= row.max_shared_ngrams <= row.eval_ngrams for row in rows)
    assert {row.eval_document.rsplit("id=", 1)[-1] for row in rows} == {"hay-persuasion", "hay-northanger"}

    printed = _inspect(out, capsys)
    assert "contamination by evaluation document" in printed
    for row in rows:
        assert f"{row.max_shared_ngrams:,} of {row.eval_ngrams:,}" in printed


def test_rejects_without_facts_are_counted_not_dropped(curated, tmp_path, capsys):
    """An output written before rejects carried facts: no tables, and a line saying why."""
    out, _, rejects = curated
    old = tmp_path / "old"
    shutil.copytree(out, old)
    for path in (old / "rejects").glob("*.jsonl"):
        lines = [json.loads(line) for line in path.read_text().splitlines()]
        path.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "facts"}) + "\n" for r in lines))
    curation = summarize_output(str(old)).curation
    assert not curation.clusters and not curation.rules and not curation.contamination
    assert curation.without_facts == Counter(r["reason"] for r in rejects if "facts" in r)
    printed = _inspect(old, capsys)
    assert "near-duplicate clusters" not in printed
    assert "4 near_duplicate reject(s) carry no facts" in printed
