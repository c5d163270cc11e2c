"""Every RULER task is answerable from its prompt alone: a program that reads only the prompt (the
haystack and the task's question) recovers the references and scores 100 through the suite's own
runner and scorer, while noise answers score ~0. QA runs on small SQuAD / HotpotQA files written here."""

from __future__ import annotations

import json
import re
from collections import Counter

import numpy as np
import pytest

from evals import niah
from evals.generators import load_niah_tokenizer
from evals.common import PromptBuilder, make_sample, score
from evals.haystack import BookWords
from evals.runner import TextBackend, run_suite
from evals.tasks import TASK_NAMES, build_tasks
from tests.conftest import DEMO_TOKENIZER

LENGTHS = (1024, 2048)
SAMPLES = 2


def write_squad(path) -> None:
    articles = []
    for a in range(4):
        paragraphs = []
        for p in range(3):
            town = f"Town{a}{p}"
            context = (f"{town} lies in valley number {a}. In {1900 + 10 * a + p} the mayor of {town} was "
                       f"Mayor{a}x{p}, who built a bridge. The river is slow here.")
            paragraphs.append({"context": context, "qas": [
                {"question": f"Who was the mayor of {town}?", "answers": [{"text": f"Mayor{a}x{p}", "answer_start": 0}]}]})
        articles.append({"title": f"Article {a}", "paragraphs": paragraphs})
    path.write_text(json.dumps({"version": "v2.0", "data": articles}))


def write_hotpot(path) -> None:
    """Two-hop questions: the film a person starred in, then that film's director."""
    items = []
    for q in range(8):
        context = [[f"Film{q}", [f"Film{q} is a drama that starred Actor{q}. ", "It was shot in winter."]],
                   [f"Making of Film{q}", [f"Film{q} was directed by Director{q}. ", "It won no prizes."]],
                   [f"Farm{q}", ["A quiet story about a farm. ", "The cows are brown."]]]
        items.append({"_id": str(q), "question": f"Who directed the film that starred Actor{q}?",
                      "answer": f"Director{q}", "context": context})
    path.write_text(json.dumps(items))


# ----------------------------------------------------------------------------------------------
# The oracle: prompt text in, answer out. It knows the task formats, never the sample's references.
# ----------------------------------------------------------------------------------------------


def last_question(body: str) -> str:
    return body[body.rindex("Question:"):] if "Question:" in body else body[body.rindex("\n") + 1:]


def oracle(task: str, body: str) -> str:
    if task.startswith("niah"):
        question = body[body.rindex("\n", 0, body.rindex("mentioned in the provided text?")) + 1:]
        query = re.search(r" for (.+) mentioned in the provided text\?", question).group(1)
        keys = re.split(r", and |, | and ", query)
        found = dict(re.findall(r"One of the special magic \w+ for (\S+) is: (\S+)\.(?=\s|$)", body))
        values = []
        for key in keys:
            values += re.findall(rf"One of the special magic \w+ for {re.escape(key)} is: (\S+)\.(?=\s|$)", body)
        assert values and all(k in found for k in keys), "the asked keys have needles"
        return " ".join(values)
    if task == "vt":
        value = re.search(r"assigned the value (\d+) in the text above\.", last_question(body)).group(1)
        assigned = re.findall(r"VAR ([A-Z]{5}) = (VAR [A-Z]{5}|\d+)\.", body)
        names = [n for n, v in assigned if v == value]
        grew = True
        while grew:
            more = [n for n, v in assigned if v.startswith("VAR ") and v[4:] in names and n not in names]
            names += more
            grew = bool(more)
        return " ".join(names)
    if task == "cwe":
        listed = body[body.rindex("Memorize the ones that appear most often.\n"):body.rindex("\nQuestion:")]
        counts = Counter(re.findall(r"\d+\. ([a-z]+)", listed))
        return ", ".join(w for w, _ in counts.most_common(10))
    if task == "fwe":
        coded = body[body.rindex("coded words. ") + 13:body.rindex("\nQuestion:")]
        counts = Counter(w for w in coded.split() if w != "...")
        return " ".join(w for w, _ in counts.most_common(3))
    if task == "qa_1":
        town = re.search(r"Who was the mayor of (\w+)\?", last_question(body)).group(1)
        return re.search(rf"the mayor of {town} was (\w+),", body).group(1)
    if task == "qa_2":
        actor = re.search(r"the film that starred (\w+)\?", last_question(body)).group(1)
        film = re.search(rf"(\w+) is a drama that starred {actor}\.", body).group(1)
        return re.search(rf"{film} was directed by (\w+)\.", body).group(1)
    raise AssertionError(f"no oracle for {task}")


