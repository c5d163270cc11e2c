"""Gopher-style quality rules and language identification: each rule on a text made to fail it,
the sample novels passing the defaults, the config, the Beam counters, and a books job end to end."""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import random
import re

import apache_beam as beam
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing.util import assert_that, equal_to

from curation.accounting import Reason
from curation.documents import Document
from curation.quality import (
    DUP_NGRAMS,
    TOP_NGRAMS,
    LanguageRule,
    QualityRules,
    build_detector,
    failed_rules,
    identify_language,
    language_ok,
    language_windows,
    quality_reject,
    rule_names,
    text_stats,
)
from curation.text import CleanConfig, clean_text
from pipelines.accounting import REJECTS
from pipelines.config import BooksConfig, QAConfig, add_config_flags, config_from_args
from pipelines.launch import run_books
from pipelines.quality import QUALITY_NAMESPACE, DropLowQuality
from tests.conftest import DEMO_TOKENIZER

IN_MEMORY = ["--runner=DirectRunner", "--direct_running_mode=in_memory"]
STOP = ["the", "of", "and", "to", "with", "that"]

GERMAN = """Am Rande des alten Waldes lag ein kleines Dorf, in dem die Menschen seit vielen Jahren
still und zufrieden lebten. Jeden Morgen ging der Müller mit seinem Hund über die Brücke zum Bach,
und die Kinder liefen hinter ihm her, weil er ihnen Geschichten von fernen Ländern erzählte.

Eines Tages kam ein Fremder in das Dorf. Er trug einen grauen Mantel und sprach kaum ein Wort.
Die Wirtin gab ihm ein Zimmer unter dem Dach, doch niemand wusste, woher er kam oder wohin er
wollte. Nach drei Wochen war er wieder verschwunden, und auf dem Tisch lag nur ein Brief.

In dem Brief stand, dass er als Junge in diesem Dorf gelebt hatte und nun zurückgekehrt war, um
das Haus seiner Eltern noch einmal zu sehen. Die Leute lasen den Brief am Abend im Gasthaus vor,
und manche von ihnen erinnerten sich plötzlich an einen stillen Knaben mit roten Haaren.
"""

FRENCH = """Au bord de la vieille forêt se trouvait un petit village où les gens vivaient depuis
longtemps, tranquilles et heureux. Chaque matin, le meunier traversait le pont avec son chien pour
aller jusqu'au ruisseau, et les enfants couraient derrière lui pour écouter ses histoires.

Un jour, un étranger arriva au village. Il portait un manteau gris et ne disait presque rien.
L'aubergiste lui donna une chambre sous le toit, mais personne ne savait d'où il venait ni où il
allait. Au bout de trois semaines, il avait disparu, et sur la table il n'y avait qu'une lettre.
"""


SPANISH = """Al borde del viejo bosque había un pequeño pueblo donde la gente vivía desde hacía muchos años,
tranquila y contenta. Cada mañana el molinero cruzaba el puente con su perro para ir hasta el arroyo,
y los niños corrían detrás de él porque les contaba historias de países lejanos.

Un día llegó un forastero al pueblo. Llevaba un abrigo gris y casi no decía nada. La posadera le dio
una habitación bajo el tejado, pero nadie sabía de dónde venía ni adónde iba. Al cabo de tres semanas
había desaparecido, y sobre la mesa sólo quedaba una carta.
"""


def _prose(words: int, seed: int = 0, line_words: int = 12, paragraph_lines: int = 5, stop_share: float = 0.2) -> str:
    """Synthetic English-like prose that passes every default rule: pseudo-words from a large
    vocabulary with stop words among them, wrapped into lines and paragraphs. No repeats to speak of."""
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = ["".join(rng.choice(letters) for _ in range(rng.randint(3, 8))) for _ in range(5000)]
    tokens = [rng.choice(STOP) if rng.random() < stop_share else rng.choice(vocab) for _ in range(words)]
    lines = [" ".join(tokens[i : i + line_words]) for i in range(0, len(tokens), line_words)]
    paragraphs = ["\n".join(lines[i : i + paragraph_lines]) for i in range(0, len(lines), paragraph_lines)]
    return "\n\n".join(paragraphs)


