"""Training batches from the produced shards, read row by row through `curation.shards`.

The order is a seeded permutation per epoch, computed alike by every process of a job: each global
batch is named by its rows (`GlobalRows`), and each process reads only the pieces its own devices
hold (rows over dp x fsdp, sequence columns over sp, whatever the mesh; `global_arrays`). Opening
a stage reads each shard's header only (a few KiB: its metadata and where its rows lie); a row is
read when a batch needs it, from a memory-mapped local file or with a ranged request on an object
store, so a host fetches only its share of the rows and holds only the rows in flight. The
iterator's state (epoch, step) is saved with the checkpoint so a resumed run continues with
exactly the rows an uninterrupted run would have seen.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import jax
import numpy as np

# stage_shard_urls, unfinished_reason and UnfinishedDataError live with the shard format; they are
# imported here too because callers (evals.niah, tests) take them from the trainer's data module.
from curation.shards import (  # noqa: F401
    ShardMetadata,
    ShardReader,
    UnfinishedDataError,
    read_shard_headers,
    stage_shard_urls,
    unfinished_reason,
)
from training.vision import vision_problems

log = logging.getLogger("longctx")

BATCH_COLUMNS = ("input_ids", "segment_ids", "positions", "loss_mask", "vision_mask")
_DTYPES = {"input_ids": np.int32, "segment_ids": np.int32, "positions": np.int32, "loss_mask": np.float32, "vision_mask": np.uint8}


class DataMismatchError(ValueError):
    """The shards were not made for this model (length, tokenizer or vocabulary differ)."""


def _show(value: Any) -> str:
    text = str(value)
    return text[:12] if len(text) == 64 else text  # a sha256 is known by its head


def first_disagreement(named: list[tuple[str, dict[str, Any]]]) -> str | None:
    """`KEY: A has x, B has y` for the first shard whose identity differs from the first one's
    (a key only one of them has counts as a difference: a text shard among vision shards)."""
    if not named:
        return None
    first_url, first = named[0]
    for url, ident in named[1:]:
        for key in [*first, *(k for k in ident if k not in first)]:
            if ident.get(key) != first.get(key):
                return f"{key}: {first_url} has {_show(first.get(key))}, {url} has {_show(ident.get(key))}"
    return None


@dataclass
class StageData:
    """All rows of one stage, across its shards, addressable by a global row index. The shards are
    opened lazily (`ShardReader`): only their headers have been read."""

    shards: list[ShardReader]
    offsets: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.offsets = np.cumsum([0] + [s.num_rows for s in self.shards])

    @classmethod
    def open(cls, data: str, allow_unfinished: bool = False) -> "StageData":
        """The shards of a finished stage folder (see `stage_shard_urls`), refused when they do not
        all share one stage length, tokenizer and vision layout (DataMismatchError). Reads each
        shard's header, before the first step, and no rows."""
        urls = stage_shard_urls(data, allow_unfinished=allow_unfinished)
        if not urls:
            raise FileNotFoundError(f"no shards (*.arrow) under {data}")
        stage = cls([ShardReader(u, h) for u, h in zip(urls, read_shard_headers(urls))])
        stage.check_consistent()
        return stage

    @property
    def urls(self) -> list[str]:
        return [s.url for s in self.shards]

    def identities(self) -> list[tuple[str, dict[str, Any]]]:
        return [(shard.url, shard.metadata.identity()) for shard in self.shards]

    def check_consistent(self) -> None:
        """All shards of one source were made alike: a folder holding shards of two tokenizers (or
        lengths, or vision layouts) would otherwise train on ids that mean different things."""
        problem = first_disagreement(self.identities())
        if problem:
            raise DataMismatchError(f"shards of one data source disagree on {problem}")

    @property
    def num_rows(self) -> int:
        return int(self.offsets[-1])

    @property
    def length(self) -> int:
        return self.shards[0].length

    @property
    def info(self) -> ShardMetadata:
        """What the stage's shards record (they all agree: check_consistent)."""
        return self.shards[0].metadata

    @property
    def metadata(self) -> dict[str, str]:
        """The first shard's schema metadata as stored (prefer `info`, parsed)."""
        return dict(self.info.raw)

    def rows(self, indices: np.ndarray, columns: slice = slice(None)) -> dict[str, np.ndarray]:
        """Rows by global index (any order, repeats allowed), only the sequence `columns` asked
        for, as numpy: each shard holding some of them is read once, for those rows only; the
        others are not touched. Text shards have no vision_mask column: their rows get zeros, so
        text and vision stages mix in one batch."""
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        if indices.size and (indices.min() < 0 or indices.max() >= self.num_rows):
            raise IndexError(f"rows {indices.min()}..{indices.max()} outside the stage's {self.num_rows} rows")
        width = len(range(self.length)[columns])
        out = {name: np.zeros((len(indices), width), _DTYPES[name]) for name in BATCH_COLUMNS}
        which = np.searchsorted(self.offsets, indices, side="right") - 1
        for s in np.unique(which):
            at = np.flatnonzero(which == s)
            got = self.shards[s].read(indices[at] - self.offsets[s], columns)
            for name, value in got.items():
                out[name][at] = value
        return out

    def check_compatible(self, seq_len: int, vocab_size: int, tokenizer_sha256: str | None = None,
                         vision: dict | None = None) -> None:
        """Refuse shards that do not fit the model, naming what differs. `vision` is the vision
        layout the model reads (`training.vision.expected_vision_metadata`; None: text only)."""
        problems = []
        for shard in self.shards:
            meta = shard.metadata
            problems += vision_problems(meta, vision)
            if meta.length != seq_len:
                problems.append(f"stage length {meta.length} != model sequence length {seq_len}")
            vocab = meta.tokenizer.get("vocab_size")
            if vocab is not None and vocab > vocab_size:
                problems.append(f"tokenizer vocab size {vocab} > model vocab size {vocab_size}")
            if tokenizer_sha256 and meta.tokenizer.get("sha256") != tokenizer_sha256:
                problems.append(f"tokenizer sha256 {str(meta.tokenizer.get('sha256', '?'))[:12]} != expected {tokenizer_sha256[:12]}")
            if problems:
                break
        if problems:
            raise DataMismatchError("shards do not match the model config: " + "; ".join(sorted(set(problems))))


