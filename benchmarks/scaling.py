"""How the book pipeline scales with corpus size on DirectRunner: time, CPU and peak memory.

Builds synthetic corpora of 1x, 4x, 16x `--base-books` books. Token lengths are log-normal around
`--median-tokens` (sigma `--sigma`), drawn stratified per block of `--base-books` books, with at
least one book per block past `--tail-factor` x the median (1M tokens at the default median).
Each synthetic book is paragraphs sampled from the 7 real sample novels, so tokenizing costs what
it costs on real prose, under a unique first line, so deduplication keeps it. Books are written as
`--files-per-x` JSONL.gz files per block. The corpus of size k is blocks 0..k-1: 1x is inside 4x
is inside 16x, and every 1x of data has the same length distribution.

Every (size, mode) runs `run_books` in a fresh child process (`--_child`), because a process's
peak RSS only grows. Mode `in_memory` is DirectRunner with 1 worker; `multi_processing` is
DirectRunner with `--direct_num_workers 2 --direct_running_mode multi_processing`. The child
samples the RSS (and VmHWM) of its worker subprocesses with psutil (or /proc when psutil is
missing). It reports wall and CPU seconds, peak RSS of itself (VmHWM) and of its workers,
and the manifest's stages. Stages are LWM-like but scaled to the synthetic lengths, and
`--pack-group-tokens` is fixed, so a packing group's size does not grow with the corpus.

Packing memory per key group (`--packing-memory-only` runs just this part, in a few minutes):
DirectRunner's whole-process RSS grows with the corpus because its FnApiRunner buffers every
GroupByKey's input in one process, so it cannot show the bound that matters on Dataflow, where
grouped values are streamed per key and a worker holds one group at a time. For each corpus size
the book pipeline's own `assign_stages` (stage windows) and `AssignGroup` (packing groups) run on
the corpus's book lengths (+2 for BOS/EOS; tokenizing is skipped, packing memory depends only on
the token counts), and then, in a fresh child process per group (`--_pack_child`), `PackGroup.process`
(the packing DoFn, called directly) packs that one group: its values are materialized as a list of
`StageSegment`s with random int32 tokens (as a decoded GroupByKey value list; a lazily paged
iterable only lowers the figure), every row it yields is pickled as it would be for the next stage
and dropped. The child reports its peak RSS (VmHWM) minus its RSS after imports, with the group's
token count. `--packing-memory-groups K` measures the K largest groups of each (size, stage);
groups are counted and sized from all of them.

    python benchmarks/scaling.py [--sizes 1,4,16] [--base-books 12] [--median-tokens 100000]
                                 [--modes in_memory,multi_processing] [--json results.json]
    python benchmarks/scaling.py --packing-memory-only --median-tokens 20000 --base-books 72 \
                                 --pack-group-tokens 524288 [--packing-memory-groups 3]
"""

from __future__ import annotations

import argparse
import contextlib
import zlib
import gzip
import json
import logging
import math
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "data" / "sample" / "books.jsonl.gz"
TOKENIZER = "package:mistral_common/data/tokenizer.model.v1"

MODES: dict[str, list[str]] = {
    "in_memory": ["--runner=DirectRunner", "--direct_num_workers", "1", "--direct_running_mode", "in_memory"],
    "multi_processing": ["--runner=DirectRunner", "--direct_num_workers", "2", "--direct_running_mode", "multi_processing"],
}


# ---------------------------------------------------------------------------------------------
# Synthetic corpora


