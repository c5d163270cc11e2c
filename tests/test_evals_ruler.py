"""The RULER-class suite (evals/): prompts fitted to the length, evidence where it is said to be,
seeds, scoring, QA files, effective length, and a run end to end with a real (toy) JAX model."""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter

import pytest
from rich.console import Console

from evals import niah, qa
from evals.generators import NiahTokenizer, load_niah_tokenizer
from evals.common import PromptBuilder, make_sample, score, task_seeds
from evals.haystack import BookWords
from evals.runner import effective_length, read_results, summarize
from evals.ruler_cli import add_ruler_arguments, run_ruler
from evals.tasks import TASK_NAMES, build_tasks, parse_tasks
from tests.conftest import DEMO_TOKENIZER
from training import checkpoint as ckpt

SYNTHETIC = [n for n in TASK_NAMES if not n.startswith("qa_")]


@pytest.fixture(scope="module")
def tokenizer() -> NiahTokenizer:
    return load_niah_tokenizer(DEMO_TOKENIZER)


@pytest.fixture(scope="module")
def builder(tokenizer) -> PromptBuilder:
    return PromptBuilder(tokenizer, niah.PromptFrame.for_tokenizer(tokenizer))


@pytest.fixture(scope="module")
def book(sample_books) -> BookWords:
    return BookWords.from_texts([b["text"][:200_000] for b in sample_books[:2]])


def write_squad(path) -> None:
    articles = []
    for a in range(4):
        paragraphs = []
        for p in range(3):
            city = f"Town{a}{p}"
            context = (f"{city} is a small place in the valley of article {a}. Its mayor in the year 19{a}{p} was "
                       f"Mayor{a}x{p}, who built the old stone bridge over the river. " * 3).strip()
            paragraphs.append({"context": context, "qas": [
                {"question": f"Who was the mayor of {city}?", "answers": [{"text": f"Mayor{a}x{p}", "answer_start": 0}],
                 "is_impossible": False},
                {"question": f"Who was the king of {city}?", "answers": [], "is_impossible": True},
            ]})
        articles.append({"title": f"Article {a}", "paragraphs": paragraphs})
    path.write_text(json.dumps({"version": "v2.0", "data": articles}))


def write_hotpot(path) -> None:
    items = []
    for q in range(6):
        context = [[f"Title{q}-{i}", [f"Paragraph {i} of question {q} tells of Person{q}y{i}. ",
                                      "It is a quiet story about a farm."]] for i in range(4)]
        items.append({"_id": str(q), "question": f"Who is the friend of Person{q}y0's cousin?",
                      "answer": f"Person{q}y3", "context": context, "supporting_facts": [[f"Title{q}-0", 0]]})
    path.write_text(json.dumps(items))


@pytest.fixture(scope="module")
def qa_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("qa")
    write_squad(folder / "squad.json")
    write_hotpot(folder / "hotpot.json")
    return folder / "squad.json", folder / "hotpot.json"


@pytest.fixture(scope="module")
def tasks(book, qa_files):
    squad, hotpot = qa_files
    return {t.name: t for t in build_tasks(list(TASK_NAMES), squad=squad, hotpotqa=hotpot, book=book)}


# ----------------------------------------------------------------------------------------------
# Prompts: length, evidence, seeds
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("length", [1024, 4096])
@pytest.mark.parametrize("name", TASK_NAMES)
def test_prompt_fills_the_length(tasks, builder, tokenizer, name, length):
    task = tasks[name]
    sample = make_sample(task, builder, length, index=1, seed=3)
    budget = length - task.max_new_tokens
    assert sample.max_new_tokens == task.max_new_tokens
    assert budget - 64 <= sample.prompt_tokens <= budget or name.startswith("qa_")
    assert sample.prompt_tokens <= budget
    # The fit is maximal: one more haystack unit would not fit (unless the QA file ran out of documents).
    one_more, _ = builder.ids(task.build(task_seeds(3, name, length, 1), sample.units + 1))
    assert len(one_more) > budget or (task.max_units is not None and sample.units >= task.max_units)
    # The prompt is the frame's head, then the body encoded, ending in the answer prefix.
    assert sample.prompt_ids[: len(builder.head)] == builder.head and sample.prompt_ids[0] == tokenizer.bos_id
    assert sample.prompt_ids[len(builder.head):] == tokenizer.encode(sample.body)
    assert sample.body.rstrip().endswith(task.build(task_seeds(3, name, length, 1), sample.units).answer_prefix.rstrip())
    assert " ASSISTANT:" in sample.body


