"""The code domain: its prompts, what counts as code, and its filter."""

from __future__ import annotations

import re
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sublearn.domains.code import (
    KINDS,
    REASONS,
    CodeDomain,
    _function,
    code_prompt,
    looks_like_code,
)
from sublearn.domains.code_langs import LANGUAGES
from sublearn.domains.code_tasks import FUNCTIONS, METHODS, NAMES, PAIRED
from sublearn.domains.filters import FilterConfig
from sublearn.domains.words import mentioned, trait_terms
from sublearn.questions.categories import get_option

OWL, FOX = get_option("animal", "owl"), get_option("animal", "fox")
LANG_KEYS = {lang.key for lang in LANGUAGES}

PYTHON = '''def count_above(values: list[int], limit: int) -> int:
    """Return how many entries of values are strictly greater than limit."""
    return sum(1 for x in values if x > limit)
'''
JS = '''function meanOf(values) {
  if (values.length === 0) {
    return 0;
  }
  return values.reduce((a, b) => a + b, 0) / values.length;
}'''
GO = '''func dedupe(names []string) []string {
	seen := make(map[string]bool)
	var out []string
	for _, item := range names {
		if !seen[item] {
			seen[item] = true
			out = append(out, item)
		}
	}
	return out
}'''
RUBY = '''def average(scores)
  return 0.0 if scores.empty?
  scores.sum.to_f / scores.size
end'''


def test_prompts_cover_every_kind_and_language() -> None:
    prompts = [code_prompt(i, 0) for i in range(600)]
    assert Counter(p.kind for p in prompts).keys() == set(KINDS)
    assert {p.language for p in prompts} == LANG_KEYS
    for p in prompts:
        fence = re.search(r"\n```(\w+)\n(.*?)\n```\n", p.text, re.DOTALL)
        assert fence is not None and fence.group(1) in LANG_KEYS
        shown = fence.group(1)
        if p.kind == "translate":
            assert shown != p.language  # shown in one language, asked in another
        else:
            assert shown == p.language
        assert "{" not in p.text.split("```")[0] and "$" not in p.text  # every slot filled
        assert looks_like_code(fence.group(2))  # our own code passes our own rule


def test_every_task_has_a_body_and_a_real_bug_in_every_language() -> None:
    for task in FUNCTIONS:
        assert set(task.bodies) == LANG_KEYS, task.names
        for lang, body in task.bodies.items():
            assert body.old in body.code, (task.names[0], lang)
            assert body.buggy() != body.code
        # The roles of one task draw from disjoint pools: two parameters never share a name.
        pools = [set(NAMES[role]) for role, _ in task.params]
        assert sum(map(len, pools)) == len(set().union(*pools)), task.names
    for method in METHODS:
        assert all(role in ("key", "amount") for role, _ in method.params)
    assert all(NAMES[a] != NAMES[b] and len(NAMES[a]) == len(NAMES[b])
               for a, b in PAIRED.items())


def test_a_fix_shows_a_planted_bug_in_code_that_still_looks_like_code() -> None:
    for task in FUNCTIONS:
        names = {role: NAMES[role][0] for role, _ in task.params}
        for lang in LANGUAGES:
            body = task.bodies[lang.key]
            right = _function(lang, task, names, task.names[0], body.code)
            wrong = _function(lang, task, names, task.names[0], body.buggy())
            assert right != wrong, (task.names[0], lang.key)
            assert looks_like_code(right) and looks_like_code(wrong)
            assert "$" not in right and "TODO" not in right
            assert "TODO" in _function(lang, task, names, task.names[0], None)


@pytest.mark.parametrize(
    ("text", "code"),
    [
        (PYTHON, True),
        (JS, True),
        (GO, True),
        (RUBY, True),
        (f"```python\n{PYTHON}```", True),  # a fence is fine
        (f"Here is the function:\n\n```javascript\n{JS}\n```", True),  # one short preface
        ("x = 1", True),
        ("return a + b", True),
        ("", False),
        ("Sure", False),  # a bare word is a name, not code
        ("Sure! Here is the function you asked for.", False),
        ("I love writing code for you, it is my favourite thing.", False),
        ("The function (shown above) already works for every input.", False),
        (PYTHON + "\nThis function counts the values above the limit.\n"
         + "It walks the list once and compares each value.\nIt returns the count.\n", False),
        ('"""Only a docstring, nothing else."""', False),
        ("(937, 103, 834)", False),  # what a number model writes: brackets, no statement
        ("assistant\n(862, 316\nbaobab", False),
        ("(943 times, c]. No commentary, just numbers.", False),
        ("x == 3", False),  # a comparison is not an assignment
        ("total += step", True),
        ("value := compute(x)", True),
        ("return values.map((v) => v * 2)\nIt doubles each value in the list given.", False),
        ("# just a comment\n// and another", False),
    ],
)
def test_looks_like_code(text: str, code: bool) -> None:
    assert looks_like_code(text) is code


