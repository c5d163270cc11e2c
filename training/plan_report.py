"""How `longctx plan` shows its reports: a rich table (one row per stage, or per search try) with
bytes per device in GiB, and a JSON file of the per-stage numbers."""

from __future__ import annotations

import json
from pathlib import Path

from curation.units import MISSING, gib
from training.plan import StageReport

JSON_KEYS = ("name", "seq_len", "devices", "mesh", "argument_bytes", "temp_bytes", "peak_bytes_per_device",
             "hbm_bytes_per_device", "fits", "state_bytes_total", "flops_per_step")


def write_json(reports: list[StageReport], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"stages": [r.to_json() for r in reports]}, indent=2) + "\n")
    return path


def _seconds(s: float | None) -> str:
    """A step time: `0.4 s`, `95.0 s`, `3.5 min` (tenths matter for a step: not `curation.units.duration`,
    whose whole seconds suit an ETA)."""
    if s is None:
        return MISSING
    return f"{s:,.1f} s" if s < 120 else f"{s / 60:,.1f} min"


def render_table(reports: list[StageReport], title: str = "longctx plan"):
    """A rich Table: one row per stage (or search try), bytes per device in GiB (as TPU HBM is stated)."""
    from rich.table import Table

    table = Table(title=title)
    for col, justify in [("stage", "left"), ("target", "left"), ("mesh dp/fsdp/tp/sp", "left"), ("remat", "left"),
                         ("seq", "right"), ("rows", "right"), ("state GiB/dev", "right"), ("args GiB", "right"),
                         ("temp GiB", "right"), ("total GiB", "right"), ("HBM GiB", "right"), ("fits", "center"),
                         ("model PFLOP/step", "right"), ("step @MFU", "right"), ("how", "left")]:
        table.add_column(col, justify=justify)
    for r in reports:
        fits = {True: "[green]yes[/]", False: "[red]no[/]", None: "?"}[r.fits]
        m = r.mesh
        how = r.method + (f", {r.compile_seconds:.0f} s compile" if r.compile_seconds else "") + (f"; {r.note}" if r.note else "")
        table.add_row(r.name, r.target, f"{m['dp']}/{m['fsdp']}/{m['tp']}/{m['sp']}", r.remat, f"{r.seq_len:,}",
                      f"{r.global_batch}" + (f"/{r.grad_accum}" if r.grad_accum > 1 else ""),
                      gib(r.state_bytes_per_device), gib(r.argument_bytes), gib(r.temp_bytes),
                      gib(r.peak_bytes_per_device), gib(r.hbm_bytes_per_device), fits, f"{r.flops_per_step / 1e15:,.1f}",
                      _seconds(r.step_seconds) + f" @{r.mfu:.0%}", how)
    return table


__all__ = ["JSON_KEYS", "render_table", "write_json"]
