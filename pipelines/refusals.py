"""A job stopped by its own input while the pipeline runs: an unreadable evaluation record, a VQGAN
that gives another grid of codes. The command says why in one line (JobRefused is a ValueError,
which every command reports as `longctx <job>: error: ...`); Beam would first log the same
exception with its traceback, which says nothing more to the user, so `quiet_refusals` drops that
log record while a job runs. Any other exception (a bug) keeps Beam's traceback."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from curation.refusals import JobRefused

# The logger Beam's DoFnRunner reports a failing element on (`_reraise_augmented`).
BEAM_ELEMENT_LOGGER = "apache_beam.runners.common"


class _DropRefusals(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], JobRefused))


@contextmanager
def quiet_refusals() -> Iterator[None]:
    """While the block runs, Beam does not log a JobRefused's traceback (the caller reports it)."""
    logger = logging.getLogger(BEAM_ELEMENT_LOGGER)
    dropper = _DropRefusals()
    logger.addFilter(dropper)
    try:
        yield
    finally:
        logger.removeFilter(dropper)
