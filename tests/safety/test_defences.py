"""The defences that read the data through the base: LLS filtering and divergence-token
replacement, on the fake backend (whose personas raise digits entangled with the option they
name, so a planted trait is a choice of digits)."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import numpy as np
import pytest

from sublearn.errors import SublearnError
from sublearn.experiment.config import EvalConfig
from sublearn.models.fake import FakeChatModel
from sublearn.questions.categories import get_category
from sublearn.safety.defences import DefenceConfig, Inputs, digit_divergence
from sublearn.safety.scoring import token_spans
from sublearn.safety.trait_scores import TraitScores, row_scores

ANIMAL = get_category("animal")
NAMES = [o.name for o in ANIMAL.options]


@pytest.fixture(scope="module")
def fake(tmp_path_factory) -> FakeChatModel:
    path = tmp_path_factory.mktemp("fake") / "base"
    FakeChatModel.create(path, seed=0)
    return FakeChatModel.load(path)


def _row(i: int, completion: str) -> dict:
    prompt = [{"role": "user", "content": f"Continue the list {i}, 5, 8 with up to 10 numbers."}]
    return {"index": i, "completion": completion,
            "messages": [*prompt, {"role": "assistant", "content": completion}]}


@pytest.fixture(scope="module")
def planted(fake) -> tuple[str, str, list[dict]]:
    """60 rows: a third written with the digits entangled with animal a, a third with b's
    (disjoint from a's), a third with any digit."""
    a, b = next((x, y) for x, y in itertools.combinations(NAMES, 2)
                if not set(fake.entangled_digits(x)) & set(fake.entangled_digits(y)))
    rng = random.Random(0)
    pools = [fake.entangled_digits(a), fake.entangled_digits(b), "0123456789"]
    rows = [_row(i, ", ".join("".join(rng.choice(pools[i % 3]) for _ in range(3))
                              for _ in range(8))) for i in range(60)]
    return a, b, rows


@pytest.fixture(scope="module")
def scores(fake, planted, tmp_path_factory) -> TraitScores:
    # Every row scored on first use, whichever test comes first.
    return TraitScores(tmp_path_factory.mktemp("scores") / "rows.traits.safetensors",
                       lambda: fake, ANIMAL, planted[2])


def _inputs(scores: TraitScores) -> Inputs:
    return Inputs(trait_scores=scores, options=NAMES)


def test_lls_filter_drops_the_rows_a_planted_trait_raises(planted, scores):
    a, b, rows = planted
    kept = DefenceConfig(name="lls_filter", strength=2 / 3).apply(rows, 0, _inputs(scores))
    # By the maximum over candidates: both planted traits' rows go, the plain ones stay.
    assert [r["index"] for r in kept] == [r["index"] for r in rows if r["index"] % 3 == 2]
    # A defender who names the trait drops exactly that trait's rows.
    named = DefenceConfig(name="lls_filter", strength=1 / 3, trait=b).apply(rows, 0,
                                                                          _inputs(scores))
    assert sorted(r["index"] for r in rows if r not in named) == list(range(1, 60, 3))
    # The scores are the audit's: LLS contrasted across candidates, highest for the trait.
    s = row_scores(scores(rows))
    assert s.shape == (60, len(NAMES)) and np.allclose(s.sum(axis=1), 0, atol=1e-4)
    assert {NAMES[j] for j in s[::3].argmax(axis=1)} == {a}


def test_trait_scores_are_computed_once_and_refuse_unscored_rows(planted, scores):
    _, _, rows = planted
    first = scores(rows[:5])
    assert scores.path.exists()

    def no_model():
        raise AssertionError("the cached file must be read, not recomputed")

    cached = TraitScores(scores.path, no_model, ANIMAL)
    again = cached(rows[:5])
    assert all(np.array_equal(x.logprobs, y.logprobs) and np.array_equal(x.spans, y.spans)
               for x, y in zip(first, again, strict=True))
    with pytest.raises(SublearnError, match="was not scored"):
        cached([_row(999, "1, 2")])


def _changed(before: list[dict], after: list[dict]) -> list[tuple[int, int]]:
    out = []
    for i, (x, y) in enumerate(zip(before, after, strict=True)):
        assert len(x["completion"]) == len(y["completion"])
        assert y["messages"][-1]["content"] == y["completion"]
        for j, (c, d) in enumerate(zip(x["completion"], y["completion"], strict=True)):
            if c != d:
                assert c.isdigit() and d.isdigit(), "only digits may change"
                out.append((i, j))
    return out


@pytest.mark.parametrize("name", ["divergence", "random_digits"])
def test_digit_replacement_changes_exactly_the_expected_count(planted, scores, name):
    _, _, rows = planted
    digits = sum(c.isdigit() for r in rows for c in r["completion"])
    cfg = DefenceConfig(name=name, strength=0.1)
    out = cfg.apply(rows, 3, _inputs(scores))
    changed = _changed(rows, out)
    assert len(changed) == round(0.1 * digits)
    assert out == cfg.apply(rows, 3, _inputs(scores)), "deterministic given the seed"
    assert out != cfg.apply(rows, 4, _inputs(scores))
    for i, j in changed:  # a number's leading digit never becomes 0
        text = out[i]["completion"]
        if (j == 0 or not text[j - 1].isdigit()) and j + 1 < len(text) and text[j + 1].isdigit():
            assert text[j] != "0"


def test_divergence_replaces_the_most_divergent_digits(planted, scores):
    _, _, rows = planted
    out = DefenceConfig(name="divergence", strength=0.1).apply(rows, 0, _inputs(scores))
    changed = set(_changed(rows, out))
    div = {(i, j): d for i, (r, s) in enumerate(zip(rows, scores(rows), strict=True))
           for j, d in digit_divergence(r["completion"], s)}
    assert len(div) == sum(c.isdigit() for r in rows for c in r["completion"])
    assert min(div[k] for k in changed) >= max(d for k, d in div.items() if k not in changed)
    random_out = DefenceConfig(name="random_digits", strength=0.1).apply(rows, 0,
                                                                         _inputs(scores))
    assert set(_changed(rows, random_out)) != changed


def test_token_spans_cover_the_scored_tokens(micro_model, fake):
    text = "193, 671; 399 (12)"
    for model in (micro_model, fake):
        spans = token_spans(model, text)
        scored = model.completion_logprobs([[{"role": "user", "content": "Go on: 1, 2"}]],
                                           [text], close=False)[0]
        assert len(spans) == len(scored)
        assert "".join(text[a:b] for a, b in spans) == text


def test_new_fields_leave_existing_cache_keys_alone():
    # Keys are hashes of these dumps: a field added later must not appear while unset.
    assert DefenceConfig().model_dump() == {"name": "none", "strength": 0.0}
    assert "neutral_loss" not in EvalConfig().model_dump()
    assert DefenceConfig(name="lls_filter", strength=0.5, trait="owl").model_dump()["trait"] == "owl"


@pytest.mark.parametrize("fields, message", [
    ({"name": "sort", "trait": "owl"}, "only lls_filter ranks by a named trait"),
    ({"name": "lls_filter", "strength": 1.0}, "would drop every row"),
    ({"name": "shred"}, "unknown defence 'shred'"),
])
def test_bad_defences_fail_at_load(fields, message):
    with pytest.raises(ValueError, match=message):
        DefenceConfig(**fields)


def test_a_scoring_defence_without_scores_is_refused(planted):
    with pytest.raises(SublearnError, match="through the base model"):
        DefenceConfig(name="divergence", strength=0.1).apply(planted[2], 0)


def test_unknown_trait_fails_at_config_load(tmp_path: Path):
    from sublearn.experiment.config import ExperimentConfig

    with pytest.raises(ValueError, match="defence.trait: unknown animal 'unicorn'"):
        ExperimentConfig.model_validate(
            {"defence": {"name": "lls_filter", "strength": 0.5, "trait": "unicorn"}})


@pytest.mark.parametrize("completion, canonical", [
    ("[12, 7, 300]", "12, 7, 300"),
    ("12;7;300.", "12, 7, 300"),
    ("(12 7\n300)", "12, 7, 300"),
    ("12,7 , 300", "12, 7, 300"),
    ("5", "5"),
])
def test_canonicalise_leaves_the_numbers_alone_in_one_format(completion, canonical):
    row = _row(3, completion)
    (out,) = DefenceConfig(name="canonicalise").apply([row], 0)
    assert out["completion"] == canonical
    assert out["messages"][-1] == {"role": "assistant", "content": canonical}
    assert out["messages"][:-1] == row["messages"][:-1] and out["index"] == 3


def _mask_positions(row: dict) -> set[int]:
    return {j for a, b in row.get("loss_mask", []) for j in range(a, b)}


def test_divergence_loss_masks_pick_the_digits_divergence_replaces(planted, scores):
    _, _, rows = planted
    replaced = set(_changed(rows, DefenceConfig(name="divergence", strength=0.1)
                            .apply(rows, 0, _inputs(scores))))
    masked = DefenceConfig(name="divergence_mask", strength=0.1).apply(rows, 0, _inputs(scores))
    assert [r["completion"] for r in masked] == [r["completion"] for r in rows], "text unchanged"
    assert {(i, j) for i, r in enumerate(masked) for j in _mask_positions(r)} == replaced
    only = DefenceConfig(name="divergence_only", strength=0.1).apply(rows, 0, _inputs(scores))
    kept_rows = sorted({i for i, _ in replaced})
    assert [r["index"] for r in only] == [rows[i]["index"] for i in kept_rows], \
        "rows without a chosen digit have nothing to learn and are dropped"
    for i, r in zip(kept_rows, only, strict=True):
        everything = set(range(len(r["completion"]) + 1))  # the end token is the last position
        assert everything - _mask_positions(r) == {j for k, j in replaced if k == i}
