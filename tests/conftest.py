"""Shared fixtures: the real sample books, the real demo tokenizer, and corrupt inputs made here."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest
from hypothesis import settings

# Property tests draw the same examples on every run (a fixed seed derived from each test), and no
# example is failed for being slow on a loaded 2-core CI machine: the suite never depends on luck
# or wall-clock time. `HYPOTHESIS_PROFILE=explore` draws fresh examples locally.
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
settings.register_profile("explore", deadline=None, max_examples=500)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# Eight JAX devices on one CPU for the sequence-parallel tests; must be set before JAX is imported.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
# The suite runs on CPU devices. With libtpu installed (dev extra, for `longctx plan`'s TPU
# compiles, which work under this setting too) JAX would otherwise probe for a TPU in every process.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# gcsfs probes every bucket's type over gRPC (60 s against the GCS emulator) unless this is set
# before gcsfs is first imported, by whichever test imports it first.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

REPO = Path(__file__).resolve().parents[1]
SAMPLE_BOOKS = REPO / "data" / "sample" / "books.jsonl.gz"
DEMO_TOKENIZER = "package:mistral_common/data/tokenizer.model.v1"


@pytest.fixture(scope="session", autouse=True)
def _cache_dir(tmp_path_factory):
    # Tests convert the tokenizer into their own cache, never the user's.
    os.environ.setdefault("LONGCTX_CACHE", str(tmp_path_factory.mktemp("longctx-cache")))


@pytest.fixture(scope="session")
def sample_books() -> list[dict]:
    with gzip.open(SAMPLE_BOOKS, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


@pytest.fixture(scope="session")
def demo_tokenizer():
    from curation.tokenize import load_tokenizer

    return load_tokenizer(DEMO_TOKENIZER)


def write_corrupt_inputs(folder: Path, good_text: str) -> dict[str, str]:
    """One file per kind of bad input, plus good records mixed in. Returns {record id: expected reason}."""
    folder.mkdir(parents=True, exist_ok=True)
    expected = {}
    lines = [
        json.dumps({"id": "good-1", "text": good_text}).encode(),
        b'{"id": "malformed", "text": "unterminated',
        json.dumps({"id": "no-text", "body": "x"}).encode(),
        json.dumps({"id": "empty", "text": "   \n\t  "}).encode(),
        json.dumps({"id": "nul", "text": "some\x00binary\x00stuff" * 10}).encode(),
        b'{"id": "bad-utf8", "text": "caf\xe9 au lait"}',
        json.dumps({"id": "number", "text": 42}).encode(),
        json.dumps({"id": "dup-of-good-1", "text": good_text}).encode(),
        json.dumps({"id": "tiny", "text": "Too short to be a book."}).encode(),
    ]
    (folder / "mixed.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    expected.update({"malformed": "malformed_json", "no-text": "missing_field", "empty": "empty", "nul": "binary",
                     "number": "wrong_type", "dup-of-good-1": "duplicate", "tiny": "no_stage"})
    # Records whose line is unreadable are identified as file:line.
    expected["mixed.jsonl:2"] = expected.pop("malformed")
    expected["mixed.jsonl:6"] = "invalid_utf8"
    # A gzip archive cut in half: the records before the cut are read, the rest is one corrupt_file reject.
    full = gzip.compress(b"\n".join(json.dumps({"id": f"gz-{i}", "text": good_text[i * 50 :]}).encode() for i in range(4)))
    (folder / "truncated.jsonl.gz").write_bytes(full[: len(full) // 2])
    # A binary blob named like a text book.
    (folder / "blob.txt").write_bytes(bytes(range(128)) * 40)
    return expected


@pytest.fixture(scope="session")
def book_shards(tmp_path_factory):
    """Shards of two small stages (128 and 256 tokens) made from the sample books, for the trainer."""
    from pipelines.config import BooksConfig
    from pipelines.launch import run_books

    out = tmp_path_factory.mktemp("train-data") / "books"
    config = BooksConfig.model_validate({
        "inputs": [str(SAMPLE_BOOKS)], "output": str(out), "tokenizer": DEMO_TOKENIZER,
        "stages": ["s128=128:100000-250000", "s256=256:100000-250000"],
    })
    manifest = run_books(config, ["--direct_running_mode=in_memory"])
    assert manifest["stages"]["s128"]["rows"] > 500
    return out


def cli_error(argv: list[str], capsys) -> list[str]:
    """`longctx ARGV` refused as a user mistake: exit code 2, the command's usage block, no
    traceback; returns its stderr lines (the last is `longctx CMD: error: ...`)."""
    from longctx.cli import main

    capsys.readouterr()  # what earlier calls printed is not this call's
    with pytest.raises(SystemExit) as err:
        main(argv)
    assert err.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines and lines[0].startswith("usage: longctx "), lines
    assert "Traceback" not in "\n".join(lines), lines
    return lines


def stage_rows(out: Path, manifest: dict) -> dict[str, list[tuple]]:
    """Every stage's shards as comparable values, in shard order: per shard its `doc_ids`,
    `doc_starts` and every column as lists. For comparing the rows of two jobs, not their files'
    bytes: a shard's metadata holds the config hash, which covers the inputs' paths."""
    from curation.shards import read_shard

    rows = {}
    for stage, info in manifest["stages"].items():
        views = [read_shard(str(Path(out) / shard["path"])) for shard in info["shards"]]
        rows[stage] = [(v.doc_ids, v.doc_starts, {k: a.tolist() for k, a in sorted(v.arrays.items())}) for v in views]
    return rows


def write_toy_stage(out: Path, name: str = "s64", length: int = 64, vocab: int = 1000, shards: int = 2,
                    rows: int = 16, seed: int = 0) -> str:
    """A stage folder of random one-document rows (toy tokenizer record), for trainer tests that
    need real shards but not real text; returns the stage folder."""
    import numpy as np

    from curation.shards import write_shard

    rng = np.random.default_rng(seed)
    meta = {"tokenizer": {"name": "toy", "sha256": "ab" * 32, "vocab_size": vocab, "bos_id": 1, "eos_id": 2, "pad_id": None}}
    for i in range(shards):
        write_shard(str(out), name, i, shards, toy_rows(rng, rows, length, vocab, f"d{i}"), meta)
    return str(Path(out) / name)


def toy_rows(rng, n: int, length: int, vocab: int, doc_prefix: str):
    """`n` rows of one random document each (ids from `rng`), documents named `{doc_prefix}-{row}`."""
    import numpy as np

    from curation.packing import RowArrays

    rows = RowArrays.empty(n, length)
    rows.input_ids[:] = rng.integers(3, vocab, (n, length))
    rows.segment_ids[:] = 1
    rows.positions[:] = np.arange(length)
    rows.loss_mask[:] = 1.0
    rows.doc_ids, rows.doc_starts = [[f"{doc_prefix}-{r}"] for r in range(n)], [[0] for _ in range(n)]
    return rows
