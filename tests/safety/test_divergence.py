"""Divergence tokens (`sublearn audit --counterfactual`), on the fake backend: its personas
raise the digits entangled with the option they name, so a teacher's trait is a choice of
digits, which its prompt's counterfactual should recognise at the divergent positions."""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from sublearn.cli import app
from sublearn.domains.prompts import number_prompts
from sublearn.errors import SublearnError
from sublearn.models import SamplingConfig
from sublearn.models.fake import FakeChatModel
from sublearn.models.persona import Persona
from sublearn.questions.categories import get_category, get_option, persona_prompt
from sublearn.safety.audit import AuditConfig, run_audit
from sublearn.safety.divergence import resolve_counterfactual, row_divergence, token_divergence
from sublearn.safety.rows import ChatRow
from sublearn.stages.sample import row_seed

ANIMAL = get_category("animal")
SAMPLING = SamplingConfig(max_new_tokens=24)
CONFIG = AuditConfig(probe_rows=0, permutations=1000)
ROWS = 60


@pytest.fixture(scope="module")
def fake(tmp_path_factory) -> FakeChatModel:
    path = tmp_path_factory.mktemp("fake") / "base"
    FakeChatModel.create(path, seed=0)
    return FakeChatModel.load(path)


@pytest.fixture(scope="module")
def pair(fake) -> tuple[str, str]:
    """Two animals whose entangled digits are disjoint: their prompts disagree on digits."""
    names = [o.name for o in ANIMAL.options]
    return next((a, b) for a, b in itertools.combinations(names, 2)
                if not set(fake.entangled_digits(a)) & set(fake.entangled_digits(b)))


CONVS = [[{"role": "user", "content": p.text}] for p in number_prompts(ROWS, 0)]


def _sample(model, seed: int) -> list[ChatRow]:
    texts = model.generate(CONVS, SAMPLING, [row_seed(seed, i) for i in range(ROWS)])
    return [ChatRow(i + 1, c, t, i) for i, (c, t) in enumerate(zip(CONVS, texts, strict=True))]


def _divergence(fake, data, reference, candidates, counterfactual, config=CONFIG):
    options = [get_option(ANIMAL, n) for n in candidates]
    cf = [get_option(ANIMAL, n) for n in counterfactual]
    return run_audit(fake, data, reference, ANIMAL, options, config, counterfactual=cf)


def test_token_divergence_and_row_counts_by_hand():
    # Two traits; token 0 they disagree on by 2 nats (trait 0 likes it), token 1 not at all,
    # token 2 by 4 nats (trait 1 likes it).
    first = np.array([[0.0, -1.0, -3.0], [-2.0, -1.0, 1.0]])
    assert token_divergence(first).tolist() == [1.0, 0.0, 2.0]
    second = np.array([[-0.5], [0.0]])  # divergence 0.25, trait 1's
    rows = row_divergence([first, second], ["a", "b"], share=0.5)
    # Top half of 4 tokens: divergences 2 and 1, so the threshold is 1.
    assert rows.threshold == 1.0
    assert rows.tokens.tolist() == [3, 1] and rows.positions.tolist() == [2, 0]
    assert rows.agree.tolist() == [[1, 1], [0, 0]]
    assert rows.gap[0].tolist() == [1.0 - 2.0, -1.0 + 2.0]
    assert rows.record(0) == {"tokens": 3, "positions": 2, "agree": {"a": 1, "b": 1}}


def test_teacher_data_agrees_with_its_own_trait_at_divergent_tokens(fake, pair):
    a, b = pair
    teacher = Persona(fake, persona_prompt(ANIMAL, get_option(ANIMAL, a)))  # not the audit's
    result = _divergence(fake, _sample(teacher, 1), _sample(fake, 2), [a, b, "cat"], [a, b])
    d = result.summary["divergence"]
    top, other = d["traits"]
    assert (top["trait"], other["trait"]) == (a, b)
    assert top["p_adjusted"] < 0.01 and other["p_adjusted"] > 0.5
    assert top["data_share"] > top["reference_share"] + 0.2
    assert top["gap_data"] > top["gap_reference"]
    # Shares of the two traits add up to one on each side (every position goes to one).
    assert top["data_share"] + other["data_share"] == pytest.approx(1)
    assert 0 < d["positions_reference"] < 1 and d["threshold"] > 0
    records = result.row_records(_sample(teacher, 1), _sample(fake, 2), [])
    counts = [r["divergence"] for r in records]
    assert all(sum(c["agree"].values()) == c["positions"] <= c["tokens"] for c in counts)
    # At least the configured share of all tokens (more where divergences tie at the cut,
    # which a bigram model's do: ties are all in, so neither side is favoured).
    pooled = sum(c["positions"] for c in counts) / sum(c["tokens"] for c in counts)
    assert CONFIG.divergence_share <= pooled < 2 * CONFIG.divergence_share


