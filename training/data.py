"""Training batches from the produced shards, read through `curation.shards` (memory-mapped).

The order is a seeded permutation per epoch, computed alike by every process of a job: each global
batch is named by its rows (`GlobalRows`), and each process reads only the pieces its own devices
hold (rows over dp x fsdp, sequence columns over sp, whatever the mesh; `global_arrays`). The
iterator's state (epoch, step) is saved with the checkpoint so a resumed run continues with
exactly the rows an uninterrupted run would have seen.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import fsspec
import jax
import numpy as np

from curation.shards import Shard, join_url, read_shard
from training.vision import vision_problems

log = logging.getLogger("longctx")

BATCH_COLUMNS = ("input_ids", "segment_ids", "positions", "loss_mask", "vision_mask")
# What the pipelines name a shard: train-00003-of-00017.arrow (curation.shards.shard_name).
SHARD_NAME = re.compile(r"^(?P<split>.+)-(?P<index>\d+)-of-(?P<count>\d+)\.arrow$")


class DataMismatchError(ValueError):
    """The shards were not made for this model (length, tokenizer or vocabulary differ)."""


class UnfinishedDataError(ValueError):
    """The data folder is not the finished output of a job (no manifest, shards missing)."""


def _basename(url: str) -> str:
    return url.rstrip("/").rpartition("/")[2]


def unfinished_reason(names: list[str]) -> str | None:
    """Why shard file names are not a whole `-of-N` set (None when they are: every index 0..N-1
    of one N, each once). Pure, so the rule is tested on names alone."""
    if not names:
        return "no shards (*.arrow)"
    parsed = [SHARD_NAME.match(n) for n in names]
    odd = [n for n, m in zip(names, parsed) if m is None]
    if odd:
        return f"{odd[0]} is not named like a job's shard (train-00000-of-00004.arrow), so nothing says the set is whole"
    counts = sorted({int(m["count"]) for m in parsed})
    if len(counts) > 1:
        return f"shards of different sets are mixed (-of-{counts[0]:05d} and -of-{counts[-1]:05d})"
    count = counts[0]
    indices = {int(m["index"]) for m in parsed}
    if indices != set(range(count)) or len(names) != count:
        missing = sorted(set(range(count)) - indices)
        where = f", missing {', '.join(f'{i:05d}' for i in missing[:3])}{' ...' if len(missing) > 3 else ''}" if missing else ""
        return f"only {len(indices & set(range(count)))} of {count} shards (*-of-{count:05d}.arrow) are there{where}"
    return None


def stage_shard_urls(data: str, allow_unfinished: bool = False) -> list[str]:
    """Shards of a stage folder (`OUT/32k`), in order, only from a finished output: the shards the
    job's manifest lists (`OUT/manifest.json`, written last), or, without a manifest, a whole
    `-of-N` set. A killed job leaves some shards and no manifest: that is refused with the reason
    (UnfinishedDataError) unless `allow_unfinished`, which trains on what is there and says so
    loudly. An empty or missing folder gives []."""
    data = data.rstrip("/")
    parent, _, stage = data.rpartition("/")
    fs, path = fsspec.core.url_to_fs(join_url(parent or ".", "manifest.json"))
    if fs.exists(path):
        with fs.open(path, "r") as fh:
            manifest = json.load(fh)
        if stage in manifest.get("stages", {}):
            urls = [join_url(parent, s["path"]) for s in manifest["stages"][stage]["shards"]]
            return _present_listed(data, urls, allow_unfinished)
    fs, path = fsspec.core.url_to_fs(data)
    files = sorted(fs.glob(path.rstrip("/") + "/*.arrow"))
    urls = [fs.unstrip_protocol(f) if "://" in data else f for f in files]
    if not urls:
        return []
    reason = unfinished_reason([_basename(u) for u in urls])
    if reason:
        _refuse_or_warn(f"{data} is not a finished output: no manifest.json in {parent or '.'} lists stage {stage!r} and {reason}",
                        allow_unfinished)
    return urls


def _present_listed(data: str, urls: list[str], allow_unfinished: bool) -> list[str]:
    """The manifest's shards, refusing (or, allowed, skipping) any that are gone."""
    fs, path = fsspec.core.url_to_fs(data)
    present = {_basename(f) for f in fs.glob(path.rstrip("/") + "/*.arrow")}
    missing = [u for u in urls if _basename(u) not in present]
    if missing:
        _refuse_or_warn(f"{data}: {len(missing)} of the {len(urls)} shards its manifest lists are missing, e.g. {missing[0]}",
                        allow_unfinished)
    return [u for u in urls if _basename(u) in present]


def _refuse_or_warn(problem: str, allow_unfinished: bool) -> None:
    if not allow_unfinished:
        raise UnfinishedDataError(f"{problem}; rerun the data job to finish it, or set allow_unfinished_data: true "
                                  "(--allow-unfinished-data) to train on these shards anyway")
    log.warning("!!! TRAINING ON UNFINISHED DATA (allow_unfinished_data): %s", problem)


