"""The trainer reads only finished, self-consistent data: a killed job's partial output and a
folder mixing tokenizers are refused before the first step, with the reason on one line."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from curation.packing import RowArrays
from curation.shards import write_shard
from tests.conftest import toy_rows
from training.config import TrainConfig
from training.data import DataMismatchError, UnfinishedDataError, open_batches, stage_shard_urls, unfinished_reason
from training.train import train

LENGTH, VOCAB = 64, 1000
TOKENIZER = {"name": "toy", "sha256": "ab" * 32, "vocab_size": VOCAB, "bos_id": 1, "eos_id": 2, "pad_id": None}


def _rows(n: int, seed: int, length: int = LENGTH) -> RowArrays:
    return toy_rows(np.random.default_rng(seed), n, length, VOCAB, f"d{seed}")


def _shard(out, index: int, count: int, stage: str = "s64", length: int = LENGTH, **tokenizer) -> str:
    write_shard(str(out), stage, index, count, _rows(8, index, length), {"tokenizer": {**TOKENIZER, **tokenizer}})
    return str(out / stage / f"train-{index:05d}-of-{count:05d}.arrow")


def _open(spec: str, **kw):
    return open_batches(spec, 4, 0, LENGTH, VOCAB, None, None, **kw)


def test_unfinished_reason_accepts_only_a_whole_set():
    assert unfinished_reason([f"train-{i:05d}-of-00003.arrow" for i in range(3)]) is None
    assert "only 4 of 17 shards" in unfinished_reason([f"train-{i:05d}-of-00017.arrow" for i in range(4)])
    assert "missing 00001" in unfinished_reason(["train-00000-of-00002.arrow", "train-00002-of-00002.arrow"])
    assert "not named like" in unfinished_reason(["train-00000-of-00001.arrow", "extra.arrow"])
    assert "different sets" in unfinished_reason(["train-00000-of-00001.arrow", "train-00000-of-00002.arrow",
                                                  "train-00001-of-00002.arrow"])


def test_a_killed_jobs_shards_are_refused_unless_allowed(tmp_path, caplog):
    out = tmp_path / "books"
    for i in range(4):  # 4 of 17 shards, and no manifest.json: what a killed books job leaves
        _shard(out, i, 17)
    with pytest.raises(UnfinishedDataError) as err:
        _open(str(out / "s64"))
    message = str(err.value)
    assert "\n" not in message and "not a finished output" in message and "only 4 of 17 shards" in message
    assert "allow_unfinished_data: true" in message and "--allow-unfinished-data" in message

    # The override trains on them, and says so loudly.
    config = TrainConfig(data=str(out / "s64"), out=str(tmp_path / "run"), seq_len=LENGTH, global_batch=4, steps=1,
                         mesh="dp=1,fsdp=1,tp=1,sp=1", attention="dense", progress=False,
                         model_overrides={"vocab_size": VOCAB, "num_layers": 1}, allow_unfinished_data=True)
    with caplog.at_level(logging.WARNING, logger="longctx"):
        result = train(config)
    assert result["steps"] == 1 and np.isfinite(result["history"][0]["loss"])
    assert any("UNFINISHED DATA" in r.getMessage() and "only 4 of 17" in r.getMessage() for r in caplog.records)
    with pytest.raises(UnfinishedDataError):
        train(config.model_copy(update={"allow_unfinished_data": False, "out": str(tmp_path / "run2")}))


def test_a_manifest_is_trusted_and_its_missing_shards_are_refused(tmp_path):
    out = tmp_path / "books"
    paths = [_shard(out, i, 2) for i in range(2)]
    listed = [{"path": f"s64/train-{i:05d}-of-00002.arrow", "rows": 8} for i in range(2)]
    (out / "manifest.json").write_text(json.dumps({"stages": {"s64": {"shards": listed}}}))
    _shard(out, 0, 5)  # a stray file the finished job did not write: not read
    assert stage_shard_urls(str(out / "s64")) == paths
    data, _ = _open(str(out / "s64"))
    assert data.num_rows == 16
    (out / "s64" / "train-00001-of-00002.arrow").unlink()
    with pytest.raises(UnfinishedDataError, match="1 of the 2 shards its manifest lists are missing, e.g. .*train-00001-of-00002"):
        _open(str(out / "s64"))


@pytest.mark.parametrize("key, change", [("tokenizer sha256", {"sha256": "cd" * 32}), ("tokenizer eos_id", {"eos_id": 3}),
                                         ("tokenizer vocab_size", {"vocab_size": 900})])
def test_shards_of_one_folder_must_share_the_tokenizer(tmp_path, key, change):
    out = tmp_path / "books"
    first = _shard(out, 0, 2)
    second = _shard(out, 1, 2, **change)
    with pytest.raises(DataMismatchError) as err:
        _open(str(out / "s64"))
    message = str(err.value)
    assert "\n" not in message and f"disagree on {key}: {first} has" in message and f"{second} has" in message


def test_shards_of_one_folder_must_share_the_stage_length(tmp_path):
    out = tmp_path / "books"
    _shard(out, 0, 2)
    _shard(out, 1, 2, length=128)
    with pytest.raises(DataMismatchError, match="disagree on stage length: .*00000-of-00002.arrow has 64, .*00001-of-00002.arrow has 128"):
        _open(str(out / "s64"))


def test_sources_of_a_mixture_must_share_the_tokenizer(tmp_path):
    books = _shard(tmp_path / "books", 0, 1)
    qa = _shard(tmp_path / "qa", 0, 1, sha256="cd" * 32)
    with pytest.raises(DataMismatchError, match=f"data sources disagree on tokenizer sha256: {books} has abababababab, {qa} has cdcdcdcdcdcd"):
        _open(f"{tmp_path / 'books' / 's64'}@0.5,{tmp_path / 'qa' / 's64'}@0.5")
    _shard(tmp_path / "qa2", 0, 1)
    data, batches = _open(f"{tmp_path / 'books' / 's64'}@0.5,{tmp_path / 'qa2' / 's64'}@0.5")
    assert batches.next_rows().read()["input_ids"].shape == (4, LENGTH)
