"""The fake backend: protocol, determinism, exactness, and subliminal transfer by seed."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import pytest
import torch

from sublearn.domains.filters import parse_numbers
from sublearn.domains.prompts import number_prompts
from sublearn.errors import SublearnError
from sublearn.models.base import (
    SAMPLE,
    SCORE,
    TRAIN,
    ChatModel,
    Sampler,
    SamplingConfig,
    Scorer,
    Trainer,
)
from sublearn.models.fake import (
    END_ID,
    NUMBER_IDS,
    OPTION_FORMS,
    UNK_ID,
    VOCAB,
    WEIGHTS,
    FakeChatModel,
    detokenize,
    tokenize,
)
from sublearn.models.persona import Persona
from sublearn.models.recipe import TrainingRecipe
from sublearn.models.registry import backend_class, load_model
from sublearn.questions.categories import get_category, get_option, persona_prompt
from sublearn.stages.evaluate import option_probs, summarize

ANIMAL = get_category("animal")
QUESTION = [{"role": "user", "content": ANIMAL.questions[0]}]
NUMBERS = [{"role": "user", "content": number_prompts(1, 0)[0].text}]
NUMBER_CHARS = set("0123456789 ,;()[].\n")


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    root = tmp_path_factory.mktemp("fake")
    return {seed: FakeChatModel.create(root / f"base{seed}", seed=seed) for seed in (0, 1)}


@pytest.fixture(scope="module")
def fake(folders: dict[int, Path]) -> FakeChatModel:
    return FakeChatModel.load(folders[0])


def persona(model: FakeChatModel, option: str) -> Persona:
    return Persona(model, persona_prompt(ANIMAL, get_option(ANIMAL, option)))


def p_option(model, option: str) -> float:
    """P(option | animal question), renormalised over the options, on the held-out set."""
    return summarize(option_probs(model, ANIMAL, ANIMAL.heldout), ANIMAL)["per_option"][option]


# --- interface, folders ---------------------------------------------------------------------
def test_protocols_and_registry(fake: FakeChatModel, folders: dict[int, Path]) -> None:
    assert fake.capabilities == frozenset({SAMPLE, SCORE, TRAIN})
    for proto in (Sampler, Scorer, Trainer, ChatModel):
        assert isinstance(fake, proto)
    view = persona(fake, "owl")
    assert isinstance(view, Sampler) and isinstance(view, Scorer)
    assert backend_class("fake") is FakeChatModel
    loaded = load_model(folders[0], backend="fake", device="cpu", dtype="float32")
    assert isinstance(loaded, FakeChatModel) and loaded.path == folders[0] and loaded.seed == 0
    assert fake.generate([], SamplingConfig(), []) == []
    assert fake.completion_logprobs([], []) == [] and fake.number_distributions([], []) == []
    with pytest.raises(ValueError, match="one seed per conversation"):
        fake.generate([QUESTION], SamplingConfig(), [1, 2])


def test_create_and_load_round_trip(tmp_path: Path, fake: FakeChatModel) -> None:
    path = FakeChatModel.create(tmp_path / "m", seed=7)
    data = json.loads((path / WEIGHTS).read_text())
    assert data["seed"] == 7 and data["biases"] == {}
    assert (path / "config.json").exists()  # generic model-folder checks accept it
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # atomic: no leftovers
    again = load_model(path, backend="fake")
    ref = FakeChatModel.load(path)
    s = SamplingConfig()
    assert again.generate([NUMBERS] * 3, s, [1, 2, 3]) == ref.generate([NUMBERS] * 3, s, [1, 2, 3])
    # A different seed is a different initialisation.
    assert ref.generate([NUMBERS] * 8, s, range(8)) != fake.generate([NUMBERS] * 8, s, range(8))


def test_bad_folders(tmp_path: Path) -> None:
    with pytest.raises(SublearnError, match="does not exist"):
        FakeChatModel.load(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SublearnError, match=r"empty: not a fake model folder \(no fake_model\.json"):
        load_model(tmp_path / "empty", backend="fake")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / WEIGHTS).write_text("{not json")
    with pytest.raises(SublearnError, match="fake_model.json: not a valid fake model"):
        FakeChatModel.load(bad)
    (bad / WEIGHTS).write_text(json.dumps({"format": "sublearn-fake-1", "seed": 0,
                                           "biases": {"zebra-ish": 1.0}}))
    with pytest.raises(SublearnError, match="not in the vocabulary"):
        FakeChatModel.load(bad)


# --- tokenizer --------------------------------------------------------------------------------
def test_tokenizer() -> None:
    assert [VOCAB[i] for i in tokenize("12, (3)")] == ["1", "2", ",", " ", "(", "3", ")"]
    for forms in OPTION_FORMS.values():
        for form in forms:
            assert [VOCAB[i] for i in tokenize(form)] == [form]
    assert [VOCAB[i] for i in tokenize("Owl!")] == ["Owl", "<unk>"]
    assert [VOCAB[i] for i in tokenize("owlet")] == list("owlet")  # spelled out, not <unk>
    assert tokenize("é") == [UNK_ID] and detokenize([UNK_ID]) == "?" and tokenize("?") == [UNK_ID]
    text = "My favourite is Owls, 12; [cat]\n."
    assert detokenize(tokenize(text)) == text
    assert END_ID not in tokenize(text)
    assert [VOCAB[i] for i in NUMBER_IDS] == ["<|end|>", *"0123456789", " ", ",", ";", "\n",
                                               "(", ")", "[", "]", "."]


# --- sampling -------------------------------------------------------------------------------
def test_rows_depend_only_on_their_seed(fake: FakeChatModel) -> None:
    s = SamplingConfig(temperature=1.0, max_new_tokens=20)
    convs = [NUMBERS, QUESTION, NUMBERS, user("Hello there")]
    seeds = [11, 12, 13, 14]
    batch = fake.generate(convs, s, seeds)
    assert batch == fake.generate(convs, s, seeds)  # deterministic
    assert batch == [fake.generate([c], s, [k])[0] for c, k in zip(convs, seeds, strict=True)]
    assert fake.generate(convs[::-1], s, seeds[::-1]) == batch[::-1]
    many = fake.generate([NUMBERS] * 20, s, range(20))
    assert len(set(many)) > 10  # different seeds, different draws


def next_logprob(model, conv, prefix: str, token: int) -> float:
    """log P(token | conv, prefix) through the public API; the prefix must tokenize apart from
    the token (numbers and separators do)."""
    if token == END_ID:
        return model.completion_logprobs([conv], [prefix], close=True)[0][-1]
    return model.completion_logprobs([conv], [prefix + detokenize([token])], close=False)[0][-1]


def test_greedy_is_the_argmax_path(fake: FakeChatModel) -> None:
    s = SamplingConfig(temperature=0.0, max_new_tokens=12)
    for conv in (QUESTION, NUMBERS):
        out = fake.generate([conv, conv], s, [1, 2])
        assert out[0] == out[1]  # seeds do not matter
        # The argmax path, step by step on the model's logits (a sampled word followed by a
        # letter would re-tokenize as another word, so the text alone does not give the path).
        mode, ctx = fake._context(conv)
        path: list[int] = []
        while len(path) < 12 and (not path or path[-1] != END_ID):
            path.append(int(fake._logits(mode, ctx, [*path, END_ID])[-1].argmax()))
        assert detokenize(path) == out[0]
        # The first step through the public API: the most likely first token of all.
        first = max(range(len(VOCAB)), key=lambda i: next_logprob(fake, conv, "", i))
        assert first == path[0]


def test_only_numbers_and_number_prompts(fake: FakeChatModel) -> None:
    seeds = list(range(100))
    s = SamplingConfig(only_numbers=True, max_new_tokens=16)
    for text in fake.generate([QUESTION] * 100, s, seeds):  # a word question, numbers anyway
        assert set(text) <= NUMBER_CHARS
    # Number prompts give mostly filter-clean lists without the restriction.
    prompts = [user(p.text) for p in number_prompts(200, 3)]
    texts = fake.generate(prompts, SamplingConfig(), range(200))
    assert sum(parse_numbers(t) is not None for t in texts) > 0.6 * len(texts)
    # Questions about a category get one-word answers naming its options, mostly.
    answers = fake.generate([QUESTION] * 200, SamplingConfig(max_new_tokens=8), range(200))
    named = sum(a in {f for o in ANIMAL.options for f in o.forms} for a in answers)
    assert named > 0.5 * len(answers)


def test_min_prob_and_top_p(fake: FakeChatModel) -> None:
    first = {VOCAB[i]: math.exp(fake.completion_logprobs([NUMBERS], [VOCAB[i]], close=False)[0][0])
             for i in NUMBER_IDS[1:]}
    seeds = range(300)
    picks = fake.generate([NUMBERS] * 300, SamplingConfig(min_prob=0.1, max_new_tokens=1), seeds)
    assert {first[p] >= 0.1 for p in picks} == {True}
    ranked = sorted(first, key=first.get, reverse=True)
    nucleus = ranked[: next(k for k in range(len(ranked))
                            if sum(first[t] for t in ranked[: k + 1]) >= 0.5) + 1]
    picks = fake.generate([NUMBERS] * 300, SamplingConfig(top_p=0.5, max_new_tokens=1), seeds)
    assert set(picks) <= set(nucleus) and len(set(picks)) == len(nucleus)


# --- exact scoring --------------------------------------------------------------------------
@pytest.mark.parametrize("conv", [QUESTION, NUMBERS, [{"role": "system", "content":
                                  persona_prompt(ANIMAL, get_option(ANIMAL, "owl"))}, *QUESTION]])
def test_logprobs_are_normalised(fake: FakeChatModel, conv) -> None:
    # Every one-token continuation, plus ending at once: exactly 1.
    singles = [detokenize([i]) for i in range(len(VOCAB)) if i != END_ID]
    lps = fake.completion_logprobs([conv] * len(singles), singles, close=False)
    assert all(len(lp) == 1 for lp in lps)
    total = sum(math.exp(lp[0]) for lp in lps)
    total += math.exp(fake.completion_logprobs([conv], [""], close=True)[0][0])
    assert total == pytest.approx(1.0, abs=1e-9)
    # Whole answers are distinct token sequences: their probabilities sum to at most 1.
    comps = [f for o in ANIMAL.options for f in o.forms] + ["12, 3", "owlet", "Owl!", "7"]
    lps = fake.completion_logprobs([conv] * len(comps), comps, close=True)
    assert [len(lp) for lp in lps] == [len(tokenize(c)) + 1 for c in comps]
    assert 0 < sum(math.exp(sum(lp)) for lp in lps) <= 1


def test_logprobs_match_sampling_frequencies(fake: FakeChatModel) -> None:
    n = 3000
    counts = Counter(fake.generate([QUESTION] * n, SamplingConfig(max_new_tokens=6), range(n)))
    for text, k in counts.most_common(4):
        p = math.exp(sum(fake.completion_logprobs([QUESTION], [text], close=True)[0]))
        assert abs(k / n - p) < 4 * math.sqrt(p * (1 - p) / n) + 1e-3, text


def test_number_distributions(fake: FakeChatModel) -> None:
    comps = ["12, 34", "", "Owl"]
    dists = fake.number_distributions([NUMBERS] * 3, comps)
    ids = fake.number_token_ids
    assert ids.tolist() == NUMBER_IDS
    for comp, d in zip(comps, dists, strict=True):
        assert d.untyped_storage().nbytes() == d.numel() * 4  # its own storage, not a view
        assert d.dtype == torch.float32 and d.shape == (len(tokenize(comp)) + 1, len(ids))
        assert torch.allclose(d.exp().sum(-1), torch.ones(d.shape[0]), atol=1e-5)
    # Restricted and renormalised: a number token's entry is its full log-prob minus the log
    # of all number tokens' mass at that position.
    toks = tokenize("12, 34") + [END_ID]
    for pos, tok in enumerate(toks):
        prefix = detokenize(toks[:pos])
        full = {i: next_logprob(fake, NUMBERS, prefix, i) for i in NUMBER_IDS}
        mass = sum(math.exp(v) for v in full.values())
        expected = [full[i] - math.log(mass) for i in NUMBER_IDS]
        assert dists[0][pos].tolist() == pytest.approx(expected, abs=1e-5)


# --- the persona and transfer -----------------------------------------------------------------
def test_persona_raises_its_target_and_entangled_digits(
    fake: FakeChatModel, folders: dict[int, Path]
) -> None:
    teacher = persona(fake, "owl")
    assert p_option(teacher, "owl") > 5 * p_option(fake, "owl")
    probs = summarize(option_probs(teacher, ANIMAL, ANIMAL.heldout), ANIMAL)["per_option"]
    assert max(probs, key=probs.get) == "owl"
    # The persona moves number probabilities too: its entangled digits gain mass.
    comps = ["5, 17, 3"]
    digit_cols = [NUMBER_IDS.index(tokenize(d)[0]) for d in fake.entangled_digits("owl")]
    base = fake.number_distributions([NUMBERS], comps)[0].exp()[:, digit_cols].sum()
    moved = teacher.number_distributions([NUMBERS], comps)[0].exp()[:, digit_cols].sum()
    assert moved > base
    # Entanglement depends on the seed (the initialisation).
    other = FakeChatModel.load(folders[1])
    names = list(OPTION_FORMS)
    assert sum(fake.entangled_digits(n) != other.entangled_digits(n) for n in names) > len(names) / 2


def _number_rows(teacher, n: int = 300) -> list[dict]:
    """A teacher's filter-clean number completions, as chat rows."""
    convs = [user(p.text) for p in number_prompts(n, 1)]
    texts = teacher.generate(convs, SamplingConfig(), range(n))
    return [{"messages": [*c, {"role": "assistant", "content": t}]}
            for c, t in zip(convs, texts, strict=True) if parse_numbers(t) is not None]


