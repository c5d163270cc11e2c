"""The planner's analytic memory model: per-device bytes of a training step from shapes alone, for
targets with nothing to compile for (GPU clusters) and for the layout search's first screening.
A guide checked against compiled TPU programs, not a proof (`training.plan` compiles where it can).
"""

from __future__ import annotations

import math

from training.config import TrainConfig
from training.mesh import STATE_AXES
from training.plan_inputs import abstract_inputs, itemsize


# An analytic estimate is only trusted to fit with this fraction of the device's memory to spare
# (its error against compiled TPU programs, see estimate_memory).
ESTIMATE_MARGIN = 0.3


def estimate_memory(config: TrainConfig, model, sizes: dict[str, int], state_axes: tuple[str, ...] = STATE_AXES) -> dict[str, int]:
    """Per-device bytes of a step from shapes alone: the arguments exactly (state and batch shards),
    the temporaries by a phase model checked against seven TPU v5p compiles of the LLaMA-2 7B step
    (1-4 layers, 4-64 chips: within about 30% of XLA's temporaries). A guide, not a proof: compile
    where possible.

    Notation per device: T = b x s tokens (rows x local length), h hidden, i MLP width, V vocab,
    a bytes of the compute dtype, t = tp, P one layer's weights / t.
    - persistent through the step: the gradient accumulator (params / state shards, fp32; AdamW
      updates the donated state in place) and per layer what the backward pass keeps. Remat "full"
      keeps the layer input and, as compiled, about 3.3 x T h a + 0.5 x P a per layer (ring
      attention blocks, gathered weights XLA reuses); "dots_saveable" adds the matmul outputs
      (T (3 h + 2 kv d + 3 i / t) a); "none" everything the backward reads (T (10 h + 6 i / t) a);
    - then the larger of two phases that never overlap:
      a layer's backward: its gathered weights (P a), the fp32 SwiGLU temporaries (6 T i / t x 4),
      and one ring attention fp32 score block (b x heads / t x q_chunk x kv_chunk x 4);
      the loss: the gathered output head (V h / t x a) with its fp32 gradient, and two fp32 logit
      chunks (b x loss_chunk x V / t x 4).
    """
    from training.step import micro_batch

    abstract = abstract_inputs(config, model, sizes, state_axes)
    argument = abstract.state_bytes_per_device() + abstract.batch_bytes_per_device()
    dp, sp, tp = sizes["dp"] * sizes["fsdp"], sizes["sp"], sizes["tp"]
    b, s = max(1, micro_batch(config) // dp), config.seq_len // sp
    h, i, v = model.hidden_size, model.intermediate_size, model.vocab_size + (model.vision_vocab_size if model.has_vision_head else 0)
    d, heads, kv = model.head_dim, model.num_heads, model.num_kv_heads
    a = itemsize(model.dtype)
    state_shards = math.prod(sizes[x] for x in state_axes)
    import jax

    params = sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(abstract.params))
    layer = (h * d * (heads + 2 * kv) + heads * d * h + 3 * h * i) // tp
    tokens = b * s
    per_layer = {
        "full": 3.3 * tokens * h * a + 0.5 * layer * a,
        "dots_saveable": 3.3 * tokens * h * a + 0.5 * layer * a + tokens * a * (3 * h + 2 * kv * d + 3 * i // tp),
        "none": tokens * a * (10 * h + 6 * i // tp) + 0.5 * layer * a,
    }[model.remat]
    persistent = params // state_shards + model.num_layers * per_layer
    attention = b * heads // tp * min(config.q_chunk, s) * min(config.kv_chunk, s) * 4 if config.attention == "ring" else \
        3 * b * heads // tp * s * s * 4
    layer_phase = layer * a + 6 * tokens * i // tp * 4 + attention
    loss_phase = v * h // tp * (a + 4) + 2 * b * min(config.loss_chunk, s) * v // tp * 4
    return {"argument_bytes": int(argument), "temp_bytes": int(persistent + max(layer_phase, loss_phase))}


__all__ = ["ESTIMATE_MARGIN", "estimate_memory"]
