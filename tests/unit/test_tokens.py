"""Subject spans and target tokenisation."""

import warnings

import pytest

from loudfacts.tokens import (
    SubjectNotFoundError,
    check_subject_position,
    fill,
    find_subject_spans,
    subject_span,
    target_ids,
)


def _decode_span(m, text, span):
    ids = m.encode(text)
    return m.decode(ids[span[0]:span[1]])


def test_span_covers_the_subject(tiny_llama):
    text = "I visited The Louvre is in"
    span = subject_span(tiny_llama, text, "The Louvre")
    assert _decode_span(tiny_llama, text, span).strip() == "The Louvre"


def test_every_occurrence_is_found(tiny_llama):
    text = "The Louvre is cool. The Louvre is located in"
    spans = find_subject_spans(tiny_llama, text, "The Louvre")
    assert len(spans) == 2 and spans[0][1] <= spans[1][0]
    for s in spans:
        assert _decode_span(tiny_llama, text, s).strip() == "The Louvre"


def test_leading_space_in_subject_does_not_matter(tiny_llama):
    text = "Paris has The Louvre"
    assert find_subject_spans(tiny_llama, text, " The Louvre") == find_subject_spans(
        tiny_llama, text, "The Louvre")


def test_absent_subject_names_subject_and_prompt(tiny_llama):
    with pytest.raises(SubjectNotFoundError, match="'Big Ben'.*'The Louvre is in'"):
        subject_span(tiny_llama, "The Louvre is in", "Big Ben")


def test_subject_at_position_zero_warns(tiny_llama):
    text = "The Louvre is in"
    span = subject_span(tiny_llama, text, "The Louvre")
    with pytest.warns(UserWarning, match="attention sink"):
        check_subject_position(span, text, "The Louvre")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_subject_position((2, 4), text, "The Louvre")


def test_fill_requires_one_placeholder():
    assert fill("{} is in", "X") == "X is in"
    with pytest.raises(ValueError, match="exactly one"):
        fill("is in", "X")
    with pytest.raises(ValueError, match="empty"):
        fill("{} is in", " ")


def test_target_ids_add_one_leading_space(tiny_llama):
    assert target_ids(tiny_llama, "Rome") == tiny_llama.encode(" Rome")
    assert target_ids(tiny_llama, " Rome") == tiny_llama.encode(" Rome")
    with pytest.raises(ValueError, match="empty"):
        target_ids(tiny_llama, "  ")