def shard_identity(metadata: dict[str, str]) -> dict[str, Any]:
    """What every shard of one data source must share: the stage length and the tokenizer
    (sha256, vocabulary, special ids), the vision id layout and the schema version. Job-specific
    keys (config hash, stage name) may differ: shards of two jobs with one tokenizer go together."""
    vision = json.loads(metadata.get("longctx.vision") or "{}")
    return {
        "stage length": metadata.get("longctx.length"),
        **tokenizer_identity(metadata),
        **{f"vision {k}": v for k, v in sorted(vision.items())},
        "schema version": metadata.get("longctx.schema_version"),
    }


def tokenizer_identity(metadata: dict[str, str]) -> dict[str, Any]:
    """The tokenizer a shard was made with, as far as the ids depend on it (its name may be spelt
    differently for the same file, so it is not compared)."""
    tok = json.loads(metadata.get("longctx.tokenizer") or "{}")
    return {f"tokenizer {k}": tok.get(k) for k in ("sha256", "vocab_size", "bos_id", "eos_id", "pad_id")}


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
    """All rows of one stage, across its shards, addressable by a global row index."""

    shards: list[Shard]
    urls: list[str] = field(default_factory=list)  # where each shard came from, to name it in errors
    offsets: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.offsets = np.cumsum([0] + [s.num_rows for s in self.shards])
        if not self.urls:
            self.urls = [f"shard {i}" for i in range(len(self.shards))]

    @classmethod
    def open(cls, data: str, allow_unfinished: bool = False) -> "StageData":
        """The shards of a finished stage folder (see `stage_shard_urls`), refused when they do not
        all share one stage length, tokenizer and vision layout (DataMismatchError)."""
        urls = stage_shard_urls(data, allow_unfinished)
        if not urls:
            raise FileNotFoundError(f"no shards (*.arrow) under {data}")
        stage = cls([read_shard(u) for u in urls], urls)
        stage.check_consistent()
        return stage

    def identities(self) -> list[tuple[str, dict[str, Any]]]:
        return [(url, shard_identity(shard.metadata)) for url, shard in zip(self.urls, self.shards)]

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
    def metadata(self) -> dict[str, str]:
        return self.shards[0].metadata

    def rows(self, indices: np.ndarray, columns: slice = slice(None)) -> dict[str, np.ndarray]:
        """Gather rows by global index, only the sequence `columns` asked for (copies only those
        from the memory-mapped shards). Text shards have no vision_mask column: their rows get
        zeros, so text and vision stages mix in one batch."""
        which = np.searchsorted(self.offsets, indices, side="right") - 1
        out = {}
        for name in BATCH_COLUMNS:
            out[name] = np.stack([self._column(self.shards[s], name)[i - self.offsets[s], columns] for s, i in zip(which, indices)])
        return out

    @staticmethod
    def _column(shard: Shard, name: str) -> np.ndarray:
        if name == "vision_mask" and name not in shard.arrays:
            return np.broadcast_to(np.zeros((), np.uint8), shard.arrays["input_ids"].shape)
        return shard.arrays[name]

    def check_compatible(self, seq_len: int, vocab_size: int, tokenizer_sha256: str | None = None,
                         vision: dict | None = None) -> None:
        """Refuse shards that do not fit the model, naming what differs. `vision` is the vision
        layout the model reads (`training.vision.expected_vision_metadata`; None: text only)."""
        problems = []
        for shard in self.shards:
            problems += vision_problems(shard.metadata, vision)
            if shard.length != seq_len:
                problems.append(f"stage length {shard.length} != model sequence length {seq_len}")
            tok = json.loads(shard.metadata.get("longctx.tokenizer", "{}"))
            if tok.get("vocab_size") is not None and tok["vocab_size"] > vocab_size:
                problems.append(f"tokenizer vocab size {tok['vocab_size']} > model vocab size {vocab_size}")
            if tokenizer_sha256 and tok.get("sha256") != tokenizer_sha256:
                problems.append(f"tokenizer sha256 {tok.get('sha256', '?')[:12]} != expected {tokenizer_sha256[:12]}")
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
        """The batch's rows at `positions` (in batch order), sequence `columns` only, as numpy."""
        picks = self.picks[positions]
        if len(self.sources) == 1:
            return self.sources[0].rows(picks[:, 1], columns)
        parts = [self.sources[s].rows(np.array([r]), columns) for s, r in picks]
        return {k: np.concatenate([p[k] for p in parts]) for k in BATCH_COLUMNS}

    def host_slice(self, process_index: int, process_count: int) -> dict[str, np.ndarray]:
        """Process `process_index`'s equal share of consecutive rows (the layout of a mesh whose
        batch axes span the processes in order, each process holding whole rows)."""
        if len(self) % process_count:
            raise ValueError(f"global batch {len(self)} does not divide over {process_count} hosts")
        per_host = len(self) // process_count
        return self.read(slice(process_index * per_host, (process_index + 1) * per_host))


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
    """Deterministic, resumable global batches: `next_rows` names each (what the trainer reads
    through `global_arrays`); iterating yields a host's slice of each as numpy."""

    def __init__(self, data: StageData, global_batch: int, seed: int = 0, epoch: int = 0, step: int = 0,
                 process_index: int | None = None, process_count: int | None = None):
        if global_batch > data.num_rows:
            raise ValueError(f"global batch {global_batch} > {data.num_rows} rows in the data")
        self.data = data
        self.global_batch = global_batch
        self.seed = seed
        self.epoch = epoch
        self.step = step  # batches already taken in this epoch
        self.process_index, self.process_count = process_index, process_count  # None: this process's, when iterated

    @property
    def batches_per_epoch(self) -> int:
        return self.data.num_rows // self.global_batch  # the last partial batch is skipped

    def _order(self) -> np.ndarray:
        return np.random.default_rng([self.seed, self.epoch]).permutation(self.data.num_rows)

    def __iter__(self) -> "BatchIterator":
        return self

    def next_rows(self) -> GlobalRows:
        """The next global batch, by name; nothing is read."""
        if self.step >= self.batches_per_epoch:
            self.epoch, self.step = self.epoch + 1, 0
        start = self.step * self.global_batch
        rows = self._order()[start : start + self.global_batch]
        self.step += 1
        return GlobalRows([self.data], np.stack([np.zeros_like(rows), rows], axis=1))

    def __next__(self) -> dict[str, np.ndarray]:
        return _host_rows(self.next_rows(), self.process_index, self.process_count)

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


