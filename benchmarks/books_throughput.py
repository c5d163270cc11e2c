"""Throughput of the book pipeline against the bare tokenizer on the same corpus.

Runs, in one process: (a) a raw batch encode of the corpus texts by the tokenizer's reference
encoder (`sentencepiece` for the demo's .model; the ceiling: tokenizing is the only real work per
token), (b) the whole pipeline on DirectRunner in-memory, and (c) the
same on DirectRunner with 2 worker processes. Prints tokens/s of each, the pipeline/raw ratio
and the packing efficiency per stage from the manifest.

    python benchmarks/books_throughput.py [--repeats 2] [--copies 1] [--stages 4k,16k]
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python benchmarks/books_throughput.py`: the repo root, for `benchmarks.*`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import REPO, best_of, load_average  # noqa: E402
from curation.tokenize import load_tokenizer  # noqa: E402
from pipelines.config import BooksConfig, load_yaml  # noqa: E402
from pipelines.launch import run_books  # noqa: E402

DEMO_CONFIG = REPO / "configs" / "books" / "demo.yaml"
SAMPLE = REPO / "data" / "sample" / "books.jsonl.gz"

DIRECT = ["--runner=DirectRunner"]
MULTI = DIRECT + ["--direct_num_workers", "2", "--direct_running_mode", "multi_processing"]


def read_corpus(path: Path) -> list[dict[str, Any]]:
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def vary(text: str, copy: int) -> str:
    """A distinct text for copy `copy`: one marker paragraph in the middle of the book, where
    Gutenberg header/footer stripping cannot remove it, so dedup keeps every copy."""
    cut = text.find("\n\n", len(text) // 2)
    cut = len(text) // 2 if cut < 0 else cut
    return f"{text[:cut]}\n\n[copy {copy}]{text[cut:]}"


def replicate(corpus: Path, copies: int, folder: Path) -> Path:
    """The corpus `copies` times, with distinct ids and texts, as one jsonl.gz in `folder`."""
    records = read_corpus(corpus)
    path = folder / f"books_x{copies}.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        for k in range(copies):
            for rec in records:
                text = rec["text"] if k == 0 else vary(rec["text"], k)
                fh.write(json.dumps({"id": f"{rec['id']}-{k}", "text": text}) + "\n")
    return path


def raw_encode(spec: str, texts: list[str], repeats: int) -> tuple[float, int]:
    """Best time of one batch encode of `texts` by the tokenizer's reference encoder
    (`sentencepiece` for a .model, the fast tokenizer otherwise; no BOS/EOS), and the token count."""
    tok, _ = load_tokenizer(spec)
    seconds, ids = best_of(lambda: tok.encode_ids(texts), repeats)
    return seconds, sum(len(i) for i in ids)


def pipeline_run(base: dict[str, Any], beam_args: list[str], repeats: int, workdir: Path) -> tuple[float, dict[str, Any]]:
    def once() -> dict[str, Any]:
        # A fresh output folder per run, so no run reads or overwrites another's shards.
        out = tempfile.mkdtemp(prefix="out-", dir=workdir)
        return run_books(BooksConfig.model_validate({**base, "output": out, "near_duplicates": False}), beam_args)

    return best_of(once, repeats)


def fmt_load() -> str:
    """Other processes on the same cores skew every number here; record how busy the host was."""
    return f"{load_average()} ({os.cpu_count()} CPUs)"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2, help="pipeline runs per mode; the fastest counts")
    parser.add_argument("--raw-repeats", type=int, default=3, help="raw encode runs; the fastest counts")
    parser.add_argument("--stages", help="comma-separated stage list overriding the demo's")
    parser.add_argument("--corpus", type=Path, default=SAMPLE, help="JSONL(.gz) with id and text")
    parser.add_argument("--copies", type=int, default=1, help="replicate the corpus K times (distinct ids and text)")
    parser.add_argument("--config", type=Path, default=DEMO_CONFIG, help="books config the pipeline runs with")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    base = load_yaml(args.config)
    if args.stages:
        base["stages"] = [s for s in args.stages.split(",") if s]

    with tempfile.TemporaryDirectory(prefix="books-bench-") as tmp:
        workdir = Path(tmp)
        corpus = replicate(args.corpus, args.copies, workdir) if args.copies > 1 else args.corpus.resolve()
        base["inputs"] = [str(corpus)]
        texts = [rec["text"] for rec in read_corpus(corpus)]
        chars = sum(len(t) for t in texts)
        print(f"corpus: {corpus.name}, {len(texts)} documents, {chars / 1e6:.1f}M chars; tokenizer {base['tokenizer']}")

        # The first load converts the SentencePiece model and caches it; keep that out of timings.
        tok, _ = load_tokenizer(base["tokenizer"])
        print(f"tokenizer family: {tok.family} ({tok.plan.reason})")

        print(f"load average before: {fmt_load()}")
        raw_s, raw_tokens = raw_encode(base["tokenizer"], texts, args.raw_repeats)
        results = [("raw encode_batch, whole texts", raw_s, raw_tokens, None)]
        print(f"raw encode_batch: {raw_tokens} tokens in {raw_s:.2f}s (best of {args.raw_repeats})")
        # For context only: the same texts cut the way the pipeline cuts them (the tokenizer
        # family's pieces of about 32K chars, whose ids concatenate to the whole texts' ids),
        # which separates the cost of tokenizing from the cost of the pipeline around it.
        pieces = [p for t in texts for p in tok.pieces(t, base.get("encode_piece_chars", 32_768))]
        piece_s, piece_tokens = raw_encode(base["tokenizer"], pieces, args.raw_repeats)
        if piece_tokens != raw_tokens:
            raise SystemExit(f"pieces gave {piece_tokens} tokens, whole texts {raw_tokens}: the cut rule is broken")
        results.append(("raw encode_batch, 32K-char pieces (info)", piece_s, piece_tokens, None))
        print(f"raw encode_batch on {len(pieces)} pieces: {piece_tokens} tokens in {piece_s:.2f}s")

        for label, beam_args in (("pipeline, DirectRunner", DIRECT), ("pipeline, 2 processes", MULTI)):
            seconds, manifest = pipeline_run(base, beam_args, args.repeats, workdir)
            results.append((label, seconds, manifest["tokens_in"], manifest))
            print(f"{label}: {manifest['tokens_in']} tokens in {seconds:.2f}s (best of {args.repeats}); args {' '.join(beam_args)}")
        print(f"load average after: {fmt_load()}")

    # tokens_in counts the pipeline's tokens (cleaned text, with BOS/EOS); raw counts the raw
    # texts. Both are per-run work, so tokens/s is the fair unit to compare.
    raw_rate = raw_tokens / raw_s
    print("\n| run | tokens | seconds | tokens/s | vs raw |")
    print("|---|---:|---:|---:|---:|")
    for label, seconds, tokens, _ in results:
        rate = tokens / seconds
        print(f"| {label} | {tokens:,} | {seconds:.2f} | {rate:,.0f} | {rate / raw_rate:.2f}x |")

    manifest = results[2][3]
    print("\n| stage | length | documents | rows | tokens | packing efficiency | dropped tail tokens |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, stage in manifest["stages"].items():
        print(
            f"| {name} | {stage['length']} | {stage['documents']} | {stage['rows']} | {stage['tokens']:,} "
            f"| {stage['packing_efficiency']:.4f} | {stage['dropped_tail_tokens']} |"
        )


if __name__ == "__main__":
    main()