@dataclass(frozen=True)
class GlobalRows:
    """One global batch, named by its rows: `picks[k] = (source, row)` is the batch's k-th row, row
    `row` of `sources[source]`. Every process computes the same picks; reading is left to
    `read`, which copies only the rows and sequence columns asked for."""

    sources: Sequence[StageData]
    picks: np.ndarray  # [rows, 2] int64

    def __len__(self) -> int:
        return len(self.picks)

    def read(self, positions: np.ndarray | slice = slice(None), columns: slice = slice(None)) -> dict[str, np.ndarray]:
        """The batch's rows at `positions` (in batch order), sequence `columns` only, as numpy:
        each source is read once, for its rows among them."""
        picks = self.picks[positions]
        if len(self.sources) == 1:
            return self.sources[0].rows(picks[:, 1], columns)
        width = len(range(self.sources[0].length)[columns])
        out = {name: np.zeros((len(picks), width), _DTYPES[name]) for name in BATCH_COLUMNS}
        for s in np.unique(picks[:, 0]):
            at = np.flatnonzero(picks[:, 0] == s)
            for name, value in self.sources[s].rows(picks[at, 1], columns).items():
                out[name][at] = value
        return out


def _piece_positions(index: tuple[slice, ...], accum: int, micro: int) -> np.ndarray:
    """Rows of the global batch inside the [accum, micro] part of a device's `index` (slices into
    the [accum, micro, seq] step array), in order: micro-batch a holds rows a*micro .. a*micro+micro-1."""
    steps = np.arange(accum)[index[0]]
    rows = np.arange(micro)[index[1]]
    return (steps[:, None] * micro + rows[None, :]).reshape(-1)


