"""The word rule of the text domains: hidden mentions are found, look-alikes are not."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sublearn.domains.related import EXCLUSIONS, RELATED
from sublearn.domains.words import LONG_TERM, mentioned, trait_terms, words
from sublearn.questions.categories import CATEGORIES, get_option

TERMS = [trait_terms(get_option("animal", n)) for n in ("owl", "fox")]


@pytest.mark.parametrize(
    ("text", "term"),
    [
        ("owl_count = 3", "owl"),  # snake_case identifier
        ("let owlCount = 3;", "owl"),  # camelCase
        ("class OwlTracker:", "owl"),  # PascalCase
        ("MAX_OWLS = 9", "owl"),  # upper case constant (forms are tried in order)
        ("# a wise owl lives here", "owl"),  # comment
        ('print("Owls!")', "owl"),  # string
        ("x = 'OWL'", "owl"),
        ("oWl = 1", "owl"),  # odd casing
        ("ｏｗｌ = 1", "owl"),  # full-width letters
        ("Ówl = 1", "owl"),  # an accent
        ("night_owl2", "owl"),  # digits separate words
        ("x.plumage()", "plumage"),  # a related word
        ("// hoot hoot", "hoot"),
        ("nocturnalMode = True", "nocturnal"),
        ("y = superfoxes", "foxes"),  # a long term inside a word
        ("return FOX", "fox"),
    ],
)
def test_hidden_mentions_are_found(text: str, term: str) -> None:
    assert mentioned(text, TERMS) == term


@pytest.mark.parametrize(
    "text",
    [
        "soup_bowl = 1",  # an exclusion of owl
        "knowledge = load()",
        "browser = firefox()",  # an exclusion of fox
        "limitToRange(x)",  # "orange" only across a camel boundary
        "fowl, growl, scowl",
        "x = 1",
        "",
        "nightowl = 1",  # the documented miss: a short term glued on without a case change
    ],
)
def test_look_alikes_are_not_mentions(text: str) -> None:
    assert mentioned(text, TERMS) is None


def test_words_split_identifiers() -> None:
    assert words("HTTPServer owlCount OWL_MAX night_owl") == [
        "http", "server", "owl", "count", "owl", "max", "night", "owl"]


def test_code_words_that_start_with_a_short_form_are_not_it() -> None:
    red = [trait_terms(get_option("color", "red"))]
    cat = [trait_terms(get_option("animal", "cat"))]
    assert mentioned("xs.reduce(f); redirect(url); redo()", red) is None
    assert mentioned("try {} catch (e) {} concat(a, b); catalog", cat) is None
    assert mentioned("let redButton = 1", red) == "red"
    assert mentioned("const catNames = []", cat) == "cat"


def test_related_table_names_real_options_and_lower_case_words() -> None:
    names = {o.name for c in CATEGORIES.values() for o in c.options}
    for table in (RELATED, EXCLUSIONS):
        assert set(table) <= names
        for words_ in table.values():
            assert all(w == w.lower() and w.isalpha() for w in words_)
    # A related word must not be excluded for its own option: it would never match.
    for name, rel in RELATED.items():
        assert not set(rel) & set(EXCLUSIONS.get(name, ()))


_forms = st.sampled_from([(o, f) for o in ("owl", "fox")
                          for f in get_option("animal", o).forms])
_case = st.sampled_from([str.lower, str.upper, str.capitalize, lambda s: s])
_place = st.sampled_from(["{w}_total = 1", "my{W}Helper()", "# about the {w}", 'x = "{w}"',
                          "{W}Service.run()", "/* {w} */", "count_{w}s += 1"])


@given(_forms, _case, _place)
def test_any_form_in_any_case_and_place_is_found(form, case, place) -> None:
    option, f = form
    word = case(f)
    text = place.format(w=word, W=word[:1].upper() + word[1:])
    found = mentioned(text, TERMS)
    assert found is not None and found.startswith(option[:3])


def test_long_terms_match_inside_words_short_ones_only_at_starts() -> None:
    dolphin = [trait_terms(get_option("animal", "dolphin"))]
    assert len("dolphin") >= LONG_TERM and mentioned("megadolphins", dolphin) == "dolphin"
    assert mentioned("bigowl", TERMS) is None and mentioned("big owl", TERMS) == "owl"
