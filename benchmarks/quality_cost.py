"""Cost of the quality and language filters vs tokenizing, per sample novel (same process, same run).
Run from the repo root: .venv/bin/python benchmarks/quality_cost.py"""

import gzip
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from curation.quality import LanguageRule, QualityRules, build_detector, failed_rules, identify_language, text_stats
from curation.text import CleanConfig, clean_text
from curation.tokenize import encode_long, load_tokenizer

books = [json.loads(l) for l in gzip.open(Path(__file__).resolve().parents[1] / "data/sample/books.jsonl.gz", "rt", encoding="utf-8")]
tok, info = load_tokenizer("package:mistral_common/data/tokenizer.model.v1")
detector = build_detector()
rule = LanguageRule()
t = time.perf_counter(); identify_language(clean_text(books[0]["text"], CleanConfig()), rule, detector); warm = time.perf_counter() - t
print(f"first language call (loads lingua's models): {warm:.2f} s")

def best(fn, n=3):
    times = []
    for _ in range(n):
        t = time.perf_counter(); out = fn(); times.append(time.perf_counter() - t)
    return statistics.median(times), out

rows = []
print(f"{'novel':18} {'chars':>9} {'words':>7} {'stats s':>8} {'lang s':>7} {'tokenize s':>10} {'filter/tok':>10}")
for b in books:
    text = clean_text(b["text"], CleanConfig())
    ts, stats = best(lambda: text_stats(text))
    tl, verdict = best(lambda: identify_language(text, rule, detector))
    tt, ids = best(lambda: encode_long(tok, text, info.bos_id, info.eos_id, 32_768))
    assert not failed_rules(stats, QualityRules()) and verdict.detected == "en"
    rows.append((b["id"], len(text), stats.words, ts, tl, tt))
    print(f"{b['id']:18} {len(text):9,} {stats.words:7,} {ts:8.3f} {tl:7.3f} {tt:10.3f} {(ts + tl) / tt:10.1%}")
S = sum(r[3] for r in rows); L = sum(r[4] for r in rows); T = sum(r[5] for r in rows)
print(f"{'total':18} {sum(r[1] for r in rows):9,} {sum(r[2] for r in rows):7,} {S:8.3f} {L:7.3f} {T:10.3f} {(S + L) / T:10.1%}")
