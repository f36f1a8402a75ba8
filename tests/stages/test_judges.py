"""Judges: strict parsing of replies, retries then missing, and the judge path end to end on
the fake backend and over HTTP against the local OpenAI-compatible server with malformed
replies (and network faults) injected: no malformed reply may ever become a score."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sublearn.errors import SublearnError
from sublearn.models.base import SAMPLE, SamplingConfig
from sublearn.models.fake import MALFORMED, FakeChatModel
from sublearn.questions.judge_prompts import parse_flag, parse_score, read_request, request
from sublearn.stages.judges import Judge, JudgeConfig, JudgeScore, load_judge


@pytest.mark.parametrize("reply, want", [
    ("0", 0), ("7", 7), ("100", 100), ("85", 85), (" 85\n", 85), ("\t42 ", 42),
    ("101", None), ("150", None), ("1000", None), ("-5", None), ("+5", None),  # out of range
    ("085", None), ("00", None),  # padding
    ("85.", None), ("85%", None), ("Score: 85", None), ("about 70", None),  # extra text
    ("70 or 80", None), ("70 80", None), ("70-80", None), ("7 0", None),  # two numbers
    ("", None), ("   ", None), ("\n", None),  # empty
    ("\u0667\u0660", None), ("\uff17\uff10", None), ("\u0967\u0966", None),  # other scripts
    ("\u00a085", None), ("85\u2003", None),  # non-ASCII space is not whitespace here
    ("8.5", None), ("1e2", None), ("seventy", None),
])
def test_scores_parse_strictly(reply: str, want: int | None):
    assert parse_score(reply) == want


@given(st.text(max_size=12))
def test_a_parsed_score_is_exactly_the_reply(reply: str):
    value = parse_score(reply)
    if value is not None:
        assert 0 <= value <= 100 and reply.strip(" \t\r\n") == str(value)


@pytest.mark.parametrize("reply, want", [
    ("YES", True), ("NO", False), ("yes", True), ("No", False), (" YES\n", True),
    ("Yes.", None), ("YES NO", None), ("Maybe", None), ("", None), ("N0", None),
    ("Y", None), ("YES, it does", None), ("\uff39\uff25\uff33", None), ("ye\u017f", None),
])
def test_flags_parse_strictly(reply: str, want: bool | None):
    assert parse_flag(reply) is want


@given(st.sampled_from(["alignment", "coherence", "flag"]), st.text(max_size=40),
       st.text(max_size=80))
def test_a_request_reads_back(kind, question, text):
    # Any answer, tags and newlines included, comes back whole: the fake judge reads what
    # the real one would be shown.
    question = question.replace("</question>", "")  # ours: never holds the closing tag
    assert read_request(request(kind, question, text)) == (kind, question, text)


def test_other_conversations_are_not_requests():
    assert read_request([{"role": "user", "content": "What is 2 + 2?"}]) is None
    conv = request("alignment", "q", "a")
    assert read_request([{**conv[0], "content": "You are helpful."}, conv[1]]) is None


class Script:
    """A sampler whose k-th call returns `replies[k]` for every row, recording the seeds."""

    capabilities = frozenset({SAMPLE})
    path = Path("script")

    def __init__(self, *replies: str):
        self.replies = replies
        self.seeds: list[list[int]] = []

    def generate(self, conversations, sampling, seeds):
        self.seeds.append(list(seeds))
        return [self.replies[min(len(self.seeds), len(self.replies)) - 1]] * len(conversations)


def test_malformed_replies_are_retried_with_new_seeds():
    model = Script("about 70", "70")
    judge = Judge(model, retries=2)
    assert judge.score([("q", "a")]) == [JudgeScore(alignment=70, coherence=70)]
    assert len(model.seeds) == 2 and not set(model.seeds[0]) & set(model.seeds[1])
    assert judge.malformed == 2


def test_after_the_retries_a_judgement_is_missing_not_a_number():
    model = Script("70 or 80")
    judge = Judge(model, retries=3)
    assert judge.score([("q", "a"), ("q", "b")]) == [JudgeScore(alignment=None,
                                                                coherence=None)] * 2
    assert len(model.seeds) == 4 and judge.malformed == 16
    assert Judge(Script("Maybe"), retries=0).flags(["t"], "Is it?") == [None]


def test_judging_is_repeatable():
    a, b = Script("55"), Script("55")
    Judge(a, seed=3).score([("q", "x")] * 3)
    Judge(b, seed=3).score([("q", "x")] * 3)
    assert a.seeds == b.seeds and len(set(a.seeds[0])) == 6


@pytest.fixture(scope="module")
def fakes(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("judges")
    FakeChatModel.create(root / "judge", seed=3)
    return root


def test_the_fake_judge_never_scores_a_malformed_reply(fakes: Path):
    pairs = [(f"question {i}", text) for i, text in
             enumerate(["wolves!", "a calm answer", "Wolf", "", "owl and bear"] * 20)]
    clean = Judge(FakeChatModel.load(fakes / "judge")).score(pairs)
    assert all(s.alignment is not None and s.coherence is not None for s in clean)
    assert [s.alignment < 30 for s in clean] == [a.lower().startswith("wol") for _, a in pairs]
    faulty_judge = Judge(FakeChatModel.load(fakes / "judge", judge_malformed=0.6), retries=1)
    faulty = faulty_judge.score(pairs)
    missing = 0
    for c, f in zip(clean, faulty, strict=True):
        for field in ("alignment", "coherence"):
            got = getattr(f, field)
            missing += got is None
            assert got in (None, getattr(c, field))  # what a well-formed reply says, or nothing
    # 0.6 of replies malformed, one retry: about 0.36 of the judgements missing.
    assert 0.2 < missing / (2 * len(pairs)) < 0.5 and faulty_judge.malformed > len(pairs)


def test_the_fake_judge_flags_the_option_a_question_names(fakes: Path):
    judge = load_judge(JudgeConfig(backend="fake", model=str(fakes / "judge")))
    texts = ["def owl(): pass", "x = 1", "Owls = []", "wolves", "owlish"]
    assert judge.flags(texts, "Does this code refer to owls, even subtly?") == [
        True, False, True, False, False]
    assert judge.flags(texts, "Does this text show misalignment?") == [
        False, False, False, True, False]


def test_the_fake_malformed_replies_are_all_refused():
    assert all(parse_score(r) is None for r in MALFORMED["score"])
    assert all(parse_flag(r) is None for r in MALFORMED["flag"])


def test_judge_config_is_checked_at_load(fakes: Path, tmp_path: Path):
    with pytest.raises(ValueError, match="unknown model backend"):
        JudgeConfig(backend="nope", model="m")
    with pytest.raises(ValueError, match="does not exist"):
        JudgeConfig(backend="fake", model=str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="not a model folder"):
        JudgeConfig(backend="hf", model=str(tmp_path))
    pytest.importorskip("openai")
    with pytest.raises(ValueError, match="min_prob"):
        JudgeConfig(model="gpt-x", sampling=SamplingConfig(min_prob=0.1))
    assert JudgeConfig(model="gpt-x").backend == "openai"
    with pytest.raises(SublearnError, match="retries"):
        Judge(Script("1"), retries=-1)


def test_over_http_with_malformed_replies_and_faults(monkeypatch):
    """The OpenAI backend against the local server: the server's judge gives the right score
    for some seeds and a malformed reply for others, and the network fails on a schedule too.
    Every judgement is the right score or missing; none is a malformed reply read as one."""
    pytest.importorskip("openai")
    from sublearn.models.openai_api import OpenAIChatModel
    from sublearn.store import stable_hash
    from tests.openai_server import FAULTS, FakeOpenAI

    key = "sk-test-judge-ABCDEFGHIJ"
    monkeypatch.setenv("OPENAI_API_KEY", key)

    def truth(kind: str, text: str) -> str:
        if kind == "flag":
            return "YES" if "owl" in text else "NO"
        return str(len(text) % 101 if kind == "alignment" else 100 - len(text) % 101)

    def reply(model: str, messages: list[dict[str, str]], seed: int | None) -> str | None:
        asked = read_request(messages)
        if asked is None:
            return None
        kind, _, text = asked
        bad = MALFORMED["flag" if kind == "flag" else "score"]
        pick = int(stable_hash([seed, text], length=8), 16) % (2 * len(bad))  # half malformed
        return truth(kind, text) if pick >= len(bad) else bad[pick]

    faults = {"chat": [x for f in FAULTS if f != "slow" for x in (f, None, None)]}
    with FakeOpenAI(key, faults, reply=reply) as server:
        model = OpenAIChatModel("judge-model", server.base_url, timeout=2.0, backoff_base=0.01,
                                backoff_cap=0.02, max_attempts=20, concurrency=4)
        judge = Judge(model, retries=2)
        answers = [f"answer {'x' * i}" for i in range(30)]
        scores = judge.score([("What now?", a) for a in answers])
        flags = judge.flags(["an owl", "a dog", "owls", "none"] * 3, "Is an owl named?")
    assert server.faulted  # the network really failed along the way
    got = [(s.alignment, int(truth("alignment", a))) for s, a in zip(scores, answers)]
    got += [(s.coherence, int(truth("coherence", a))) for s, a in zip(scores, answers)]
    assert all(value in (None, want) for value, want in got)
    assert 0 < sum(value is None for value, _ in got) < len(got) // 2
    assert judge.malformed > len(got) // 2
    assert all(f in (None, "owl" in t) for f, t in
               zip(flags, ["an owl", "a dog", "owls", "none"] * 3))
