"""Peak memory of the book pipeline's packing step per key group, on synthetic corpora.

DirectRunner's whole-process RSS grows with the corpus because its FnApiRunner buffers every
GroupByKey's input in one process, so it cannot show the bound that matters on Dataflow, where
grouped values are streamed per key and a worker holds one group at a time. For each corpus size
(the synthetic corpora of `scaling.py`, `benchmarks/synthetic.py`: only their book lengths, no
files are written) the book pipeline's own `assign_stages` (stage windows) and `AssignGroup`
(packing groups) run on the book lengths (+2 for BOS/EOS; tokenizing is skipped, packing memory
depends only on the token counts), and then, in a fresh child process per group (`--_pack_child`),
`PackGroup.process` (the packing DoFn, called directly) plans that one group: its values are
materialized as a list of `StageRef`s (segment references: since 2026-11-30 the planner never
sees tokens; they join their place only at the shard writer, whose per-shard bound
`tests/test_packing_memory.py` checks), as a decoded GroupByKey value list (a lazily paged iterable
only lowers the figure); every place it yields is pickled as it would be for the next stage and
dropped. The child reports its peak RSS (VmHWM) minus its RSS after imports,
with the group's token count. `--packing-memory-groups K` measures the K largest groups of each
(size, stage); groups are counted and sized from all of them.

    python benchmarks/packing_memory.py --median-tokens 20000 --base-books 72 \\
                                        --pack-group-tokens 524288 [--packing-memory-groups 3]

(`python benchmarks/scaling.py --packing-memory-only ...` with the same flags runs this too, and
`scaling.py` runs it after its pipeline runs unless `--no-packing-memory`.)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):  # run as `python benchmarks/packing_memory.py`: the repo root, for `benchmarks.*`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import cpu_model, load_average, proc_status, run_json_child  # noqa: E402
from curation.events import is_max  # noqa: E402
from benchmarks.synthetic import (  # noqa: E402
    add_corpus_args,
    block_lengths,
    book_id,
    book_path,
    corpus_header,
    corpus_spec,
)


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
            path = f"corpus/{book_path(block, b, files)}"  # where make_blocks writes book b
            # np.zeros is not touched (calloc), and windows are views: the plan costs no token memory.
            doc = Document(source=path, id=book_id(block, b), uid=f"{path}#{b // files}", index=b // files,
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
        for (stage, group), _ in assign.process(seg.stage_ref, stage_tokens):
            r = seg.ref
            groups[(stage, group)].append([r.key, r.doc_id, r.start, r.length, seg.doc_uid])
    return {
        "stages": [vars(s) for s in resolved],
        "stage_tokens": dict(stage_tokens),
        "groups": {f"{stage}/{group}": segs for (stage, group), segs in sorted(groups.items())},
    }


def pack_child_main(job_path: str) -> None:
    """One packing group in a fresh process: the values the runner hands `PackGroup` (decoded into a
    list of segment references; tokens never reach the planner), then `PackGroup.process` with every
    output pickled and dropped, as the SDK harness encodes each output for the next stage. Peak RSS
    minus the RSS after imports."""
    job = json.loads(Path(job_path).read_text())
    import pickle

    import apache_beam as beam

    from curation.packing import SegmentRef, StageRef
    from curation.stages import Stage
    from pipelines.packing import GROUP_EVENTS, GROUP_ROWS, PackGroup

    dofn = PackGroup([Stage(**s) for s in job["stages"]], job["seed"])
    dofn.setup()
    stage, group = job["stage"], job["group"]
    spec = job["segments"]
    base = proc_status(os.getpid())
    start = time.perf_counter()
    values = [StageRef(stage, SegmentRef(key, doc_id, begin, length), uid) for key, doc_id, begin, length, uid in spec]
    held = proc_status(os.getpid())
    rows = out_bytes = 0
    event: dict[str, int] = {}
    t_pack = time.perf_counter()
    for out in dofn.process(((stage, group), values)):
        if isinstance(out, beam.pvalue.TaggedOutput):
            if out.tag == GROUP_EVENTS:
                event = out.value
            elif out.tag == GROUP_ROWS:
                rows = out.value[1]
            continue
        out_bytes += len(pickle.dumps(out, protocol=pickle.HIGHEST_PROTOCOL))
    pack_s = time.perf_counter() - t_pack
    # VmHWM, not ru_maxrss: an exec'd child's ru_maxrss starts at its parent's high-water mark
    # (Linux carries the pre-exec mm's peak into the process's rusage), VmHWM is this image's own.
    peak_kib = proc_status(os.getpid()).get("VmHWM", 0)
    result = {
        "stage": stage,
        "group": group,
        "segments": len(spec),
        "group_tokens": sum(s[3] for s in spec),
        "event_group_tokens": next((v for k, v in event.items() if is_max(k)), None),
        "rows": rows,
        "places_pickled_bytes": out_bytes,
        "baseline_rss_kib": base.get("VmRSS", 0),
        "baseline_hwm_kib": base.get("VmHWM", 0),
        "values_rss_kib": held.get("VmRSS", 0),
        "peak_rss_kib": peak_kib,
        "ru_maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "build_s": t_pack - start,
        "pack_s": pack_s,
    }
    Path(job["result"]).write_text(json.dumps(result))


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
        before = load_average()
        for stage, groups in by_stage.items():
            groups.sort(key=lambda g: (-g[0], int(g[1])))
            for tokens, group in groups[: per_stage or None]:
                job = {"size": size, "stage": stage, "group": int(group), "seed": seed, "stages": plan["stages"],
                       "segments": plan["groups"][f"{stage}/{group}"]}
                r = run_json_child(Path(__file__), "--_pack_child", job, workdir, f"pack-{size}x-{stage}-{group}", timeout)
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
            "load_after": load_average(),
            "seconds": time.perf_counter() - t0,
        })
    return out


def print_packing_memory(pm: list[dict[str, Any]], group_tokens: int, results: list[dict[str, Any]] | None = None) -> None:
    """The per-stage and per-size tables; `results` (scaling.py's pipeline runs) adds DirectRunner's
    whole-process peak for comparison."""
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


def run(args: argparse.Namespace, sizes: list[int], stages: str, workdir: Path) -> list[dict[str, Any]]:
    """Measure and print, from parsed flags (this file's, or `scaling.py --packing-memory-only`'s:
    the same names); writes `--json` in the layout `scaling.py --report` reads."""
    lengths = block_lengths(max(sizes), args.base_books, args.median_tokens, args.sigma, args.tail_factor, args.seed)
    pm = measure_packing_memory(lengths, sizes, stages, args.pack_group_tokens, args.files_per_x,
                                args.packing_memory_groups, args.seed, workdir / "packing", args.timeout)
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "stages": stages,
                                         "results": [], "packing_memory": pm}, indent=1))
    print_packing_memory(pm, args.pack_group_tokens)
    return pm


def add_packing_memory_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--packing-memory-groups", type=int, default=3,
                        help="measure the K largest packing groups of each stage and size (0: all), one child process each")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_corpus_args(parser)
    parser.add_argument("--pack-group-tokens", type=int, default=2_000_000, help="fixed packing group bound")
    add_packing_memory_args(parser)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=int, default=900, help="seconds one group's child process may take")
    parser.add_argument("--workdir", type=Path, help="keep the children's job and result files here (default: a temp dir, removed)")
    parser.add_argument("--json", type=Path, help="write all results here as JSON (`scaling.py --report` prints it)")
    parser.add_argument("--_pack_child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._pack_child:
        pack_child_main(args._pack_child)
        return
    sizes, stages = corpus_spec(args)
    print(corpus_header(args, sizes, stages))
    print(f"machine: {cpu_model()}, {os.cpu_count()} CPUs; load average now {load_average()}")
    if args.workdir:
        workdir = args.workdir.resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        run(args, sizes, stages, workdir)
    else:
        with tempfile.TemporaryDirectory(prefix="packing-memory-") as tmp:
            run(args, sizes, stages, Path(tmp))


if __name__ == "__main__":
    main()
