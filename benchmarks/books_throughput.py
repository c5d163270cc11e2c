"""Throughput of the whole book pipeline against its tokenizer's ceiling on the same corpus.

Runs, in one process on one corpus (the sample, or `--copies K` distinct copies of it):
  (a) the ceiling: the pipeline's own tokenizer object (`load_tokenizer` of the config's spec)
      batch-encoding the cleaned texts cut into ~32K-character pieces (`TextTokenizer.pieces`, the
      cut the tokenizer's own ids are proven for), in one parallel call, best of `--raw-repeats`:
      what tokenizing the corpus costs with the tokenizer's library alone;
  (a') the pipeline's encoder alone: `encode_long` of every cleaned text as the Tokenize step
      calls it (for SentencePiece BPE: each distinct word encoded once, `curation.word_encoding`),
      the same ids; shows how much of (a) the pipeline's tokenizing still costs;
  (b) the whole pipeline on DirectRunner in-memory with the config as it is (the demo's: quality
      and language filters, exact and near-duplicate detection on), best of `--repeats`;
  (c) one more pipeline run under a sampling profiler, its wall time split by step (read, clean,
      quality, language, exact dedup, near-duplicates, tokenize, stages, pack, write, Beam).
Prints tokens/s of each, the pipeline/ceiling ratio, the breakdown and the packing per stage.
`--processes 2` adds the same pipeline with 2 worker processes (slower on 2 vCPUs: RESULTS).

    python benchmarks/books_throughput.py [--copies 4] [--repeats 3] [--stages 4k,16k]
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import os
import random
import sys
import sysconfig
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

if __package__ in (None, ""):  # run as `python benchmarks/books_throughput.py`: the repo root, for `benchmarks.*`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import REPO, load_average  # noqa: E402
from curation.text import CleanConfig, Rejected, clean_text  # noqa: E402
from curation.tokenize import encode_long, load_tokenizer  # noqa: E402
from pipelines.config import BooksConfig, load_yaml  # noqa: E402
from pipelines.launch import run_books  # noqa: E402

DEMO_CONFIG = REPO / "configs" / "books" / "demo.yaml"
SAMPLE = REPO / "data" / "sample" / "books.jsonl.gz"

DIRECT = ["--runner=DirectRunner"]
T = TypeVar("T")


def processes(n: int) -> list[str]:
    return DIRECT + ["--direct_num_workers", str(n), "--direct_running_mode", "multi_processing"]


def read_corpus(path: Path) -> list[dict[str, Any]]:
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def vary(text: str, copy: int, keep: float = 0.05) -> str:
    """A copy that is a distinct book to every dedup step: the words of each line between the
    first and last `keep` of the text shuffled (a fixed seed per copy), so the copy shares almost
    no word 5-gram with the original (near-duplicate detection keeps it) while its length, words
    and language stay the original's (the same cost to clean, judge and tokenize). The edges are
    left alone so Gutenberg header and footer markers still strip."""
    rng = random.Random(copy)
    lo = text.find("\n", int(len(text) * keep))
    hi = text.rfind("\n", 0, int(len(text) * (1 - keep)))
    if lo < 0 or hi <= lo:
        lo, hi = 0, len(text)
    lines = text[lo:hi].split("\n")
    for i, line in enumerate(lines):
        body = line.rstrip("\r")  # a CRLF file's "\r" stays at the end of its line
        words = body.split(" ")
        if len(words) > 1:
            rng.shuffle(words)
            lines[i] = " ".join(words) + line[len(body) :]
    return text[:lo] + "\n".join(lines) + text[hi:]


def replicate(corpus: Path, copies: int, folder: Path) -> Path:
    """The corpus `copies` times, with distinct ids and texts (see `vary`), as one jsonl.gz in `folder`."""
    records = read_corpus(corpus)
    path = folder / f"books_x{copies}.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        for k in range(copies):
            for rec in records:
                text = rec["text"] if k == 0 else vary(rec["text"], k)
                fh.write(json.dumps({"id": f"{rec['id']}-{k}", "text": text}) + "\n")
    return path


# --- where the time goes ------------------------------------------------------------------------

# Steps of the pipeline, by the module (and for some, the function) of the innermost frame of ours
# on the stack. Library frames (numpy, pandas, re, ...) count for the frame of ours that called
# them; a few libraries are a step on their own wherever they are called from.
# (pyarrow is not one: the quality, near-duplicate and tokenize steps call it too.)
LIBRARY_STEPS = {"sentencepiece": "tokenize", "tokenizers": "tokenize", "lingua": "language", "datasketch": "near-duplicates"}
LANGUAGE_FUNCTIONS = {"identify_language", "mean_confidences", "language_windows", "language_verdict", "build_detector"}
MODULE_STEPS = {
    "curation/sources.py": "read", "pipelines/io.py": "read",
    "curation/text.py": "clean", "curation/quality.py": "quality rules", "pipelines/quality.py": "quality rules",
    "curation/exact_duplicates.py": "exact dedup",
    "curation/near_duplicates.py": "near-duplicates", "pipelines/dedup.py": "near-duplicates",
    "curation/tokenize.py": "tokenize", "curation/word_encoding.py": "tokenize", "curation/stages.py": "stages",
    "curation/packing.py": "pack", "pipelines/packing.py": "pack",
    "curation/shards.py": "write shards", "curation/manifest.py": "rejects + manifest",
    "pipelines/accounting.py": "rejects + manifest", "curation/accounting.py": "rejects + manifest",
}
BOOKS_FUNCTIONS = {"CleanText": "clean", "Tokenize": "tokenize", "assign_stages": "stages"}
OTHER = "Beam and the rest"


def step_of(frames: list[tuple[str, str, str]]) -> str:
    """The step a stack sample belongs to; `frames` are (file, function, class or "") innermost first."""
    site = sysconfig.get_paths()["purelib"]
    for filename, function, owner in frames:
        if filename.startswith(site):
            top = Path(filename).relative_to(site).parts[0]
            if top in LIBRARY_STEPS:
                return LIBRARY_STEPS[top]
            continue
        try:
            rel = Path(filename).resolve().relative_to(REPO).as_posix()
        except ValueError:
            continue
        if rel == "pipelines/books.py":
            step = BOOKS_FUNCTIONS.get(owner) or BOOKS_FUNCTIONS.get(function)
            if step:
                return step
            continue
        if rel == "pipelines/packing.py" and owner == "WriteShard":
            return "write shards"
        if rel in ("curation/quality.py", "pipelines/quality.py") and function in LANGUAGE_FUNCTIONS:
            return "language"
        if rel in MODULE_STEPS:
            return MODULE_STEPS[rel]
    return OTHER


def _frames(frame) -> list[tuple[str, str, str]]:
    out = []
    while frame is not None:
        owner = frame.f_locals.get("self")
        out.append((frame.f_code.co_filename, frame.f_code.co_name, type(owner).__name__ if owner is not None else ""))
        frame = frame.f_back
    return out


def _short(filename: str) -> str:
    site = sysconfig.get_paths()["purelib"]
    return filename[len(site) + 1 :] if filename.startswith(site) else filename


# A thread whose innermost frame is one of these is waiting, not working.
IDLE = {"wait", "_wait_for_tstate_lock", "get", "select", "poll", "accept", "_worker", "sleep", "_run", "run", "_serve"}


class StepSampler(threading.Thread):
    """A sampling profiler: every `interval` s, the stack of each busy thread of this process is
    charged to one step (`step_of`), weighted by the time since the previous sample. Unlike a
    deterministic profiler it adds no cost per call, so the steps keep their real proportions.

    While it runs, the interpreter's switch interval is `switch_interval` (default 5 ms): the
    sampler needs the GIL to read the stacks, and at 5 ms it got it mostly when the main thread
    released it, inside a C call (sentencepiece, zlib/bz2, Arrow, file reads), which was then
    charged the Python time before it too. Measured on a 3 s loop of ~2.2 s of Python and ~0.8 s
    of zlib: sampled 0.02 / 2.98 s at 5 ms, 2.07-2.10 / 0.90-0.92 s at 0.1 ms (RESULTS, run 10)."""

    def __init__(self, interval: float = 0.002, switch_interval: float = 1e-4):
        super().__init__(daemon=True)
        self.interval = interval
        self.switch_interval = switch_interval
        self.saved_switch_interval = sys.getswitchinterval()
        self.stop_event = threading.Event()
        self.seconds: Counter[str] = Counter()
        self.other: Counter[str] = Counter()  # OTHER's time by innermost frame (file:function)

    def run(self) -> None:
        me = threading.get_ident()
        last = time.perf_counter()
        while not self.stop_event.wait(self.interval):
            now = time.perf_counter()
            for ident, frame in sys._current_frames().items():
                if ident == me or frame.f_code.co_name in IDLE:
                    continue
                frames = _frames(frame)
                step = step_of(frames)
                self.seconds[step] += now - last
                if step == OTHER:
                    self.other[f"{_short(frames[0][0])}:{frames[0][1]}"] += now - last
            last = now

    def __enter__(self) -> StepSampler:
        self.saved_switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(self.switch_interval)
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_event.set()
        self.join()
        sys.setswitchinterval(self.saved_switch_interval)


# --- the runs ------------------------------------------------------------------------------------


def cleaned_texts(config: BooksConfig, records: list[dict[str, Any]]) -> list[str]:
    """The texts the pipeline tokenizes, cleaned as it cleans them (texts it rejects while cleaning left out)."""
    clean = CleanConfig(min_chars=config.min_chars, max_control_ratio=config.max_control_ratio,
                        normalize_unicode=None if config.unicode_normalization == "none" else config.unicode_normalization,
                        strip_gutenberg=config.strip_gutenberg)
    out = []
    for rec in records:
        try:
            out.append(clean_text(rec[config.text_field], clean))
        except Rejected:
            pass
    return out


def timed(fn: Callable[[], T], repeats: int) -> tuple[float, float, T]:
    """(wall seconds, CPU seconds of this process, all threads) of the fastest of `repeats` calls,
    and the last call's result. CPU time is the steadier figure on a shared host: other jobs
    stretch the wall clock but not the work this process does."""
    best: tuple[float, float] | None = None
    result: Any = None
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        result = fn()
        run = (time.perf_counter() - wall, time.process_time() - cpu)
        best = run if best is None or run[0] < best[0] else best
    assert best is not None
    return best[0], best[1], result


def ceiling(tok: Any, pieces: list[str], repeats: int) -> tuple[float, float, int]:
    """Wall and CPU seconds of the fastest batch encode of `pieces` by the pipeline's tokenizer
    object, and its token count."""
    wall, cpu, ids = timed(lambda: tok.encode_ids(pieces), repeats)
    return wall, cpu, sum(len(i) for i in ids)


def pipeline_run(base: dict[str, Any], beam_args: list[str], repeats: int, workdir: Path) -> tuple[float, float, dict[str, Any]]:
    def once() -> dict[str, Any]:
        # A fresh output folder per run, so no run reads or overwrites another's shards.
        out = tempfile.mkdtemp(prefix="out-", dir=workdir)
        return run_books(BooksConfig.model_validate({**base, "output": out}), beam_args)

    return timed(once, repeats)


def beam_args_in_process(label: str) -> bool:
    return "processes" not in label


def fmt_load() -> str:
    """Other processes on the same cores skew every number here; record how busy the host was."""
    return f"{load_average()} ({os.cpu_count()} CPUs)"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2, help="pipeline runs; the fastest counts")
    parser.add_argument("--raw-repeats", type=int, default=3, help="ceiling encodes; the fastest counts")
    parser.add_argument("--stages", help="comma-separated stage list overriding the config's")
    parser.add_argument("--corpus", type=Path, default=SAMPLE, help="JSONL(.gz) with id and text")
    parser.add_argument("--copies", type=int, default=1, help="replicate the corpus K times (distinct ids and texts: see vary)")
    parser.add_argument("--config", type=Path, default=DEMO_CONFIG, help="books config the pipeline runs with")
    parser.add_argument("--processes", type=int, default=0, help="also run the pipeline with this many worker processes")
    parser.add_argument("--no-profile", action="store_true", help="skip the profiled run")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    base = load_yaml(args.config)
    if args.stages:
        base["stages"] = [s for s in args.stages.split(",") if s]

    with tempfile.TemporaryDirectory(prefix="books-bench-") as tmp:
        workdir = Path(tmp)
        corpus = replicate(args.corpus, args.copies, workdir) if args.copies > 1 else args.corpus.resolve()
        base["inputs"] = [str(corpus)]
        config = BooksConfig.model_validate({**base, "output": str(workdir / "unused")})
        records = read_corpus(corpus)
        texts = cleaned_texts(config, records)
        print(f"corpus: {corpus.name}, {len(records)} documents, {sum(len(t) for t in texts) / 1e6:.1f}M chars cleaned; "
              f"tokenizer {base['tokenizer']}; near-duplicates {'on' if config.near_duplicates else 'off'}, quality filter "
              f"{'on' if config.quality_filter else 'off'}, languages {config.languages or 'off'}")

        # The first load converts the SentencePiece model and caches it; keep that out of timings.
        tok, _ = load_tokenizer(base["tokenizer"])
        print(f"tokenizer family: {tok.family} ({tok.plan.reason})")
        pieces = [p for t in texts for p in tok.pieces(t, config.encode_piece_chars)]

        print(f"load average before: {fmt_load()}")
        ceil_s, ceil_cpu, ceil_tokens = ceiling(tok, pieces, args.raw_repeats)
        print(f"ceiling: {len(pieces)} pieces, {ceil_tokens} tokens in {ceil_s:.2f}s, {ceil_cpu:.2f} CPU s (best of {args.raw_repeats})")
        enc_s, enc_cpu, enc_ids = timed(lambda: [encode_long(tok, t, piece_chars=config.encode_piece_chars) for t in texts],
                                        args.raw_repeats)
        enc_tokens = sum(len(ids) for ids in enc_ids)
        if enc_tokens != ceil_tokens:
            raise SystemExit(f"the pipeline's encoder gave {enc_tokens} tokens, the ceiling {ceil_tokens}: not the same ids")
        print(f"encoder alone: {enc_tokens} tokens in {enc_s:.2f}s, {enc_cpu:.2f} CPU s (best of {args.raw_repeats})")
        runs = [("pipeline, DirectRunner in-memory", DIRECT)]
        if args.processes:
            runs.append((f"pipeline, {args.processes} processes", processes(args.processes)))
        results = []
        for label, beam_args in runs:
            seconds, cpu, manifest = pipeline_run(base, beam_args, args.repeats, workdir)
            results.append((label, seconds, cpu, manifest))
            print(f"{label}: {manifest['tokens_in']} tokens in {seconds:.2f}s, {cpu:.2f} CPU s (best of {args.repeats})")
        steps: Counter[str] = Counter()
        other: Counter[str] = Counter()
        profiled_s = 0.0
        if not args.no_profile:
            with StepSampler() as sampler:
                profiled_s, _, _ = pipeline_run(base, DIRECT, 1, workdir)
            steps = sampler.seconds
            other = sampler.other
        print(f"load average after: {fmt_load()}")

    manifest = results[0][3]
    # The pipeline's tokens are the ceiling's plus BOS/EOS per kept document; anything else means
    # the ceiling did not encode what the pipeline encoded (a document rejected before tokenizing).
    specials = manifest["tokens_in"] - ceil_tokens
    if specials != manifest["kept"] * (int(config.add_bos) + int(config.add_eos)):
        print(f"WARNING: pipeline tokens {manifest['tokens_in']} = ceiling {ceil_tokens} + {specials}, "
              f"not + BOS/EOS of {manifest['kept']} kept documents: the pipeline rejected some texts before tokenizing")
    ceil_rate = ceil_tokens / ceil_s
    print("\n| run | tokens | seconds | tokens/s | vs ceiling | CPU s | vs ceiling, CPU |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    print(f"| ceiling: batch encode of ~32K-char pieces | {ceil_tokens:,} | {ceil_s:.2f} | {ceil_rate:,.0f} | 1.00x "
          f"| {ceil_cpu:.2f} | 1.00x |")
    print(f"| the pipeline's encoder alone (encode_long per text) | {enc_tokens:,} | {enc_s:.2f} | {enc_tokens / enc_s:,.0f} "
          f"| {ceil_s / enc_s:.2f}x | {enc_cpu:.2f} | {ceil_cpu / enc_cpu:.2f}x |")
    for label, seconds, cpu, m in results:
        rate = m["tokens_in"] / seconds
        # CPU is this process's only: with --processes the work runs in workers it does not count.
        in_process = beam_args_in_process(label)
        cpu_s = f"{cpu:.2f}" if in_process else "n/a"
        cpu_ratio = f"{(m['tokens_in'] / cpu) / (ceil_tokens / ceil_cpu):.2f}x" if in_process else "n/a"
        print(f"| {label} | {m['tokens_in']:,} | {seconds:.2f} | {rate:,.0f} | {rate / ceil_rate:.2f}x | {cpu_s} | {cpu_ratio} |")

    if steps:
        total = sum(steps.values())
        print(f"\nWhere the profiled run's time went ({profiled_s:.2f} s wall, {total:.2f} s of busy-thread samples):\n")
        print("| step | seconds | share |")
        print("|---|---:|---:|")
        for step, sec in steps.most_common():
            print(f"| {step} | {sec:.2f} | {sec / total:.0%} |")
        print(f"\n{OTHER}, by innermost frame (top 12):")
        for where, sec in other.most_common(12):
            print(f"  {sec:6.2f} s  {where}")

    print("\n| stage | length | documents | rows | tokens | packing efficiency | dropped tail tokens |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, stage in manifest["stages"].items():
        print(
            f"| {name} | {stage['length']} | {stage['documents']} | {stage['rows']} | {stage['tokens']:,} "
            f"| {stage['packing_efficiency']:.4f} | {stage['dropped_tail_tokens']} |"
        )
    print(f"kept {manifest['kept']} of {manifest.get('read', '?')} documents")


if __name__ == "__main__":
    main()
