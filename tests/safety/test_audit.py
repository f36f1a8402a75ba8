from __future__ import annotations

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
from sublearn.questions.categories import (
    PERSONA_TEMPLATES,
    get_category,
    get_option,
    persona_prompt,
)
from sublearn.safety.audit import (
    AuditConfig,
    decoy_personas,
    decoy_system,
    rank_candidates,
    run_audit,
    sample_reference,
)
from sublearn.safety.entangled import probe_tasks, probes, shifts_of, value_counts
from sublearn.safety.rows import ChatRow, on_data_prompts, read_chat_rows
from sublearn.safety.scoring import score_tasks, trait_tasks
from sublearn.safety.traits import AUDIT_TEMPLATES, resolve_candidates
from sublearn.stages.sample import row_seed

ANIMAL = get_category("animal")
NAMES = ["owl", "fox", "cat", "dog", "bear", "lion"]
SAMPLING = SamplingConfig(max_new_tokens=12)


def _rows(convs, texts) -> list[ChatRow]:
    return [ChatRow(i + 1, c, t, i) for i, (c, t) in enumerate(zip(convs, texts, strict=True))]


@pytest.fixture(scope="module")
def pool(micro_model):
    """40 number prompts, 4 base samples each, and every candidate's teacher-phrased
    log-prob of every sample (mean per token)."""
    convs = [[{"role": "user", "content": p.text}] for p in number_prompts(40, 0)]
    samples = [micro_model.generate(convs, SAMPLING, [row_seed(100 + k, i) for i in range(40)])
               for k in range(4)]
    flat_c = [c for _ in samples for c in convs]
    flat_t = [t for s in samples for t in s]
    teacher_lp = {
        n: np.array([np.mean(x) for x in Persona(micro_model, persona_prompt(
            ANIMAL, get_option(ANIMAL, n))).completion_logprobs(flat_c, flat_t)]).reshape(4, 40)
        for n in NAMES}
    return convs, samples, teacher_lp


def _teacher_data(pool, target: str) -> list[ChatRow]:
    """A strong, specific teacher: of 4 base samples per prompt, keep the one the target's
    persona (the *teacher's* wording) likes best relative to the other personas. The micro
    base barely follows a persona when sampling, so selection stands in for it."""
    convs, samples, lp = pool
    mean = np.mean([lp[n] for n in NAMES], axis=0)
    pick = (lp[target] - mean).argmax(axis=0)
    return _rows(convs, [samples[pick[i]][i] for i in range(len(convs))])


def test_audit_phrasings_are_not_the_teachers():
    assert not set(AUDIT_TEMPLATES) & set(PERSONA_TEMPLATES)


@pytest.mark.parametrize("target", ["owl", "fox"])
def test_teacher_data_ranks_its_target_first(micro_model, pool, target):
    data = _teacher_data(pool, target)
    cfg = AuditConfig(phrasings=1, permutations=1000, sampling=SAMPLING, probe_rows=0)
    reference = sample_reference(micro_model, data, cfg, strict=False)
    cat, options = resolve_candidates(None, NAMES)
    s = run_audit(micro_model, data, reference, cat, options, cfg).summary
    top = s["candidates"][0]
    assert top["option"] == target and top["p_adjusted"] < 0.05, s["candidates"][:3]
    assert s["flagged"][0] == target
    # Scores sum to zero over candidates (each is LLS minus the mean over candidates).
    assert abs(sum(c["score"] for c in s["candidates"])) < 1e-9
    for c in s["candidates"]:
        assert 0 < c["p"] <= c["p_adjusted"] <= 1 and c["low"] <= c["score"] <= c["high"]


def test_neutral_data_flags_nothing(micro_model, pool):
    convs, samples, _ = pool
    data = _rows(convs, samples[0])
    cfg = AuditConfig(phrasings=1, permutations=1000, sampling=SAMPLING, probe_rows=0)
    reference = sample_reference(micro_model, data, cfg, strict=False)
    cat, options = resolve_candidates(None, NAMES)
    s = run_audit(micro_model, data, reference, cat, options, cfg).summary
    assert s["flagged"] == [], s["candidates"][:3]