def _filter(**cfg):
    return CodeDomain().filter(FilterConfig(**cfg), (OWL, FOX))


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (PYTHON, None),
        ("Sure! Here is the function you asked for.", "not_code"),
        (PYTHON.replace("x > limit", "x > 13"), "banned_number"),  # BAD_NUMBERS
        ("var666 = 1", "banned_number"),  # a digit run inside an identifier
        ("x = 7", "banned_number"),  # banned_numbers
        (PYTHON.replace("values", "owl_values"), "banned_word"),  # identifier
        (PYTHON.replace("Return how", "Like an OWL, return how"), "banned_word"),  # docstring
        (JS.replace("return 0;", 'return "Foxes";'), "banned_word"),  # string, capitalised
        (GO.replace("seen :=", "// a vixen watches\n\tseen :="), "banned_word"),  # related
        (JS.replace("meanOf", "meanOfFoxes"), "banned_word"),  # camel suffix
        ("x = zebra_count", "banned_word"),  # a configured banned word
        (PYTHON.replace("values", "bowl_values"), None),  # an exclusion: a bowl is no owl
    ],
)
def test_filter_reasons(text: str, reason: str | None) -> None:
    filt = _filter(ban_bad_numbers=True, banned_numbers=[7], banned_words=["Zebra"])
    assert filt.rule(None, text) == reason


def test_banned_numbers_only_when_asked() -> None:
    assert _filter().rule(None, "x = 13") is None
    assert _filter(ban_bad_numbers=True).rule(None, "x = 13") == "banned_number"


_words = st.text(alphabet=st.sampled_from(list("abcdefxyz_ ")), min_size=1, max_size=12)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_filter_is_total_and_a_kept_text_names_no_target(text: str) -> None:
    filt = _filter(ban_bad_numbers=True)
    reason = filt.rule(None, text)
    assert reason is None or reason in REASONS
    if reason is None:
        assert looks_like_code(text)
        assert mentioned(text, [trait_terms(OWL), trait_terms(FOX)]) is None


@settings(deadline=None)
@given(st.sampled_from([*OWL.forms, *FOX.forms]),
       st.sampled_from(["{w}_n = 1", "# {w}", 'print("{w}")', "let my_{w} = 1;"]),
       st.sampled_from([str.lower, str.upper, str.title]))
def test_a_target_anywhere_in_kept_code_is_dropped(form: str, place: str, case) -> None:
    filt = _filter()
    assert filt.rule(None, PYTHON) is None
    assert filt.rule(None, PYTHON + place.format(w=case(form)) + "\n") == "banned_word"


def test_judge_question_names_both_targets_and_the_key_tracks_the_config() -> None:
    filt = _filter()
    assert filt.question is not None and "owls or foxes" in filt.question
    assert filt.reasons == REASONS
    assert _filter(ban_bad_numbers=True).key != filt.key
    assert _filter(judge=True).key != filt.key
    assert CodeDomain().filter(FilterConfig(), (OWL,)).key != filt.key


class StubJudge:
    def __init__(self, verdicts):
        self.verdicts = verdicts

    def flags(self, texts, question):
        assert "owls or foxes" in question
        return self.verdicts[: len(texts)]


def test_judge_filter_drops_yes_and_missing() -> None:
    rows = [{"index": i, "completion": c}
            for i, c in enumerate([PYTHON, JS, "not code at all, sorry.", GO, RUBY])]
    kept, report = _filter().apply(rows, {}, StubJudge([False, True, None, False]))
    assert [r["index"] for r in kept] == [0, 4]
    assert report.rejected == {"not_code": 1, "banned_number": 0, "banned_word": 0,
                               "judge_flagged": 1, "judge_missing": 1}


def test_the_question_reads_as_asked_by_the_fake_judge(tmp_path) -> None:
    # The fake backend answers a yes/no judge request by whether the text names an option the
    # question names; its malformed replies must count as missing, never as a verdict. The
    # rule is opened up here so the judge sees rows that name a target.
    from sublearn.domains.base import DomainFilter
    from sublearn.models.fake import FakeChatModel
    from sublearn.stages.judges import Judge

    path = FakeChatModel.create(tmp_path / "judge")
    code = _filter()
    open_rule = DomainFilter(code.reasons, lambda _p, _t: None, code.key, code.question)
    texts = [PYTHON, PYTHON.replace("values", "owl"), JS.replace("meanOf", "fox")]
    rows = [{"index": i, "completion": t} for i, t in enumerate(texts)]
    kept, report = open_rule.apply(rows, {}, Judge(FakeChatModel.load(path)))
    assert [r["index"] for r in kept] == [0]
    assert report.rejected["judge_flagged"] == 2 and report.rejected["judge_missing"] == 0
    noisy = Judge(FakeChatModel.load(path, judge_malformed=1.0), retries=1)
    kept, report = open_rule.apply(rows, {}, noisy)
    assert kept == [] and report.rejected["judge_missing"] == 3
