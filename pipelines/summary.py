"""The table every job prints at the end, from its manifest."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from curation.stages import applies_windows, stage_rule


def shards_written(manifest: dict[str, Any]) -> int:
    """How many shard files the job wrote, over all stages."""
    return sum(len(s.get("shards", [])) for s in manifest.get("stages", {}).values())


# The no-shard warning names every reason up to this many, the most frequent first; past it, the
# rest are counted ("and 3 more": the table above lists them all).
MAX_REASONS_NAMED = 8


def reason_list(rejected: dict[str, int]) -> str:
    """`missing_field 2, binary 1, empty 1`: every reason with its count, the largest first (ties
    by name), the reasons past MAX_REASONS_NAMED counted as `and K more`."""
    ordered = sorted(rejected.items(), key=lambda kv: (-kv[1], kv[0]))
    named = ", ".join(f"{reason} {n:,}" for reason, n in ordered[:MAX_REASONS_NAMED])
    rest = len(ordered) - MAX_REASONS_NAMED
    return named + (f" and {rest} more" if rest > 0 else "")


def no_shard_warning(manifest: dict[str, Any]) -> str | None:
    """One line saying that a job wrote no shard at all, and the likeliest reason; None when it wrote some."""
    if shards_written(manifest):
        return None
    read, rejected = manifest.get("read", 0), manifest.get("rejected", {})
    if not read:
        why = "no record was read (check --input)"
    elif not manifest.get("kept"):
        why = f"all {read:,} records were rejected ({reason_list(rejected)})"
    else:
        why = f"{manifest['kept']:,} records were kept but filled no row"
    hint = ""
    if rejected.get("no_stage") and applies_windows(manifest.get("kind", "books")):
        hint = "; no stage window holds them: the rejects state each document's token count, widen --stages"
    return f"no shard written: {why}{hint}"


def _outputs_line(manifest: dict[str, Any], output: str) -> str:
    """Where the job's files are: only what exists (a stage with no rows and a job with no rejects
    write no folder, just as the manifest lists no file for them)."""
    shards = shards_written(manifest)
    stages = [name for name, s in manifest.get("stages", {}).items() if s.get("shards")]
    parts = [f"{shards} shard{'s' if shards != 1 else ''}" + (f" in {', '.join(f'{n}/' for n in stages)}" if stages else "")]
    files = manifest.get("rejects", [])
    if files:
        parts.append(f"rejects in rejects/ ({len(files)} file{'s' if len(files) != 1 else ''})")
    else:
        parts.append("no rejects")
    parts.append("manifest.json")
    return f"{', '.join(parts)} in [bold]{escape(output)}[/bold]"


def print_summary(manifest: dict[str, Any], output: str, console: Console | None = None) -> int:
    """Print the job's tables; returns the exit status the command should end with: 0, or 1 when
    the job wrote no shard at all (nothing to train on; the manifest and rejects say why)."""
    console = console or Console()
    kind = manifest["kind"]
    totals = Table(title=f"longctx {kind}: records", show_header=True, header_style="bold")
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
    # Books filter documents by a token window; the other jobs only by the row length (the rule column).
    rule_column = "window" if applies_windows(kind) else "rule"
    for col in ("stage", "length", rule_column, "docs", "rows", "tokens", "packing", "dropped", "shards"):
        stages.add_column(col, justify="left" if col in ("stage", rule_column) else "right")
    for name, s in manifest["stages"].items():
        stages.add_row(
            name, f"{s['length']:,}", stage_rule(kind, s["min_tokens"], s["max_tokens"]), f"{s['documents']:,}", f"{s['rows']:,}",
            f"{s['tokens']:,}", f"{100 * s['packing_efficiency']:.2f}%", f"{s['dropped_tail_tokens']:,}", str(len(s["shards"])),
        )
    console.print(stages)
    balance = "OK" if manifest["read"] == manifest["kept"] + manifest["rejected_total"] else "MISMATCH"
    console.print(f"read {manifest['read']} = kept {manifest['kept']} + rejected {manifest['rejected_total']}: {balance}")
    if chunks:
        ok = chunks["read"] == chunks["accepted"] + sum(chunks["rejected"].values())
        console.print(f"chunks {chunks['read']} = accepted {chunks['accepted']} + rejected {sum(chunks['rejected'].values())}: {'OK' if ok else 'MISMATCH'}")
    console.print(_outputs_line(manifest, output))
    warning = no_shard_warning(manifest)
    if warning:
        console.print(f"[bold red]WARNING: {escape(warning)}[/bold red]")
        return 1
    return 0
