"""A config mistake is one line that shows the value given once: pydantic's own messages do not
quote it, so `validation_line` adds `(got ...)`; a check of ours that already quotes it (the
quality rules' "got 'strict'") is not followed by the same value again."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from curation.config_errors import validation_line
from curation.quality import QualityRules


class _Job(BaseModel):
    model_config = ConfigDict(extra="forbid")
    quality: QualityRules = Field(default_factory=QualityRules)
    chunk: int = Field(1000, ge=1)


def _line(data: dict) -> str:
    with pytest.raises(ValidationError) as err:
        _Job.model_validate(data)
    return validation_line(err.value)


def test_a_message_that_quotes_the_value_is_not_followed_by_it_again():
    line = _line({"quality": "strict"})
    assert line == "quality: quality must be a YAML mapping of rule thresholds, e.g. '{min_words: 100}', got 'strict'"


def test_a_message_without_the_value_gets_it_once():
    assert _line({"chunk": 0}) == "chunk: Input should be greater than or equal to 1 (got 0)"


class _Bounded(BaseModel):
    steps: int = Field(10, ge=10)


def test_a_value_that_only_appears_inside_the_message_is_still_shown():
    with pytest.raises(ValidationError) as err:
        _Bounded.model_validate({"steps": 1})  # "1" is inside "10": still shown
    assert validation_line(err.value) == "steps: Input should be greater than or equal to 10 (got 1)"
    with pytest.raises(ValidationError) as err:
        _Bounded.model_validate({"steps": "1x"})
    assert validation_line(err.value).endswith("(got '1x')")