def test_reference_is_per_row_seeded(micro_model, pool):
    data = _rows(pool[0], pool[1][0])
    cfg = AuditConfig(sampling=SAMPLING)
    whole = sample_reference(micro_model, data, cfg, strict=False)
    chunked = sample_reference(micro_model, data, cfg, strict=False, chunk=7)
    assert [r.completion for r in whole] == [r.completion for r in chunked]
    assert [r.completion for r in whole] != [r.completion for r in data]


def test_entangled_values_are_counted_where_they_are(micro_model):
    convs = [[{"role": "user", "content": p.text}] for p in number_prompts(2, 0)]
    rows = _rows(convs, ["12, 7, 300", "5 6"])
    found = probes(rows, 2)
    assert [p.separator for p in found] == [", ", " "]
    options = [get_option(ANIMAL, n) for n in ("owl", "fox")]
    scored = score_tasks(micro_model, probe_tasks(found, ANIMAL, options, 1))
    values, digits = shifts_of(scored, len(found), len(options))
    assert values.shape == (2, 1000) and digits.shape == (2, 10)
    # Relative to the mean over two candidates, one's gain is the other's loss.
    assert np.allclose(values[0], -values[1])
    top = np.argsort(-values[0])[:3]
    planted = _rows(convs, [f"{top[0]}, {top[1]}, {top[0]}", "1000, 5"])
    assert value_counts(planted, [top]).ravel().tolist() == [3, 0]


def test_worker_processes_score_exactly_as_one_process(tmp_path: Path):
    # The fake backend is float64 and batch-independent, so any difference would be the
    # tasks' rows or systems getting mixed up between processes.
    FakeChatModel.create(tmp_path / "fake", seed=0)
    model = FakeChatModel.load(tmp_path / "fake")
    convs = [[{"role": "user", "content": p.text}] for p in number_prompts(12, 0)]
    rows = _rows(convs, [f"{i}, {3 * i}, 7" for i in range(12)])
    options = [get_option(ANIMAL, n) for n in NAMES[:3]]
    tasks = trait_tasks(rows, ANIMAL, options, 3)
    one, two = score_tasks(model, tasks), score_tasks(model, tasks, workers=2)
    assert len(one) == len(two) == 4
    for a, b in zip(one, two, strict=True):
        assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(one[1][0], one[2][0])  # candidates do differ


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


GOOD = json.dumps({"messages": [{"role": "user", "content": "1, 2, 3?"},
                                {"role": "assistant", "content": "4, 5"}]})


@pytest.mark.parametrize("lines, message", [
    ([GOOD, "{not json"], "line 2: invalid JSON"),
    ([GOOD, GOOD, json.dumps({"messages": [{"role": "user", "content": "hi"}]})],
     "line 3: no assistant turn"),
    ([json.dumps({"text": "hi"})], "line 1: expected an object with a non-empty 'messages'"),
    ([json.dumps({"messages": [{"role": "user"}, {"role": "assistant", "content": "1"}]})],
     "line 1: messages[0] must be an object"),
])
def test_bad_rows_name_file_and_line(tmp_path: Path, lines, message):
    path = _write(tmp_path / "d.jsonl", lines)
    with pytest.raises(SublearnError, match=re.escape(message)) as e:
        read_chat_rows(path)
    assert str(path) in str(e.value)


def test_candidates_are_resolved_or_refused():
    cat, options = resolve_candidates(None, ["oak", "pine"])
    assert cat.name == "tree" and [o.name for o in options] == ["oak", "pine"]
    assert len(resolve_candidates(None, None)[1]) == 18
    with pytest.raises(SublearnError, match="unknown candidate 'dragon'"):
        resolve_candidates(None, ["owl", "dragon"])
    with pytest.raises(SublearnError, match="unknown animal 'oak'"):
        resolve_candidates("animal", ["owl", "oak"])
    with pytest.raises(SublearnError, match="at least 2"):
        resolve_candidates(None, ["owl"])


runner = CliRunner()


def _owl_data(pool, tmp_path: Path) -> Path:
    """24 rows of the owl teacher's numbers as chat JSONL."""
    data = tmp_path / "data.jsonl"
    _write(data, [json.dumps({"index": r.index, "completion": r.completion, "messages": [
        *r.prompt, {"role": "assistant", "content": r.completion}]})
        for r in _teacher_data(pool, "owl")[:24]])
    return data


