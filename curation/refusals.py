"""JobRefused: a job stopped by its own input while the pipeline runs (an unreadable evaluation
record, evaluation documents with no n-gram, a VQGAN that gives another grid of codes). A plain
ValueError, so every command reports it as `longctx <job>: error: ...`; it lives here, below the
pipelines, because the pure functions in curation raise it too. pipelines/refusals.py keeps
Beam's traceback of it out of the log."""

from __future__ import annotations


class JobRefused(ValueError):
    """Input or settings found wrong inside a running pipeline; the job stops with this message."""