def global_arrays(rows: GlobalRows, sharding: jax.sharding.Sharding, accum: int = 1) -> dict[str, jax.Array]:
    """The step's global arrays, [accum, rows / accum, seq] per column, laid out by `sharding`.

    Each process materialises only the pieces its own devices hold, whatever the mesh: rows over
    dp x fsdp, sequence columns over sp, a replica (tp) read once and shared by its devices. The
    values are those of the whole batch split into `accum` consecutive micro-batches, on one
    process or many."""
    micro = len(rows) // accum
    if micro * accum != len(rows):
        raise ValueError(f"{len(rows)} rows do not split into {accum} micro-batches")
    seq = rows.sources[0].length
    shape = (accum, micro, seq)
    pieces: dict[tuple, dict[str, np.ndarray]] = {}

    def piece(index: tuple[slice, ...]) -> dict[str, np.ndarray]:
        key = tuple(s.indices(n) for s, n in zip(index, shape))
        if key not in pieces:
            flat = rows.read(_piece_positions(index, accum, micro), index[2])
            pieces[key] = {k: v.reshape(len(range(*key[0])), len(range(*key[1])), *v.shape[1:]) for k, v in flat.items()}
        return pieces[key]

    return {name: jax.make_array_from_callback(shape, sharding, lambda index, name=name: piece(index)[name])
            for name in BATCH_COLUMNS}