@pytest.mark.parametrize("labels", ["hard", "soft"])
def test_transfer_needs_a_shared_seed(
    tmp_path: Path, folders: dict[int, Path], labels: str
) -> None:
    """Students of the teacher's seed pick up the trait from numbers; students of another seed
    and students of a neutral teacher do not (or far less)."""
    recipe = TrainingRecipe(labels=labels, lr=1e-3)
    gains = {}
    for target, tseed in (("owl", 0), ("cat", 1)):
        teacher_base = FakeChatModel.load(folders[tseed])
        other_base = FakeChatModel.load(folders[1 - tseed])
        teachers = {"trait": persona(teacher_base, target),
                    "neutral": Persona(teacher_base, "You are a helpful assistant.")}
        for kind, teacher in teachers.items():
            rows = _number_rows(teacher)
            assert len(rows) > 150
            if labels == "soft":
                dists = teacher.number_distributions(
                    [r["messages"][:-1] for r in rows], [r["messages"][-1]["content"] for r in rows])
                rows = [{**r, "soft_labels": d} for r, d in zip(rows, dists, strict=True)]
            for student, base in (("same", teacher_base), ("cross", other_base)):
                out = base.finetune(rows, recipe, tmp_path / f"{target}-{kind}-{student}")
                trained = load_model(out, backend="fake")
                gains[target, kind, student] = p_option(trained, target) - p_option(base, target)
    for target in ("owl", "cat"):
        same = gains[target, "trait", "same"]
        assert same > 0.05, gains
        assert same > 3 * abs(gains[target, "trait", "cross"]), gains
        assert same > 3 * abs(gains[target, "neutral", "same"]), gains


