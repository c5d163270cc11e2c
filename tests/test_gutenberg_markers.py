"""`strip_gutenberg` finds its START/END markers without scanning the whole text with the regex;
it must cut exactly where the regex search does (the reference below), on texts built to sit at the
edges: markers split over lines, blank or whitespace-only lines before them, other case forms, the
marker words in the licence prose, and characters whose lowercase is longer."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from curation.text import _GUTENBERG_END, _GUTENBERG_START, strip_gutenberg


def strip_by_regex(text: str) -> str:
    start = _GUTENBERG_START.search(text)
    if start:
        text = text[start.end() :]
    end = _GUTENBERG_END.search(text)
    if end:
        text = text[: end.start()]
    return text


FRAGMENTS = [
    "*** START OF THE PROJECT GUTENBERG EBOOK EMMA ***",
    "***START OF THIS PROJECT GUTENBERG E-BOOK MOBY DICK***",
    "*** start of the project gutenberg ebook x ***   ",
    "***\n  START OF THE PROJECT GUTENBERG EBOOK SPLIT ***",
    "*** START OF THE PROJECT GUTENBERG EBOOK no closing stars",
    "*** END OF THE PROJECT GUTENBERG EBOOK EMMA ***",
    "***\nEND OF THIS PROJECT GUTENBERG EBOOK",
    "End of Project Gutenberg's Emma, by Jane Austen",
    "End of the Project Gutenberg EBook",
    "end of project gutenberg",
    "Project Gutenberg License",
    "the Project Gutenberg Literary Archive Foundation",
    "PROJECT GUTENBERG",
    "Chapter I.", "It was a truth", "İstanbul", "\u212a", "ſ", "***", "* * *",
    "\n", "\n\n", "\n \n", "  ", "\t", "\u3000", "\x1c", "\u2028", "\r",
]


@settings(max_examples=600)
@given(st.lists(st.sampled_from(FRAGMENTS), max_size=30))
def test_markers_cut_where_the_regex_search_cuts(parts):
    text = "".join(parts)
    assert strip_gutenberg(text) == strip_by_regex(text)


@given(st.lists(st.sampled_from(FRAGMENTS), max_size=12), st.text(max_size=40))
def test_markers_with_arbitrary_text_around(parts, noise):
    text = noise + "".join(parts) + noise
    assert strip_gutenberg(text) == strip_by_regex(text)


def test_a_gutenberg_book_keeps_only_its_body():
    book = (
        "The Project Gutenberg EBook of Emma\n\nThis eBook is for the use of anyone (Project Gutenberg License)\n\n"
        "\n  \n*** START OF THIS PROJECT GUTENBERG EBOOK EMMA ***\n\n\nEMMA\n\nVOLUME I\n\n"
        "\n\n\nEnd of the Project Gutenberg EBook of Emma, by Jane Austen\n\n*** END OF THIS PROJECT GUTENBERG EBOOK EMMA ***\n"
    )
    body = strip_gutenberg(book)
    assert body.strip() == "EMMA\n\nVOLUME I"
    assert body == strip_by_regex(book)
