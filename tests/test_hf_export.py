"""`longctx convert --to-hf` (training.hf.export_checkpoint): the folder holds the weights, the
tokenizer the training data was made with and a generation config, loads in transformers offline,
and decodes greedily exactly as `longctx generate` does on the checkpoint."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest
import yaml

from curation.packing import RowArrays
from curation.shards import read_shard, write_shard
from curation.tokenize import load_tokenizer
from longctx.cli import main
from tests.conftest import DEMO_TOKENIZER
from training import checkpoint as ckpt
from training.config import TrainConfig
from training.hf import export_checkpoint
from training.model import ModelConfig, init_params
from training.train import train

PROMPT = "It is a truth universally acknowledged"
NEW = 8
HF_FILES = {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json", "tokenizer_config.json"}


@pytest.fixture(scope="module")
def hf():
    """(torch, transformers): loading the export needs a CPU torch."""
    return pytest.importorskip("torch"), pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def run_final(book_shards, tmp_path_factory) -> Path:
    """A real run: a one-layer model trained two steps on the sample books' shards (demo tokenizer).
    A wide init makes its greedy picks vary from token to token."""
    run = tmp_path_factory.mktemp("hf-export") / "run"
    result = train(TrainConfig(
        data=str(book_shards / "s128"), out=str(run), model="toy", model_overrides={"num_layers": 1, "initializer_range": 0.5},
        seq_len=128, global_batch=2, steps=2, mesh="dp=1,fsdp=1,tp=1,sp=1", attention="dense", progress=False,
        checkpoint_every=100))
    return Path(result["final"])


@pytest.fixture(scope="module")
def shard_record(book_shards) -> dict:
    """What the training shards record about their tokenizer."""
    return json.loads(read_shard(str(sorted((book_shards / "s128").glob("*.arrow"))[0])).metadata["longctx.tokenizer"])


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "longctx" and r.levelno >= logging.WARNING]


def _longctx_generate(checkpoint: Path, capsys) -> tuple[list[int], str]:
    capsys.readouterr()
    assert main(["generate", "--checkpoint", str(checkpoint), "--prompt", PROMPT, "--tokenizer", DEMO_TOKENIZER,
                 "--max-new-tokens", str(NEW)]) == 0
    lines = capsys.readouterr().out.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("new token ids:"))
    ids = [int(x) for x in lines[at].split(":", 1)[1].strip().split(",")]
    text = "\n".join(lines[at + 1:])
    assert text.startswith("output: "), text  # generate prints the decoded new tokens after this label
    return ids, text.removeprefix("output: ")


def test_export_decodes_like_longctx_generate(run_final, shard_record, tmp_path, capsys, caplog, hf):
    torch, transformers = hf
    out = export_checkpoint(run_final, tmp_path / "hf")  # the tokenizer found from the run alone
    assert HF_FILES <= {p.name for p in out.iterdir()}
    assert _warnings(caplog) == []

    tok = transformers.AutoTokenizer.from_pretrained(out, local_files_only=True)
    model = transformers.AutoModelForCausalLM.from_pretrained(out, local_files_only=True).float().eval()
    enc = tok(PROMPT, return_tensors="pt")
    # The prompt `longctx generate` feeds: BOS, then the text's tokens.
    demo, _ = load_tokenizer(DEMO_TOKENIZER)
    assert enc.input_ids[0].tolist() == [shard_record["bos_id"]] + demo.encode(PROMPT, add_special_tokens=False).ids
    with torch.no_grad():
        generated = model.generate(**enc, max_new_tokens=NEW, do_sample=False)
    hf_ids = generated[0, enc.input_ids.shape[1]:].tolist()
    hf_text = tok.decode(hf_ids, skip_special_tokens=True)

    ids, text = _longctx_generate(run_final, capsys)
    assert len(set(ids)) > 3, ids  # a model whose picks vary: equal lists mean equal computations
    assert hf_ids == ids
    assert text.strip() == hf_text.strip() and hf_text.strip()


def test_token_ids_come_from_the_data_not_from_a_guess(run_final, shard_record, tmp_path, hf):
    _, transformers = hf
    out = export_checkpoint(run_final, tmp_path / "hf")
    tok = transformers.AutoTokenizer.from_pretrained(out, local_files_only=True)
    generation = transformers.GenerationConfig.from_pretrained(out, local_files_only=True)
    config = transformers.AutoConfig.from_pretrained(out, local_files_only=True)
    recorded = (shard_record["bos_id"], shard_record["eos_id"], shard_record["pad_id"])
    assert (generation.bos_token_id, generation.eos_token_id, generation.pad_token_id) == recorded
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == recorded
    assert (config.bos_token_id, config.eos_token_id, config.pad_token_id) == recorded
    assert tok.model_max_length == config.max_position_embeddings == 128  # the run's seq_len
    assert json.loads((out / "tokenizer_config.json").read_text())["tokenizer_class"] == "PreTrainedTokenizerFast"


def test_no_tokenizer_found_writes_no_ids_and_says_which_flag(run_final, tmp_path, caplog, hf):
    _, transformers = hf
    bare = shutil.copytree(run_final, tmp_path / "copied-away")  # no run folder around it
    out = export_checkpoint(bare, tmp_path / "hf")
    assert {p.name for p in out.iterdir()} == {"config.json", "model.safetensors"}
    config = json.loads((out / "config.json").read_text())
    assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (None, None, None)
    # transformers would default a config without these keys to LLaMA-2's 1/2.
    assert transformers.AutoConfig.from_pretrained(out, local_files_only=True).bos_token_id is None
    [warning] = _warnings(caplog)
    assert "no tokenizer" in warning and "--tokenizer SPEC" in warning and "\n" not in warning

    caplog.clear()
    out = export_checkpoint(bare, tmp_path / "hf-explicit", tokenizer=DEMO_TOKENIZER)
    assert HF_FILES <= {p.name for p in out.iterdir()} and _warnings(caplog) == []
    generation = transformers.GenerationConfig.from_pretrained(out, local_files_only=True)
    tok = transformers.AutoTokenizer.from_pretrained(out, local_files_only=True)
    assert (generation.bos_token_id, generation.eos_token_id) == (tok.bos_token_id, tok.eos_token_id) == (1, 2)


def test_moved_data_is_reported(run_final, tmp_path, caplog):
    run = tmp_path / "run"
    shutil.copytree(run_final, run / "checkpoints" / "final")
    (run / "config.yaml").write_text(yaml.safe_dump({"data": str(tmp_path / "gone" / "s128")}))
    out = export_checkpoint(run / "checkpoints" / "final", tmp_path / "hf")
    assert not (out / "tokenizer.json").exists()
    [warning] = _warnings(caplog)
    assert "cannot be read" in warning and "gone" in warning and "--tokenizer SPEC" in warning


def test_bad_inputs_are_refused_with_the_reason(run_final, tmp_path):
    from tokenizers import Tokenizer, models

    other = Tokenizer(models.WordLevel({"<unk>": 0, "<s>": 1, "</s>": 2, "a": 3}, unk_token="<unk>"))
    other.save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(ValueError, match="not the one the training data was made with.*vocab_size 4 != 32000"):
        export_checkpoint(run_final, tmp_path / "hf", tokenizer=str(tmp_path / "tokenizer.json"))
    with pytest.raises(FileNotFoundError, match="not a longctx params checkpoint"):
        export_checkpoint(tmp_path / "no-checkpoint", tmp_path / "hf")
    assert not (tmp_path / "hf").exists()  # refused before anything is written


def test_a_tokenizer_folder_brings_its_chat_template(run_final, tmp_path, caplog, hf):
    """The same vocabulary as an HF tokenizer folder with a chat template: written with its
    template, and a one-line note that it is another file than the data's."""
    _, transformers = hf
    demo, _ = load_tokenizer(DEMO_TOKENIZER)
    template = "{% for m in messages %}{{ m['role'] | upper }}: {{ m['content'] }} {% endfor %}ASSISTANT:"
    transformers.PreTrainedTokenizerFast(tokenizer_object=demo, bos_token="<s>", eos_token="</s>",
                                         chat_template=template).save_pretrained(tmp_path / "tok")
    out = export_checkpoint(run_final, tmp_path / "hf", tokenizer=str(tmp_path / "tok"))
    [warning] = _warnings(caplog)
    assert "another file" in warning
    tok = transformers.AutoTokenizer.from_pretrained(out, local_files_only=True)
    chat = tok.apply_chat_template([{"role": "user", "content": "Who?"}], tokenize=False)
    assert chat == "USER: Who? ASSISTANT:"
    assert json.loads((out / "tokenizer_config.json").read_text())["chat_template"] == template


