"""`longctx eval niah --checkpoint HF_DIR` uses the folder's own tokenizer when --tokenizer is not
given (issue 19)."""

from __future__ import annotations

import json

import pytest

from longctx.cli import main
from tests.conftest import DEMO_TOKENIZER
from tests.test_ux_generate import IS, _always
from training import checkpoint as ckpt
from training.hf import export_checkpoint


def test_niah_on_an_hf_folder_uses_its_own_tokenizer(tmp_path, capsys, sample_books):
    config, params = _always(IS)
    hf = export_checkpoint(ckpt.save_params(tmp_path / "toy", config, params), tmp_path / "hf", tokenizer=DEMO_TOKENIZER)
    book = tmp_path / "book.txt"
    book.write_text(sample_books[3]["text"][:20_000])
    out = tmp_path / "niah"
    assert main(["eval", "niah", "--checkpoint", str(hf), "--haystack", str(book), "--lengths", "256",
                 "--depths", "50%", "--max-new-tokens", "3", "--out", str(out)]) == 0
    (record,) = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert record["answer"] == "isisis"  # the model's ids decoded by the folder's (the demo) tokenizer
    # A params checkpoint records no tokenizer: still a one-line reason.
    with pytest.raises(SystemExit):
        main(["eval", "niah", "--checkpoint", str(tmp_path / "toy"), "--lengths", "256", "--out", str(out)])
    assert "--checkpoint needs --tokenizer" in capsys.readouterr().err.splitlines()[-1]
