"""The per-worker word memo gives the function's values, computes each word once while it fits,
and never holds more than its bound."""

from __future__ import annotations

from curation.word_memo import WordMemo


def test_values_are_the_functions_and_each_word_is_computed_once():
    calls: list[str] = []

    def length(word: str) -> int:
        calls.append(word)
        return len(word)

    memo = WordMemo(length, max_words=10)
    assert memo(["a", "bb", "a", ""]) == [1, 2, 1, 0]
    assert memo(["bb", "ccc"]) == [2, 3]
    # Within one call a repeated miss is computed again (the lookups run before any insert);
    # across calls a word is never computed again.
    assert calls == ["a", "bb", "a", "", "ccc"]


def test_the_memo_is_cleared_before_it_passes_its_bound():
    memo = WordMemo(str.upper, max_words=4)
    assert memo(["a", "b", "c"]) == ["A", "B", "C"]
    assert len(memo.values) == 3
    assert memo(["d", "e"]) == ["D", "E"]  # 3 + 2 > 4: cleared first
    assert sorted(memo.values) == ["d", "e"]