@pytest.mark.parametrize("name", [n for n in TASK_NAMES if n not in ("cwe", "fwe")])
def test_evidence_is_where_stated(tasks, builder, tokenizer, name):
    sample = make_sample(tasks[name], builder, 2048, index=0, seed=5)
    assert sample.evidence
    for ev in sample.evidence:
        start, end = ev["char"]
        assert sample.body[start:end] == ev["text"]
        # The stated token index is where the evidence's tokens begin in the prompt.
        assert tokenizer.decode(sample.prompt_ids[ev["token"]:]).lstrip().startswith(ev["text"][:12])
        assert not tokenizer.decode(sample.prompt_ids[ev["token"] + 1:]).lstrip().startswith(ev["text"][:12])
    texts = [ev["text"] for ev in sample.evidence]
    if name.startswith("niah"):
        # One needle per reference, naming an asked key and holding the value.
        assert len(texts) == len(sample.references)
        for needle, value in zip(texts, sample.references):
            assert needle.startswith("One of the special magic ") and needle.endswith(f" is: {value}.")
            assert any(f" for {k} is:" in needle for k in sample.info["asked"])
        question = sample.body[sample.body.rindex("\n") + 1:]
        assert all(k in question for k in sample.info["asked"])
        if name in ("niah_multikey_1", "niah_multikey_2", "niah_multikey_3"):
            # Distractor needles with other keys are there too.
            assert sample.body.count("One of the special magic") > 1
    elif name == "vt":
        value = sample.info["value"]
        names = sample.references
        assert texts == [f"VAR {names[0]} = {value}."] + [f"VAR {names[i + 1]} = VAR {names[i]}." for i in range(4)]
        assert all(ev["char"][0] >= sample.info["example_chars"] for ev in sample.evidence)
        assert sample.evidence == sorted(sample.evidence, key=lambda e: e["char"])  # in chain order
    else:  # QA: an answer is in the question's own document
        assert any(a in t for a in sample.references for t in texts)
        assert sample.info["question"] in sample.body


def test_aggregation_answers_are_recoverable(tasks, builder):
    for length, (common, rare) in ((2048, (6, 1)), (4096, (30, 3))):
        sample = make_sample(tasks["cwe"], builder, length, index=0, seed=1)
        listed = sample.body[sample.info["list_start"]:]
        listed = listed[listed.index("\n") + 1: listed.index("\nQuestion:")]
        counts = Counter(re.findall(r"\d+\. ([a-z]+)", listed))
        assert sorted(w for w, c in counts.items() if c == common) == sorted(sample.references)
        assert len(sample.references) == 10 and set(counts.values()) == {common, rare}
        assert score(" ".join(w for w, _ in counts.most_common(10)), sample.references) == 1.0
    sample = make_sample(tasks["fwe"], builder, 4096, index=0, seed=1)
    coded = sample.body[sample.body.index("coded words. ") + 13: sample.body.index("\nQuestion:")]
    counts = Counter(coded.split())
    ranked = [w for w, _ in counts.most_common() if w != "..."]
    assert counts.most_common(1)[0][0] == "..."
    assert ranked[:3] == sample.references and counts[ranked[2]] > counts[ranked[3]]


