"""Long-context QA chat examples: adjacent chunks as the context, then one QA turn per chunk.

Layout of the LWM release (MISSION.md), with the context as the first user turn:

    <s>You are a helpful assistant. USER: {chunk tokens...}\\n\\n{q1} ASSISTANT: {a1}</s> USER: {q2} ASSISTANT: {a2}</s>...

The context is the chunks' own token ids (cut by the training tokenizer), never re-encoded text,
so the trained model sees exactly the passages the questions were asked about. Template and
question text is encoded with the training tokenizer; the loss mask is 1.0 only on answer tokens
and the end-of-turn token closing each answer: the model learns to answer, not to ask.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from curation.chat_format import LWM_SYSTEM, ChatFormat  # noqa: F401  (re-exported: qa_synth.assemble.ChatFormat)
from curation.packing import SegmentRef, StageSegment
from curation.tokenize import TokenizerInfo
from qa_synth.chunking import Chunk
from qa_synth.parse import QAPair

ORDERS = ("in_order", "shuffled")
_SENTINEL = re.compile("\ue000([CQA])(\\d*)\ue001")
_SPACE_MARKERS = ("\u2581", "\u0120", " ")  # SentencePiece, GPT-2 byte-level, plain


@dataclass(frozen=True)
class _Skeleton:
    """The template as text around its slots. A turn's question sits between `*_before_q` and
    `*_after_q`; `inter_*` is what separates answer i from answer i+1 (end of turn included)."""

    head: str
    first_before_q: str
    first_after_q: str
    inter_before_q: str
    inter_after_q: str
    tail: str
    space_before_answer: bool  # answers are encoded as " " + answer (a natural word start)
    explicit_eos: bool  # plain format: an EOS id closes each answer; HF: the template's own marker


def _plain_skeleton(fmt: ChatFormat) -> _Skeleton:
    head = f"{fmt.system} {fmt.user} " if fmt.system else f"{fmt.user} "
    return _Skeleton(head, fmt.context_separator, f" {fmt.assistant}", f" {fmt.user} ", f" {fmt.assistant}",
                     "", True, True)


def _render_hf(hf, fmt: ChatFormat, turns: int) -> str:
    """The HF template rendered over sentinel slots; a template refusing a system turn gets the
    system text at the head of the first user turn instead."""
    convo = [{"role": "user", "content": f"\ue000C\ue001{fmt.context_separator}\ue000Q0\ue001"}]
    convo.append({"role": "assistant", "content": "\ue000A0\ue001"})
    for i in range(1, turns):
        convo += [{"role": "user", "content": f"\ue000Q{i}\ue001"}, {"role": "assistant", "content": f"\ue000A{i}\ue001"}]
    if not fmt.system:
        return hf.apply_chat_template(convo, tokenize=False)
    from jinja2 import TemplateError  # transformers' own dependency, only needed here

    try:
        return hf.apply_chat_template([{"role": "system", "content": fmt.system}] + convo, tokenize=False)
    except TemplateError:  # raised by templates that refuse a system role
        convo[0] = {"role": "user", "content": f"{fmt.system}\n\n{convo[0]['content']}"}
        return hf.apply_chat_template(convo, tokenize=False)


def _hf_skeleton(fmt: ChatFormat, specials: list[str]) -> _Skeleton:
    """Split a 3-turn sentinel rendering into head / first turn / repeated turn / tail."""
    rendered = _render_hf(fmt.hf_tokenizer, fmt, 3)
    texts = _SENTINEL.split(rendered)[::3]
    slots = ["".join(m) for m in _SENTINEL.findall(rendered)]
    if slots != ["C", "Q0", "A0", "Q1", "A1", "Q2", "A2"]:
        raise ValueError(f"chat template does not lay out turns in order (slots {slots})")
    head, first_b, first_a, inter_b, inter_a, inter_b2, inter_a2, tail = texts
    if (inter_b, inter_a) != (inter_b2, inter_a2):
        raise ValueError("chat template writes later turns differently from each other; unsupported")
    space = first_a.endswith(" ") and inter_a.endswith(" ")
    if space:
        first_a, inter_a = first_a[:-1], inter_a[:-1]
    closes = any(inter_b.lstrip().startswith(s) for s in specials if s)
    return _Skeleton(head, first_b, first_a, inter_b, inter_a, tail, space, not closes)


@dataclass(frozen=True)
class Example:
    """One QA chat example. Spans are token [start, end) ranges of `tokens`; `answer_spans[i]`
    covers answer i and the end-of-turn token closing it; `pairs` are in turn order."""

    book_id: str
    book_uid: str
    first_chunk: int
    start: int
    num_chunks: int
    tokens: np.ndarray = field(repr=False)
    loss_mask: np.ndarray = field(repr=False)
    context_span: tuple[int, int] = (0, 0)
    answer_spans: tuple[tuple[int, int], ...] = ()
    pairs: tuple[QAPair, ...] = ()

    def __len__(self) -> int:
        return len(self.tokens)


@dataclass
class _Turn:
    """One chunk's QA, pre-encoded: question text both as first and as later turn."""

    chunk: Chunk
    pair: QAPair
    first: list[int]
    inter: list[int]
    answer: list[int]


