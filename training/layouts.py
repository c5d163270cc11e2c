"""The layout search of `longctx plan --search`: every way to run a stage on a target's devices
(mesh split x remat policy x micro-batches, `candidate_layouts`), ranked by an estimated step time
(`layout_cost`), screened by the analytic estimate and compiled cheapest first until one fits
(`search_stage`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Sequence

from training.config import TrainConfig
from training.mesh import STATE_AXES
from training.plan import StageReport, plan_stage
from training.plan_inputs import abstract_params, itemsize, layout_problems, mesh_string, model_flops
from training.plan_targets import Chip, PlanError, Target

REMAT_ORDER = ("none", "dots_saveable", "full")  # least recompute first
# Extra forward work of a remat policy, as a fraction of a step's model FLOPs (forward = 1/3 of a step).
REMAT_RECOMPUTE = {"none": 1.0, "dots_saveable": 1.0 + 0.1, "full": 1.0 + 1.0 / 3.0}


@dataclasses.dataclass(frozen=True)
class Layout:
    """One way to run a stage: the mesh split, the remat policy, the micro-batches per step."""

    sizes: tuple[tuple[str, int], ...]
    remat: str
    grad_accum: int

    @property
    def mesh(self) -> str:
        return mesh_string(dict(self.sizes))


def candidate_layouts(config: TrainConfig, model, num_devices: int, remats: Iterable[str] = REMAT_ORDER,
                      max_tp: int = 8, max_accum: int = 16) -> list[Layout]:
    """Every layout the stage can run on `num_devices`: dp=1, fsdp x sp x tp = devices (tp up to
    `max_tp`, one host's fast interconnect), grad_accum a power of two up to `max_accum` dividing
    the step's rows (global_batch rows per step are kept), the config's chunk sizes."""
    out = []
    accums = [n for n in (2**k for k in range(8)) if n <= max_accum and config.global_batch % n == 0]
    for accum in accums:
        staged = config.model_copy(update={"grad_accum": accum})
        for tp in (t for t in (1, 2, 4, 8, 16) if t <= max_tp and num_devices % t == 0):
            for sp in (n for n in range(1, num_devices // tp + 1) if (num_devices // tp) % n == 0):
                sizes = {"dp": 1, "fsdp": num_devices // (tp * sp), "tp": tp, "sp": sp}
                if layout_problems(staged, model, sizes):
                    continue
                out.extend(Layout(tuple(sizes.items()), remat, accum) for remat in remats)
    return out


def layout_cost(config: TrainConfig, model, layout: Layout, target: Target, mfu: float = 0.4) -> float:
    """Estimated seconds per step of a layout, to rank candidates (not a prediction to quote):
    the model FLOPs with the remat policy's recompute at `mfu`, against the FSDP traffic each
    micro-batch needs (weights all-gathered for the forward and again for the backward, gradients
    reduce-scattered: about 3 x the compute-dtype model per device) over the chip's link, assumed
    overlapped with compute, plus tensor parallelism's all-reduces (4 per layer of the local
    activations), which are not."""
    from training.model import count_params

    sizes = dict(layout.sizes)
    chip = target.chip or Chip("?", 0, 1e12, 1e10)
    flops, _ = model_flops(config, model)
    compute = flops * REMAT_RECOMPUTE[layout.remat] / (target.num_devices * max(chip.peak_flops, 1.0) * mfu)
    link = chip.link_bytes_per_s or 1e10
    a = itemsize(model.dtype)
    shards = math.prod(sizes[x] for x in STATE_AXES)
    fsdp = layout.grad_accum * 3 * count_params(abstract_params(model)) * a * (shards - 1) / shards / sizes["tp"] / link
    tokens = config.global_batch * config.seq_len // target.num_devices * sizes["tp"]  # per tp group, whole step
    tp = 4 * model.num_layers * tokens * model.hidden_size * a * (sizes["tp"] - 1) / sizes["tp"] / link
    return max(compute, fsdp) + tp


def search_stage(name: str, config: TrainConfig, target: Target, *, mfu: float = 0.4, layers: Sequence[int] = (),
                 state_axes: tuple[str, ...] = STATE_AXES, max_compiles: int = 4, estimate: bool = False,
                 on_try: Callable[[StageReport], None] | None = None) -> tuple[StageReport | None, list[StageReport]]:
    """The cheapest layout (mesh split x remat policy x micro-batches, by `layout_cost`'s estimated
    step time) that fits.

    Candidates are ranked by cost and first screened with the analytic estimate (a layout it puts
    beyond 1.5 x the HBM is not worth a compile); the others are compiled in order, cheapest first,
    until one fits (at most `max_compiles` compiles). Without devices to compile for, or with
    `estimate`, the estimate decides (with its margin, ESTIMATE_MARGIN). Returns (the choice or
    None, every report made)."""
    from training.train import model_config_for

    model = model_config_for(config)
    hbm = target.hbm_bytes
    tried: list[StageReport] = []
    layouts = candidate_layouts(config, model, target.num_devices)
    costs = {layout: layout_cost(config, model.with_(remat=layout.remat), layout, target, mfu) for layout in layouts}
    ranked = sorted(layouts, key=lambda layout: (costs[layout], dict(layout.sizes)["sp"]))
    if not ranked:
        raise PlanError(f"stage {name}: no mesh split of {target.num_devices} devices satisfies its batch and chunk sizes")
    compiles = 0
    for layout in ranked:
        kwargs = dict(mfu=mfu, state_axes=state_axes, mesh=layout.mesh, remat=layout.remat, grad_accum=layout.grad_accum)
        est = plan_stage(name, config, target, estimate=True, **kwargs)
        ranking = f"search: ~{costs[layout]:.1f} s/step with communication"
        est.note = f"{est.note}; {ranking}"
        if not target.compiles or estimate:
            tried.append(est)
            if on_try:
                on_try(est)
            if est.fits or hbm is None:
                return est, tried
            continue
        if hbm is not None and est.peak_bytes_per_device > 1.5 * hbm:
            continue
        report = plan_stage(name, config, target, layers=layers, **kwargs)
        report.note = f"{report.note}; {ranking}" if report.note else ranking
        tried.append(report)
        if on_try:
            on_try(report)
        compiles += 1
        if report.fits or hbm is None:
            return report, tried
        if compiles >= max_compiles:
            break
    return None, tried


__all__ = ["REMAT_ORDER", "REMAT_RECOMPUTE", "Layout", "candidate_layouts", "layout_cost", "search_stage"]
