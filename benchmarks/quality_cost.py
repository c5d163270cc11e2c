"""Cost of the quality and language filters vs tokenizing, per sample novel (same process, same run;
each the median of 3 calls, after lingua's one-off model load).

    .venv/bin/python benchmarks/quality_cost.py
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

if __package__ in (None, ""):  # run as `python benchmarks/quality_cost.py`: the repo root, for `benchmarks.*`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import REPO, LoadSpan, timed_calls  # noqa: E402
from curation.quality import LanguageRule, QualityRules, build_detector, failed_rules, identify_language, text_stats  # noqa: E402
from curation.text import CleanConfig, clean_text  # noqa: E402
from curation.tokenize import encode_long, load_tokenizer  # noqa: E402

T = TypeVar("T")


def median_of(fn: Callable[[], T], n: int = 3) -> tuple[float, T]:
    """Median seconds of n calls, and the last result."""
    times, out = timed_calls(fn, n)
    return statistics.median(times), out


def main(argv: list[str] | None = None) -> None:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args(argv)
    with gzip.open(REPO / "data/sample/books.jsonl.gz", "rt", encoding="utf-8") as fh:
        books = [json.loads(line) for line in fh]
    tok, info = load_tokenizer("package:mistral_common/data/tokenizer.model.v1")
    detector = build_detector()
    rule = LanguageRule()
    t = time.perf_counter()
    identify_language(clean_text(books[0]["text"], CleanConfig()), rule, detector)
    warm = time.perf_counter() - t
    print(f"first language call (loads lingua's models): {warm:.2f} s")

    rows = []
    print(f"{'novel':18} {'chars':>9} {'words':>7} {'stats s':>8} {'lang s':>7} {'tokenize s':>10} {'filter/tok':>10}")
    with LoadSpan() as load:
        for b in books:
            text = clean_text(b["text"], CleanConfig())
            ts, stats = median_of(lambda: text_stats(text))  # each lambda is called at once, on this book
            tl, verdict = median_of(lambda: identify_language(text, rule, detector))
            tt, _ = median_of(lambda: encode_long(tok, text, info.bos_id, info.eos_id, 32_768))
            assert not failed_rules(stats, QualityRules()) and verdict.detected == "en"
            rows.append((b["id"], len(text), stats.words, ts, tl, tt))
            print(f"{b['id']:18} {len(text):9,} {stats.words:7,} {ts:8.3f} {tl:7.3f} {tt:10.3f} {(ts + tl) / tt:10.1%}")
    s = sum(r[3] for r in rows)
    lang = sum(r[4] for r in rows)
    tokenize = sum(r[5] for r in rows)
    print(f"{'total':18} {sum(r[1] for r in rows):9,} {sum(r[2] for r in rows):7,} {s:8.3f} {lang:7.3f} {tokenize:10.3f} "
          f"{(s + lang) / tokenize:10.1%}")
    print(f"load average before -> after: {load}")


if __name__ == "__main__":
    main()
