"""Config mistakes as one line: pydantic's multi-line validation report -> the place and the key;
an unreadable or malformed YAML file -> its path (and line) and what is wrong.

Every config of the project (a data job's, a train config, a stage plan, its eval section) is a
pydantic model that forbids unknown keys; a user who mistypes one should read one sentence
(`stages[1].overrides: unknown key 'step' (did you mean 'steps'?)`), not a traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

Location = tuple[Any, ...]


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load's loader, except that a mapping naming a key twice is an error (safe_load
    keeps the last value without a word: `seq_len: 128` then `seq_len: 256` trained at 256)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, Any] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor`: keys given beside it override its keys
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node.start_mark)
                except TypeError:  # an unhashable key: SafeLoader's own error says it
                    continue
                if first is not key_node.start_mark:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key!r} given twice, first on line {first.line + 1}", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def _load(stream: Any) -> Any:
    """yaml.safe_load, refusing duplicate keys."""
    return yaml.load(stream, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)


def read_config_yaml(path: str | Path, what: str = "the config") -> Any:
    """The parsed YAML of a user's config file (safe_load), or a one-line ValueError: `PATH: cannot
    read the config (No such file or directory)`, `PATH:4:4: not valid YAML (mapping values are not
    allowed here)`. Whether it is the mapping it should be is the caller's check."""
    try:
        with open(path) as fh:
            return _load(fh)
    except OSError as err:
        raise ValueError(f"{path}: cannot read {what} ({err.strerror or err})") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        place = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        raise ValueError(f"{place}: not valid YAML ({getattr(err, 'problem', None) or type(err).__name__})") from None


def read_inline_yaml(text: str, what: str = "") -> Any:
    """A flag's value parsed as inline YAML (safe_load), or a one-line ValueError, after `what: `
    when given: `not valid YAML (expected ',' or '}', but got '<stream end>')`."""
    try:
        return _load(text)
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or type(err).__name__
        raise ValueError(f"{what + ': ' if what else ''}not valid YAML ({problem})") from None


def did_you_mean(name: object, known: list[str]) -> str:
    """` (did you mean 'x'?)` for the known name closest to a mistyped one, or "" when none is close."""
    close = difflib.get_close_matches(str(name), known, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def where(loc: Location) -> str:
    """('stages', 0, 'overrides') -> `stages[0].overrides`."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else str(part)
    return text


def validation_line(err: ValidationError, origin: Callable[[Location], Location] | None = None,
                    known_keys: Callable[[Location], list[str]] | None = None) -> str:
    """The first error of `err` as one line; `(and N more)` when there are others.

    `origin(loc)` places an error's location in the user's file when the model was validated from
    a dict merged from several sections (a stage's TrainConfig from `base` and its `overrides`).
    `known_keys(place)` lists the keys allowed at a place, for a `did you mean` hint."""
    # A typo'd key first: it also explains the `missing` error of the key it was meant to be.
    errors = sorted(err.errors(), key=lambda e: e["type"] != "extra_forbidden")
    first = errors[0]
    loc = tuple(first["loc"])
    if origin is not None:
        loc = origin(loc)
    if first["type"] == "extra_forbidden":
        place, key = loc[:-1], loc[-1]
        text = f"unknown key {key!r}" + did_you_mean(key, known_keys(place) if known_keys else [])
    elif first["type"] == "missing":
        place, text = loc[:-1], f"missing key {loc[-1]!r}"
    elif not first["loc"]:  # a check across keys (a model validator): its message names them; the input is the whole config
        place, text = loc, first["msg"].removeprefix("Value error, ")
    else:
        place = loc
        got = repr(first["input"])
        # A check of ours (a field validator) raised the message; pydantic's "Value error, " is noise.
        text = first["msg"].removeprefix("Value error, ")
        if f"got {got}" not in text:  # a message that already says "got <value>" says it once
            text += f" (got {got if len(got) <= 60 else got[:57] + '...'})"
    if len(errors) > 1:
        text += f" (and {len(errors) - 1} more)"
    return f"{where(place)}: {text}" if place else text


def top_level_keys(model: type) -> Callable[[Location], list[str]]:
    """`known_keys` for a flat config model: its fields at the top level, nothing deeper."""
    return lambda place: list(model.model_fields) if not place else []