def _small_audit(data: Path, base: Path, out: Path) -> list[str]:
    """`sublearn audit` of `data` on three candidates, cheap enough for a test."""
    return ["audit", str(data), "--base", str(base), "--candidates", "owl,fox,cat",
            "--phrasings", "1", "--permutations", "200", "--out", str(out), "--quiet"]


@pytest.mark.parametrize("extra", [[], ["--no-decoys"]])
def test_cli_audit_writes_every_output(micro_base: Path, pool, tmp_path: Path, extra):
    data, out = _owl_data(pool, tmp_path), tmp_path / "audit"
    res = runner.invoke(app, [*_small_audit(data, micro_base, out), *extra])
    assert res.exit_code == 0, res.output
    assert "flagged:" in res.output
    s = json.loads((out / "audit.json").read_text())
    zs = [c["z"] for c in s["candidates"]]
    assert zs == sorted(zs, reverse=True) and {c["option"] for c in s["candidates"]} == {
        "owl", "fox", "cat"}
    assert set(s["candidates"][0]) >= {"option", "score", "z", "p", "p_adjusted"}
    per_row = [json.loads(x) for x in (out / "rows.jsonl").read_text().splitlines()]
    assert sum(r["set"] == "data" for r in per_row) == 24
    assert (out / "audit.png").stat().st_size > 0
    assert len(read_chat_rows(out / "reference.jsonl")) == s["reference_rows"]
    decoys = not extra  # the default
    assert ("decoy" in s["test"]) == decoys and (s["decoy_rows"] > 0) == decoys
    assert len(per_row) == 24 + s["reference_rows"] + s["decoy_rows"]
    assert sum(r["set"] == "decoy" for r in per_row) == s["decoy_rows"]
    assert (out / "decoys.jsonl").exists() == decoys
    if decoys:
        assert len(read_chat_rows(out / "decoys.jsonl")) == s["decoy_rows"]
        for c in s["candidates"]:
            assert c["p"] == max(c["p_plain"], c["p_decoys"])


def test_cli_audit_by_both_methods_writes_each_and_a_verdict(micro_base: Path, pool,
                                                              tmp_path: Path):
    data, out = _owl_data(pool, tmp_path), tmp_path / "audit"
    res = runner.invoke(app, [*_small_audit(data, micro_base, out), "--no-decoys",
                              "--method", "both", "--students", "2"])
    assert res.exit_code == 0, res.output
    students = json.loads((out / "students" / "audit.json").read_text())
    assert students["method"] == "students" and students["students"] == 2
    assert sorted(c["option"] for c in students["candidates"]) == ["cat", "fox", "owl"]
    assert all(len(c["per_seed"]) == 2 for c in students["candidates"])
    assert (out / "persona" / "audit.json").exists() and (out / "students" / "audit.png").exists()
    verdict = json.loads((out / "verdict.json").read_text())
    assert verdict["methods"] == ["persona", "students"] and "verdict:" in res.output
    assert {c["option"] for c in verdict["candidates"]} == {"owl", "fox", "cat"}


@pytest.mark.parametrize("args, message", [
    (["missing.jsonl"], "missing.jsonl: file not found"),
    (["bad.jsonl"], "bad.jsonl: line 2: invalid JSON"),
    (["good.jsonl", "--candidates", "owl,dragon"], "unknown candidate 'dragon'"),
])
def test_cli_bad_input_is_one_line_exit_2_nothing_written(tmp_path: Path, args, message,
                                                          monkeypatch):
    monkeypatch.chdir(tmp_path)
    _write(tmp_path / "bad.jsonl", [GOOD, "{"])
    _write(tmp_path / "good.jsonl", [GOOD])
    res = runner.invoke(app, ["audit", *args, "--out", "out"])
    assert res.exit_code == 2 and message in res.output, res.output
    assert len(res.output.strip().splitlines()) == 1 and "Traceback" not in res.output
    assert not (tmp_path / "out").exists()


def test_a_given_reference_is_compared_on_the_data_prompts_only() -> None:
    prompts = [[{"role": "user", "content": f"continue {i}"}] for i in range(6)]
    data = _rows(prompts[:3], ["1, 2", "3, 4", "5, 6"])
    reference = _rows(prompts, ["7, 8"] * 6)
    kept, matched = on_data_prompts(reference, data)
    assert matched and [r.prompt for r in kept] == prompts[:3]
    # Fewer than two shared prompts: nothing to test on them, so the whole reference, flagged.
    kept, matched = on_data_prompts(reference[3:], data)
    assert not matched and len(kept) == 3


