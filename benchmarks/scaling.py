"""How the book pipeline scales with corpus size on DirectRunner: time, CPU and peak memory.

Builds synthetic corpora of 1x, 4x, 16x `--base-books` books (`benchmarks/synthetic.py`). Token
lengths are log-normal around `--median-tokens` (sigma `--sigma`), drawn stratified per block of
`--base-books` books, with at least one book per block past `--tail-factor` x the median (1M
tokens at the default median). Each synthetic book is paragraphs sampled from the 7 real sample
novels, so tokenizing costs what it costs on real prose, under a unique first line, so
deduplication keeps it. Books are written as `--files-per-x` JSONL.gz files per block. The corpus
of size k is blocks 0..k-1: 1x is inside 4x is inside 16x, and every 1x of data has the same
length distribution.

Every (size, mode) runs `run_books` in a fresh child process (`--_child`), because a process's
peak RSS only grows. Mode `in_memory` is DirectRunner with 1 worker; `multi_processing` is
DirectRunner with `--direct_num_workers 2 --direct_running_mode multi_processing`. The child
samples the RSS (and VmHWM) of its worker subprocesses with psutil (or /proc when psutil is
missing). It reports wall and CPU seconds, peak RSS of itself (VmHWM) and of its workers,
and the manifest's stages. Stages are LWM-like but scaled to the synthetic lengths, and
`--pack-group-tokens` is fixed, so a packing group's size does not grow with the corpus.

After the runs, the packing step's memory per key group is measured on the same corpora
(`benchmarks/packing_memory.py`, which says why DirectRunner's whole-process RSS cannot show it);
`--no-packing-memory` skips it, `--packing-memory-only` runs just that part (a few minutes).

    python benchmarks/scaling.py [--sizes 1,4,16] [--base-books 12] [--median-tokens 100000]
                                 [--modes in_memory,multi_processing] [--json results.json]
    python benchmarks/scaling.py --packing-memory-only --median-tokens 20000 --base-books 72 \\
                                 --pack-group-tokens 524288 [--packing-memory-groups 3]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python benchmarks/scaling.py`: the repo root, for `benchmarks.*`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import packing_memory  # noqa: E402
from benchmarks.harness import LoadSpan, TreeSampler, load_average, proc_status, ratio, run_json_child  # noqa: E402
from benchmarks.synthetic import (  # noqa: E402
    SAMPLE,
    add_corpus_args,
    corpus_header,
    corpus_of,
    corpus_spec,
    make_blocks,
    paragraph_pool,
)

TOKENIZER = "package:mistral_common/data/tokenizer.model.v1"

MODES: dict[str, list[str]] = {
    "in_memory": ["--runner=DirectRunner", "--direct_num_workers", "1", "--direct_running_mode", "in_memory"],
    "multi_processing": ["--runner=DirectRunner", "--direct_num_workers", "2", "--direct_running_mode", "multi_processing"],
}


# ---------------------------------------------------------------------------------------------
# Child: one pipeline run, measured


def child_main(job_path: str) -> None:
    job = json.loads(Path(job_path).read_text())
    logging.basicConfig(level=logging.WARNING)
    from curation.tokenize import load_tokenizer
    from pipelines.config import BooksConfig
    from pipelines.launch import run_books

    load_tokenizer(job["config"]["tokenizer"])  # imports + tokenizer load (cached conversion) off the clock
    base_kib = proc_status(os.getpid()).get("VmRSS", 0)
    sampler = TreeSampler()
    sampler.start()
    cpu0 = os.times()
    start = time.perf_counter()
    manifest = run_books(BooksConfig.model_validate(job["config"]), job["beam_args"])
    wall = time.perf_counter() - start
    sampler.stop()
    cpu1 = os.times()
    self_cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    reaped_cpu = (cpu1.children_user - cpu0.children_user) + (cpu1.children_system - cpu0.children_system)
    seen_cpu = sum(sampler.cpu_s.values())
    workers = sampler.workers()
    out_bytes = sum(f.stat().st_size for f in Path(job["config"]["output"]).rglob("*.arrow"))
    result = {
        "wall_s": wall,
        "self_cpu_s": self_cpu,
        # Workers are reaped when the pipeline ends (then getrusage counts them); the sampler's
        # last reading per worker is the fallback if they were not.
        "workers_cpu_s": max(reaped_cpu, seen_cpu),
        "main_baseline_rss_mib": base_kib / 1024,
        # VmHWM: ru_maxrss of an exec'd child starts at the parent's high-water mark (Linux keeps
        # the pre-exec mm's peak in the process's rusage), so at small sizes it reads the parent's.
        "main_peak_rss_mib": proc_status(os.getpid()).get("VmHWM", 0) / 1024,
        "main_ru_maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "worker_peak_rss_mib": [kib / 1024 for kib in sorted(workers.values(), reverse=True)],
        "workers_sum_peak_rss_mib": sampler.sum_peak_kib / 1024,
        "reaped_children_maxrss_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
        "sampler_samples": sampler.samples,
        "output_arrow_bytes": out_bytes,
        "manifest": manifest,
    }
    Path(job["result"]).write_text(json.dumps(result))


# ---------------------------------------------------------------------------------------------
# Parent: corpora, runs, tables


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_corpus_args(parser)
    parser.add_argument("--pack-group-tokens", type=int, default=2_000_000, help="fixed packing group bound")
    parser.add_argument("--shard-target-bytes", type=int, default=32 << 20, help="target shard size (small, so stages get several shards)")
    parser.add_argument("--modes", default="in_memory,multi_processing", help=f"comma-separated, of {list(MODES)}")
    parser.add_argument("--tokenizer", default=TOKENIZER)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=int, default=900, help="seconds one run may take")
    parser.add_argument("--workdir", type=Path, help="keep corpora and outputs here (default: a temp dir, removed)")
    parser.add_argument("--json", type=Path, help="write all results here as JSON")
    parser.add_argument("--report", type=Path, help="only print the tables of a saved --json file")
    parser.add_argument("--packing-memory-only", action="store_true",
                        help="only measure the packing step's peak RSS per key group (no pipeline runs, no corpus files written)")
    packing_memory.add_packing_memory_args(parser)
    parser.add_argument("--no-packing-memory", action="store_true", help="skip the per-group packing memory measurement")
    parser.add_argument("--_child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._child:
        child_main(args._child)
        return
    if args.report:
        saved = json.loads(args.report.read_text())
        if saved.get("results"):
            print_tables(saved["results"], int(saved["args"]["pack_group_tokens"]))
        if saved.get("packing_memory"):
            packing_memory.print_packing_memory(saved["packing_memory"], int(saved["args"]["pack_group_tokens"]),
                                                saved.get("results"))
        return
    logging.basicConfig(level=logging.WARNING)

    sizes, stages = corpus_spec(args)
    modes = [m for m in args.modes.split(",") if m]
    print(f"{corpus_header(args, sizes, stages)}; shard_target_bytes {args.shard_target_bytes:,}")
    print(f"machine: {os.cpu_count()} CPUs; load average now {load_average()}")

    tmp = None
    if args.workdir:
        workdir = args.workdir.resolve()
        workdir.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="scaling-")
        workdir = Path(tmp.name)
    try:
        if args.packing_memory_only:
            packing_memory.run(args, sizes, stages, workdir)
            return
        t0 = time.perf_counter()
        paragraphs, counts = paragraph_pool(args.tokenizer)
        print(f"paragraph pool: {len(paragraphs):,} paragraphs, {int(counts.sum()):,} tokens from {SAMPLE.name} ({time.perf_counter() - t0:.1f}s)")
        t0 = time.perf_counter()
        blocks = make_blocks(workdir / "corpus", max(sizes), args.base_books, args.files_per_x, args.median_tokens,
                             args.sigma, args.tail_factor, paragraphs, counts, args.seed)
        print(f"generated {max(sizes)} blocks of {args.base_books} books in {time.perf_counter() - t0:.1f}s")
        corpora = {}
        for size in sizes:
            c = corpora[size] = corpus_of(blocks, size, args.median_tokens, args.tail_factor)
            print(f"corpus {size}x: {c['books']} books in {c['files']} files, ~{c['sampled_tokens']:,} tokens, "
                  f"{c['text_bytes'] / 1e6:.1f} MB text ({c['gz_bytes'] / 1e6:.1f} MB gz); book tokens median {c['median_tokens']:,}, "
                  f"mean {c['mean_tokens']:,}, max {c['max_tokens']:,}, {c['over_tail']} >= {args.tail_factor:g}x median")

        results = []
        for size in sizes:
            for mode in modes:
                config = {
                    "inputs": corpora[size]["inputs"],
                    "output": str(workdir / "out" / f"x{size}-{mode}"),
                    "tokenizer": args.tokenizer,
                    "stages": [s for s in stages.split(",") if s],
                    "pack_group_tokens": args.pack_group_tokens,
                    "shard_target_bytes": args.shard_target_bytes,
                    # Its books draw from one shared paragraph pool: keep measuring the same work.
                    "near_duplicates": False,
                }
                job = {"size": size, "mode": mode, "config": config, "beam_args": MODES[mode]}
                with LoadSpan() as load:
                    start = time.perf_counter()
                    r = run_json_child(Path(__file__), "--_child", job, workdir, f"{size}x-{mode}", args.timeout, log=True)
                    total = time.perf_counter() - start
                r.update(size=size, mode=mode, load_before=load.before, load_after=load.after, child_total_s=total,
                         corpus=corpora[size])
                results.append(r)
                m = r["manifest"]
                workers = r["worker_peak_rss_mib"]
                print(f"{size}x {mode}: {m['tokens_in']:,} tokens in {r['wall_s']:.1f}s ({m['tokens_in'] / r['wall_s']:,.0f} tok/s), "
                      f"CPU {r['self_cpu_s'] + r['workers_cpu_s']:.1f}s; main peak {r['main_peak_rss_mib']:.0f} MiB"
                      + (f", workers peak {', '.join(f'{w:.0f}' for w in workers)} MiB" if workers else "")
                      + f"; load {load}", flush=True)
        pm = []
        if not args.no_packing_memory:
            print("packing memory per key group:", flush=True)
            pm = packing_memory.measure_packing_memory(
                [b["lengths"] for b in blocks], sizes, stages, args.pack_group_tokens, args.files_per_x,
                args.packing_memory_groups, args.seed, workdir / "packing", args.timeout)
        if args.json:
            args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "stages": stages,
                                             "results": results, "packing_memory": pm}, indent=1))
        print_tables(results, args.pack_group_tokens)
        if pm:
            packing_memory.print_packing_memory(pm, args.pack_group_tokens, results)
    finally:
        if tmp:
            tmp.cleanup()


def print_tables(results: list[dict[str, Any]], group_tokens: int) -> None:
    from curation.packing import packing_groups

    print("\n| size | mode | books | input tokens | wall s | tokens/s | CPU s | tokens/CPU-s | main peak RSS MiB | worker peak RSS MiB | load 1/5/15 before -> after |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in results:
        m = r["manifest"]
        cpu = r["self_cpu_s"] + r["workers_cpu_s"]
        workers = " / ".join(f"{w:.0f}" for w in r["worker_peak_rss_mib"]) or "-"
        print(f"| {r['size']}x | {r['mode']} | {r['corpus']['books']} | {m['tokens_in']:,} | {r['wall_s']:.1f} "
              f"| {m['tokens_in'] / r['wall_s']:,.0f} | {cpu:.1f} | {m['tokens_in'] / cpu:,.0f} | {r['main_peak_rss_mib']:.0f} "
              f"| {workers} | {r['load_before']} -> {r['load_after']} |")

    print("\n| size | stage | documents | tokens | packing groups | largest group (tokens) | rows | shards | packing efficiency | identical shards across modes |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---|")
    by_size: dict[int, list[dict[str, Any]]] = {}
    for r in results:
        by_size.setdefault(r["size"], []).append(r)
    for size, runs in by_size.items():
        for name, s in runs[0]["manifest"]["stages"].items():
            hashes = {tuple(sh["sha256"] for sh in run["manifest"]["stages"][name]["shards"]) for run in runs}
            same = "yes" if len(hashes) == 1 and len(runs) > 1 else ("n/a" if len(runs) == 1 else "NO")
            groups = s.get("packing_groups") or packing_groups(s["tokens"], group_tokens)
            largest = f"{s['max_group_tokens']:,}" if "max_group_tokens" in s else "-"
            print(f"| {size}x | {name} | {s['documents']} | {s['tokens']:,} | {groups} | {largest} "
                  f"| {s['rows']} | {len(s['shards'])} | {s['packing_efficiency']:.4f} | {same} |")

    print("\n| mode | growth | input tokens | wall s | wall s per token | CPU s | main peak RSS | max worker peak RSS |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for mode in dict.fromkeys(r["mode"] for r in results):
        runs = sorted((r for r in results if r["mode"] == mode), key=lambda r: r["size"])
        base = runs[0]
        for r in runs[1:]:
            bw = max(base["worker_peak_rss_mib"], default=0)
            rw = max(r["worker_peak_rss_mib"], default=0)
            print(f"| {mode} | {base['size']}x -> {r['size']}x | {ratio(r['manifest']['tokens_in'], base['manifest']['tokens_in'])} "
                  f"| {ratio(r['wall_s'], base['wall_s'])} "
                  f"| {ratio(r['wall_s'] / r['manifest']['tokens_in'], base['wall_s'] / base['manifest']['tokens_in'])} "
                  f"| {ratio(r['self_cpu_s'] + r['workers_cpu_s'], base['self_cpu_s'] + base['workers_cpu_s'])} "
                  f"| {ratio(r['main_peak_rss_mib'], base['main_peak_rss_mib'])} | {ratio(rw, bw) if bw else '-'} |")

    print("\n| mode | marginal, between the two largest sizes | CPU us / token | tokens / CPU-s | wall us / token | main RSS bytes / token | max worker RSS bytes / token |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for mode in dict.fromkeys(r["mode"] for r in results):
        runs = sorted((r for r in results if r["mode"] == mode), key=lambda r: r["size"])
        if len(runs) < 2:
            continue
        a, b = runs[-2], runs[-1]
        dt = b["manifest"]["tokens_in"] - a["manifest"]["tokens_in"]
        dcpu = (b["self_cpu_s"] + b["workers_cpu_s"]) - (a["self_cpu_s"] + a["workers_cpu_s"])
        dworker = max(b["worker_peak_rss_mib"], default=0) - max(a["worker_peak_rss_mib"], default=0)
        print(f"| {mode} | {a['size']}x -> {b['size']}x | {dcpu / dt * 1e6:.2f} | {dt / dcpu:,.0f} | {(b['wall_s'] - a['wall_s']) / dt * 1e6:.2f} "
              f"| {(b['main_peak_rss_mib'] - a['main_peak_rss_mib']) * 2**20 / dt:.0f} "
              f"| {f'{dworker * 2**20 / dt:.0f}' if b['worker_peak_rss_mib'] else '-'} |")

    print("\n| size | mode | text MB in | text bytes / token | Arrow MB out | out bytes / input token | main RSS before run MiB | main RSS growth bytes / token | workers summed peak MiB |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        m = r["manifest"]
        growth = (r["main_peak_rss_mib"] - r["main_baseline_rss_mib"]) * 2**20 / m["tokens_in"]
        print(f"| {r['size']}x | {r['mode']} | {r['corpus']['text_bytes'] / 1e6:.1f} | {r['corpus']['text_bytes'] / m['tokens_in']:.2f} "
              f"| {r['output_arrow_bytes'] / 1e6:.1f} | {r['output_arrow_bytes'] / m['tokens_in']:.1f} | {r['main_baseline_rss_mib']:.0f} "
              f"| {growth:.0f} | {r['workers_sum_peak_rss_mib']:.0f} |")


if __name__ == "__main__":
    main()
