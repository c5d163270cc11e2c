"""Gradient accumulation: `global_batch` rows per optimiser step, run as `grad_accum` micro-batches
of `global_batch / grad_accum` rows; the update is that of one batch of the same rows."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from curation.packing import RowArrays
from curation.shards import write_shard
from training import checkpoint as ckpt
from training.config import TrainConfig
from training.data import open_batches
from training.mesh import make_mesh
from training.model import LlamaModel, flops_per_token, init_params
from training.step import build_optimizer, make_train_step, split_micro_batches
from training.train import ConfigMismatch, check_fits, model_config_for, train

LENGTH, VOCAB = 64, 1000
PEAK = 1e12  # a stated peak, so the MFU is a deterministic function of the step time


def _write_stage(out, rows_per_shard: int = 16, shards: int = 2) -> str:
    """Rows with different numbers of scored tokens (1..3 documents, then padding of 0..40
    positions), so micro-batches differ in their loss denominators: a mean of micro-batch means
    would not equal the batch's mean."""
    rng = np.random.default_rng(0)
    meta = {"tokenizer": {"name": "toy", "sha256": "ab" * 32, "vocab_size": VOCAB, "bos_id": 1, "eos_id": 2, "pad_id": None}}
    for s in range(shards):
        rows = RowArrays.empty(rows_per_shard, LENGTH)
        for r in range(rows_per_shard):
            used = LENGTH - int(rng.integers(0, 41))
            cuts = sorted(rng.choice(np.arange(8, used - 8), int(rng.integers(0, 3)), replace=False).tolist())
            bounds = [0, *cuts, used]
            for seg, (a, b) in enumerate(zip(bounds, bounds[1:]), start=1):
                rows.segment_ids[r, a:b] = seg
                rows.positions[r, a:b] = np.arange(b - a)
            rows.input_ids[r, :used] = rng.integers(3, VOCAB, used)
            rows.loss_mask[r, :used] = 1.0
            rows.doc_ids[r] = [f"d{s}-{r}-{i}" for i in range(len(bounds) - 1)]
            rows.doc_starts[r] = [0] * (len(bounds) - 1)
        write_shard(str(out), "s64", s, shards, rows, meta)
    return str(out / "s64")


def _config(data: str, out, **kw) -> TrainConfig:
    base = dict(data=data, out=str(out), seq_len=LENGTH, global_batch=8, steps=3, lr=3e-3, warmup_steps=1, seed=2,
                mesh="dp=1,fsdp=1,tp=1,sp=1", attention="dense", progress=False, checkpoint_every=100,
                model_overrides={"vocab_size": VOCAB, "num_layers": 1}, peak_flops_per_device=PEAK)
    return TrainConfig(**{**base, **kw})


def test_micro_batches_give_the_update_of_one_batch_and_count_each_row_once(tmp_path):
    data = _write_stage(tmp_path / "data")
    config = _config(data, tmp_path / "run", grad_accum=2, steps=2)
    result = train(config)
    manager = ckpt.step_manager(result["run"], 3)
    iterator, _ = ckpt.read_step_data(manager, 2)
    manager.close()
    assert iterator["global_batch"] == 8 and iterator["step"] == 2  # a step reads global_batch rows, once
    model = model_config_for(config)
    for h in result["history"]:
        assert h["tokens_per_s"] * h["seconds"] == pytest.approx(8 * LENGTH, rel=1e-9)
        flops = flops_per_token(model, LENGTH) * 8 * LENGTH
        assert h["mfu"] * h["seconds"] * PEAK * jax.device_count() == pytest.approx(flops, rel=1e-9)

    # The same rows in the same order as one batch (k=1) and as 4 micro-batches, through the same step
    # function, from the same initial params: the same losses and the same parameters.
    _, batches = open_batches(data, 8, config.seed, LENGTH, VOCAB, None)
    steps = [batches.next_rows().read() for _ in range(2)]
    optimizer = build_optimizer(config)
    init = init_params(model, jax.random.key(config.seed))
    trained = jax.tree.leaves(ckpt.load_params(result["final"])[1])
    for k in (1, 4):
        step = jax.jit(make_train_step(LlamaModel(model), optimizer, None, k, config.loss_chunk))
        state = {"params": init, "opt_state": optimizer.init(init), "step": jnp.zeros((), jnp.int32)}
        losses = []
        for rows in steps:
            state, metrics = step(state, split_micro_batches(rows, k))
            losses.append(float(metrics["loss"]))
        assert losses == pytest.approx([h["loss"] for h in result["history"]], rel=1e-6), k
        for got, want in zip(jax.tree.leaves(state["params"]), trained):
            np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)


def test_grad_accum_must_split_the_batch_and_the_micro_batch_the_mesh(tmp_path):
    model = model_config_for(_config("d", tmp_path))
    mesh = make_mesh("dp=1,fsdp=2,tp=1,sp=1")
    with pytest.raises(ConfigMismatch, match="global_batch 6 .* grad_accum 4 equal micro-batches"):
        check_fits(_config("d", tmp_path, global_batch=6, grad_accum=4), model, mesh)
    with pytest.raises(ConfigMismatch, match=r"micro-batch of 1 rows \(global_batch 4 / grad_accum 4\) is not divisible by dp x fsdp = 2"):
        check_fits(_config("d", tmp_path, global_batch=4, grad_accum=4), model, mesh)
    check_fits(_config("d", tmp_path, global_batch=8, grad_accum=4), model, mesh)
    with pytest.raises(ValueError, match="grad_accum\n  Input should be greater than or equal to 1"):  # the config refuses it
        _config("d", tmp_path, grad_accum=0)
