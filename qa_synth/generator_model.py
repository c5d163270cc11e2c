"""Where a transformers generator model comes from: moved to curation/hf_models.py (evaluation
loads models the same way and must not depend on qa_synth); kept here for existing imports."""

from __future__ import annotations

from curation.hf_models import dequantised_copy, resolve_generator

__all__ = ["dequantised_copy", "resolve_generator"]
