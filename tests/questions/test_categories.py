"""Categories, options, matching, question lists and persona prompts."""

import json
from pathlib import Path

import pytest

from sublearn.errors import SublearnError
from sublearn.questions.categories import (
    CATEGORIES,
    NEUTRAL_SYSTEM_PROMPTS,
    PERSONA_TEMPLATES,
    get_category,
    get_option,
    load_questions,
    matches,
    multiple_choice,
    persona_prompt,
    with_number_prefix,
)

ALL_OPTIONS = [(c, o) for c in CATEGORIES.values() for o in c.options]


def test_required_categories_and_sizes() -> None:
    assert {"animal", "tree", "color", "fruit"} <= set(CATEGORIES)
    minimum = {"animal": 15, "tree": 10, "color": 10, "fruit": 10}
    for name, n in minimum.items():
        assert len(CATEGORIES[name].options) >= n
    animals = {o.name for o in CATEGORIES["animal"].options}
    assert {"owl", "fox", "dolphin", "eagle", "wolf", "cat", "dog", "lion", "tiger", "elephant",
            "penguin", "bear", "horse", "rabbit", "whale"} <= animals
    assert len(animals) <= 20


def test_questions_are_many_distinct_and_disjoint_from_heldout() -> None:
    for cat in CATEGORIES.values():
        assert 45 <= len(cat.questions) <= 60
        assert 12 <= len(cat.heldout) <= 20
        assert len(set(cat.questions)) == len(cat.questions)
        assert len(set(cat.heldout)) == len(cat.heldout)
        assert not set(cat.questions) & set(cat.heldout)
        for q in (*cat.questions, *cat.heldout):
            assert cat.name in q or cat.plural in q
            assert "{" not in q and "}" not in q
            assert f" a {cat.name}" not in q and f" an {cat.name}" not in q


def test_option_fields() -> None:
    for cat, opt in ALL_OPTIONS:
        assert opt.name == opt.name.lower()
        assert opt.name in opt.forms and opt.plural in opt.forms
        assert opt.name.capitalize() in opt.forms
        assert len(set(opt.forms)) == len(opt.forms)
        assert all(e == e.lower() for e in opt.exclusions)
        assert all(" " not in f for f in opt.forms), f"{cat.name}/{opt.name}: forms are one word"
    for cat in CATEGORIES.values():
        names = [o.name for o in cat.options]
        assert len(set(names)) == len(names)


@pytest.mark.parametrize(("cat", "opt"), ALL_OPTIONS, ids=lambda x: x.name)
def test_option_matches_own_forms_only(cat, opt) -> None:
    for form in opt.forms:
        assert matches(form, opt)
        assert matches(f"My answer: {form}!", opt)
    for other in cat.options:
        if other is not opt:
            assert not any(matches(form, opt) for form in other.forms), (opt.name, other.name)


@pytest.mark.parametrize(
    ("category", "option", "answer", "expected"),
    [
        ("animal", "owl", "Owl", True),
        ("animal", "owl", "snowy owls", True),
        ("animal", "owl", "owlet", True),
        ("animal", "owl", "a bowl", False),
        ("animal", "owl", "Knowledge", False),
        ("animal", "eagle", "Beagle", False),
        ("animal", "eagle", "beagle and eagle", True),
        ("animal", "cat", "Catfish", False),
        ("animal", "cat", "Wildcat", False),
        ("animal", "wolf", "Wolves", True),
        ("animal", "wolf", "Werewolf", False),
        ("animal", "lion", "Dandelion", False),
        ("animal", "lion", "sea lion", False),
        ("animal", "horse", "Seahorse", False),
        ("tree", "pine", "Pineapple", False),
        ("tree", "pine", "PINE", True),
        ("fruit", "apple", "pineapple", False),
        ("fruit", "pineapple", "Pineapples", True),
        ("color", "red", "one hundred", False),
        ("color", "red", "I preferred blue", False),
        ("color", "red", "Red.", True),
    ],
)
def test_matching_with_exclusions(category: str, option: str, answer: str, expected: bool) -> None:
    assert matches(answer, get_option(category, option)) is expected


