"""The table every job prints at the end, from its manifest."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table


def _short(n: int | None) -> str:
    if n is None:
        return "inf"
    for unit, size in (("M", 1_000_000), ("K", 1_000)):
        if n >= size and n % (size // 10) == 0:
            return f"{n / size:g}{unit}"
    return f"{n:,}"


def print_summary(manifest: dict[str, Any], output: str, console: Console | None = None) -> None:
    console = console or Console()
    totals = Table(title=f"longctx {manifest['kind']}: records", show_header=True, header_style="bold")
    totals.add_column("count")
    totals.add_column("value", justify="right")
    totals.add_row("read", f"{manifest['read']:,}")
    totals.add_row("kept", f"{manifest['kept']:,}")
    for reason, n in manifest["rejected"].items():
        totals.add_row(f"rejected: {reason}", f"{n:,}")
    totals.add_row("tokens in (kept + no_stage)", f"{manifest['tokens_in']:,}")
    totals.add_row("tokens out (all stages)", f"{manifest['tokens_out']:,}")
    totals.add_row("dropped tail tokens", f"{manifest['dropped_tail_tokens']:,}")
    chunks = manifest.get("chunks")
    if chunks:
        totals.add_row("chunks", f"{chunks['read']:,}")
        totals.add_row("chunks accepted", f"{chunks['accepted']:,}")
        for reason, n in chunks["rejected"].items():
            totals.add_row(f"chunks rejected: {reason}", f"{n:,}")
    console.print(totals)
    stages = Table(title="stages", header_style="bold")
    for col in ("stage", "length", "window", "docs", "rows", "tokens", "packing", "dropped", "shards"):
        stages.add_column(col, justify="left" if col in ("stage", "window") else "right")
    for name, s in manifest["stages"].items():
        window = f"{_short(s['min_tokens'])}-{_short(s['max_tokens'])}"
        stages.add_row(
            name, f"{s['length']:,}", window, f"{s['documents']:,}", f"{s['rows']:,}", f"{s['tokens']:,}",
            f"{100 * s['packing_efficiency']:.2f}%", f"{s['dropped_tail_tokens']:,}", str(len(s["shards"])),
        )
    console.print(stages)
    balance = "OK" if manifest["read"] == manifest["kept"] + manifest["rejected_total"] else "MISMATCH"
    console.print(f"read {manifest['read']} = kept {manifest['kept']} + rejected {manifest['rejected_total']}: {balance}")
    if chunks:
        ok = chunks["read"] == chunks["accepted"] + sum(chunks["rejected"].values())
        console.print(f"chunks {chunks['read']} = accepted {chunks['accepted']} + rejected {sum(chunks['rejected'].values())}: {'OK' if ok else 'MISMATCH'}")
    console.print(f"shards, rejects/ and manifest.json in [bold]{output}[/bold]")