@pytest.fixture(scope="module")
def builder() -> PromptBuilder:
    tokenizer = load_niah_tokenizer(DEMO_TOKENIZER)
    return PromptBuilder(tokenizer, niah.PromptFrame.for_tokenizer(tokenizer))


@pytest.fixture(scope="module")
def tasks(sample_books, tmp_path_factory):
    folder = tmp_path_factory.mktemp("qa")
    write_squad(folder / "squad.json")
    write_hotpot(folder / "hotpot.json")
    book = BookWords.from_texts([b["text"][:100_000] for b in sample_books[:2]])
    return build_tasks(list(TASK_NAMES), squad=folder / "squad.json", hotpotqa=folder / "hotpot.json", book=book)


def test_oracle_scores_100_on_every_task(tasks, builder, tmp_path):
    assert [t.name for t in tasks] == list(TASK_NAMES)
    seen: dict[str, list[str]] = {}

    def answerer(name: str):
        def answer(body: str) -> str:
            seen.setdefault(name, []).append(body)
            return oracle(name, body)
        return answer

    for task in tasks:
        summary = run_suite(TextBackend(answerer(task.name), "oracle"), builder, [task], LENGTHS, SAMPLES,
                            tmp_path / task.name)
        assert summary["tasks"][task.name] == {str(n): 100.0 for n in LENGTHS}, task.name
        assert summary["effective_length"] == max(LENGTHS)
        assert len(seen[task.name]) == len(LENGTHS) * SAMPLES
    # The oracle read real prompts: each one differs and ends in the answer prefix the model continues.
    assert all(len(set(bodies)) == len(bodies) for bodies in seen.values())


def test_noise_answers_score_about_zero(tasks, builder):
    r = np.random.default_rng(0)
    alphabet = list("abcdefghijklmnopqrstuvwxyz0123456789 ")
    scores = {}
    for task in tasks:
        cells = []
        for length in LENGTHS:
            for index in range(SAMPLES):
                sample = make_sample(task, builder, length, index, seed=0)
                noise = "".join(r.choice(alphabet, 60))
                cells += [score(noise, sample.references, sample.metric),
                          score("The grass is green. The sky is blue.", sample.references, sample.metric)]
        scores[task.name] = sum(cells) / len(cells)
    assert scores.keys() == set(TASK_NAMES)
    assert all(s <= 0.02 for s in scores.values()), scores


def test_distractor_answers_score_zero(tasks, builder):
    """The values of the needles not asked for, and other documents' answers, are wrong answers."""
    by_name = {t.name: t for t in tasks}
    for name in ("niah_multikey_1", "niah_multikey_2", "niah_multikey_3"):
        sample = make_sample(by_name[name], builder, 2048, 0, seed=0)
        asked = set(sample.info["asked"])
        wrong = [v for k, v in re.findall(r"One of the special magic \w+ for (\S+) is: (\S+)\.(?=\s|$)", sample.body)
                 if k not in asked]
        assert wrong and score(" ".join(wrong), sample.references) == 0.0
    sample = make_sample(by_name["qa_1"], builder, 2048, 0, seed=0)
    others = [m for m in re.findall(r"was (Mayor\w+),", sample.body) if m not in sample.references]
    assert others and score(" ".join(others), sample.references, "part") == 0.0