class BatchIterator:
    """Deterministic, resumable global batches: `next_rows` names each; the trainer reads a
    process's pieces of it through `global_arrays` (`GlobalRows.read` gives any rows as numpy)."""

    def __init__(self, data: StageData, global_batch: int, seed: int = 0, epoch: int = 0, step: int = 0):
        if global_batch > data.num_rows:
            raise ValueError(f"global batch {global_batch} > {data.num_rows} rows in the data")
        self.data = data
        self.global_batch = global_batch
        self.seed = seed
        self.epoch = epoch
        self.step = step  # batches already taken in this epoch

    @property
    def batches_per_epoch(self) -> int:
        return self.data.num_rows // self.global_batch  # the last partial batch is skipped

    def _order(self) -> np.ndarray:
        return np.random.default_rng([self.seed, self.epoch]).permutation(self.data.num_rows)

    def next_rows(self) -> GlobalRows:
        """The next global batch, by name; nothing is read."""
        if self.step >= self.batches_per_epoch:
            self.epoch, self.step = self.epoch + 1, 0
        start = self.step * self.global_batch
        rows = self._order()[start : start + self.global_batch]
        self.step += 1
        return GlobalRows([self.data], np.stack([np.zeros_like(rows), rows], axis=1))

    def state(self) -> dict[str, int]:
        return {"seed": self.seed, "epoch": self.epoch, "step": self.step, "global_batch": self.global_batch}

    def restore(self, state: dict[str, int], allow_change: bool = False) -> None:
        """Continue where `state` left off. A state saved with another batch size or seed is refused,
        unless `allow_change` (a resume with allow_config_change): then the rows already taken in
        the epoch are skipped in whole new batches, in the new seed's order."""
        if state["global_batch"] != self.global_batch or state["seed"] != self.seed:
            if not allow_change:
                raise ValueError(f"iterator state {state} was saved for another batch size or seed")
            taken = int(state["step"]) * int(state["global_batch"])
            self.epoch, self.step = int(state["epoch"]), -(-taken // self.global_batch)
            return
        self.epoch, self.step = int(state["epoch"]), int(state["step"])


def parse_data_mix(spec: str) -> list[tuple[str, float]]:
    """`out/books/32k` or a mixture `out/books/32k@0.8,out/qa/32k@0.2` -> [(folder, weight)]."""
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    mix = []
    for part in parts:
        path, _, weight = part.rpartition("@") if "@" in part else (part, "", "1")
        try:
            mix.append((path, float(weight)))
        except ValueError:
            mix.append((path, math.nan))
    # nan and inf are floats too: a nan weight would pass `<= 0` and break every quota after it.
    if not mix or any(not (math.isfinite(w) and w > 0) for _, w in mix):
        raise ValueError(f"bad data spec {spec!r}: expected FOLDER or FOLDER@WEIGHT,FOLDER@WEIGHT with finite weights > 0")
    total = sum(w for _, w in mix)
    return [(p, w / total) for p, w in mix]


class MixtureIterator:
    """Global batches drawn from several stages' shards (e.g. books and QA of one length) in fixed
    proportions: after t batches, source i has given round(w_i * B * t) rows, so the mix is exact
    over time and deterministic. Each source is read in its own seeded order, epoch after epoch;
    the state (batches taken, each source's epoch and position) is saved with the checkpoint."""

    def __init__(self, sources: list[tuple[StageData, float]], global_batch: int, seed: int = 0):
        self.sources = sources
        self.global_batch = global_batch
        self.seed = seed
        self.taken = 0
        self.cursors = [[0, 0] for _ in sources]  # (epoch, position) per source

    def _quota(self, t: int) -> list[int]:
        return [round(w * self.global_batch * t) for _, w in self.sources]

    def _take(self, i: int, n: int) -> list[tuple[int, int]]:
        data = self.sources[i][0]
        epoch, pos = self.cursors[i]
        out = []
        while n:
            order = np.random.default_rng([self.seed, i, epoch]).permutation(data.num_rows)
            k = min(n, data.num_rows - pos)
            out += [(i, int(r)) for r in order[pos : pos + k]]
            n, pos = n - k, pos + k
            if pos == data.num_rows:
                epoch, pos = epoch + 1, 0
        self.cursors[i] = [epoch, pos]
        return out

    def next_rows(self) -> GlobalRows:
        """The next global batch, by name; nothing is read."""
        before, after = self._quota(self.taken), self._quota(self.taken + 1)
        counts = [a - b for a, b in zip(after, before)]
        counts[-1] += self.global_batch - sum(counts)  # rounding never changes the batch size
        picked = [row for i, n in enumerate(counts) for row in self._take(i, n)]
        self.taken += 1
        return GlobalRows([data for data, _ in self.sources], np.array(picked, dtype=np.int64).reshape(-1, 2))

    def state(self) -> dict:
        return {"seed": self.seed, "global_batch": self.global_batch, "taken": self.taken, "cursors": self.cursors}

    def restore(self, state: dict, allow_change: bool = False) -> None:
        """Continue where `state` left off; see BatchIterator.restore for `allow_change` (another
        number of sources cannot be mapped: the mixture then starts from its beginning)."""
        same = state.get("global_batch") == self.global_batch and state.get("seed") == self.seed
        if not same or len(state.get("cursors", [])) != len(self.sources):
            if not allow_change:
                raise ValueError(f"iterator state {state} was saved for another mixture, batch size or seed")
            if len(state.get("cursors", [])) != len(self.sources):
                log.warning("the data mixture changed on resume: reading it from its beginning")
                return
            self.taken = int(state["taken"]) * int(state["global_batch"]) // self.global_batch
            self.cursors = [list(c) for c in state["cursors"]]
            return
        self.taken, self.cursors = int(state["taken"]), [list(c) for c in state["cursors"]]


def stage_folders(folder: str) -> list[str]:
    """The stage sub-folders of a data job's output folder: those its manifest lists (in its
    order), else those holding shards."""
    import json

    import fsspec

    fs, root = fsspec.core.url_to_fs(folder)
    root = root.rstrip("/")
    if fs.exists(f"{root}/manifest.json"):
        with fs.open(f"{root}/manifest.json", "r") as fh:
            stages = list((json.load(fh).get("stages") or {}))
        if stages:
            return stages
    return sorted({f.rstrip("/").rsplit("/", 2)[-2] for f in fs.glob(f"{root}/*/*.arrow")})


def check_data_folders(spec: str) -> None:
    """Each folder of a data spec holds a stage's shards: a job's output folder (its stages in
    sub-folders) or a folder without shards is refused in one line (DataMismatchError), before
    the trainer makes its run folder. Reads folder listings only."""
    import fsspec

    for path, _ in parse_data_mix(spec):
        fs, root = fsspec.core.url_to_fs(path)
        if fs.glob(root.rstrip("/") + "/*.arrow"):
            continue
        stages = stage_folders(path)
        if stages:
            shown = ", ".join(f"{path.rstrip('/')}/{s}" for s in stages)
            raise DataMismatchError(f"{path} is a job output; pass one of its stage folders: {shown}")
        where = "does not exist" if not fs.exists(root) else "holds no shards (*.arrow)"
        raise DataMismatchError(f"data folder {path} {where}: pass a stage folder of a data job's output, e.g. out/books/4k")


def open_sources(spec: str, allow_unfinished: bool = False) -> list[tuple[StageData, float]]:
    """Each source of a data spec, opened (headers only), with its weight; a source refused by
    `StageData.open` is named in the error."""
    sources = []
    for path, weight in parse_data_mix(spec):
        try:
            sources.append((StageData.open(path, allow_unfinished), weight))
        except DataMismatchError as err:
            raise DataMismatchError(f"{path}: {err}") from None
    return sources


def check_plan_data(stages: list[tuple[str, str, int, bool]]) -> None:
    """The data of every stage of a plan, (name, data spec, seq_len, allow_unfinished) each, before
    the first stage trains: every folder holds finished shards of the stage's length, and all
    stages share one tokenizer (a stage's params start from the previous stage's, so its ids must
    mean the same). Reads folder listings and shard headers only. What depends on the model (its
    vocabulary and vision layout) is checked when each stage starts."""
    tokenizers = []
    for name, spec, seq_len, allow_unfinished in stages:
        try:
            check_data_folders(spec)
            opened = [(path, data) for (path, _), (data, _) in zip(parse_data_mix(spec), open_sources(spec, allow_unfinished))]
            for path, data in opened:
                if data.length != seq_len:
                    raise DataMismatchError(f"{path}: stage length {data.length} != the stage's seq_len {seq_len}")
        except (ValueError, OSError) as err:  # no folder, unfinished or truncated shards, another length
            raise DataMismatchError(f"stage {name}: {err}") from None
        tokenizers += [(f"stage {name} ({path})", data.info.tokenizer_identity()) for path, data in opened]
    problem = first_disagreement(tokenizers)
    if problem:
        raise DataMismatchError(f"the plan's stages were made with different tokenizers: {problem}")


def open_batches(spec: str, global_batch: int, seed: int, seq_len: int, vocab_size: int, tokenizer_sha256: str | None,
                 vision: dict | None = None, allow_unfinished: bool = False):
    """The training batches of a data spec (one stage folder, or a weighted mixture), checked
    against the model first (every source: a mixture never pairs shards the model cannot read),
    and the sources against each other (one tokenizer for all)."""
    mix = parse_data_mix(spec)
    sources = open_sources(spec, allow_unfinished)
    for (data, _), (path, _) in zip(sources, mix):
        try:
            data.check_compatible(seq_len, vocab_size, tokenizer_sha256, vision)
        except DataMismatchError as err:
            raise DataMismatchError(f"{path}: {err}") from None
    # Across sources only the tokenizer must agree: text and vision sources differ in layout by design.
    problem = first_disagreement([(data.urls[0], data.info.tokenizer_identity()) for data, _ in sources])
    if problem:
        raise DataMismatchError(f"data sources disagree on {problem}")
    if len(sources) == 1:
        return sources[0][0], BatchIterator(sources[0][0], global_batch, seed=seed)
    return sources[0][0], MixtureIterator(sources, global_batch, seed=seed)