def _short_words(words: int) -> str:
    """Prose of one- and two-letter words (and short stop words): a mean word length under 3."""
    rng = random.Random(1)
    letters = "abcdefghijklmnopqrstuvwxyz"
    tokens = [rng.choice(("to", "of", "be")) if rng.random() < 0.3 else "".join(rng.choice(letters) for _ in range(rng.randint(1, 2)))
              for _ in range(words)]
    return "\n".join(" ".join(tokens[i : i + 20]) for i in range(0, words, 20))


def _insert(base: str, phrases: list[str], every: int, cycle: bool = True) -> str:
    """`base` with `phrases` inserted after every `every`-th word (cycled, or each once), line breaks kept."""
    out, k, count = [], 0, 0
    for line in base.split("\n"):
        words = []
        for word in line.split():
            words.append(word)
            count += 1
            if count % every == 0 and (cycle or k < len(phrases)):
                words.append(phrases[k % len(phrases)])
                k += 1
        out.append(" ".join(words))
    return "\n".join(out)


def _repeated_phrases(n: int, share: float, seed: int) -> str:
    """Prose where distinct n-word phrases each occur twice, their second copies holding just over
    `share` of the word characters: repeated n-grams, but no repeated (n+1)-gram."""
    rng = random.Random(seed + 100)
    base = _prose(6000, seed)
    base_chars = sum(len(w) for w in base.split())
    phrases: list[str] = []
    dup_chars = 0
    while dup_chars / (base_chars + 2 * dup_chars) < share:
        words = ["".join(rng.choice("bcdfghjklmnpqrstvwxz") for _ in range(rng.randint(6, 9))) for _ in range(n)]
        phrases.append(" ".join(words))
        dup_chars += sum(map(len, words))
    return _insert(base, phrases + phrases, every=6000 // (2 * len(phrases)), cycle=False)


GOOD = _prose(3000)

# rule -> (text failing it, rules it is judged with). Each text fails its rule and (unless noted)
# no other; rules whose failure drags another along are judged with that other rule switched off.
CASES = {
    "words": (_prose(40), QualityRules(min_words=50)),
    "mean_word_length": (_short_words(1500), QualityRules()),
    "hash_ratio": (" ".join(f"#{w}" if i % 6 == 0 else w for i, w in enumerate(GOOD.split(" "))), QualityRules()),
    "ellipsis_ratio": (" ".join(f"{w}..." if i % 7 == 3 else w for i, w in enumerate(GOOD.split(" "))), QualityRules()),
    "bullet_lines": ("\n".join(f"• {line}" for line in _prose(2000, line_words=8).split("\n") if line), QualityRules()),
    "ellipsis_lines": ("\n".join(f"{line}..." if line else line for line in _prose(3000, line_words=14).split("\n")), QualityRules()),
    "alpha_words": (" ".join(str(1000 + i) if i % 4 == 0 else w for i, w in enumerate(GOOD.split(" "))), QualityRules()),
    "stop_words": (_prose(3000, stop_share=0.0), QualityRules()),
    "dup_lines": ("\n".join(f"{line}\nRead more" for line in GOOD.split("\n")), QualityRules()),
    # Repeating a long line also repeats its n-grams: those rules are switched off here.
    "dup_line_chars": ("\n".join(line + ("\n" + " ".join(["abcdefghijklmnopqrst"] * 4) if i % 3 == 0 else "")
                                 for i, line in enumerate(GOOD.split("\n"))),
                       QualityRules(max_top_2gram_chars=None, max_top_3gram_chars=None, max_top_4gram_chars=None)),
    "dup_paragraphs": (GOOD.replace("\n\n", "\n\nAdvertisement\n\n"), QualityRules()),
    # A repeated paragraph is made of repeated lines and n-grams: only this rule is judged.
    "dup_paragraph_chars": (GOOD + "\n\n" + "\n\n".join([GOOD.split("\n\n")[0].replace("\n", " ")] * 16),
                            QualityRules(max_dup_line_chars=None, max_top_2gram_chars=None, max_top_3gram_chars=None,
                                         max_top_4gram_chars=None, **{f"max_dup_{n}gram_chars": None for n in DUP_NGRAMS})),
    "top_2gram_chars": (_insert(GOOD, ["New York"], every=3), QualityRules()),
    # A repeated 3-gram holds 1.5 times the characters of its 2-grams: 0.24 fails 0.18, 0.16 passes 0.2.
    "top_3gram_chars": (_insert(GOOD, ["alpha bravo delta"], every=9), QualityRules()),
    "top_4gram_chars": (_insert(GOOD, ["kilo lima mike oscar"], every=11), QualityRules()),
    # Shares between consecutive thresholds: repeated 9-grams at 0.115 fail 0.11 (9) but not 0.12 (8).
    "dup_5gram_chars": (_repeated_phrases(5, 0.20, seed=5), QualityRules()),
    "dup_6gram_chars": (_repeated_phrases(6, 0.145, seed=6), QualityRules()),
    "dup_7gram_chars": (_repeated_phrases(7, 0.135, seed=7), QualityRules()),
    "dup_8gram_chars": (_repeated_phrases(8, 0.125, seed=8), QualityRules()),
    "dup_9gram_chars": (_repeated_phrases(9, 0.115, seed=9), QualityRules()),
    "dup_10gram_chars": (_repeated_phrases(10, 0.105, seed=10), QualityRules()),
}


def test_every_rule_has_a_case_and_a_reason():
    assert set(CASES) == set(rule_names())
    for rule in rule_names():
        assert Reason(f"low_quality:{rule}")  # a declared reject reason
    assert Reason("language")


def test_the_synthetic_prose_passes_the_defaults():
    assert failed_rules(text_stats(GOOD), QualityRules()) == []


@pytest.mark.parametrize("rule", list(CASES))
def test_each_rule_rejects_a_text_made_to_fail_it(rule):
    text, rules = CASES[rule]
    failures = failed_rules(text_stats(text), rules)
    assert [f.rule for f in failures] == [rule], [f.detail for f in failures]
    reason, detail, facts = quality_reject(failures)
    assert reason == f"low_quality:{rule}" and detail.startswith(rule)
    assert facts["rules"] == [rule] and facts["values"][rule] == pytest.approx(failures[0].value, rel=1e-5)
    # The defaults (with Gopher's word minimum) reject it too.
    assert rule in [f.rule for f in failed_rules(text_stats(text), QualityRules(min_words=50))]
    # The same bound switched off: the text passes.
    field = [f for f in QualityRules.model_fields if f.split("_", 1)[1] == rule and getattr(rules, f) is not None]
    assert failed_rules(text_stats(text), rules.model_copy(update={f: None for f in field})) == []


def test_stats_definitions_on_small_texts():
    # A text twice over: half of it repeats (lines, paragraphs and n-grams alike).
    half = "one two three four five six seven eight nine ten eleven twelve\nthirteen fourteen"
    stats = text_stats(half + "\n\n" + half)
    assert stats.words == 28 and stats.dup_lines == 0.5 and stats.dup_paragraphs == 0.5
    assert stats.dup_ngram_chars[5] == pytest.approx(0.5) and stats.dup_ngram_chars[10] == pytest.approx(0.5)
    assert stats.dup_paragraph_chars == pytest.approx(0.5)
    # "ho ho ho ho": the 2-gram "ho ho" covers every word once (overlaps are not counted twice).
    assert text_stats("ho ho ho ho").top_ngram_chars[2] == 1.0
    assert text_stats("a bb ccc").mean_word_length == 2.0
    assert text_stats("").words == 0 and failed_rules(text_stats(""), QualityRules(min_stop_words=None, min_mean_word_length=None, min_alpha_words=None)) == []
    stats = text_stats("The cat and the dog.\n- item one\n* item two\nwait...\n12 34 #tag")
    assert stats.stop_words == 3 and stats.bullet_lines == pytest.approx(2 / 5) and stats.ellipsis_lines == pytest.approx(1 / 5)
    # 15 words: the bullets '-' and '*' are words without a letter, like '12' and '34'.
    assert stats.words == 15 and stats.alpha_words == pytest.approx(11 / 15) and stats.hash_ratio == pytest.approx(1 / 15)
    assert set(stats.top_ngram_chars) == set(TOP_NGRAMS) and set(stats.dup_ngram_chars) == set(DUP_NGRAMS)


@pytest.fixture(scope="module")
def novels(sample_books) -> list[dict]:
    return [{"id": b["id"], "text": clean_text(b["text"], CleanConfig())} for b in sample_books]


@pytest.fixture(scope="module")
def detector():
    return build_detector()


def test_the_seven_sample_novels_pass_the_defaults(novels, detector):
    assert len(novels) == 7
    rule = LanguageRule()
    for novel in novels:
        stats = text_stats(novel["text"])
        assert failed_rules(stats, QualityRules()) == [], novel["id"]
        verdict = identify_language(novel["text"], rule, detector)
        assert verdict.detected == "en" and verdict.allowed > 0.99 and language_ok(verdict, rule), novel["id"]


def test_language_identification(detector):
    english = LanguageRule(("en",))
    for text, code in ((GERMAN, "de"), (FRENCH, "fr")):
        verdict = identify_language(text, english, detector)
        assert verdict.detected == code and verdict.confidence > 0.9 and not language_ok(verdict, english)
        assert verdict.detail(english).startswith(f"detected {code} (")
        both = LanguageRule(("en", code))
        assert language_ok(identify_language(text, both, detector), both)
    # The stop words are English: a text identified as another allowed language is not judged by them.
    assert [f.rule for f in failed_rules(text_stats(GERMAN), QualityRules())] == ["stop_words"]
    assert failed_rules(text_stats(GERMAN), QualityRules(), english=False) == []
    # No letters at all: no language, rejected.
    digits = identify_language("12345 67890 " * 30, english, detector)
    assert digits.detected is None and not language_ok(digits, english) and digits.detail(english).startswith("detected none (0.00)")
    # Too short to tell: not judged (the stage windows reject such texts as no_stage).
    short = identify_language("Kurz und gut.", english, detector)
    assert not short.judged and language_ok(short, english)
    # The sample is a few evenly spaced windows, cut at spaces, never the whole of a long text.
    text = " ".join(f"w{i}" for i in range(20_000))
    pieces = language_windows(text, 5, 2000)
    assert len(pieces) == 5 and all(1000 < len(p) <= 2000 for p in pieces)
    assert pieces[0].startswith("w0 ") and pieces[-1] in text[-2000:] and all(p in text for p in pieces)
    assert language_windows("short text", 5, 2000) == ["short text"]


def test_config_section_and_flags(tmp_path):
    assert BooksConfig().quality_filter and BooksConfig().languages == ["en"] and QAConfig().languages == ["en"]
    assert BooksConfig().quality == QualityRules()
    cfg = tmp_path / "c.yaml"
    cfg.write_text("quality:\n  max_bullet_lines: 0.5\n  min_words: null\nlanguages: [en, de]\n")
    parser = argparse.ArgumentParser()
    add_config_flags(parser, BooksConfig)
    config = config_from_args(BooksConfig, parser.parse_args(["--config", str(cfg)]))
    assert config.quality.max_bullet_lines == 0.5 and config.languages == ["en", "de"]
    config = config_from_args(BooksConfig, parser.parse_args(["--config", str(cfg), "--no-quality-filter", "--languages", "fr,DE"]))
    assert config.quality_filter is False and config.languages == ["fr", "de"]
    assert config_from_args(BooksConfig, parser.parse_args(["--languages", ""])).languages == []  # off
    config = config_from_args(BooksConfig, parser.parse_args(["--quality", "{min_words: 50}", "--min-language-confidence", "0.8"]))
    assert config.quality.min_words == 50 and config.min_language_confidence == 0.8
    assert BooksConfig(quality={"max_dup_lines": 0.5}).hash() != BooksConfig().hash()  # thresholds shape the data
    with pytest.raises(ValueError, match="unknown language code"):
        BooksConfig(languages=["english"])
    with pytest.raises(ValueError, match="max_dup_linez"):
        BooksConfig(quality={"max_dup_linez": 0.5})
    with pytest.raises(ValueError, match="YAML mapping"):
        BooksConfig(quality="0.5")


def test_the_beam_filter_counts_each_rule():
    docs = [
        Document("f", "good", "f#0", text=GOOD),
        Document("f", "german", "f#1", text=GERMAN * 2),
        Document("f", "bullets", "f#2", text=CASES["bullet_lines"][0]),
        Document("f", "hashes", "f#3", text=CASES["hash_ratio"][0]),
    ]
    # The synthetic prose is no language: identification is off here (language None), so the
    # German text meets the English stop-word rule.
    pipeline = beam.Pipeline(runner="DirectRunner")
    out = pipeline | beam.Create(docs) | DropLowQuality(QualityRules(), None)
    assert_that(out.docs | "Kept" >> beam.Map(lambda d: d.id), equal_to(["good"]), label="kept")
    assert_that(out[REJECTS] | "Rejects" >> beam.Map(lambda r: (r.id, r.reason)), equal_to([
        ("bullets", "low_quality:bullet_lines"), ("german", "low_quality:stop_words"), ("hashes", "low_quality:hash_ratio"),
    ]), label="rejects")
    result = pipeline.run()
    result.wait_until_finish()
    counters = {m.key.metric.name: m.committed for m in result.metrics().query(MetricsFilter().with_namespace(QUALITY_NAMESPACE))["counters"]}
    assert counters["checked"] == 4 and counters["passed"] == 1
    assert counters["failed.bullet_lines"] == 1 and counters["failed.hash_ratio"] == 1 and counters["failed.stop_words"] == 1


def test_books_job_keeps_good_novels_and_rejects_the_rest(tmp_path, novels):
    good = {n["id"]: n["text"][20_000:70_000] for n in novels[:3]}  # ~50K characters each, past the front matter
    spam = "\n".join(f"• Buy cheap {item} online today with free shipping and a {pct}% discount on every order!"
                     for item in ("watches", "phones", "shoes", "bags", "lamps", "chairs", "rings", "hats") for pct in range(10, 60))
    story = novels[3]["text"][20_000:50_000].split("\n")
    repeated = "\n".join(f"{line}\nSubscribe to our newsletter for more stories!" for line in story)
    records = {**good, "german": GERMAN * 3 + FRENCH, "french": FRENCH * 4, "spam": spam, "repeated": repeated}
    src = tmp_path / "in.jsonl.gz"
    with gzip.open(src, "wt", encoding="utf-8") as fh:
        for key, text in records.items():
            fh.write(json.dumps({"id": key, "text": text}, ensure_ascii=False) + "\n")
    out = tmp_path / "out"
    config = BooksConfig.model_validate({"inputs": [str(src)], "output": str(out), "tokenizer": DEMO_TOKENIZER,
                                         "stages": ["small=2048:100-100000"], "min_tail_tokens": 256})
    manifest = run_books(config, IN_MEMORY)
    rejects = {}
    for path in sorted((out / "rejects").glob("*.jsonl")):
        for line in path.read_text().splitlines():
            r = json.loads(line)
            rejects[r["id"]] = (r["reason"], r["detail"])
    assert manifest["read"] == 7 and manifest["kept"] == 3 and manifest["read"] == manifest["kept"] + manifest["rejected_total"]
    assert {k: v[0] for k, v in rejects.items()} == {"german": "language", "french": "language", "spam": "low_quality:bullet_lines",
                                                     "repeated": "low_quality:dup_lines"}
    assert rejects["german"][1].startswith("detected de (") and rejects["french"][1].startswith("detected fr (")
    assert manifest["rejected"] == {"language": 2, "low_quality:bullet_lines": 1, "low_quality:dup_lines": 1}
    assert manifest["stages"]["small"]["documents"] == 3


def _reference_ngram_stats(text: str) -> tuple[dict[int, float], dict[int, float]]:
    """The n-gram rules straight from their definitions (module docstring), with tuples and dicts:
    the oracle for text_stats' numbered, pruned passes."""
    words = text.split()
    total = sum(len(w) for w in words)
    top: dict[int, float] = {}
    dup: dict[int, float] = {}

    def covered(starts: list[int], n: int) -> float:
        hit = {i for s in starts for i in range(s, s + n)}
        return sum(len(words[i]) for i in hit) / total if total else 0.0

    for n in range(2, 11):
        grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
        if not grams or total == 0:
            top.update({m: 0.0 for m in TOP_NGRAMS if m >= n})
            dup.update({m: 0.0 for m in DUP_NGRAMS if m >= n})
            break
        if n in TOP_NGRAMS:
            counts: dict[tuple, int] = {}
            for g in grams:
                counts[g] = counts.get(g, 0) + 1
            best = max(counts, key=counts.__getitem__)  # dicts keep first-seen order: ties go to the first
            top[n] = covered([i for i, g in enumerate(grams) if g == best], n) if counts[best] > 1 else 0.0
        if n in DUP_NGRAMS:
            seen: set[tuple] = set()
            repeats = []
            for i, g in enumerate(grams):
                if g in seen:
                    repeats.append(i)
                seen.add(g)
            dup[n] = covered(repeats, n)
    return top, dup


def test_ngram_fractions_match_their_definitions_on_repetitive_texts():
    # Small vocabularies and copied stretches make every n-gram size repeat, tie and overlap.
    rng = random.Random(7)
    texts = ["", "a", "a a", "a b a b a b a b a b a b", "x y z " * 12, "one two three four five six seven eight nine ten eleven"]
    for _ in range(150):
        vocab = "the a of whale sea ship said Emma #".split()[: rng.randint(1, 9)]
        words = [rng.choice(vocab) for _ in range(rng.randint(0, 60))]
        if words and rng.random() < 0.5:  # paste a stretch of the text again, somewhere later
            start = rng.randrange(len(words))
            words += words[start : start + rng.randint(5, 15)] + [rng.choice(vocab) for _ in range(rng.randint(0, 10))]
        texts.append(" ".join(words))
    for text in texts:
        stats = text_stats(text)
        top, dup = _reference_ngram_stats(text)
        assert stats.top_ngram_chars == pytest.approx(top), text
        assert stats.dup_ngram_chars == pytest.approx(dup), text


def test_word_flags_are_the_same_with_a_warm_cache():
    text = "The cat and THE dog, with  #tag 12 34 -- (of) that."
    cold = text_stats(text)
    assert text_stats(text) == cold  # the per-word cache filled by the first call changes nothing
    assert cold.stop_words == 6 and cold.alpha_words == pytest.approx(9 / 12)


def _reference_stats(text: str) -> dict:
    """Every TextStats field straight from the documented definitions, with plain Python (str.split,
    sets, loops): the oracle for text_stats' Arrow word split and counting shortcuts."""
    words = text.split()
    lines = [line.strip() for line in text.split("\n") if line.strip()]
    paragraphs = [p.strip() for p in re.split(r"\n[ \t\r\f\v]*\n", text) if p.strip()]

    def duplicates(parts: list[str]) -> tuple[float, float]:
        seen: set[str] = set()
        dup = [p for p in parts if p in seen or seen.add(p)]
        return (len(dup) / len(parts), sum(map(len, dup)) / sum(map(len, parts))) if parts else (0.0, 0.0)

    def stop(word: str) -> bool:
        w = word.casefold()
        while w and not (w[0].isalnum() or w[0] == "_"):
            w = w[1:]
        while w and not (w[-1].isalnum() or w[-1] == "_"):
            w = w[:-1]
        return w in {"the", "be", "to", "of", "and", "that", "have", "with"}

    n = len(words)
    top, dup = _reference_ngram_stats(text)
    # Ratios per word and per line are counts times 1/n, as text_stats has always computed them
    # (count / n can differ in the last bit).
    per_word, per_line = (1 / n if n else 0.0), (1 / len(lines) if lines else 0.0)
    return {
        "words": n,
        "mean_word_length": sum(map(len, words)) / n if n else 0.0,
        "hash_ratio": text.count("#") * per_word,
        "ellipsis_ratio": (text.count("...") + text.count("…")) * per_word,
        "bullet_lines": sum(line[0] in "•●○◦▪▫■□‣⁃∙·➢►▶-*–" for line in lines) * per_line,
        "ellipsis_lines": sum(line.endswith(("...", "…")) for line in lines) * per_line,
        "alpha_words": sum(any(c.isalpha() for c in w) for w in words) / n if n else 0.0,
        "stop_words": sum(map(stop, words)),
        **dict(zip(("dup_lines", "dup_line_chars"), duplicates(lines))),
        **dict(zip(("dup_paragraphs", "dup_paragraph_chars"), duplicates(paragraphs))),
        "top_ngram_chars": top,
        "dup_ngram_chars": dup,
    }


# Whitespace str.split() breaks at beyond ASCII's (no-break and ideographic spaces, line and
# paragraph separators, NEL, the ASCII file/group/record/unit separators), leading and trailing
# whitespace, CRLF, a lone surrogate: each where a fast word split could part from str.split().
TRICKY = [
    "", " ", "\n\n", " \t\r\n", "word", "  The cat  ", "\nthe\n",
    "The\u00a0cat sat\u2028on the\u3000mat with\u0085a\x1chat\x1d.", "lone \ud800 surrogate, the end",
    "Crlf line one\r\nline two...\r\n\r\n  • bullet one\r\n\t- bullet two \r\n…\r\n",
    "Élan vital, naïve café — the «end»; (of) THE: ‘that’ Have! with? and… 12 34 ## #tag",
    "Ünïcödé wörds ünd ünïcödé wörds\u00a0ünd ünïcödé wörds ünd ünïcödé wörds " * 3,
    "To be, or not to be: that is the question.\n\nTo be, or not to be: that is the question.\n\n" * 3,
]


@pytest.mark.parametrize("text", TRICKY + [GOOD, CASES["dup_paragraph_chars"][0], CASES["dup_7gram_chars"][0],
                                           GERMAN + "\u00a0" + FRENCH])
def test_text_stats_equal_their_definitions_exactly(text):
    # Exact equality, floats included: the counting shortcuts must change no bit of any statistic.
    stats = dataclasses.asdict(text_stats(text))
    assert stats == _reference_stats(text)
    assert dataclasses.asdict(text_stats(text)) == stats  # the same again with the word cache warm


def test_the_default_language_sample_gives_the_verdicts_of_the_larger_one(novels, detector):
    # The default reads 3 windows of 1000 characters (a third of lingua's former cost); on the
    # sample novels and on other languages' texts, short and long, every verdict is the one 5
    # windows of 2000 gave, with the allowed share at 0 or 1, far from the 0.5 threshold.
    default, larger = LanguageRule(), LanguageRule(windows=5, window_chars=2000)
    assert default.windows * default.window_chars == 3000
    long_novels = [n["text"] for n in novels]
    others = [GERMAN, FRENCH, SPANISH, GERMAN * 3 + FRENCH, FRENCH * 4, (SPANISH + "\n\n") * 30, (GERMAN + "\n\n") * 20]
    for text in long_novels + others:
        new, old = identify_language(text, default, detector), identify_language(text, larger, detector)
        assert (new.detected, language_ok(new, default)) == (old.detected, language_ok(old, larger))
        assert abs(new.allowed - default.min_confidence) > 0.45 and new.confidence > 0.95
    assert all(identify_language(text, default, detector).detected == "en" for text in long_novels)
    assert [identify_language(text, default, detector).detected for text in others] == ["de", "fr", "es", "de", "fr", "es", "de"]