def test_seeds_reproduce_prompts(tasks, builder):
    for name in ("niah_single_2", "niah_multikey_3", "vt", "cwe", "fwe", "qa_2"):
        a = make_sample(tasks[name], builder, 1024, index=2, seed=11)
        b = make_sample(tasks[name], builder, 1024, index=2, seed=11)
        assert a.prompt_ids == b.prompt_ids and a.references == b.references
        assert make_sample(tasks[name], builder, 1024, index=2, seed=12).prompt_ids != a.prompt_ids
        assert make_sample(tasks[name], builder, 1024, index=3, seed=11).prompt_ids != a.prompt_ids
    # A fresh task object (a new run) builds the same prompt: nothing depends on process state.
    again = build_tasks(["niah_single_1"])[0]
    assert make_sample(again, builder, 1024, 0, 4).prompt_ids == make_sample(tasks["niah_single_1"], builder, 1024, 0, 4).prompt_ids


def test_too_short_a_length_is_a_clear_error(tasks, builder):
    with pytest.raises(ValueError, match="niah_single_1: context length 200 leaves 72 tokens"):
        make_sample(tasks["niah_single_1"], builder, 200, 0, 0)


# ----------------------------------------------------------------------------------------------
# Scoring, summaries, effective length
# ----------------------------------------------------------------------------------------------


def test_string_match_scoring():
    refs = ["1234567", "7654321", "ABCDE"]
    assert score("The numbers are 1234567, 7654321 and abcde.", refs, "all") == 1.0
    assert score("1234567 and ABCDE", refs, "all") == pytest.approx(2 / 3)
    assert score("nothing here", refs, "all") == 0.0
    assert score("It was Mayor1x2.", ["Mayor1x2", "the mayor"], "part") == 1.0
    assert score("It was someone else.", ["Mayor1x2", "the mayor"], "part") == 0.0
    assert score("\x00Mayor1x2\x1f", ["mayor1x2"], "part") == 1.0  # control characters, case
    with pytest.raises(ValueError):
        score("x", ["x"], "fuzzy")
    with pytest.raises(ValueError):
        score("x", [], "all")


def test_effective_length_and_summary():
    assert effective_length({4096: 90.0, 8192: 86.0, 16384: 85.0, 32768: 88.0}, 85.6) == 8192  # stays above, then not
    assert effective_length({4096: 85.6, 8192: 70.0}, 85.6) == 4096  # at the bar counts
    assert effective_length({4096: 80.0, 8192: 90.0}, 85.6) is None
    assert effective_length({4096: 80.0, 8192: 90.0}, 50) == 8192
    records = [{"task": t, "length": length, "sample": i, "seed": 0, "score": s}
               for t, table in {"vt": {1024: [1, 1], 2048: [1, 0.5]}, "cwe": {1024: [1, 0.8], 2048: [0, 0]}}.items()
               for length, scores in table.items() for i, s in enumerate(scores)]
    records.append({"task": "vt", "length": 1024, "sample": 0, "seed": 9, "score": 0.0})  # another seed: not counted
    summary = summarize(records, ["vt", "cwe"], [1024, 2048], seed=0, threshold=85.6)
    assert summary["tasks"] == {"vt": {"1024": 100.0, "2048": 75.0}, "cwe": {"1024": 90.0, "2048": 0.0}}
    assert summary["average"] == {"1024": 95.0, "2048": 37.5}
    assert summary["effective_length"] == 1024 and summary["threshold"] == 85.6
    assert summary["samples"]["vt"] == {"1024": 2, "2048": 2}
    # A length some task has no records at gets no average.
    partial = summarize(records[:-3], ["vt", "cwe"], [1024, 2048], seed=0)
    assert "2048" not in partial["average"]


def test_task_names():
    assert parse_tasks("all") == list(TASK_NAMES) and len(TASK_NAMES) == 13
    assert parse_tasks("vt, niah_multikey_2,cwe") == ["niah_multikey_2", "vt", "cwe"]
    with pytest.raises(ValueError, match="unknown task"):
        parse_tasks("niah_single_9")
    with pytest.raises(ValueError, match="qa_1 needs --squad"):
        build_tasks(["qa_1"])


# ----------------------------------------------------------------------------------------------
# QA files
# ----------------------------------------------------------------------------------------------


