"""Near-duplicate documents: MinHash signatures over word n-gram shingles, LSH banding, verified
pairs and deterministic clusters. Pure functions; the Beam shells are in `pipelines/dedup.py`.

The method (Broder 1997; banding as in Leskovec et al., *Mining of Massive Datasets*, ch. 3):

1. A document is the set of its word n-grams ("shingles") after normalisation (case folded,
   punctuation and line breaks dropped), so a reflowed or re-punctuated edition shingles alike.
2. Its MinHash signature (`datasketch`'s affine32 scheme and permutations, `bands * rows` of
   them, computed in numpy blocks: `minhash_values`) estimates the Jaccard similarity of two
   shingle sets as the share of equal signature entries.
3. Banding: the signature is cut into `bands` bands of `rows` values; two documents that agree on
   a whole band share a bucket and become a candidate pair (probability `1 - (1 - s**rows)**bands`
   at similarity `s`). Each candidate pair is verified on the whole signature (estimated Jaccard
   >= threshold), so banding only decides which pairs are compared, not which are similar.
4. Clusters are the connected components of the verified pairs. In each, one document is kept:
   the longest text, ties by the smaller content hash (sha256 of the text), then uid, so the
   choice depends on neither input order nor runner parallelism. Every other member is dropped in
   its favour. A chain A~B~C with A !~ C is one cluster: editions drift a little at a time, and a
   chain of verified pairs is still one work, so only its best edition is kept; the detail of a
   member not itself similar to the kept one names the member it was similar to ("via").
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
from datasketch import MinHash

from curation.accounting import Reason
from curation.word_memo import WordMemo

NEAR_DUPLICATE = Reason.NEAR_DUPLICATE.value

# Words: runs of letters and digits (Unicode), so punctuation, underscores (Gutenberg's _italics_)
# and line breaks do not change the shingles. The definition; `normalized_words` computes it faster.
_WORD = re.compile(r"[^\W_]+")

# The MinHash permutation scheme: uint32 signatures. 32-bit shingle hashes collide about
# n**2 / 2**33 times in n shingles (~3 in a 200K-word novel), which moves no estimate.
_SCHEME = "affine32"
_MASK32 = np.uint64(0xFFFFFFFF)
# Odd 64-bit multiplier of the rolling n-gram hash (the golden-ratio constant).
_ROLL = np.uint64(0x9E3779B97F4A7C15)
# Shingle hashes meet the permutations in blocks: one block is a (num_perm, batch) uint32 matrix
# (7.5 MB at 120 permutations; 4K-64K hashes a block all measure within 5% on a novel).
_BATCH = 16384


@dataclass(frozen=True)
class MinHashConfig:
    """Similarity threshold (estimated Jaccard of word n-gram sets), n-gram size, and the LSH
    banding (`bands * rows` MinHash permutations)."""

    threshold: float = 0.5
    ngram: int = 5
    bands: int = 40
    rows: int = 3
    seed: int = 1

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"near-duplicate threshold must be in (0, 1], got {self.threshold}")
        if self.ngram < 1 or self.bands < 1 or self.rows < 1:
            raise ValueError(f"ngram, bands and rows must be >= 1, got {self.ngram}, {self.bands}, {self.rows}")

    @property
    def num_perm(self) -> int:
        return self.bands * self.rows

    def candidate_probability(self, similarity: float) -> float:
        """Chance that two documents of this Jaccard similarity share at least one band bucket."""
        return 1.0 - (1.0 - similarity**self.rows) ** self.bands


# The least chance, at exactly the threshold similarity, that LSH banding makes two documents a
# candidate pair (P(s) = 1 - (1 - s**rows)**bands, the S-curve): a setting below it misses most
# pairs at the threshold, and a pair just above it fares little better (1 band of 60 rows at 0.5:
# P = 9e-19, so a copy with 2% of its words edited goes undetected). The defaults (40 x 3 at 0.5)
# give 0.995. Refused when a job starts (pipelines/config.py TextFrontConfig.check_given).
MIN_PAIR_PROBABILITY = 0.5
# The chance a suggested setting reaches at the threshold.
SUGGESTED_PAIR_PROBABILITY = 0.9


def pair_probability(similarity: float, bands: int, rows: int) -> float:
    """Chance that two documents of this Jaccard similarity share at least one of `bands` bands of
    `rows` values (computed so that a chance of 1e-18 does not round to 0)."""
    import math

    band = similarity**rows
    return 1.0 if band >= 1.0 else -math.expm1(bands * math.log1p(-band))


def suggested_banding(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows) using at most `num_perm` permutations (at least the defaults' 120) whose
    chance of pairing two documents at `threshold` reaches SUGGESTED_PAIR_PROBABILITY, with as
    many rows as that allows (more rows, fewer pairs below the threshold to verify); the most
    likely setting when none reaches it."""
    num_perm = max(num_perm, MinHashConfig().num_perm)
    options = [(num_perm // rows, rows) for rows in range(1, num_perm + 1)]
    good = [o for o in options if pair_probability(threshold, *o) >= SUGGESTED_PAIR_PROBABILITY]
    if good:
        return max(good, key=lambda o: o[1])
    return max(options, key=lambda o: pair_probability(threshold, *o))


def banding_problem(threshold: float, bands: int, rows: int) -> str | None:
    """Why `bands` x `rows` cannot find near-duplicates at `threshold` (one clause, with a
    suggested setting), or None when its chance at the threshold reaches MIN_PAIR_PROBABILITY."""
    p = pair_probability(threshold, bands, rows)
    if p >= MIN_PAIR_PROBABILITY:
        return None
    b, r = suggested_banding(threshold, bands * rows)
    return (f"LSH with {bands} band{'s' if bands != 1 else ''} of {rows} row{'s' if rows != 1 else ''} pairs two documents "
            f"of similarity {threshold:g} with probability P = 1-(1-s^rows)^bands = {p:.3g}, below {MIN_PAIR_PROBABILITY:g}: "
            f"most near-duplicates would go undetected; {b} bands of {r} rows give P = {pair_probability(threshold, b, r):.3g}")


class _WordCharacters(dict):
    """A `str.translate` table: a character `_WORD` matches (`str.isalnum`, which is what `\\w`
    means in a str pattern, minus the underscore) maps to itself, any other to a space. Filled on
    first sight of each character, so it stays as small as the alphabets seen."""

    def __missing__(self, code: int) -> int:
        value = self[code] = code if chr(code).isalnum() else 32
        return value


_WORD_CHARACTERS = _WordCharacters()

# The same map on UTF-8 bytes, for `_word_bytes`: an ASCII letter or digit maps to itself lower
# cased (casefold is lower on ASCII), any other ASCII byte to a space; bytes of non-ASCII
# characters (128-255) pass unchanged, `_word_bytes` deals with those characters.
_WORD_BYTES = bytes(
    (ord(chr(c).lower()) if chr(c).isalnum() else 32) if c < 128 else c for c in range(256)
)
_NON_ASCII = re.compile(r"[^\x00-\x7f]")
# A text with more distinct non-ASCII non-word characters than this takes `str.translate`: one
# bytes.replace pass per such character stops paying off.
_MAX_REPLACED = 16


def normalized_words(text: str) -> list[str]:
    """The text's words, case folded; punctuation, underscores and whitespace dropped: the runs of
    `_WORD`, found by one translate and one `split` (about twice as fast as `findall`)."""
    return _word_bytes(text).decode("utf-8").split()


def _word_bytes(text: str) -> bytes:
    """UTF-8 of `text.casefold().translate(_WORD_CHARACTERS)`: the words separated by spaces.
    `str.translate` looks each non-ASCII character up in a Python dict (~30 ns a character), so
    a text is mapped as bytes instead (~1 ns a byte), and the few distinct non-ASCII characters
    that are not word characters (curly quotes, dashes) are blanked one `replace` each; UTF-8 is
    self-synchronising, so a character's bytes only ever match at that character."""
    if text.isascii():
        return text.encode("ascii").translate(_WORD_BYTES)
    folded = text.casefold()
    blank = [ch for ch in set(_NON_ASCII.findall(folded)) if not ch.isalnum()]
    if len(blank) <= _MAX_REPLACED:
        try:
            data = folded.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate: the plain way below maps it to a space
            data = None
        if data is not None:
            data = data.translate(_WORD_BYTES)
            for ch in blank:
                code = ch.encode("utf-8")
                data = data.replace(code, b" " * len(code))
            return data
    return folded.translate(_WORD_CHARACTERS).encode("utf-8")


def _word_hash(word: str) -> int:
    return int.from_bytes(hashlib.blake2b(word.encode("utf-8"), digest_size=8).digest(), "little")


# Word -> its 64-bit hash, shared by every document a worker sees (~60 MB at most: key, int, slot).
_WORD_HASHES = WordMemo(_word_hash, 1 << 19)


def _hash_table(distinct: list[str]) -> np.ndarray:
    """The 64-bit hash of each distinct word (uint64); blake2b only for words new to the worker."""
    return np.array(_WORD_HASHES(distinct), dtype=np.uint64)


def _word_hashes(words: list[str]) -> np.ndarray:
    """The 64-bit hash of each word (uint64, one per word). The words are numbered in C (pandas'
    factorize, one hash-table pass) and only distinct words are hashed, each once per worker."""
    import pandas as pd  # here, not at the top: importing this module must stay cheap

    codes, distinct = pd.factorize(np.asarray(words, dtype=object), sort=False)
    return _hash_table(list(distinct))[codes]


def _text_word_hashes(text: str) -> np.ndarray:
    """`_word_hashes(normalized_words(text))` without a Python string per word: the words of
    `_word_bytes` are cut with numpy (runs of non-space bytes, packed end to end as an Arrow
    string column) and numbered by Arrow's dictionary encoding, so only distinct words become
    Python strings (2x cheaper than split + factorize on a novel)."""
    import pyarrow as pa  # here, not at the top: importing this module must stay cheap
    import pyarrow.compute as pc

    data = _word_bytes(text)
    inside = np.zeros(len(data) + 2, dtype=bool)  # padded: a word can start or end at either edge
    np.not_equal(np.frombuffer(data, dtype=np.uint8), 32, out=inside[1:-1])
    # Word starts and ends alternate among the places where `inside` flips.
    edges = np.flatnonzero(inside[1:] != inside[:-1])
    lengths = edges[1::2] - edges[::2]
    if lengths.size == 0:
        return np.zeros(0, dtype=np.uint64)
    offsets = np.zeros(lengths.size + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    # The words end to end: dropping ASCII spaces from UTF-8 leaves valid UTF-8 (a space byte is
    # never part of another character).
    packed = data.translate(None, b" ")
    words = pa.LargeStringArray.from_buffers(lengths.size, pa.py_buffer(offsets), pa.py_buffer(packed))
    encoded = pc.dictionary_encode(words)
    return _hash_table(encoded.dictionary.to_pylist())[encoded.indices.to_numpy()]


def _unique_sorted(values: np.ndarray) -> np.ndarray:
    """`np.unique(values)` (sorted, distinct) by one sort: numpy 2's hash-table unique is several
    times slower on a few hundred thousand integers."""
    if values.size == 0:
        return values
    values = np.sort(values)
    keep = np.empty(values.size, dtype=bool)
    keep[0] = True
    np.not_equal(values[1:], values[:-1], out=keep[1:])
    return values[keep]


def _ngram_hashes_all(words: list[str], n: int) -> np.ndarray:
    """The 64-bit hash of every word n-gram in order, repeats included (a text shorter than n
    words is one n-gram): blake2b per word, a rolling combination per n-gram."""
    if not words:
        return np.zeros(0, dtype=np.uint64)
    return _roll(_word_hashes(words), n)


def _roll(h: np.ndarray, n: int) -> np.ndarray:
    """The rolling combination of word hashes `h` into one hash per n-gram (fewer than n words
    are one n-gram)."""
    k = min(n, len(h))
    grams = h[: len(h) - k + 1].copy()
    with np.errstate(over="ignore"):  # uint64 arithmetic wraps, as a hash should
        for i in range(1, k):
            grams *= _ROLL
            grams += h[i : len(h) - k + 1 + i]
    return grams


def text_ngram_hashes64(text: str, n: int) -> np.ndarray:
    """`ngram_hashes64(normalized_words(text), n)` without a Python string per word (see
    `_text_word_hashes`), except that a text of fewer than n words has no n-gram at all."""
    hashes = _text_word_hashes(text)
    return _unique_sorted(_roll(hashes, n)) if hashes.size >= n else np.zeros(0, dtype=np.uint64)


def ngram_hashes64(words: list[str], n: int) -> np.ndarray:
    """Sorted unique 64-bit hashes of the word n-grams (a text shorter than n words is one
    n-gram). Stable across processes and runs: blake2b per word, a rolling combination per
    n-gram; never Python's salted `hash()`."""
    return _unique_sorted(_ngram_hashes_all(words, n))


def _fold32(grams: np.ndarray) -> np.ndarray:
    return ((grams >> np.uint64(32)) ^ (grams & _MASK32)).astype(np.uint32)


def shingle_hashes(words: list[str], n: int) -> np.ndarray:
    """Sorted unique 32-bit hashes of the word n-grams (the MinHash input; see `ngram_hashes64`)."""
    return _unique_sorted(_fold32(_ngram_hashes_all(words, n)))


@functools.lru_cache(maxsize=8)
def _permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """datasketch's affine permutations (a, b) for `num_perm` and `seed`, as uint32 columns."""
    a, b = MinHash(num_perm=num_perm, seed=seed, scheme=_SCHEME).permutations
    return a.astype(np.uint32).reshape(-1, 1), b.astype(np.uint32).reshape(-1, 1)


def _fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finalizer, the pre-mix of datasketch's affine32 scheme (uint32 wraps)."""
    h = h ^ (h >> np.uint32(16))
    h *= np.uint32(0x85EBCA6B)
    h ^= h >> np.uint32(13)
    h *= np.uint32(0xC2B2AE35)
    h ^= h >> np.uint32(16)
    return h


def minhash_values(hashes: np.ndarray, num_perm: int, seed: int) -> np.ndarray:
    """The MinHash signature of a set of 32-bit hashes: exactly `datasketch.MinHash(num_perm,
    seed, scheme="affine32")` updated with them (min over the set of `a * fmix32(h) + b` in
    uint32), computed in numpy blocks without a Python call per hash. Repeats do not change a
    minimum, so `hashes` need not be unique. A block is (permutation, hash): each row is one
    permutation over contiguous hashes, which numpy runs in SIMD (3x faster than hash-major
    blocks, whose rows are only `num_perm` long), multiplied, added and reduced in place."""
    a, b = _permutations(num_perm, seed)
    out = np.full(num_perm, np.iinfo(np.uint32).max, dtype=np.uint32)
    mixed = _fmix32(np.ascontiguousarray(hashes, dtype=np.uint32))
    if mixed.size == 0:
        return out
    buffer = np.empty((num_perm, min(_BATCH, mixed.size)), dtype=np.uint32)
    lows = np.empty(num_perm, dtype=np.uint32)
    for start in range(0, mixed.size, _BATCH):
        row = mixed[None, start : start + _BATCH]
        block = buffer[:, : row.shape[1]]
        np.multiply(a, row, out=block)
        np.add(block, b, out=block)
        np.minimum.reduce(block, axis=1, out=lows)
        np.minimum(out, lows, out=out)
    return out


def signature(text: str, config: MinHashConfig) -> np.ndarray:
    """The MinHash signature (uint32, `num_perm` values) of the text's word n-gram set. A text
    with no words at all is one shingle of its own characters, so two such texts differ."""
    words = _text_word_hashes(text)
    grams = _roll(words, config.ngram) if words.size else _roll(_word_hashes([text]), 1)
    return minhash_values(_fold32(grams), config.num_perm, config.seed)


def estimated_jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """The MinHash estimate of Jaccard similarity: the share of equal signature values (what
    `datasketch.MinHash.jaccard` computes, without rebuilding MinHash objects)."""
    if a.shape != b.shape:
        raise ValueError(f"signatures of different lengths: {a.shape} vs {b.shape}")
    return float(np.count_nonzero(a == b)) / float(a.size)


def band_keys(sig: np.ndarray, bands: int, rows: int) -> list[str]:
    """One bucket key per band: the band's index and a digest of its values (little-endian bytes),
    so keys are the same on every worker and run."""
    if sig.size != bands * rows:
        raise ValueError(f"signature has {sig.size} values, bands * rows = {bands * rows}")
    data = sig.astype("<u4")
    return [
        f"{b:03d}:{hashlib.blake2b(data[b * rows : (b + 1) * rows].tobytes(), digest_size=12).hexdigest()}"
        for b in range(bands)
    ]


@dataclass(frozen=True, order=True)
class Node:
    """A document as clustering sees it. Ordering is the keep preference: the longest text first,
    then the smaller content hash, then uid (all stable: never input order)."""

    rank: tuple[int, str, str] = field(init=False, repr=False)
    uid: str
    source: str
    id: str
    chars: int
    content_hash: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "rank", (-self.chars, self.content_hash, self.uid))


@dataclass(frozen=True)
class Sketch:
    """A document's node and MinHash signature: what band buckets carry (never the text)."""

    node: Node
    signature: np.ndarray


@dataclass(frozen=True)
class SimilarPair:
    """Two documents verified similar; `a` is the preferred one (a < b)."""

    a: Node
    b: Node
    similarity: float

    @property
    def key(self) -> tuple[str, str]:
        return (self.a.uid, self.b.uid)


def bucket_pairs(sketches: Iterable[Sketch], threshold: float) -> Iterator[SimilarPair]:
    """Every pair of one band bucket whose estimated Jaccard on the whole signature reaches the
    threshold. Quadratic in the bucket size; exact copies are removed before, and a bucket of
    more than a handful of documents means a cluster of editions anyway."""
    members = sorted(sketches, key=lambda s: s.node)
    for i, first in enumerate(members):
        for second in members[i + 1 :]:
            if first.node.uid == second.node.uid:
                continue
            sim = estimated_jaccard(first.signature, second.signature)
            if sim >= threshold:
                yield SimilarPair(first.node, second.node, sim)


@dataclass(frozen=True)
class Decision:
    """A document dropped in favour of its cluster's kept one."""

    dropped: Node
    kept: Node
    similarity: float  # with the kept document, or with `via` when not itself similar to it
    cluster_size: int
    via: Node | None = None

    @property
    def facts(self) -> dict[str, object]:
        """The decision as structured reject fields (`inspect` draws clusters from these)."""
        out: dict[str, object] = {
            "kept_source": self.kept.source,
            "kept_id": self.kept.id,
            "kept_chars": self.kept.chars,
            "similarity": round(self.similarity, 4),
            "cluster_size": self.cluster_size,
        }
        if self.via is not None:
            out["via_id"] = self.via.id
        return out

    @property
    def detail(self) -> str:
        text = (
            f"near-duplicate of {self.kept.source} id={self.kept.id} (kept, {self.kept.chars} chars; "
            f"cluster of {self.cluster_size}): estimated Jaccard {self.similarity:.3f}"
        )
        if self.via is not None:
            text += f" with id={self.via.id} (a chain: not itself similar to the kept one)"
        return text


def resolve_clusters(pairs: Iterable[SimilarPair]) -> list[Decision]:
    """Connected components of the verified pairs -> one Decision per document to drop, in a
    deterministic order (by dropped uid). Duplicate pairs (from several shared bands) are fine."""
    edges: dict[tuple[str, str], SimilarPair] = {}
    for pair in pairs:
        edges.setdefault(pair.key, pair)
    nodes: dict[str, Node] = {}
    parent: dict[str, str] = {}

    def find(uid: str) -> str:
        while parent[uid] != uid:
            parent[uid] = parent[parent[uid]]
            uid = parent[uid]
        return uid

    for key in sorted(edges):
        pair = edges[key]
        for node in (pair.a, pair.b):
            nodes.setdefault(node.uid, node)
            parent.setdefault(node.uid, node.uid)
        ra, rb = find(pair.a.uid), find(pair.b.uid)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    members: dict[str, list[Node]] = {}
    for uid in sorted(nodes):
        members.setdefault(find(uid), []).append(nodes[uid])
    neighbours: dict[str, list[tuple[float, Node]]] = {}
    for pair in edges.values():
        neighbours.setdefault(pair.a.uid, []).append((pair.similarity, pair.b))
        neighbours.setdefault(pair.b.uid, []).append((pair.similarity, pair.a))
    decisions = []
    for cluster in members.values():
        kept = min(cluster)
        for node in cluster:
            if node is kept:
                continue
            near = neighbours[node.uid]
            direct = [sim for sim, other in near if other.uid == kept.uid]
            if direct:
                decisions.append(Decision(node, kept, direct[0], len(cluster)))
            else:
                # The most similar neighbour, ties by keep preference.
                sim, via = min(near, key=lambda item: (-item[0], item[1]))
                decisions.append(Decision(node, kept, sim, len(cluster), via))
    return sorted(decisions, key=lambda d: d.dropped.uid)
