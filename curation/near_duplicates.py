"""Near-duplicate documents: MinHash signatures over word n-gram shingles, LSH banding, verified
pairs and deterministic clusters. Pure functions; the Beam shells are in `pipelines/dedup.py`.

The method (Broder 1997; banding as in Leskovec et al., *Mining of Massive Datasets*, ch. 3):

1. A document is the set of its word n-grams ("shingles") after normalisation (case folded,
   punctuation and line breaks dropped), so a reflowed or re-punctuated edition shingles alike.
2. Its MinHash signature (`datasketch`, `bands * rows` permutations) estimates the Jaccard
   similarity of two shingle sets as the share of equal signature entries.
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

import hashlib
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
from datasketch import MinHash

from curation.accounting import Reason

NEAR_DUPLICATE = Reason.NEAR_DUPLICATE.value

# Words: runs of letters and digits (Unicode), so punctuation, underscores (Gutenberg's _italics_)
# and line breaks do not change the shingles.
_WORD = re.compile(r"[^\W_]+")

# The MinHash permutation scheme: uint32 signatures. 32-bit shingle hashes collide about
# n**2 / 2**33 times in n shingles (~3 in a 200K-word novel), which moves no estimate.
_SCHEME = "affine32"
_MASK32 = np.uint64(0xFFFFFFFF)
# Odd 64-bit multiplier of the rolling n-gram hash (the golden-ratio constant).
_ROLL = np.uint64(0x9E3779B97F4A7C15)
# Shingle hashes are fed to the MinHash in batches: one batch is a (batch, num_perm) uint32 matrix.
_BATCH = 8192


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


def normalized_words(text: str) -> list[str]:
    """The text's words, case folded; punctuation, underscores and whitespace dropped."""
    return _WORD.findall(text.casefold())


def _word_hash(word: str) -> int:
    return int.from_bytes(hashlib.blake2b(word.encode("utf-8"), digest_size=8).digest(), "little")


def ngram_hashes64(words: list[str], n: int) -> np.ndarray:
    """Sorted unique 64-bit hashes of the word n-grams (a text shorter than n words is one
    n-gram). Stable across processes and runs: blake2b per word, a rolling combination per
    n-gram; never Python's salted `hash()`."""
    if not words:
        return np.zeros(0, dtype=np.uint64)
    vocab: dict[str, int] = {}
    ids = np.fromiter((vocab.setdefault(w, len(vocab)) for w in words), dtype=np.int64, count=len(words))
    table = np.array([_word_hash(w) for w in vocab], dtype=np.uint64)
    h = table[ids]
    k = min(n, len(words))
    grams = h[: len(h) - k + 1].copy()
    with np.errstate(over="ignore"):  # uint64 arithmetic wraps, as a hash should
        for i in range(1, k):
            grams = grams * _ROLL + h[i : len(h) - k + 1 + i]
    return np.unique(grams)


def shingle_hashes(words: list[str], n: int) -> np.ndarray:
    """Sorted unique 32-bit hashes of the word n-grams (the MinHash input; see `ngram_hashes64`)."""
    grams = ngram_hashes64(words, n)
    return np.unique(((grams >> np.uint64(32)) ^ (grams & _MASK32)).astype(np.uint32))


def _identity(value: int) -> int:
    return value


def signature(text: str, config: MinHashConfig) -> np.ndarray:
    """The MinHash signature (uint32, `num_perm` values) of the text's word n-gram set. A text
    with no words at all is one shingle of its own characters, so two such texts differ."""
    hashes = shingle_hashes(normalized_words(text), config.ngram)
    if hashes.size == 0:
        hashes = shingle_hashes([text], 1)
    mh = MinHash(num_perm=config.num_perm, seed=config.seed, hashfunc=_identity, scheme=_SCHEME)
    for start in range(0, hashes.size, _BATCH):
        mh.update_batch(hashes[start : start + _BATCH].tolist())
    return mh.hashvalues.astype(np.uint32)


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
