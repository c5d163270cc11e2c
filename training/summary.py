"""The table a training run prints at the end."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table


def print_training_summary(results: list[dict[str, Any]], console: Console | None = None) -> None:
    console = console or Console()
    table = Table(title="longctx train", header_style="bold")
    for col in ("stage", "steps", "first loss", "last loss", "tokens/s", "MFU", "checkpoint"):
        table.add_column(col, justify="left" if col in ("stage", "checkpoint") else "right")
    for r in results:
        h = r["history"]
        if not h:
            table.add_row(r.get("stage", "-"), str(r["steps"]), "-", "-", "-", "-", str(r["final"]))
            continue
        rate = sum(x["tokens_per_s"] for x in h[1:] or h) / len(h[1:] or h)  # the first step compiles
        mfu = h[-1]["mfu"]
        table.add_row(
            r.get("stage", "-"), str(r["steps"]), f"{h[0]['loss']:.3f}", f"{h[-1]['loss']:.3f}", f"{rate:,.0f}",
            "n/a" if mfu is None else f"{100 * mfu:.1f}%", str(r["final"] or "(not finished)"),
        )
    console.print(table)