def _host_rows(rows: GlobalRows, process_index: int | None, process_count: int | None) -> dict[str, np.ndarray]:
    index = jax.process_index() if process_index is None else process_index
    count = jax.process_count() if process_count is None else process_count
    return rows.host_slice(index, count)


def parse_data_mix(spec: str) -> list[tuple[str, float]]:
    """`out/books/32k` or a mixture `out/books/32k@0.8,out/qa/32k@0.2` -> [(folder, weight)]."""
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    mix = []
    for part in parts:
        path, _, weight = part.rpartition("@") if "@" in part else (part, "", "1")
        mix.append((path, float(weight)))
    if not mix or any(w <= 0 for _, w in mix):
        raise ValueError(f"bad data spec {spec!r}: expected FOLDER or FOLDER@WEIGHT,FOLDER@WEIGHT with weights > 0")
    total = sum(w for _, w in mix)
    return [(p, w / total) for p, w in mix]


class MixtureIterator:
    """Global batches drawn from several stages' shards (e.g. books and QA of one length) in fixed
    proportions: after t batches, source i has given round(w_i * B * t) rows, so the mix is exact
    over time and deterministic. Each source is read in its own seeded order, epoch after epoch;
    the state (batches taken, each source's epoch and position) is saved with the checkpoint."""

    def __init__(self, sources: list[tuple[StageData, float]], global_batch: int, seed: int = 0,
                 process_index: int | None = None, process_count: int | None = None):
        self.sources = sources
        self.global_batch = global_batch
        self.seed = seed
        self.taken = 0
        self.cursors = [[0, 0] for _ in sources]  # (epoch, position) per source
        self.process_index, self.process_count = process_index, process_count  # None: this process's, when iterated

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

    def __iter__(self) -> "MixtureIterator":
        return self

    def next_rows(self) -> GlobalRows:
        """The next global batch, by name; nothing is read."""
        before, after = self._quota(self.taken), self._quota(self.taken + 1)
        counts = [a - b for a, b in zip(after, before)]
        counts[-1] += self.global_batch - sum(counts)  # rounding never changes the batch size
        picked = [row for i, n in enumerate(counts) for row in self._take(i, n)]
        self.taken += 1
        return GlobalRows([data for data, _ in self.sources], np.array(picked, dtype=np.int64).reshape(-1, 2))

    def __next__(self) -> dict[str, np.ndarray]:
        return _host_rows(self.next_rows(), self.process_index, self.process_count)

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


def open_batches(spec: str, global_batch: int, seed: int, seq_len: int, vocab_size: int, tokenizer_sha256: str | None,
                 vision: dict | None = None, allow_unfinished: bool = False):
    """The training batches of a data spec (one stage folder, or a weighted mixture), checked
    against the model first (every source: a mixture never pairs shards the model cannot read),
    and the sources against each other (one tokenizer for all)."""
    mix = parse_data_mix(spec)
    sources = []
    for path, weight in mix:
        try:
            sources.append((StageData.open(path, allow_unfinished), weight))
        except DataMismatchError as err:
            raise DataMismatchError(f"{path}: {err}") from None
    for (data, _), (path, _) in zip(sources, mix):
        try:
            data.check_compatible(seq_len, vocab_size, tokenizer_sha256, vision)
        except DataMismatchError as err:
            raise DataMismatchError(f"{path}: {err}") from None
    # Across sources only the tokenizer must agree: text and vision sources differ in layout by design.
    problem = first_disagreement([(data.urls[0], tokenizer_identity(data.metadata)) for data, _ in sources])
    if problem:
        raise DataMismatchError(f"data sources disagree on {problem}")
    if len(sources) == 1:
        return sources[0][0], BatchIterator(sources[0][0], global_batch, seed=seed)
    return sources[0][0], MixtureIterator(sources, global_batch, seed=seed)