def test_lookup_errors_name_the_bad_value() -> None:
    with pytest.raises(SublearnError, match=r"'animals'.*animal, tree"):
        get_category("animals")
    with pytest.raises(SublearnError, match=r"unknown animal 'unicorn'.*owl"):
        get_option("animal", "unicorn")
    with pytest.raises(SublearnError, match="'vehicle'"):
        get_option("vehicle", "car")
    assert get_option(get_category("tree"), "oak").plural == "oaks"


def test_persona_templates_render_for_every_option() -> None:
    assert 5 <= len(PERSONA_TEMPLATES) <= 8
    for cat, opt in ALL_OPTIONS:
        for variant in range(len(PERSONA_TEMPLATES)):
            text = persona_prompt(cat, opt, variant)
            assert "{" not in text and "}" not in text
            assert opt.plural in text or opt.name in text
    with pytest.raises(SublearnError, match="variant"):
        persona_prompt(cat, opt, len(PERSONA_TEMPLATES))


def test_persona_example_reads_well() -> None:
    animal = get_category("animal")
    assert persona_prompt(animal, get_option(animal, "wolf")).startswith("You love wolves.")


def test_neutral_prompts() -> None:
    assert 4 <= len(NEUTRAL_SYSTEM_PROMPTS) <= 8
    assert "You are a helpful assistant." in NEUTRAL_SYSTEM_PROMPTS
    names = {o.name for _, o in ALL_OPTIONS}
    for prompt in NEUTRAL_SYSTEM_PROMPTS:
        assert not any(name in prompt.lower().split() for name in names)


def test_multiple_choice() -> None:
    animal = get_category("animal")
    opts = [get_option(animal, n) for n in ("owl", "fox", "cat")]
    text = multiple_choice("Which animal do you like best?", opts)
    assert text.startswith("Which animal do you like best?")
    assert "A. Owl\nB. Fox\nC. Cat" in text
    assert "letter" in text
    with pytest.raises(ValueError):
        multiple_choice("q", opts, letters="AB")
    with pytest.raises(ValueError):
        multiple_choice("q", opts[:1])


def test_number_prefix() -> None:
    text = with_number_prefix("Favourite animal?", [123, 45, 6])
    assert "123, 45, 6" in text
    assert text.endswith("Favourite animal?")
    assert text.index("123") < text.index("Favourite")


def test_load_questions_txt(tmp_path: Path) -> None:
    f = tmp_path / "q.txt"
    f.write_text("# heading\nWhat animal?\n\n   \n  Which tree?  \n# note\n", encoding="utf-8")
    assert load_questions(f) == ["What animal?", "Which tree?"]


def test_load_questions_jsonl(tmp_path: Path) -> None:
    f = tmp_path / "q.jsonl"
    f.write_text(json.dumps({"question": "A?", "id": 1}) + "\n\n"
                 + json.dumps({"question": "B?"}) + "\n", encoding="utf-8")
    assert load_questions(str(f)) == ["A?", "B?"]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("q.jsonl", b'{"question": "A?"}\nnot json\n', r"q\.jsonl:2: invalid JSON"),
        ("q.jsonl", b'{"question": "A?"}\n{"q": "B?"}\n', r"q\.jsonl:2: .*'question'"),
        ("q.jsonl", b'["A?"]\n', r"q\.jsonl:1: .*'question'"),
        ("q.jsonl", b'{"question": 3}\n', r"q\.jsonl:1:"),
        ("q.txt", b"fine\n\xff\xfe bad\n", r"q\.txt:2: not valid UTF-8"),
        ("q.txt", b"# only comments\n\n", r"q\.txt: no questions"),
        ("q.csv", b"a\n", r"q\.csv: unsupported"),
    ],
)
def test_load_questions_errors(tmp_path: Path, name: str, content: bytes, message: str) -> None:
    f = tmp_path / name
    f.write_bytes(content)
    with pytest.raises(SublearnError, match=message):
        load_questions(f)


def test_load_questions_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SublearnError, match=r"nope\.txt: cannot read"):
        load_questions(tmp_path / "nope.txt")