def _small_run(folder: Path, record: dict, vocab_size: int, manifest_config: dict | None = None) -> tuple[Path, dict]:
    """A run folder as the trainer leaves it (config.yaml naming its data, checkpoints/final) around
    a one-layer model, with one shard recording `record` as its tokenizer (and the data job's
    manifest config): (checkpoint, params)."""
    write_shard(str(folder / "data"), "s8", 0, 1, RowArrays.empty(1, 8), {"tokenizer": record})
    if manifest_config is not None:
        (folder / "data" / "manifest.json").write_text(json.dumps({"config": manifest_config}))
    run = folder / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({"data": str(folder / "data" / "s8")}))
    config = ModelConfig(num_layers=1, hidden_size=16, intermediate_size=32, num_heads=2, num_kv_heads=1, vocab_size=vocab_size)
    # Random weights drawn on the host: compiling init_params' initialisers takes seconds on CPU.
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: rng.normal(0, 0.02, s.shape).astype(np.float32),
                          jax.eval_shape(lambda: init_params(config, jax.random.key(0))))
    return ckpt.save_params(run / "checkpoints" / "final", config, params), params


def test_data_without_bos_gives_a_tokenizer_without_bos(tmp_path, hf):
    _, transformers = hf
    demo, info = load_tokenizer(DEMO_TOKENIZER)
    final, _ = _small_run(tmp_path, info.as_metadata(), info.vocab_size, {"add_bos": False, "add_eos": True})
    out = export_checkpoint(final, tmp_path / "hf")
    tok = transformers.AutoTokenizer.from_pretrained(out, local_files_only=True)
    assert tok(PROMPT).input_ids == demo.encode(PROMPT, add_special_tokens=False).ids  # no BOS, as in the data
    assert tok.bos_token_id == info.bos_id  # still named: it is the data's