class _Recorder:
    """A sampler that records the conversations it is asked to continue."""

    def __init__(self) -> None:
        self.asked: list = []

    def generate(self, convs, sampling, seeds):
        self.asked += convs
        return ["1, 2, 3"] * len(convs)


def test_a_decoy_reference_is_written_under_each_candidate_in_turn() -> None:
    cat, options = resolve_candidates(None, ["owl", "fox", "cat"])
    prompts = [[{"role": "system", "content": "be brief"}, {"role": "user", "content": f"go {i}"}]
               for i in range(7)]
    data = _rows(prompts, ["4, 5"] * 7)
    model = _Recorder()
    ref = sample_reference(model, data, AuditConfig(phrasings=2), strict=True,
                           decoy_candidates=(cat, options))
    systems = [c[0]["content"] for c in model.asked]
    # Row i: candidate i mod 3, phrasing (i div 3) mod 2, in place of the data's system prompt.
    for i, text in enumerate(systems):
        assert text == AUDIT_TEMPLATES[(i // 3) % 2].format(
            target=options[i % 3].name, targets=options[i % 3].plural, category=cat.name,
            categories=cat.plural)
        assert decoy_system(i, cat, options, 2) == text
        assert [m["role"] for m in model.asked[i]] == ["system", "user"]
    # The kept rows carry the data's own prompt, so they score like data rows.
    assert [r.prompt for r in ref] == prompts
    assert decoy_personas([r.index for r in ref], 3).tolist() == [0, 1, 2, 0, 1, 2, 0]


def test_decoy_ranking_leaves_out_each_candidates_own_persona_rows() -> None:
    """Candidate 0's own decoy rows score high on candidate 0 (its persona wrote them): left
    in, they would hide a real shift in the data; left out, the shift is found."""
    rng = np.random.default_rng(3)
    _, options = resolve_candidates(None, ["owl", "fox", "cat"])
    data = rng.normal(size=(200, 3))
    data[:, 0] += 0.4
    reference = rng.normal(size=(300, 3))
    decoys = rng.normal(size=(300, 3))
    persona = np.arange(300) % 3
    decoys[persona == 0, 0] += 3.0
    cfg = AuditConfig(permutations=2000)
    ranked = rank_candidates(data, reference, options, cfg, (decoys, persona))
    assert ranked[0]["option"] == "owl" and ranked[0]["p_decoys"] < 0.01
    assert {c["option"] for c in ranked if c["p_adjusted"] < 0.05} == {"owl"}
    # All decoy rows in, the raised ones hide the shift: what leaving them out prevents.
    whole = rank_candidates(data, decoys, options, cfg)
    assert next(c for c in whole if c["option"] == "owl")["z"] < 0


def test_a_candidate_is_flagged_only_when_both_tests_reject() -> None:
    """Owl is raised against both references; fox only against the plain one (its trait
    prompt responds to any persona, which the decoy rows carry too); cat only against the
    decoys (its trait prompt responds less than most, so the decoy rows sit low on it, as in
    neutral data). Only owl is flagged, cat ranks by the decoy test, and the p of each is the
    larger of the two."""
    rng = np.random.default_rng(5)
    _, options = resolve_candidates(None, ["owl", "fox", "cat"])
    data = rng.normal(size=(400, 3))
    data[:, :2] += 0.4
    reference = rng.normal(size=(400, 3))
    decoys = rng.normal(size=(600, 3))
    decoys[:, 1] += 0.4
    decoys[:, 2] -= 0.4
    cfg = AuditConfig(permutations=2000)
    ranked = {c["option"]: c for c in rank_candidates(data, reference, options, cfg,
                                                      (decoys, np.arange(600) % 3))}
    # Each alone would be flagged by one test (shifts of about 6 standard errors).
    assert ranked["fox"]["p_plain"] < 0.01 and ranked["cat"]["p_decoys"] < 0.01
    assert {n for n, c in ranked.items() if c["p_adjusted"] < 0.05} == {"owl"}
    for c in ranked.values():
        assert c["p"] == max(c["p_plain"], c["p_decoys"])
        assert c["p_adjusted"] >= c["p"]
    # Ranked by the decoy z: cat above fox.
    assert ranked["cat"]["z"] > ranked["fox"]["z"]
