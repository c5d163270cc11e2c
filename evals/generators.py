"""The models under test of every `longctx eval` command: prompt token ids in, greedy answer ids
out, and the model's tokenizer (`NiahTokenizer`: encode/decode, end-of-answer ids, chat template).

- `FlaxGenerator`: our LLaMA (a params checkpoint, or HF LLaMA weights converted on load) with
  KV-cache decoding and the prefill through ring attention over `sp` (training/generate.py).
- `HFGenerator`: any local transformers causal LM (a folder, or `package:DIST/model.gguf`).

Both decode a batch of prompts of different lengths at once (`generate_batch`), and each row's
greedy answer is the one the prompt gets alone (`generate`): ours pads each row on the right and
decodes every row at its own position; transformers pads on the left with an attention mask.
Each row stops at its own end-of-answer id; the batch stops when all rows have.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tokenizers import Tokenizer

from curation.tokenize import load_tokenizer


@dataclass(frozen=True)
class NiahTokenizer:
    """What the harness needs of a tokenizer: encode/decode, BOS, end-of-answer ids, and the
    model's chat template when it has one (a transformers tokenizer, used only to render it)."""

    tok: Tokenizer
    name: str
    sha256: str
    bos_id: int | None
    eos_ids: tuple[int, ...]
    chat: Any | None = field(default=None, compare=False)

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=True)

    def encode_continuation(self, text: str) -> list[int]:
        """`text` tokenized as it is when it follows other text: SentencePiece-style tokenizers
        prepend a word marker to every separately encoded string ("\\nThe" alone gives
        ["▁", "<0x0A>", "The"], after a word ["<0x0A>", "The"]); encoding it after an anchor word
        and dropping the anchor's tokens gives the in-context ids."""
        anchor = self.encode("a")
        ids = self.encode("a" + text)
        return ids[len(anchor):] if ids[: len(anchor)] == anchor else self.encode(text)


# A Hugging Face model folder's own tokenizer files (any one makes the folder a tokenizer spec).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")


def folder_tokenizer(checkpoint: str) -> str | None:
    """The model folder itself as the tokenizer spec when it holds its own tokenizer files (a
    Hugging Face LLaMA folder, or one `longctx convert --to-hf` wrote), else None: a longctx
    params checkpoint records no tokenizer."""
    folder = Path(checkpoint)
    if folder.is_dir() and any((folder / name).is_file() for name in TOKENIZER_FILES):
        return str(folder)
    return None


def load_niah_tokenizer(spec: str) -> NiahTokenizer:
    """A tokenizer spec as for `longctx books`; a model folder with a chat template also gets it."""
    tok, info = load_tokenizer(spec)
    chat, eos = None, [info.eos_id] if info.eos_id is not None else []
    folder = Path(spec).expanduser()
    if folder.is_dir() and (folder / "tokenizer_config.json").is_file():
        from transformers import AutoTokenizer

        hf = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
        if getattr(hf, "chat_template", None):
            chat = hf
            if hf.eos_token_id is not None:  # the end-of-turn token (<|im_end|> for ChatML)
                eos.append(hf.eos_token_id)
    return NiahTokenizer(tok, info.name, info.sha256, info.bos_id, tuple(dict.fromkeys(eos)), chat)


class Generator(Protocol):
    """A model under test: prompt token ids -> answer token ids (greedy)."""

    name: str

    def generate(self, prompt_ids: Sequence[int], max_new_tokens: int) -> list[int]: ...


def generate_all(generator: Any, prompts: Sequence[Sequence[int]], max_new_tokens: int) -> list[list[int]]:
    """Answers of a batch of prompts: through the generator's `generate_batch` when it has one
    (ours and transformers'), else one prompt at a time (an endpoint, a test's scripted model)."""
    batch = getattr(generator, "generate_batch", None)
    if batch is not None:
        return batch(prompts, max_new_tokens)
    return [generator.generate(p, max_new_tokens) for p in prompts]


def trim_at_eos(ids: Sequence[int], eos_ids: Sequence[int]) -> list[int]:
    """`ids` up to and including the first end-of-answer id (what a row decoded alone stops at)."""
    out = []
    for token in ids:
        out.append(int(token))
        if token in eos_ids:
            break
    return out


@dataclass
class FlaxGenerator:
    """Our LLaMA (a params checkpoint, or HF LLaMA weights converted on load) with KV-cache decoding.
    `sp` > 0 builds a mesh whose sp axis shards the prefill (ring attention) and the cache; sp = 1
    still prefills blockwise, so memory stays linear in the context length."""

    config: Any
    params: Any
    eos_ids: tuple[int, ...] = ()
    sp: int = 1
    name: str = "flax"
    q_chunk: int = 512
    kv_chunk: int = 512

    def __post_init__(self) -> None:
        from training.generate import place_params
        from training.mesh import make_mesh

        self.mesh = make_mesh(f"sp={self.sp}")
        self.params = place_params(self.params, self.mesh)

    def generate(self, prompt_ids: Sequence[int], max_new_tokens: int) -> list[int]:
        return self.generate_batch([prompt_ids], max_new_tokens)[0]

    def generate_batch(self, prompts: Sequence[Sequence[int]], max_new_tokens: int) -> list[list[int]]:
        from training.generate import generate_batch

        return generate_batch(self.config, self.params, [list(p) for p in prompts], max_new_tokens,
                              eos_id=self.eos_ids or None, mesh=self.mesh, q_chunk=self.q_chunk, kv_chunk=self.kv_chunk)


@dataclass
class HFGenerator:
    """Any local transformers causal LM (a folder, or `package:DIST/model.gguf` as for the QA
    pipeline), greedy, on CPU unless `device` says otherwise; remote code is never run."""

    path: str
    device: str = "cpu"
    dtype: str = "float32"
    eos_ids: tuple[int, ...] = ()
    name: str = ""

    def __post_init__(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        from curation.hf_models import resolve_generator

        self.folder, gguf = resolve_generator(self.path)
        kwargs = {"gguf_file": gguf} if gguf else {}
        self.model = AutoModelForCausalLM.from_pretrained(self.folder, dtype=getattr(torch, self.dtype),
                                                          trust_remote_code=False, **kwargs).to(self.device).eval()
        self.name = self.name or Path(self.path).name
        if not self.eos_ids:
            eos = self.model.generation_config.eos_token_id
            self.eos_ids = tuple(eos if isinstance(eos, list) else [] if eos is None else [eos])

    def generate(self, prompt_ids: Sequence[int], max_new_tokens: int) -> list[int]:
        return self.generate_batch([prompt_ids], max_new_tokens)[0]

    def generate_batch(self, prompts: Sequence[Sequence[int]], max_new_tokens: int) -> list[list[int]]:
        """Prompts padded on the left (so every row's next token comes at the same index), the
        padding masked out; transformers derives each row's positions from the mask."""
        import torch

        if not prompts or any(len(p) == 0 for p in prompts):
            raise ValueError("generation needs at least one prompt token per prompt")
        pad = self.eos_ids[0] if self.eos_ids else 0  # finished rows are filled with it; never attended to
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), pad, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            ids[row, width - len(prompt):] = torch.tensor(list(prompt))
            mask[row, width - len(prompt):] = 1
        with torch.no_grad():
            out = self.model.generate(ids.to(self.device), attention_mask=mask.to(self.device),
                                      max_new_tokens=max_new_tokens, do_sample=False,
                                      eos_token_id=list(self.eos_ids) or None, pad_token_id=pad)
        return [trim_at_eos(row[width:].tolist(), self.eos_ids) for row in out]