def test_recorded_ids_are_written_when_the_tokenizer_cannot_be_loaded(tmp_path, caplog, hf):
    """Shards that record a tokenizer file of another machine: the ids come from their record."""
    _, transformers = hf
    record = {"name": "/elsewhere/tokenizer.json", "sha256": "0" * 64, "vocab_size": 64, "bos_id": 5, "eos_id": 6, "pad_id": 7}
    final, params = _small_run(tmp_path, record, 64)

    out = export_checkpoint(final, tmp_path / "hf")
    generation = transformers.GenerationConfig.from_pretrained(out, local_files_only=True)
    assert (generation.bos_token_id, generation.eos_token_id, generation.pad_token_id) == (5, 6, 7)
    assert json.loads((out / "config.json").read_text())["eos_token_id"] == 6
    assert not (out / "tokenizer.json").exists()
    [warning] = _warnings(caplog)
    assert "/elsewhere/tokenizer.json" in warning and "cannot be loaded" in warning and "--tokenizer SPEC" in warning
    np.testing.assert_array_equal(  # and the weights are there
        transformers.AutoModelForCausalLM.from_pretrained(out, local_files_only=True).model.embed_tokens.weight.detach().numpy(),
        np.asarray(params["embed_tokens"]["embedding"]))

    # A tokenizer with more ids than the model embeds is refused.
    bare = shutil.copytree(final, tmp_path / "bare")
    with pytest.raises(ValueError, match="has 32000 ids but the model only 64"):
        export_checkpoint(bare, tmp_path / "hf-big", tokenizer=DEMO_TOKENIZER)
