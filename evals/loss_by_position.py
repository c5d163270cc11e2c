"""Loss by position: the mean next-token loss of a model at each position bucket of a stage's rows.

The plain test of whether later tokens gain from earlier ones: a model that uses its context has a
loss that keeps falling with the position; one that does not flattens (or rises past its trained
length). Targets and weights are the trainer's (`training.train.next_token_targets`: token t+1
predicted at t, inside one packed document, where the target's loss mask is on); the per-token loss
is the trainer's cross-entropy (logsumexp of the logits less the target's logit, fp32 logits, the
output layer run `loss_chunk` positions at a time so full logits never exist). Text targets only:
vision targets of a vision-language stage are left out.

A target's position is its index in its document as the model sees it (`positions` of the shard:
restarting per packed document, or running over the row for row-mode shards), so position p has
p tokens of the same document before it. Buckets are log-spaced ([1, 2), [2, 4), [4, 8), ...) or
fixed windows of W positions; each holds the mean loss and the number of targets scored in it.
Rows are read evenly spaced over the stage (deterministic); for held-out text, point `--data` at a
stage made from documents the model did not train on, or at raw books (evals/loss_sources.py cuts
them into rows of one book each). `score_rows` is the backend-free loop: our JAX model here,
any transformers causal LM in evals/hf_loss.py (same targets, weights and summary).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from curation.units import COUNT_FORM, parse_count


def bucket_edges(length: int, spec: str | int = "log") -> np.ndarray:
    """Edges e_0 < e_1 < ... < e_k = length over target positions 1..length-1: `log` gives
    1, 2, 4, ..., and an integer W (or a string `parse_buckets` reads: "W", "1k") fixed windows
    [1, W), [W, 2W), ..."""
    if length < 2:
        raise ValueError(f"the stage length must be at least 2 tokens, got {length}")
    spec = parse_buckets(spec) if isinstance(spec, str) else spec
    if spec == "log":
        edges = [1 << i for i in range(max(1, math.ceil(math.log2(length))))]
    else:
        if spec < 1:
            raise ValueError(f"bucket width must be at least 1 token, got {spec}")
        edges = [1] + list(range(spec, length, spec))
    edges = sorted({e for e in edges if e < length}) + [length]
    return np.asarray(edges, np.int64)


BUCKET_FORMS = f"'log' (log-spaced buckets 1, 2-3, 4-7, ...) or a window width in tokens, {COUNT_FORM}"


def parse_buckets(spec: str) -> str | int:
    """`log` or a window width (`1024`, `1k`); ValueError naming both forms otherwise."""
    if spec.strip().lower() == "log":
        return "log"
    try:
        width = parse_count(spec)
    except ValueError:
        raise ValueError(f"bad count {spec!r}: expected {BUCKET_FORMS}") from None
    if width < 1:
        raise ValueError(f"bad count {spec!r}: a window is at least 1 token; expected {BUCKET_FORMS}")
    return width


def token_losses(config: Any, params: Any, batch: Mapping[str, np.ndarray], *, sp: int = 1, chunk: int = 512,
                 loss_chunk: int = 1024) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(loss, weight, target position) per token [rows, seq]: the loss of predicting token t+1 at
    t, its weight (the trainer's, text targets only; 0 where nothing is scored) and the target's
    position in its document. Attention is ring attention over `sp` devices (blockwise with sp=1,
    so memory stays linear in the length), as in `longctx generate`'s prefill."""
    from training.generate import place_params

    score, mesh = _scorer(config, sp, min(chunk, len(batch["input_ids"][0]) // sp), loss_chunk)
    loss, weight = score(place_params(params, mesh), {k: np.asarray(v) for k, v in batch.items()})
    positions = np.asarray(batch["positions"])
    return np.asarray(loss), np.asarray(weight), np.roll(positions, -1, axis=1)


_SCORERS: dict[tuple, Any] = {}


def _scorer(config: Any, sp: int, chunk: int, loss_chunk: int):
    """One jitted forward + per-token loss per (model, mesh, chunks): compiled once per batch shape."""
    key = (config, sp, chunk, loss_chunk)
    if key in _SCORERS:
        return _SCORERS[key]
    import jax
    import jax.numpy as jnp

    from training.mesh import make_mesh
    from training.model import LlamaModel, output_kernel
    from training.ring_attention import ring_attention_sharded
    from training.loss import next_token_targets

    mesh = make_mesh(f"sp={sp}")
    model = LlamaModel(config)

    def attention(q, k, v, segment_ids):
        return ring_attention_sharded(q, k, v, mesh, segment_ids=segment_ids, causal=True, axis_name="sp",
                                      q_chunk=chunk, kv_chunk=chunk)

    @jax.jit
    def score(params, batch):
        hidden = model.apply({"params": params}, batch["input_ids"], batch["positions"], batch["segment_ids"],
                             batch.get("vision_mask"), attention_fn=attention, return_hidden=True)
        targets, weight, is_vision = next_token_targets(batch)
        kernel = output_kernel(config, params)
        b, t, h = hidden.shape
        size = min(loss_chunk, t)
        while t % size:  # a chunk that divides the row
            size -= 1
        n = t // size

        def chunk_nll(xs):
            h_c, t_c = xs
            # The trainer's cross-entropy (training.train.next_token_nll), one chunk of logits at a time.
            logits = jnp.einsum("bch,hv->bcv", h_c, kernel.astype(h_c.dtype), preferred_element_type=jnp.float32)
            return jax.nn.logsumexp(logits, axis=-1) - jnp.take_along_axis(logits, t_c[..., None], axis=-1)[..., 0]

        split = lambda x: jnp.moveaxis(x.reshape(b, n, size, *x.shape[2:]), 1, 0)  # noqa: E731
        per_token = jax.lax.map(chunk_nll, (split(hidden), split(targets)))
        per_token = jnp.moveaxis(per_token, 0, 1).reshape(b, t)
        return per_token, weight * ~is_vision

    _SCORERS[key] = (score, mesh)
    return _SCORERS[key]


@dataclass
class BucketTotals:
    """Running sums per bucket: scored targets and their summed loss."""

    edges: np.ndarray
    tokens: np.ndarray
    loss_sum: np.ndarray

    @classmethod
    def empty(cls, edges: np.ndarray) -> BucketTotals:
        k = len(edges) - 1
        return cls(edges, np.zeros(k, np.int64), np.zeros(k, np.float64))

    def add(self, loss: np.ndarray, weight: np.ndarray, position: np.ndarray) -> None:
        scored = weight > 0
        which = np.searchsorted(self.edges, position[scored], side="right") - 1
        inside = (which >= 0) & (which < len(self.tokens))
        k = len(self.tokens)
        self.tokens += np.bincount(which[inside], minlength=k)[:k]
        self.loss_sum += np.bincount(which[inside], weights=(loss[scored] * weight[scored])[inside], minlength=k)[:k]

    def rows(self) -> list[dict[str, Any]]:
        return [{"start": int(a), "end": int(b), "tokens": int(n),
                 "loss": (float(s / n) if n else None)}
                for a, b, n, s in zip(self.edges[:-1], self.edges[1:], self.tokens, self.loss_sum)]


def loss_by_position(config: Any, params: Any, data: Any, *, rows: int = 64, batch_rows: int = 4,
                     buckets: str | int = "log", sp: int = 1, chunk: int = 512, loss_chunk: int = 1024,
                     progress: Any = None) -> dict[str, Any]:
    """Mean loss per position bucket of our JAX model over `rows` rows of `data` (a
    training.data.StageData, or evals.loss_sources.BookRows), read evenly spaced, `batch_rows` at a time."""
    if data.length % sp:
        raise ValueError(f"the stage length {data.length} is not a multiple of sp={sp}")
    from training.generate import place_params
    from training.mesh import make_mesh

    params = place_params(params, make_mesh(f"sp={sp}"))  # once, not per batch

    def score(batch: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n = len(batch["input_ids"])
        if n < batch_rows:  # one batch shape: one compile (padding rows have segment 0: never scored)
            batch = {k: np.concatenate([v, np.zeros((batch_rows - n, *v.shape[1:]), v.dtype)]) for k, v in batch.items()}
        loss, weight, position = token_losses(config, params, batch, sp=sp, chunk=chunk, loss_chunk=loss_chunk)
        return loss[:n], weight[:n], position[:n]

    return score_rows(score, data, vocab_size=config.vocab_size, rows=rows, batch_rows=batch_rows, buckets=buckets,
                      progress=progress)


def score_rows(score: Any, data: Any, *, vocab_size: int, rows: int = 64, batch_rows: int = 4,
               buckets: str | int = "log", progress: Any = None) -> dict[str, Any]:
    """The summary of any backend: `score(batch)` gives (loss, weight, target position) per token
    of a batch of `data`'s rows, as `token_losses`; rows are picked evenly spaced over `data`."""
    if rows < 1 or batch_rows < 1:
        raise ValueError("rows and batch rows must be at least 1")
    length = data.length
    picks = np.unique(np.linspace(0, data.num_rows - 1, min(rows, data.num_rows)).round().astype(np.int64))
    totals = BucketTotals.empty(bucket_edges(length, buckets))
    for start in range(0, len(picks), batch_rows):
        batch = data.rows(picks[start: start + batch_rows])
        if int(batch["input_ids"].max()) >= vocab_size:
            raise ValueError(f"token id {int(batch['input_ids'].max())} is outside the model's vocabulary "
                             f"({vocab_size}): the data was made with another tokenizer")
        totals.add(*score(batch))
        if progress is not None:
            progress(min(start + batch_rows, len(picks)), len(picks))
    scored = int(totals.tokens.sum())
    return {
        "rows": len(picks), "seq_len": int(length), "buckets": totals.rows(), "tokens": scored,
        "loss": float(totals.loss_sum.sum() / scored) if scored else None,
        "bucketing": str(buckets),
    }


def write_outputs(summary: dict[str, Any], out: str | Path, label: str = "") -> list[Path]:
    """OUT/loss_by_position.json, .csv and .png."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    json_path, csv_path, png_path = (out / f"loss_by_position.{ext}" for ext in ("json", "csv", "png"))
    json_path.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    with open(csv_path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["start", "end", "tokens", "loss"])
        for b in summary["buckets"]:
            writer.writerow([b["start"], b["end"], b["tokens"], "" if b["loss"] is None else f"{b['loss']:.6f}"])
    plot_loss_by_position({label or summary.get("model", "model"): summary}, png_path)
    return [json_path, csv_path, png_path]


def plot_loss_by_position(curves: Mapping[str, dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """One line per curve (e.g. per stage): mean loss at each bucket's geometric middle, log x axis."""
    import matplotlib

    matplotlib.use("Agg")  # files only
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, summary in curves.items():
        points = [(math.sqrt(b["start"] * max(b["end"] - 1, b["start"])), b["loss"]) for b in summary["buckets"]
                  if b["loss"] is not None]
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker="o", markersize=3, label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("Position in document (tokens of context before the target)")
    ax.set_ylabel("Mean next-token loss (nats)")
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(title or "Loss by position")
    if len(curves) > 1 or any(curves):
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def summarize_table(summary: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(positions, tokens, loss) strings per bucket, for printing."""
    return [(f"{b['start']}-{b['end'] - 1}", str(b["tokens"]), "-" if b["loss"] is None else f"{b['loss']:.4f}")
            for b in summary["buckets"]]

