"""Context stages: which documents feed which sequence length, and how long documents are cut."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

from curation.units import parse_count  # the one parser of `32k`-style lengths; importable from here too


# A stage name is a folder under the job's output: no path separators, no leading dot ("..").
_STAGE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
# Folders written beside the stages, and by whom.
RESERVED_STAGE_NAMES = {"rejects": "the job writes its own rejects/ folder",
                        "inspect": "`longctx inspect` writes its plots to inspect/"}


def check_stage_name(name: object) -> None:
    """Raise ValueError unless `name` is safe as a folder name under the output."""
    if not isinstance(name, str) or not _STAGE_NAME.match(name) or len(name) > 100:
        raise ValueError(
            f"stage name {name!r} is not allowed: use letters, digits, '.', '_' or '-', "
            "starting with a letter or digit (at most 100 characters)"
        )
    if name in RESERVED_STAGE_NAMES:
        raise ValueError(f"stage name {name!r} is reserved ({RESERVED_STAGE_NAMES[name]})")


@dataclass(frozen=True)
class Stage:
    """A context stage: rows of exactly `length` tokens, fed by documents whose token count is
    in [min_tokens, max_tokens) (max_tokens None = unbounded)."""

    name: str
    length: int
    min_tokens: int = 0
    max_tokens: int | None = None

    def __post_init__(self) -> None:
        check_stage_name(self.name)
        if self.length <= 0:
            raise ValueError(f"stage {self.name!r}: length must be positive, got {self.length}")
        if self.min_tokens < 0 or (self.max_tokens is not None and self.max_tokens < 0):
            raise ValueError(f"stage {self.name!r}: a token count is never negative, got window [{self.min_tokens}, {self.max_tokens})")
        if self.max_tokens is not None and self.max_tokens <= self.min_tokens:
            raise ValueError(f"stage {self.name!r}: empty window [{self.min_tokens}, {self.max_tokens})")

    def accepts(self, num_tokens: int) -> bool:
        return num_tokens >= self.min_tokens and (self.max_tokens is None or num_tokens < self.max_tokens)


# The LWM-Text stages (the LWM paper, arXiv 2402.08268); the 32K window is ours, the release does
# not publish it.
LWM_STAGES: dict[str, Stage] = {
    s.name: s
    for s in (
        Stage("32k", 32_768, 10_000, 100_000),
        Stage("128k", 131_072, 100_000, 200_000),
        Stage("256k", 262_144, 200_000, 500_000),
        Stage("512k", 524_288, 500_000, 1_000_000),
        Stage("1m", 1_048_576, 1_000_000, None),
    )
}

# The short rungs below 32K (the vision recipe's 1K images and 8K video, a 4K warm-up). They have
# no length window: every document feeds them, a longer one cut into L-token windows. The vision
# jobs never apply a window anyway; a books job that wants one names it inline (name=L:min-max).
SHORT_STAGES: dict[str, Stage] = {
    s.name: s for s in (Stage(f"{k}k", k * 1024) for k in (1, 2, 4, 8, 16))
}

# Every stage a bare name picks: the power-of-two ladder 1k .. 1m.
KNOWN_STAGES: dict[str, Stage] = {**SHORT_STAGES, **LWM_STAGES}

def catalog_stages(catalog: dict[str, tuple[int, int, int | None]]) -> dict[str, Stage]:
    """A config's `stage_catalog` (name -> (length, min_tokens, max_tokens)) as stages, which a bare
    name then picks before the built-in ladder's. A catalog entry may give a built-in name its own
    window (configs/books/demo.yaml's `4k` takes 100K-200K-token books), but not another length:
    `4k: {length: 8192}` would build 8,192-token rows in a folder named 4k, and `--stages 4k`
    would mean another length than everywhere else; that is refused in one line."""
    stages = {}
    for name, (length, min_tokens, max_tokens) in catalog.items():
        try:
            stage = Stage(name, length, min_tokens, max_tokens)
        except ValueError as err:
            raise ValueError(f"stage_catalog: {err}") from None
        built_in = KNOWN_STAGES.get(name)
        if built_in is not None and built_in.length != length:
            raise ValueError(f"stage_catalog: {name!r} is a built-in stage of length {built_in.length:,}, and a catalog entry "
                             f"may change its window but not its length (got {length:,}): give a stage of length {length:,} "
                             "another name")
        stages[name] = stage
    return stages


# `name=L:min-max`, `name=L:min-` and `name=L:min` (max optional). The name is checked by Stage
# itself (check_stage_name); any name is matched here so that a bad one gets that message.
_INLINE = re.compile(r"^(?P<name>[^=]*)=(?P<length>\d+[kKmM]?):(?P<min>\d+[kKmM]?)(?:-(?P<max>\d+[kKmM]?)?)?$")
INLINE_FORM = "name=L:min-max (max optional: name=L:min), e.g. tiny=4096:1000-20000"


def parse_stage(item: str, known: dict[str, Stage]) -> Stage:
    """One stage spec: a known name (`4k`, `32k`, a stage_catalog name) or an inline definition.
    Raises ValueError with a one-line message saying what would have been accepted."""
    if item in known:
        return known[item]
    match = _INLINE.match(item)
    if match:
        return Stage(
            match["name"],
            parse_count(match["length"]),
            parse_count(match["min"]),
            parse_count(match["max"]) if match["max"] else None,
        )
    names = ", ".join(sorted(known, key=lambda n: (known[n].length, n)))
    if "=" in item:
        raise ValueError(f"stage {item!r} is not {INLINE_FORM}")
    raise ValueError(f"unknown stage {item!r}: known are {names}; or define one as {INLINE_FORM}")


def parse_stage_list(spec: str | list[str], known: dict[str, Stage] | None = None) -> list[Stage]:
    """`4k,32k,128k` picks known stages (`known`, default KNOWN_STAGES); `tiny=4096:1000-20000`
    (name=L:min-max, max optional) defines one inline. Window bounds are plain token counts; k/m
    suffixes scale by 1024."""
    known = KNOWN_STAGES if known is None else known
    items = spec.split(",") if isinstance(spec, str) else [s for part in spec for s in part.split(",")]
    stages = [parse_stage(item, known) for item in (i.strip() for i in items) if item]
    if not stages:  # a job without stages would read everything only to reject it all as no_stage
        raise ValueError("no stages given: name at least one with --stages (e.g. --stages 32k,128k, or one defined inline "
                         "as tiny=4096:1000-20000) or in a config's `stages:` list")
    names = [s.name for s in stages]
    if len(set(names)) != len(names):
        raise ValueError(f"stage names repeat: {names}")
    return stages


class StagePolicy(str, Enum):
    ALL = "all"  # a document feeds every stage whose window holds it
    FIRST = "first"  # only the first such stage, in configured order


def matching_stages(num_tokens: int, stages: list[Stage], policy: StagePolicy) -> list[Stage]:
    matched = [s for s in stages if s.accepts(num_tokens)]
    return matched[:1] if policy is StagePolicy.FIRST else matched


@dataclass(frozen=True)
class Window:
    start: int
    length: int


def cut_windows(num_tokens: int, length: int, min_tail: int) -> tuple[list[Window], int]:
    """Cut a document into consecutive windows of `length` tokens; the remainder is kept as a
    shorter window if it has at least `min_tail` tokens (or if it is the whole document), else
    dropped. Returns (windows, dropped token count)."""
    if num_tokens <= length:
        return [Window(0, num_tokens)], 0
    full, tail = divmod(num_tokens, length)
    windows = [Window(i * length, length) for i in range(full)]
    if tail >= max(min_tail, 1):
        windows.append(Window(full * length, tail))
        return windows, 0
    return windows, tail


def short_count(n: int | None) -> str:
    """100000 -> 100K, 1000000 -> 1M, None -> inf (for windows in tables)."""
    if n is None:
        return "inf"
    for unit, size in (("M", 1_000_000), ("K", 1_000)):
        if n >= size and n % (size // 10) == 0:
            return f"{n / size:g}{unit}"
    return f"{n:,}"


# What decides which examples a stage takes, per job kind. Only books filter documents by a
# token-length window; the other jobs ignore a stage's window (its min/max are recorded in the
# manifest but never applied) and bound examples by the row length alone.
STAGE_RULES = {
    "images": "pair fits in L",  # a pair goes to every stage whose length holds it (else no_stage)
    "video": "cut to fit L",  # a video is cut at frame boundaries into examples of at most L
    "qa": "cut to fit L",  # runs of adjacent chunks plus their QA turns that fit L
}


def applies_windows(kind: str) -> bool:
    """Whether a job of this kind filters documents by its stages' token windows (books only)."""
    return kind not in STAGE_RULES


def stage_rule(kind: str, min_tokens: int | None, max_tokens: int | None) -> str:
    """The rule a stage of a `kind` job applied, for tables: books' window (`100K-200K`, `any`
    without one); for QA, video and images the row-length rule they actually apply."""
    if not applies_windows(kind):
        return STAGE_RULES[kind]
    if not min_tokens and max_tokens is None:
        return "any length"
    return f"{short_count(min_tokens or 0)}-{short_count(max_tokens)}"