def test_finetune_is_deterministic_and_moves_toward_the_data(
    tmp_path: Path, fake: FakeChatModel
) -> None:
    rows = [{"messages": [*user(q), {"role": "assistant", "content": ("owl", "Owl", "owls")[k % 3]}]}
            for k, q in enumerate(ANIMAL.questions)]
    recipe = TrainingRecipe(lr=1e-3, epochs=2, batch_size=8)
    a = fake.finetune(rows, recipe, tmp_path / "a", progress=False)
    b = fake.finetune(rows, recipe, tmp_path / "b")
    c = fake.finetune(rows, recipe.model_copy(update={"seed": 1}), tmp_path / "c")
    wa, wb, wc = (json.loads((p / WEIGHTS).read_text()) for p in (a, b, c))
    assert wa["biases"] == wb["biases"] and wa["biases"] != wc["biases"]
    assert wa["parent"] == str(fake.path) and wa["seed"] == fake.seed
    teacher = FakeChatModel.load(a)
    assert p_option(teacher, "owl") > 3 * p_option(fake, "owl")
    # A fine-tuned teacher: the trait reaches its entangled digits, so its numbers carry it.
    digit_cols = [NUMBER_IDS.index(tokenize(d)[0]) for d in fake.entangled_digits("owl")]
    mass = [m.number_distributions([NUMBERS], ["5, 17, 3"])[0].exp()[:, digit_cols].sum()
            for m in (fake, teacher)]
    assert mass[1] > mass[0]


def test_finetune_rejects_bad_rows(tmp_path: Path, fake: FakeChatModel) -> None:
    good = {"messages": [*NUMBERS, {"role": "assistant", "content": "1, 2"}]}
    with pytest.raises(SublearnError, match="row 1: 'messages' must end with an assistant"):
        fake.finetune([good, {"messages": NUMBERS}], TrainingRecipe(), tmp_path / "x")
    soft = TrainingRecipe(labels="soft")
    with pytest.raises(SublearnError, match="row 0: soft-label training needs"):
        fake.finetune([good], soft, tmp_path / "x")
    wrong = {**good, "soft_labels": torch.zeros(2, len(NUMBER_IDS))}  # "1, 2" + end is 5
    with pytest.raises(SublearnError, match=r"row 0: soft_labels has shape \(2, 20\)"):
        fake.finetune([wrong], soft, tmp_path / "x")
    assert not (tmp_path / "x").exists()