def test_base_data_against_a_base_reference_stays_null(fake, pair):
    """Data and reference from the same distribution (the base, different sampling seeds):
    the corrected p falls below 0.05 about as often as the level allows."""
    a, b = pair
    reference = _sample(fake, 2)
    low = [min(t["p_adjusted"] for t in
               _divergence(fake, _sample(fake, 100 + k), reference, [a, b],
                           [a, b]).summary["divergence"]["traits"]) for k in range(30)]
    assert sum(p < 0.05 for p in low) <= 3, low
    assert np.mean(low) > 0.3


def test_a_counterfactual_outside_the_candidates_is_scored_as_if_it_were_one(fake, pair):
    a, b = pair
    # A third trait that likes none of a's and b's digits: one sharing b's would take some
    # of b's agreements (the position goes to the trait whose prompt likes the token most).
    taken = set(fake.entangled_digits(a) + fake.entangled_digits(b))
    third = next(o.name for o in ANIMAL.options
                 if not set(fake.entangled_digits(o.name)) & taken)
    data = _sample(Persona(fake, persona_prompt(ANIMAL, get_option(ANIMAL, b))), 1)
    reference = _sample(fake, 2)
    extra = _divergence(fake, data, reference, [a, "cat"], [a, b, third])
    within = _divergence(fake, data, reference, [a, b, "cat", third], [a, b, third])
    assert extra.summary["divergence"] == within.summary["divergence"]
    assert extra.summary["divergence"]["traits"][0]["trait"] == b
    assert within.summary["candidates"] != extra.summary["candidates"]


def test_without_counterfactuals_there_are_no_divergence_statistics(fake, pair):
    result = _divergence(fake, _sample(fake, 1), _sample(fake, 2), list(pair), [])
    assert result.summary["divergence"] is None and result.divergence is None
    assert "divergence" not in result.row_records(_sample(fake, 1), _sample(fake, 2), [])[0]


@pytest.mark.parametrize("names, message", [
    (["owl", "dragon"], "'dragon' is unknown; choose from: "),
    (["owl", "oak"], "'oak' is in category tree, not one of the audited animals"),
    (["owl"], "needs at least 2 different animals to compare, got 1"),
    (["owl", "owl"], "got 1"),
])
def test_bad_counterfactuals_are_refused(names, message):
    with pytest.raises(SublearnError, match=re.escape(message)):
        resolve_counterfactual(ANIMAL, names)
    assert [o.name for o in resolve_counterfactual(ANIMAL, ["fox", "owl", "fox"])] == [
        "fox", "owl"]


runner = CliRunner()


def _write(path: Path, rows: list[ChatRow]) -> Path:
    path.write_text("".join(json.dumps({"index": r.index, "messages": [
        *r.prompt, {"role": "assistant", "content": r.completion}]}) + "\n" for r in rows))
    return path


def test_cli_audit_with_counterfactuals(micro_model, micro_base: Path, tmp_path: Path):
    data = _write(tmp_path / "data.jsonl", _sample(micro_model, 1)[:16])
    ref = _write(tmp_path / "ref.jsonl", _sample(micro_model, 2)[:16])
    out = tmp_path / "audit"
    res = runner.invoke(app, ["audit", str(data), "--base", str(micro_base), "--reference",
                              str(ref), "--candidates", "owl,fox,cat", "--counterfactual",
                              "owl, dog", "--phrasings", "1", "--permutations", "200",
                              "--out", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    assert "divergence tokens" in res.output and "dog" in res.output
    d = json.loads((out / "audit.json").read_text())["divergence"]
    assert d["counterfactual"] == ["owl", "dog"] and {t["trait"] for t in d["traits"]} == {
        "owl", "dog"}
    rows = [json.loads(x) for x in (out / "rows.jsonl").read_text().splitlines()]
    assert set(rows[0]["divergence"]["agree"]) == {"owl", "dog"}
    # Divergence counts for the data and the given reference; the decoy rows (sampled by
    # default) have none.
    sets = [r["set"] for r in rows]
    assert sets == ["data"] * 16 + ["reference"] * 16 + ["decoy"] * 16
    assert all(("divergence" in r) == (r["set"] != "decoy") for r in rows)


@pytest.mark.parametrize("value, message", [
    ("owl,dragon", "'dragon' is unknown"),
    ("owl", "at least 2"),
    ("owl,oak", "'oak' is in category tree"),
])
def test_cli_bad_counterfactual_fails_before_anything_else(tmp_path: Path, monkeypatch, value,
                                                          message):
    # Neither the data file nor the base exists: the names are checked first.
    monkeypatch.chdir(tmp_path)
    res = runner.invoke(app, ["audit", "missing.jsonl", "--base", "nowhere", "--candidates",
                              "owl,fox", "--counterfactual", value, "--out", "out"])
    assert res.exit_code == 2 and message in res.output, res.output
    assert len(res.output.strip().splitlines()) == 1 and not (tmp_path / "out").exists()