class _Encoder:
    """The training tokenizer plus the template pieces it encodes once per call."""

    def __init__(self, tok, info: TokenizerInfo, fmt: ChatFormat):
        if info.eos_id is None:
            raise ValueError(f"tokenizer {info.name!r} has no EOS token; QA answers need one")
        self.tok, self.info = tok, info
        decoder = tok.get_added_tokens_decoder()
        self.special_ids = {i for i, t in decoder.items() if t.special}
        self.specials = [t.content for t in decoder.values() if t.special]
        self.sk = _hf_skeleton(fmt, self.specials) if fmt.hf_tokenizer is not None else _plain_skeleton(fmt)
        self.tail = self.encode(self.sk.tail)
        self._heads: dict[bool, list[int]] = {}
        self.closing = self._closing_count(self.sk.inter_before_q)
        self.tail_closing = self._closing_count(self.sk.tail)

    def encode(self, text: str) -> list[int]:
        """`text` as it continues the tokens laid before it (a template piece, a question, an answer)."""
        if not text:
            return []
        continuation = getattr(self.tok, "encode_continuation", None)  # curation.tokenize.TextTokenizer
        if continuation is not None:
            return continuation(text)
        return self._trim(text, self.tok.encode(text, add_special_tokens=False).ids)

    def _trim(self, text: str, ids: list[int]) -> list[int]:
        """Drop the lone word-start marker SentencePiece prepends to text opening with a
        newline: "\n\nQ" would otherwise decode as " \n\nQ" after the context."""
        if ids and not text.startswith(" ") and self.tok.id_to_token(ids[0]) in _SPACE_MARKERS:
            return ids[1:]
        return ids

    def clean(self, text: str) -> str:
        """Model text cannot smuggle in control tokens or template slots."""
        for special in self.specials:
            text = text.replace(special, "")
        return text.replace("\ue000", "").replace("\ue001", "")

    def _closing_count(self, text: str) -> int:
        """How many leading tokens of `text` close the previous answer: up to and including its
        first special token, if only whitespace comes before it (0 in the plain format)."""
        if self.sk.explicit_eos:
            return 0
        for n, token_id in enumerate(self.encode(text), 1):
            if token_id in self.special_ids:
                return n
            if self.tok.decode([token_id]).strip():
                return 0
        return 0

    def head(self, first_token: int) -> list[int]:
        """BOS + the text before the context; its trailing space is dropped when the context's
        first token already starts a word (so decoding shows one space, not two)."""
        piece = self.tok.id_to_token(int(first_token)) or ""
        drop_space = self.sk.head.endswith(" ") and piece.startswith(_SPACE_MARKERS)
        if drop_space not in self._heads:
            ids = self.encode(self.sk.head[:-1] if drop_space else self.sk.head)
            bos = self.info.bos_id
            self._heads[drop_space] = ids if bos is None or (ids and ids[0] == bos) else [bos] + ids
        return self._heads[drop_space]

    def turns(self, items: list[tuple[Chunk, QAPair]]) -> list[_Turn]:
        sk = self.sk
        questions = [self.clean(p.question) for _, p in items]
        answers = [(" " if sk.space_before_answer else "") + self.clean(p.answer) for _, p in items]
        texts = ([sk.first_before_q + q + sk.first_after_q for q in questions]
                 + [sk.inter_before_q + q + sk.inter_after_q for q in questions] + answers)
        encoded = [self.encode(text) for text in texts]
        n = len(items)
        return [_Turn(c, p, encoded[i], encoded[n + i], encoded[2 * n + i]) for i, (c, p) in enumerate(items)]

    def bound(self, turn: _Turn) -> int:
        """Most tokens this chunk can add (context + its turn, first or later)."""
        return len(turn.chunk.tokens) + max(len(turn.first), len(turn.inter)) + len(turn.answer) + self.sk.explicit_eos


def _turn_order(n: int, order: str, seed: int, key: str) -> list[int]:
    idx = list(range(n))
    if order == "shuffled":
        random.Random(hashlib.sha256(f"{seed}:{key}".encode()).digest()).shuffle(idx)
    return idx