def paragraph_pool(spec: str, corpus: Path = SAMPLE) -> tuple[list[str], np.ndarray]:
    """The sample novels' paragraphs (Gutenberg header/footer stripped) and their token counts."""
    from curation.text import strip_gutenberg
    from curation.tokenize import load_tokenizer

    paragraphs: list[str] = []
    with gzip.open(corpus, "rt", encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                text = strip_gutenberg(json.loads(line)["text"].replace("\r\n", "\n"))
                paragraphs += [p.strip() for p in text.split("\n\n") if p.strip()]
    tok, _ = load_tokenizer(spec)
    counts = np.array([len(e.ids) for e in tok.encode_batch(paragraphs, add_special_tokens=False)], dtype=np.int64)
    return paragraphs, counts


def book_lengths(n: int, median: int, sigma: float, tail_factor: float, rng: np.random.Generator) -> np.ndarray:
    """n log-normal token lengths, stratified (one draw per 1/n quantile band, then shuffled) so
    that every block has about the same total. If none reaches tail_factor x median, the longest
    is redrawn from the log-normal's own tail beyond that point, so every block has a book past it."""
    normal = NormalDist()
    bands = (np.arange(n) + rng.uniform(0.0, 1.0, n)) / n
    z = np.array([normal.inv_cdf(min(max(u, 1e-12), 1 - 1e-12)) for u in bands])
    lengths = np.exp(math.log(median) + sigma * z)
    threshold = tail_factor * median
    if n and lengths.max() < threshold:
        p0 = normal.cdf((math.log(threshold) - math.log(median)) / sigma)
        tail_z = normal.inv_cdf(p0 + (1 - p0) * rng.uniform(0.05, 0.95))
        lengths[int(lengths.argmax())] = math.exp(math.log(median) + sigma * tail_z)
    return np.maximum(rng.permutation(lengths).round().astype(np.int64), 64)


def make_blocks(folder: Path, blocks: int, books: int, files: int, median: int, sigma: float, tail_factor: float,
                paragraphs: list[str], counts: np.ndarray, seed: int) -> list[dict[str, Any]]:
    """`blocks` independent blocks of `books` synthetic books, each block in `files` JSONL.gz files.
    The corpus of size k is blocks 0..k-1, so 1x is inside 4x is inside 16x and every 1x of data
    has the same length distribution (one tail book per block included)."""
    folder.mkdir(parents=True, exist_ok=True)
    mean_par = float(counts.mean())
    out = []
    for block in range(blocks):
        rng = np.random.default_rng([seed, block])
        lengths = book_lengths(books, median, sigma, tail_factor, rng)
        paths = [folder / f"block-{block:04d}-part-{i:03d}.jsonl.gz" for i in range(files)]
        made_tokens = 0
        text_bytes = 0
        with contextlib.ExitStack() as stack:
            handles = [stack.enter_context(gzip.open(p, "wt", encoding="utf-8", compresslevel=1)) for p in paths]
            for b, target in enumerate(lengths):
                picked: list[int] = []
                have = 0
                while have < target:
                    draw = rng.integers(0, len(paragraphs), int((target - have) / mean_par * 1.2) + 8)
                    cum = have + np.cumsum(counts[draw])
                    stop = int(np.searchsorted(cum, target)) + 1  # first index reaching the target
                    picked += draw[:stop].tolist()
                    have = int(cum[min(stop, len(cum)) - 1])
                book_id = f"synth-{block:04d}-{b:05d}"
                # A unique first line: distinct content hash, so deduplication keeps every book.
                head = f"Synthetic book {book_id} (seed {seed}), {int(target)} tokens of sampled paragraphs."
                text = head + "\n\n" + "\n\n".join(paragraphs[i] for i in picked)
                made_tokens += have
                text_bytes += len(text.encode("utf-8"))
                handles[b % files].write(json.dumps({"id": book_id, "text": text}) + "\n")
        out.append({
            "files": [str(p) for p in paths],
            "gz_bytes": sum(p.stat().st_size for p in paths),
            "text_bytes": text_bytes,
            "sampled_tokens": made_tokens,
            "lengths": lengths.tolist(),
        })
    return out


def corpus_of(blocks: list[dict[str, Any]], size: int, median: int, tail_factor: float) -> dict[str, Any]:
    """The corpus of the first `size` blocks, with its statistics."""
    part = blocks[:size]
    lengths = np.array([n for b in part for n in b["lengths"]])
    return {
        "inputs": [f for b in part for f in b["files"]],
        "books": len(lengths),
        "files": sum(len(b["files"]) for b in part),
        "gz_bytes": sum(b["gz_bytes"] for b in part),
        "text_bytes": sum(b["text_bytes"] for b in part),
        "sampled_tokens": sum(b["sampled_tokens"] for b in part),
        "median_tokens": int(np.median(lengths)),
        "mean_tokens": int(lengths.mean()),
        "max_tokens": int(lengths.max()),
        "over_tail": int((lengths >= tail_factor * median).sum()),
    }


def default_stages(median: int) -> str:
    """LWM-like stages scaled to the median: short books -> 8k rows, mid -> 32k, long -> 128k.
    At the default median 100K: 8k=[10K,100K), 32k=[100K,300K), 128k=[300K,inf)."""
    m = median
    return f"8k=8192:{m // 10}-{m},32k=32768:{m}-{3 * m},128k=131072:{3 * m}-"


# ---------------------------------------------------------------------------------------------
# Child: one pipeline run, measured


def _proc_status(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM of a process in KiB (Linux), {} if it is gone."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    key, value = line.split(":", 1)
                    out[key] = int(value.split()[0])
    except OSError:
        pass
    return out


def _descendants_proc(root: int) -> list[int]:
    """Descendants of `root` from /proc (the fallback when psutil is not installed)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


class ChildSampler(threading.Thread):
    """Samples this process's descendants every `interval` s: per-pid peak RSS (max of sampled
    VmRSS and of VmHWM, the kernel's own high-water mark), the peak of their summed RSS, and
    the last CPU seconds seen per pid (psutil only)."""

    def __init__(self, interval: float = 0.1):
        super().__init__(daemon=True)
        self.interval = interval
        self.stop_event = threading.Event()
        self.peak_kib: dict[int, int] = {}
        self.names: dict[int, str] = {}
        self.cpu_s: dict[int, float] = {}
        self.sum_peak_kib = 0
        self.samples = 0
        try:
            import psutil

            self.psutil = psutil
            self.me = psutil.Process()
        except ImportError:
            self.psutil = None

    def _pids(self) -> list[int]:
        if self.psutil:
            return [p.pid for p in self.me.children(recursive=True)]
        return _descendants_proc(os.getpid())

    def sample(self) -> None:
        total = 0
        for pid in self._pids():
            status = _proc_status(pid)
            if not status:
                continue
            rss = status.get("VmRSS", 0)
            total += rss
            self.peak_kib[pid] = max(self.peak_kib.get(pid, 0), rss, status.get("VmHWM", 0))
            if pid not in self.names:
                try:
                    with open(f"/proc/{pid}/comm") as fh:
                        self.names[pid] = fh.read().strip()
                except OSError:
                    self.names[pid] = "?"
            if self.psutil:
                try:
                    t = self.psutil.Process(pid).cpu_times()
                    self.cpu_s[pid] = t.user + t.system
                except self.psutil.Error:
                    pass
        self.sum_peak_kib = max(self.sum_peak_kib, total)
        self.samples += 1

    def run(self) -> None:
        while not self.stop_event.is_set():
            self.sample()
            self.stop_event.wait(self.interval)

    def stop(self) -> None:
        self.stop_event.set()
        self.join()

    def workers(self) -> dict[int, int]:
        """Peak KiB of the Python worker processes (not the `sh -c` wrapper Beam starts them with)."""
        return {pid: kib for pid, kib in self.peak_kib.items() if self.names.get(pid, "").startswith("python")}


def child_main(job_path: str) -> None:
    job = json.loads(Path(job_path).read_text())
    logging.basicConfig(level=logging.WARNING)
    from curation.tokenize import load_tokenizer
    from pipelines.config import BooksConfig
    from pipelines.launch import run_books

    load_tokenizer(job["config"]["tokenizer"])  # imports + tokenizer load (cached conversion) off the clock
    base_kib = _proc_status(os.getpid()).get("VmRSS", 0)
    sampler = ChildSampler()
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
        "main_peak_rss_mib": _proc_status(os.getpid()).get("VmHWM", 0) / 1024,
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
# Packing memory per key group


def block_lengths(blocks: int, books: int, median: int, sigma: float, tail_factor: float, seed: int) -> list[list[int]]:
    """The book token lengths `make_blocks` draws (its first draw from each block's generator),
    without writing the books: the same corpora, for the packing-memory runs that need only lengths."""
    return [book_lengths(books, median, sigma, tail_factor, np.random.default_rng([seed, block])).tolist()
            for block in range(blocks)]


def packing_group_plan(lengths: list[list[int]], size: int, stages: str, group_tokens: int, files: int) -> dict[str, Any]:
    """The packing groups of the corpus of the first `size` blocks, as the book pipeline forms them:
    `assign_stages` cuts each document into stage windows, `AssignGroup` keys each window by
    (stage, group). Returns the stage token totals and, per group, its segments (key, doc_id, start,
    length, doc_uid) without tokens."""
    import apache_beam as beam

    from curation.documents import Document
    from pipelines.books import assign_stages
    from pipelines.config import BooksConfig
    from pipelines.packing import AssignGroup

    config = BooksConfig(stages=[s for s in stages.split(",") if s], pack_group_tokens=group_tokens)
    resolved = config.resolved_stages()
    extra = int(config.add_bos) + int(config.add_eos)
    segments = []
    for block in range(size):
        for b, n in enumerate(lengths[block]):
            path = f"corpus/block-{block:04d}-part-{b % files:03d}.jsonl.gz"  # where make_blocks writes book b
            # np.zeros is not touched (calloc), and windows are views: the plan costs no token memory.
            doc = Document(source=path, id=f"synth-{block:04d}-{b:05d}", uid=f"{path}#{b // files}", index=b // files,
                           tokens=np.zeros(int(n) + extra, np.int32))
            for out in assign_stages(doc, resolved, config.stage_policy, config.min_tail_tokens):
                if not isinstance(out, beam.pvalue.TaggedOutput):
                    segments.append(out)
    stage_tokens: Counter[str] = Counter()
    for seg in segments:
        stage_tokens[seg.stage] += seg.ref.length
    assign = AssignGroup(config.pack_group_tokens)
    groups: dict[tuple[str, int], list[list[Any]]] = defaultdict(list)
    for seg in segments:
        for (stage, group), _ in assign.process(seg, stage_tokens):
            r = seg.ref
            groups[(stage, group)].append([r.key, r.doc_id, r.start, r.length, seg.doc_uid])
    return {
        "stages": [vars(s) for s in resolved],
        "stage_tokens": dict(stage_tokens),
        "groups": {f"{stage}/{group}": segs for (stage, group), segs in sorted(groups.items())},
    }


def pack_child_main(job_path: str) -> None:
    """One packing group in a fresh process: the values the runner hands `PackGroup` (decoded into a
    list), then `PackGroup.process` with every output pickled and dropped, as the SDK harness
    encodes each output for the next stage. Peak RSS minus the RSS after imports."""
    job = json.loads(Path(job_path).read_text())
    import pickle

    import apache_beam as beam

    from curation.packing import SegmentRef, StageSegment
    from curation.stages import Stage
    from pipelines.packing import PackGroup

    dofn = PackGroup([Stage(**s) for s in job["stages"]], job["seed"])
    dofn.setup()
    stage, group = job["stage"], job["group"]
    spec = job["segments"]
    base = _proc_status(os.getpid())
    start = time.perf_counter()
    values = []
    for key, doc_id, begin, length, uid in spec:
        tokens = np.random.default_rng(zlib.crc32(key.encode())).integers(3, 32000, length, dtype=np.int32)
        values.append(StageSegment(stage, SegmentRef(key, doc_id, begin, length), uid, tokens))
    held = _proc_status(os.getpid())
    rows = out_bytes = 0
    event: dict[str, int] = {}
    t_pack = time.perf_counter()
    for out in dofn.process(((stage, group), values)):
        if isinstance(out, beam.pvalue.TaggedOutput):
            event = out.value
            continue
        out_bytes += len(pickle.dumps(out, protocol=pickle.HIGHEST_PROTOCOL))
        rows += 1
    pack_s = time.perf_counter() - t_pack
    # VmHWM, not ru_maxrss: an exec'd child's ru_maxrss starts at its parent's high-water mark
    # (Linux carries the pre-exec mm's peak into the process's rusage), VmHWM is this image's own.
    peak_kib = _proc_status(os.getpid()).get("VmHWM", 0)
    result = {
        "stage": stage,
        "group": group,
        "segments": len(spec),
        "group_tokens": sum(s[3] for s in spec),
        "event_group_tokens": next((v for k, v in event.items() if k.startswith("max.")), None),
        "rows": rows,
        "rows_pickled_bytes": out_bytes,
        "baseline_rss_kib": base.get("VmRSS", 0),
        "baseline_hwm_kib": base.get("VmHWM", 0),
        "values_rss_kib": held.get("VmRSS", 0),
        "peak_rss_kib": peak_kib,
        "ru_maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "build_s": t_pack - start,
        "pack_s": pack_s,
    }
    Path(job["result"]).write_text(json.dumps(result))


def run_pack_child(job: dict[str, Any], workdir: Path, timeout: int) -> dict[str, Any]:
    tag = f"{job['size']}x-{job['stage']}-{job['group']}"
    job_path = workdir / f"pack-job-{tag}.json"
    job["result"] = str(workdir / f"pack-result-{tag}.json")
    job_path.write_text(json.dumps(job))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--_pack_child", str(job_path)],
                          check=False, capture_output=True, text=True, env=env, timeout=timeout, cwd=str(REPO))
    if proc.returncode != 0:
        raise RuntimeError(f"packing child {tag} failed (rc {proc.returncode}):\n{(proc.stdout + proc.stderr)[-3000:]}")
    return json.loads(Path(job["result"]).read_text())


def measure_packing_memory(lengths: list[list[int]], sizes: list[int], stages: str, group_tokens: int, files: int,
                           per_stage: int, seed: int, workdir: Path, timeout: int) -> list[dict[str, Any]]:
    """Per corpus size: every group's token count, and the packing peak RSS of the `per_stage`
    largest groups of each stage (0 = all), each packed in a fresh child process."""
    workdir.mkdir(parents=True, exist_ok=True)
    out = []
    for size in sizes:
        t0 = time.perf_counter()
        plan = packing_group_plan(lengths, size, stages, group_tokens, files)
        by_stage: dict[str, list[tuple[int, str]]] = defaultdict(list)
        for name, segs in plan["groups"].items():
            stage, group = name.rsplit("/", 1)
            by_stage[stage].append((sum(s[3] for s in segs), group))
        measured = []
        before = loadavg()
        for stage, groups in by_stage.items():
            groups.sort(key=lambda g: (-g[0], int(g[1])))
            for tokens, group in groups[: per_stage or None]:
                job = {"size": size, "stage": stage, "group": int(group), "seed": seed, "stages": plan["stages"],
                       "segments": plan["groups"][f"{stage}/{group}"]}
                r = run_pack_child(job, workdir, timeout)
                measured.append(r)
                delta = (r["peak_rss_kib"] - r["baseline_rss_kib"]) * 1024
                print(f"  {size}x {stage} group {group}: {r['group_tokens']:,} tokens in {r['segments']} segments -> {r['rows']} rows; "
                      f"peak {r['peak_rss_kib'] / 1024:.0f} MiB - baseline {r['baseline_rss_kib'] / 1024:.0f} MiB = "
                      f"{delta / 2**20:.1f} MiB ({delta / r['group_tokens']:.1f} B/token)", flush=True)
        out.append({
            "size": size,
            "blocks_tokens": int(sum(sum(lengths[b]) for b in range(size))),
            "stage_tokens": plan["stage_tokens"],
            "groups": {stage: sorted((t for t, _ in g), reverse=True) for stage, g in by_stage.items()},
            "measured": measured,
            "load_before": before,
            "load_after": loadavg(),
            "seconds": time.perf_counter() - t0,
        })
    return out


def print_packing_memory(pm: list[dict[str, Any]], group_tokens: int, results: list[dict[str, Any]] | None = None) -> None:
    mib = lambda kib: kib / 1024  # noqa: E731
    print(f"\nPacking memory per key group (pack_group_tokens {group_tokens:,}): RSS of a fresh child packing one group, "
          "minus its RSS after imports; 'values' = after materializing the group's segments, 'peak' = VmHWM after PackGroup.process")
    print("\n| size | stage | stage tokens | packing groups | largest group tokens | measured (largest) groups | values held MiB, max | peak packing RSS MiB, max | largest group: peak bytes / token |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for p in pm:
        for stage, groups in p["groups"].items():
            ms = [m for m in p["measured"] if m["stage"] == stage]
            held = max((mib(m["values_rss_kib"] - m["baseline_rss_kib"]) for m in ms), default=0)
            peak = max((mib(m["peak_rss_kib"] - m["baseline_rss_kib"]) for m in ms), default=0)
            top = max(ms, key=lambda m: m["group_tokens"], default=None)
            per_token = f"{(top['peak_rss_kib'] - top['baseline_rss_kib']) * 1024 / top['group_tokens']:.2f}" if top else "-"
            print(f"| {p['size']}x | {stage} | {p['stage_tokens'][stage]:,} | {len(groups)} | {groups[0]:,} | {len(ms)} "
                  f"| {held:.1f} | {peak:.1f} | {per_token} |")
    main_rss = {r["size"]: r["main_peak_rss_mib"] for r in results or [] if r["mode"] == "in_memory"}
    print("\n| size | corpus tokens (sampled lengths) | packing groups per stage | largest group tokens | peak packing RSS per group MiB (max) | child RSS after imports MiB | DirectRunner in_memory main peak RSS MiB | load 1/5/15 before -> after |")
    print("|---|---:|---|---:|---:|---:|---:|---|")
    for p in pm:
        per_stage = " / ".join(f"{s} {len(g)}" for s, g in p["groups"].items())
        largest = max(g[0] for g in p["groups"].values())
        peak = max(mib(m["peak_rss_kib"] - m["baseline_rss_kib"]) for m in p["measured"])
        base = max(mib(m["baseline_rss_kib"]) for m in p["measured"])
        whole = f"{main_rss[p['size']]:.0f}" if p["size"] in main_rss else "-"
        print(f"| {p['size']}x | {p['blocks_tokens']:,} | {per_stage} | {largest:,} | {peak:.1f} | {base:.0f} | {whole} "
              f"| {p['load_before']} -> {p['load_after']} |")


# ---------------------------------------------------------------------------------------------
# Parent: corpora, runs, tables


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def run_child(job: dict[str, Any], workdir: Path, timeout: int) -> dict[str, Any]:
    tag = f"{job['size']}x-{job['mode']}"
    job_path = workdir / f"job-{tag}.json"
    job["result"] = str(workdir / f"result-{tag}.json")
    job_path.write_text(json.dumps(job))
    log_path = workdir / f"child-{tag}.log"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    with open(log_path, "w") as log_fh:
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--_child", str(job_path)],
                              check=False, stdout=log_fh, stderr=subprocess.STDOUT, env=env, timeout=timeout, cwd=str(REPO))
    if proc.returncode != 0:
        tail = log_path.read_text()[-3000:]
        raise RuntimeError(f"child {tag} failed (rc {proc.returncode}):\n{tail}")
    return json.loads(Path(job["result"]).read_text())


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "-"


def main(argv: list[str] | None = None) -> None:
    if argv is None and len(sys.argv) == 3 and sys.argv[1] == "--_child":
        child_main(sys.argv[2])
        return
    if argv is None and len(sys.argv) == 3 and sys.argv[1] == "--_pack_child":
        pack_child_main(sys.argv[2])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1,4,16", help="corpus sizes as multiples of the base corpus")
    parser.add_argument("--base-books", type=int, default=12, help="books per block (= the 1x corpus); 12 at the default median is ~2.5M tokens, ~40%% of them in the tail book; with --median-tokens 20000, 72 books is ~2M tokens with a smaller tail share")
    parser.add_argument("--median-tokens", type=int, default=100_000, help="median book length in tokens (log-normal)")
    parser.add_argument("--sigma", type=float, default=0.8, help="log-normal sigma of book lengths")
    parser.add_argument("--tail-factor", type=float, default=10.0, help="every block has a book of at least this x the median tokens")
    parser.add_argument("--files-per-x", type=int, default=4, help="JSONL.gz files per block (file size stays constant as the corpus grows)")
    parser.add_argument("--stages", help="stage list (default: LWM-like windows scaled to --median-tokens)")
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
    parser.add_argument("--packing-memory-groups", type=int, default=3,
                        help="measure the K largest packing groups of each stage and size (0: all), one child process each")
    parser.add_argument("--no-packing-memory", action="store_true", help="skip the per-group packing memory measurement")
    parser.add_argument("--_child", help=argparse.SUPPRESS)
    parser.add_argument("--_pack_child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._child:
        child_main(args._child)
        return
    if args._pack_child:
        pack_child_main(args._pack_child)
        return
    if args.report:
        saved = json.loads(args.report.read_text())
        if saved.get("results"):
            print_tables(saved["results"], int(saved["args"]["pack_group_tokens"]))
        if saved.get("packing_memory"):
            print_packing_memory(saved["packing_memory"], int(saved["args"]["pack_group_tokens"]), saved.get("results"))
        return
    logging.basicConfig(level=logging.WARNING)

    sizes = [int(s) for s in args.sizes.split(",") if s]
    modes = [m for m in args.modes.split(",") if m]
    stages = args.stages or default_stages(args.median_tokens)
    if args.median_tokens != 100_000:
        print(f"NOTE: book lengths scaled down: median {args.median_tokens:,} tokens instead of 100K "
              f"(tail book >= {args.tail_factor * args.median_tokens:,.0f} tokens instead of 1M); stages scaled alike.")
    print(f"sizes {sizes} x {args.base_books} books; lengths log-normal(median {args.median_tokens:,}, sigma {args.sigma}); "
          f"stages {stages}; pack_group_tokens {args.pack_group_tokens:,}; shard_target_bytes {args.shard_target_bytes:,}")
    print(f"machine: {os.cpu_count()} CPUs; load average now {loadavg()}")

    tmp = None
    if args.workdir:
        workdir = args.workdir.resolve()
        workdir.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="scaling-")
        workdir = Path(tmp.name)
    try:
        if args.packing_memory_only:
            lengths = block_lengths(max(sizes), args.base_books, args.median_tokens, args.sigma, args.tail_factor, args.seed)
            pm = measure_packing_memory(lengths, sizes, stages, args.pack_group_tokens, args.files_per_x,
                                        args.packing_memory_groups, args.seed, workdir / "packing", args.timeout)
            if args.json:
                args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "stages": stages,
                                                 "results": [], "packing_memory": pm}, indent=1))
            print_packing_memory(pm, args.pack_group_tokens)
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
                before = loadavg()
                start = time.perf_counter()
                r = run_child({"size": size, "mode": mode, "config": config, "beam_args": MODES[mode]}, workdir, args.timeout)
                total = time.perf_counter() - start
                after = loadavg()
                r.update(size=size, mode=mode, load_before=before, load_after=after, child_total_s=total,
                         corpus=corpora[size])
                results.append(r)
                m = r["manifest"]
                workers = r["worker_peak_rss_mib"]
                print(f"{size}x {mode}: {m['tokens_in']:,} tokens in {r['wall_s']:.1f}s ({m['tokens_in'] / r['wall_s']:,.0f} tok/s), "
                      f"CPU {r['self_cpu_s'] + r['workers_cpu_s']:.1f}s; main peak {r['main_peak_rss_mib']:.0f} MiB"
                      + (f", workers peak {', '.join(f'{w:.0f}' for w in workers)} MiB" if workers else "")
                      + f"; load {before} -> {after}", flush=True)
        pm = []
        if not args.no_packing_memory:
            print("packing memory per key group:", flush=True)
            pm = measure_packing_memory([b["lengths"] for b in blocks], sizes, stages, args.pack_group_tokens, args.files_per_x,
                                        args.packing_memory_groups, args.seed, workdir / "packing", args.timeout)
        if args.json:
            args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "stages": stages,
                                             "results": results, "packing_memory": pm}, indent=1))
        print_tables(results, args.pack_group_tokens)
        if pm:
            print_packing_memory(pm, args.pack_group_tokens, results)
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
