"""Near-duplicate detection on editions made from the real sample novels: precision/recall per
kind of edition, and the cost of the dedup stage as a share of the book pipeline's time.

Editions of each novel (cut to `--chars` characters, cleaned): reflowed (other line width),
chapter headings renamed, a preface added, 1% / 5% / 10% of the words replaced, chapters in
another order. Every edition should cluster with its original; distinct novels must never.

Then the whole book pipeline runs twice on the same corpus in this process, with and without
near-duplicate detection (`--repeats` times each, interleaved), and the ratio of wall times is
printed.

    python benchmarks/near_duplicates.py [--chars 200000] [--repeats 2] [--threshold 0.7 ...]
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import random
import re
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python benchmarks/near_duplicates.py`: the repo root, for `benchmarks.*`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import REPO, LoadSpan  # noqa: E402

SAMPLE = REPO / "data" / "sample" / "books.jsonl.gz"

_HEADING = re.compile(r"(?m)^[ \t]*(?:CHAPTER|Chapter)\b[^\n]*$")
_TOKEN = re.compile(r"[A-Za-z]+")


def read_novels(path: Path = SAMPLE, chars: int | None = None) -> list[dict[str, str]]:
    """The sample novels, cleaned as the pipeline cleans them, cut to `chars` characters at a
    paragraph break (None: whole)."""
    from curation.text import CleanConfig, clean_text

    out = []
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            rec = json.loads(line)
            text = clean_text(rec["text"], CleanConfig())
            if chars is not None and len(text) > chars:
                cut = text.rfind("\n\n", 0, chars)
                text = text[: cut if cut > chars // 2 else chars]
            out.append({"id": rec["id"], "text": text})
    return out


def reflow(text: str, width: int = 50) -> str:
    """Every paragraph re-wrapped to `width` columns (words unchanged)."""
    paragraphs = re.split(r"\n\s*\n", text)
    out = []
    for para in paragraphs:
        words, lines, line = para.split(), [], ""
        for word in words:
            if line and len(line) + 1 + len(word) > width:
                lines.append(line)
                line = word
            else:
                line = f"{line} {word}" if line else word
        lines.append(line)
        out.append("\n".join(lines))
    return "\n\n".join(out)


def _roman(n: int) -> str:
    out = ""
    for value, numeral in ((50, "L"), (40, "XL"), (10, "X"), (9, "IX"), (5, "V"), (4, "IV"), (1, "I")):
        while n >= value:
            out, n = out + numeral, n - value
    return out


def rename_chapters(text: str) -> str:
    """Chapter headings rewritten ("CHAPTER I" -> "BOOK THE FIRST, PART 1 (I)")."""
    count = iter(range(1, 10_000))

    def heading(_match: re.Match) -> str:
        n = next(count)
        return f"BOOK THE FIRST, PART {n} ({_roman(n)})"

    return _HEADING.sub(heading, text)


def add_preface(text: str, words: int = 1500, seed: int = 0) -> str:
    """An editor's preface of `words` words (sentences of the novel's own vocabulary in a new
    order, so none of its n-grams come from the novel) before the text."""
    rng = random.Random(seed)
    vocab = sorted(set(_TOKEN.findall(text)))
    body = []
    for i in range(words):
        body.append(rng.choice(vocab) + ("." if i % 17 == 16 else ""))
    return "PREFACE TO THIS EDITION\n\n" + " ".join(body) + "\n\n" + text


def edit_words(text: str, fraction: float, seed: int = 0) -> str:
    """`fraction` of the words (chosen at random, fixed seed) replaced by another word of the text."""
    rng = random.Random(seed)
    spans = [m.span() for m in _TOKEN.finditer(text)]
    vocab = sorted({text[a:b] for a, b in spans})
    chosen = set(rng.sample(range(len(spans)), round(fraction * len(spans))))
    out, last = [], 0
    for i in sorted(chosen):
        a, b = spans[i]
        out.append(text[last:a])
        word = text[a:b]
        replacement = rng.choice(vocab)
        while replacement == word and len(vocab) > 1:
            replacement = rng.choice(vocab)
        out.append(replacement)
        last = b
    out.append(text[last:])
    return "".join(out)


def reorder_chapters(text: str, seed: int = 0) -> str:
    """The chapters (from one heading to the next) in another order; what precedes the first
    heading stays first. A text with fewer than 3 chapters is cut in 8 parts at paragraph breaks."""
    starts = [m.start() for m in _HEADING.finditer(text)]
    if len(starts) < 3:
        step = len(text) // 8
        starts = sorted({text.find("\n\n", step * k) for k in range(1, 8)} - {-1})
    head, parts = text[: starts[0]], [text[a:b] for a, b in zip(starts, starts[1:] + [len(text)])]
    order = list(range(len(parts)))
    rng = random.Random(seed)
    while order == sorted(order):
        rng.shuffle(order)
    return head + "\n\n".join(parts[i].strip("\n") for i in order)


# Kind of edition -> how it is made from the original.
EDITIONS: dict[str, Callable[[str], str]] = {
    "reflowed": reflow,
    "renamed_chapters": rename_chapters,
    "preface": add_preface,
    "edited_1pct": lambda t: edit_words(t, 0.01),
    "edited_5pct": lambda t: edit_words(t, 0.05),
    "edited_10pct": lambda t: edit_words(t, 0.10),
    "reordered_chapters": reorder_chapters,
}


def edition_corpus(novels: list[dict[str, str]], kinds: list[str] | None = None) -> list[dict[str, str]]:
    """Each novel (id `NAME`) and its editions (id `NAME~KIND`)."""
    out = []
    for novel in novels:
        out.append(novel)
        for kind in kinds or list(EDITIONS):
            out.append({"id": f"{novel['id']}~{kind}", "text": EDITIONS[kind](novel["text"])})
    return out


def work_of(record_id: str) -> str:
    return record_id.split("~", 1)[0]


def pair_scores(corpus: list[dict[str, str]], config) -> dict[str, Any]:
    """Precision and recall of the verified pairs per kind of edition: a true pair is an edition
    and its original (and two editions of one novel); a false pair joins two novels."""
    from curation.near_duplicates import Node, Sketch, band_keys, bucket_pairs, estimated_jaccard, signature

    sketches = [Sketch(Node(r["id"], "bench", r["id"], len(r["text"]), r["id"]), signature(r["text"], config)) for r in corpus]
    buckets: dict[str, list] = {}
    for s in sketches:
        for key in band_keys(s.signature, config.bands, config.rows):
            buckets.setdefault(key, []).append(s)
    found = {p.key for members in buckets.values() if len(members) > 1 for p in bucket_pairs(members, config.threshold)}
    found |= {(b, a) for a, b in found}
    by_id = {s.node.id: s for s in sketches}
    per_kind: dict[str, dict[str, Any]] = {}
    for kind in EDITIONS:
        ids = [r["id"] for r in corpus if r["id"].endswith(f"~{kind}")]
        if not ids:
            continue
        hits = [i for i in ids if (i, work_of(i)) in found]
        sims = [estimated_jaccard(by_id[i].signature, by_id[work_of(i)].signature) for i in ids]
        per_kind[kind] = {"pairs": len(ids), "recall": len(hits) / len(ids), "min_similarity": min(sims), "max_similarity": max(sims)}
    false_pairs = sorted((a, b) for a, b in found if a < b and work_of(a) != work_of(b))
    true_found = sum(1 for a, b in found if a < b and work_of(a) == work_of(b))
    cross = [
        estimated_jaccard(x.signature, y.signature)
        for i, x in enumerate(sketches)
        for y in sketches[i + 1 :]
        if work_of(x.node.id) != work_of(y.node.id)
    ]
    return {
        "per_kind": per_kind,
        "false_pairs": false_pairs,
        "precision": true_found / (true_found + len(false_pairs)) if true_found + len(false_pairs) else 1.0,
        "max_cross_novel_similarity": max(cross) if cross else 0.0,
    }


def write_jsonl_gz(records: list[dict[str, str]], path: Path) -> Path:
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(rec) + "\n")
    return path


def time_pipeline(inputs: Path, out: Path, near_duplicates: bool, stages: list[str]) -> tuple[float, dict[str, Any]]:
    from pipelines.config import BooksConfig
    from pipelines.launch import run_books

    config = BooksConfig.model_validate({
        "inputs": [str(inputs)], "output": str(out), "tokenizer": "package:mistral_common/data/tokenizer.model.v1",
        "stages": stages, "near_duplicates": near_duplicates, "overwrite": True,
    })
    start = time.perf_counter()
    manifest = run_books(config, ["--runner=DirectRunner", "--direct_running_mode=in_memory"])
    return time.perf_counter() - start, manifest


def main(argv: list[str] | None = None) -> None:
    from curation.near_duplicates import MinHashConfig

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chars", type=int, default=200_000, help="cut each novel to this many characters (0: whole)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threshold", type=float, default=MinHashConfig.threshold)
    parser.add_argument("--ngram", type=int, default=MinHashConfig.ngram)
    parser.add_argument("--bands", type=int, default=MinHashConfig.bands)
    parser.add_argument("--rows", type=int, default=MinHashConfig.rows)
    parser.add_argument("--skip-pipeline", action="store_true", help="only precision/recall")
    args = parser.parse_args(argv)
    logging.getLogger("apache_beam").setLevel(logging.ERROR)

    config = MinHashConfig(threshold=args.threshold, ngram=args.ngram, bands=args.bands, rows=args.rows)
    novels = read_novels(chars=args.chars or None)
    corpus = edition_corpus(novels)
    start = time.perf_counter()
    scores = pair_scores(corpus, config)
    took = time.perf_counter() - start
    print(f"{len(novels)} novels x {len(EDITIONS)} editions, {sum(len(r['text']) for r in corpus):,} chars; "
          f"threshold={config.threshold} ngram={config.ngram} bands={config.bands} rows={config.rows} ({took:.1f} s)")
    print("| edition | pairs | recall | estimated Jaccard with the original (min-max) |")
    print("| --- | ---: | ---: | --- |")
    for kind, s in scores["per_kind"].items():
        print(f"| {kind} | {s['pairs']} | {s['recall']:.2f} | {s['min_similarity']:.2f}-{s['max_similarity']:.2f} |")
    print(f"precision (pairs within one novel / all verified pairs): {scores['precision']:.3f}; "
          f"false pairs: {scores['false_pairs'] or 'none'}; "
          f"largest estimated Jaccard between two distinct novels: {scores['max_cross_novel_similarity']:.3f}")
    if args.skip_pipeline:
        return
    # The overhead: on the 7 whole novels (no near-duplicates: both runs keep and tokenize the
    # same documents), and the net effect on the editions (duplicates are never tokenized).
    corpora = {"7 distinct whole novels": read_novels(), f"the {len(corpus)} editions": corpus}
    with tempfile.TemporaryDirectory() as tmp, LoadSpan() as load:
        for c, (name, records) in enumerate(corpora.items()):
            inputs = write_jsonl_gz(records, Path(tmp) / f"corpus-{c}.jsonl.gz")
            times: dict[bool, list[float]] = {True: [], False: []}
            kept = {}
            for r in range(args.repeats):
                for flag in (False, True):
                    seconds, manifest = time_pipeline(inputs, Path(tmp) / f"out-{c}-{flag}-{r}", flag, ["s=4096:1000-100000000"])
                    times[flag].append(seconds)
                    kept[flag] = (manifest["kept"], manifest["rejected"])
            with_dedup, without = min(times[True]), min(times[False])
            print(f"{name}: pipeline without near-duplicate detection {without:.1f} s (kept {kept[False][0]}), "
                  f"with {with_dedup:.1f} s (kept {kept[True][0]}, rejected {kept[True][1] or 0}); best of {args.repeats}; "
                  f"ratio with/without {with_dedup / without:.2f}")
    print(f"load average before -> after the pipeline runs: {load}")


if __name__ == "__main__":
    main()