def _build(enc: _Encoder, run: list[_Turn], order: str, seed: int) -> Example:
    """Lay out one example: head, context, then the turns with answers masked in."""
    first = run[0].chunk
    pieces: list[list[int]] = [enc.head(int(first.tokens[0]))]
    mask_pieces: list[np.ndarray] = [np.zeros(len(pieces[0]), np.float32)]
    pos = len(pieces[0])
    context = np.concatenate([t.chunk.tokens for t in run]).astype(np.int32)
    context_span = (pos, pos + len(context))
    pieces.append(context.tolist())
    mask_pieces.append(np.zeros(len(context), np.float32))
    pos += len(context)
    answer_spans, pairs = [], []
    turn_order = _turn_order(len(run), order, seed, f"{first.book_uid}@{first.index}")
    for k, i in enumerate(turn_order):
        turn = run[i]
        prompt = turn.first if k == 0 else turn.inter
        closing = 0 if k == 0 else enc.closing  # the previous answer's end-of-turn token
        answer = turn.answer + ([enc.info.eos_id] if enc.sk.explicit_eos else [])
        if closing:
            s, e = answer_spans[-1]
            answer_spans[-1] = (s, e + closing)
        mask = np.zeros(len(prompt) + len(answer), np.float32)
        mask[:closing] = 1.0
        mask[len(prompt) :] = 1.0
        answer_spans.append((pos + len(prompt), pos + len(prompt) + len(answer)))
        pieces += [prompt, answer]
        mask_pieces.append(mask)
        pos += len(prompt) + len(answer)
        pairs.append(turn.pair)
    tail_mask = np.zeros(len(enc.tail), np.float32)
    tail_mask[: enc.tail_closing] = 1.0
    if enc.tail_closing:
        s, e = answer_spans[-1]
        answer_spans[-1] = (s, e + enc.tail_closing)
    pieces.append(enc.tail)
    mask_pieces.append(tail_mask)
    tokens = np.fromiter((t for p in pieces for t in p), dtype=np.int32)
    loss_mask = np.concatenate(mask_pieces).astype(np.float32)
    return Example(first.book_id, first.book_uid, first.index, first.start, len(run), tokens, loss_mask,
                   context_span, tuple(answer_spans), tuple(pairs))


def _adjacent_runs(items: list[tuple[Chunk, QAPair]]) -> list[list[tuple[Chunk, QAPair]]]:
    """A book's chunks in index order, split wherever a chunk is missing (its QA was rejected):
    an example's context must be contiguous text, and every chunk in it has its question."""
    runs: list[list[tuple[Chunk, QAPair]]] = []
    for item in sorted(items, key=lambda it: it[0].index):
        if runs and item[0].index == runs[-1][-1][0].index + 1:
            runs[-1].append(item)
        else:
            runs.append([item])
    return runs


def _fill(enc: _Encoder, turns: list[_Turn], length: int, counts: Counter) -> list[list[_Turn]]:
    """Greedy runs of adjacent turns whose (upper-bound) size fits `length`."""
    groups: list[list[_Turn]] = []
    run: list[_Turn] = []
    used = 0
    for turn in turns:
        cost = enc.bound(turn)
        if run and used + cost <= length:
            run.append(turn)
            used += cost
            continue
        if run:
            groups.append(run)
        fixed = len(enc.head(int(turn.chunk.tokens[0]))) + len(enc.tail)
        run, used = ([turn], fixed + cost) if fixed + cost <= length else ([], 0)
        if not run:
            counts["qa_chunks_too_long"] += 1
    if run:
        groups.append(run)
    return groups


def assemble_examples(
    chunks_with_qa: list[tuple[Chunk, QAPair]],
    tok,
    info: TokenizerInfo,
    length: int,
    order: str = "in_order",
    seed: int = 0,
    fmt: ChatFormat | None = None,
    counts: Counter | None = None,
) -> list[Example]:
    """Examples of at most `length` tokens from runs of adjacent chunks of each book, with their
    QA turns in chunk order or shuffled (deterministically from seed, book and first chunk).

    A chunk that cannot fit even alone with its QA is skipped; `counts` (if given) gets
    qa_chunks_too_long, qa_chunks_used and qa_examples added.
    """
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    counts = Counter() if counts is None else counts
    enc = _Encoder(tok, info, fmt or ChatFormat())
    books: dict[str, list[tuple[Chunk, QAPair]]] = {}
    for chunk, pair in chunks_with_qa:
        books.setdefault(chunk.book_uid, []).append((chunk, pair))
    examples = []
    for uid in sorted(books):
        for run in _adjacent_runs([it for it in books[uid] if len(it[0].tokens)]):
            for group in _fill(enc, enc.turns(run), length, counts):
                example = _build(enc, group, order, seed)
                assert len(example) <= length, (len(example), length)
                examples.append(example)
                counts["qa_chunks_used"] += len(group)
                counts["qa_examples"] += 1
    return examples


def example_to_segment(example: Example, stage_name: str) -> StageSegment:
    """The example as a packing segment (key `{book_uid}@qa{first_chunk}`, unique per book)."""
    ref = SegmentRef(f"{example.book_uid}@qa{example.first_chunk}", example.book_id, example.start, len(example))
    return StageSegment(stage_name, ref, example.book_uid, example.tokens, loss_mask=example.loss_mask)