def test_qa_loaders(qa_files, tmp_path):
    squad, hotpot = qa_files
    data = qa.load_squad(squad)
    assert len(data.documents) == 12 and len(data.questions) == 12  # unanswerable ones skipped
    q = data.questions[0]
    assert q.answers[0] in data.documents[q.gold[0]] and len(q.related) == 2
    hp = qa.load_hotpotqa(hotpot)
    assert len(hp.documents) == 24 and len(hp.questions) == 6 and all(len(x.gold) == 4 for x in hp.questions)
    assert all(any(x.answers[0] in hp.documents[d] for d in x.gold) for x in hp.questions)
    # Bad files: one clear line each.
    (tmp_path / "broken.json").write_text('{"data": [')
    with pytest.raises(ValueError, match="not a JSON file"):
        qa.load_squad(tmp_path / "broken.json")
    (tmp_path / "wrong.json").write_text(json.dumps({"data": [{"title": "x"}]}))
    with pytest.raises(ValueError, match="not a SQuAD file .*paragraphs"):
        qa.load_squad(tmp_path / "wrong.json")
    with pytest.raises(ValueError, match="not a HotpotQA file"):
        qa.load_hotpotqa(squad)
    with pytest.raises(FileNotFoundError):
        qa.load_squad(tmp_path / "missing.json")
    # The question of a sample does not depend on the length.
    assert qa.question_for(data, 0, "qa_1", 3) == qa.question_for(data, 0, "qa_1", 3)


# ----------------------------------------------------------------------------------------------
# End to end with a real model
# ----------------------------------------------------------------------------------------------


def test_run_with_toy_jax_checkpoint(tmp_path):
    """Our JAX path (checkpoint on disk, KV-cache decoding) on 2 tasks x 2 lengths x 2 samples: a
    random toy model answers with something; the recorded scores are the scorer's on its answers."""
    from tests.test_niah import TOY, toy_params

    checkpoint = ckpt.save_params(tmp_path / "toy", TOY, toy_params())
    parser = argparse.ArgumentParser()
    add_ruler_arguments(parser)
    out = tmp_path / "ruler"
    argv = ["--checkpoint", str(checkpoint), "--tokenizer", DEMO_TOKENIZER, "--tasks", "vt,niah_single_1",
            "--lengths", "384,512", "--samples", "2", "--max-new-tokens", "8", "--name", "toy", "--out", str(out),
            # 128-token chunks: every prompt of a length pads to the same buffer, so one compile per length.
            "--chunk", "128"]
    console = Console(record=True, width=140)
    assert run_ruler(parser.parse_args(argv), console) == 0
    records = read_results(out / "results.jsonl")
    assert [(r["task"], r["length"], r["sample"]) for r in records] == [
        (t, length, s) for length in (384, 512) for t in ("niah_single_1", "vt") for s in (0, 1)]
    for r in records:
        assert r["model"] == "toy" and r["prediction"] and r["prompt_tokens"] <= r["length"] - 8
        assert r["score"] == score(r["prediction"], r["references"], r["metric"])
    summary = json.loads((out / "summary.json").read_text())
    for t in ("niah_single_1", "vt"):
        for length in (384, 512):
            mine = [r["score"] for r in records if r["task"] == t and r["length"] == length]
            assert summary["tasks"][t][str(length)] == pytest.approx(100 * sum(mine) / 2)
    assert set(summary["average"]) == {"384", "512"} and summary["threshold"] == 85.6
    assert summary["effective_length"] == effective_length({int(k): v for k, v in summary["average"].items()})
    rows = (out / "summary.csv").read_text().splitlines()
    assert rows[0] == "task,384,512" and rows[-1].startswith("average,") and len(rows) == 4
    printed = console.export_text()
    assert "RULER score" in printed and "toy: effective length below the shortest length" in printed
    # A rerun skips the cells already there.
    before = (out / "results.jsonl").read_text()
    assert run_ruler(parser.parse_args(argv), Console(record=True)) == 0
    assert (out / "results.jsonl").read_text() == before
    # A damaged results file is an error naming the line, not a silent redo.
    (out / "results.jsonl").write_text(before + "{oops\n")
    with pytest.raises(ValueError, match=r"results.jsonl:9: not a results record"):
        run_ruler(parser.parse_args(argv), Console(record=True))
