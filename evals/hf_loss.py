"""Loss by position for any transformers causal LM (GPT-2, Qwen, Mistral, LLaMA, ...), torch on CPU
unless told otherwise; remote code is never run.

The targets and weights are the JAX path's (`training.loss.next_token_targets`, through
`next_token_weights`): token t+1 predicted at t, only inside one packed document, where the
target's loss mask is on, vision targets left out. The JAX path keeps packed documents apart with
segment-masked attention and positions that restart per document; a transformers model has no
portable segment mask, so each document (a run of one segment id) is run as its own sequence, with
the shard's positions as `position_ids`: the same context per token, exactly. Documents are
batched longest first, right-padded (causal attention: padding after a token never reaches it),
at most `batch_tokens` (padded) tokens a forward pass (default: as many as the batch's rows hold).

The per-token loss is logsumexp of the fp32 logits less the target's logit. The output layer is
run `loss_chunk` positions at a time on the base model's last hidden state, so full logits never
exist (at 32K tokens and a 150K vocabulary they would be 19 GB); a model whose own forward does
more than `lm_head(hidden)` (logit soft-capping, scaling) is caught by comparing both on a short
probe at load time, and then scored from the full forward's logits instead.
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np


def next_token_weights(batch: dict[str, np.ndarray]) -> np.ndarray:
    """The weight of predicting token t+1 at t [rows, seq], text targets only: the trainer's own
    `training.loss.next_token_targets` (the target's loss mask, 0 across a document boundary, on
    padding and at the row's end), with vision targets left out."""
    from training.loss import next_token_targets

    _, weight, is_vision = next_token_targets({k: np.asarray(v) for k, v in batch.items()})
    return np.asarray(weight, np.float32) * ~np.asarray(is_vision)


def document_runs(segment_ids: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) of each run of one segment id > 0 in a row (a packed document)."""
    seg = np.asarray(segment_ids)
    cuts = np.flatnonzero(np.diff(seg)) + 1
    bounds = np.concatenate([[0], cuts, [len(seg)]])
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]) if seg[a] > 0]


class HFScorer:
    """A transformers causal LM as a `score(batch)` for `evals.loss_by_position.score_rows`.
    `path`: a local folder or `package:DIST/model.gguf` (curation.hf_models.resolve_generator).
    `chunked_head`: None decides by the load-time probe; True/False forces it."""

    def __init__(self, path: str, *, device: str = "cpu", dtype: str = "float32", loss_chunk: int = 1024,
                 batch_tokens: int | None = None, chunked_head: bool | None = None):
        import torch
        from transformers import AutoModelForCausalLM

        from curation.hf_models import resolve_generator

        self.folder, gguf = resolve_generator(path)
        kwargs = {"gguf_file": gguf} if gguf else {}
        self.model = AutoModelForCausalLM.from_pretrained(self.folder, dtype=getattr(torch, dtype),
                                                          trust_remote_code=False, **kwargs).to(device).eval()
        self.device, self.loss_chunk, self.batch_tokens = device, loss_chunk, batch_tokens
        self.head = self.model.get_output_embeddings()
        self.vocab_size = int(self.head.weight.shape[0] if self.head is not None
                              else self.model.config.get_text_config().vocab_size)
        text_config = self.model.config.get_text_config()
        self.max_positions = getattr(text_config, "max_position_embeddings", None)
        self.takes_positions = "position_ids" in inspect.signature(self.model.forward).parameters
        self.chunked_head = self._head_matches() if chunked_head is None else chunked_head

    def _head_matches(self) -> bool:
        """Whether lm_head(base model's last hidden state) is the model's own logits, on a probe."""
        import torch

        ids = torch.arange(1, 17, device=self.device)[None] % self.vocab_size
        with torch.inference_mode():
            full = self.model(input_ids=ids).logits.float()
            base = self.model.base_model
            if base is self.model or self.head is None:  # no separate trunk and head: full logits only
                return False
            hidden = getattr(base(input_ids=ids), "last_hidden_state", None)
            if hidden is None:
                return False
            ours = self.head(hidden).float()
        return bool(torch.allclose(full, ours, rtol=1e-4, atol=1e-4 * float(full.abs().max()) + 1e-6))

    def __call__(self, batch: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(loss, weight, target position) per token [rows, seq], as the JAX `token_losses`."""
        ids, positions = np.asarray(batch["input_ids"]), np.asarray(batch["positions"])
        weight = next_token_weights(batch)
        loss = np.zeros(ids.shape, np.float32)
        runs = [(r, a, b) for r in range(len(ids)) for a, b in document_runs(batch["segment_ids"][r])]
        if not self.takes_positions:
            for r, a, b in runs:
                if not np.array_equal(positions[r, a:b], np.arange(b - a)):
                    raise ValueError(f"{type(self.model).__name__} takes no position_ids, and row {r}'s positions "
                                     "do not restart at each document")
        if self.max_positions and runs:
            top = max(int(positions[r, a:b].max()) for r, a, b in runs)
            if top >= self.max_positions:
                raise ValueError(f"positions reach {top}, past the model's {self.max_positions} "
                                 "(max_position_embeddings): evaluate shorter rows (--length)")
        runs.sort(key=lambda x: (-(x[2] - x[1]), x[0], x[1]))  # longest first: little padding
        budget = self.batch_tokens or ids.size  # default: the batch's own rows, padded, per forward pass
        group: list[tuple[int, int, int]] = []
        for run in runs:
            width = group[0][2] - group[0][1] if group else run[2] - run[1]
            if group and (len(group) + 1) * width > budget:
                self._score_group(group, ids, positions, loss)
                group = []
            group.append(run)
        if group:
            self._score_group(group, ids, positions, loss)
        return loss, weight, np.roll(positions, -1, axis=1)

    def _score_group(self, group: list[tuple[int, int, int]], ids: np.ndarray, positions: np.ndarray,
                     loss: np.ndarray) -> None:
        """Per-token losses of one forward pass over whole documents, written into `loss`."""
        import torch

        width = max(b - a for _, a, b in group)
        x = np.zeros((len(group), width), np.int64)
        pos = np.zeros((len(group), width), np.int64)
        mask = np.zeros((len(group), width), np.int64)
        for i, (r, a, b) in enumerate(group):
            n = b - a
            x[i, :n], mask[i, :n] = ids[r, a:b], 1
            pos[i, :n] = positions[r, a:b]
            pos[i, n:] = positions[r, b - 1] + 1 + np.arange(width - n)  # padding: positions go on
        targets = torch.as_tensor(np.roll(x, -1, axis=1), device=self.device)
        inputs = {"input_ids": torch.as_tensor(x, device=self.device),
                  "attention_mask": torch.as_tensor(mask, device=self.device)}
        if self.takes_positions:
            inputs["position_ids"] = torch.as_tensor(np.minimum(pos, (self.max_positions or 1 << 62) - 1),
                                                     device=self.device)
        with torch.inference_mode():
            if self.chunked_head:
                hidden = self.model.base_model(**inputs).last_hidden_state
                parts = [self._nll(self.head(hidden[:, s: s + self.loss_chunk]), targets[:, s: s + self.loss_chunk])
                         for s in range(0, width, self.loss_chunk)]
                nll = torch.cat(parts, dim=1)
            else:
                nll = self._nll(self.model(**inputs).logits, targets)
        nll = nll.float().cpu().numpy()
        for i, (r, a, b) in enumerate(group):
            loss[r, a:b] = nll[i, : b - a]

    @staticmethod
    def _nll(logits: Any, targets: Any) -> Any:
        import torch

        logits = logits.float()
        return torch.logsumexp(logits, dim=-1) - logits.gather(-1, targets[..., None])[..., 0]


def hf_loss_by_position(scorer: HFScorer, data: Any, *, rows: int = 64, batch_rows: int = 4,
                        buckets: str | int = "log", progress: Any = None) -> dict[str, Any]:
    """Mean loss per position bucket of a transformers model over `rows` rows of `data` (a stage's
    StageData or BookRows), evenly spaced; the summary of `evals.loss_by_position.loss_by_position`."""
    from evals.loss_by_position import score_rows

    return score_rows(scorer, data, vocab_size=scorer.vocab_size, rows=rows, batch_rows=batch_rows,
                      buckets=buckets, progress=progress)
