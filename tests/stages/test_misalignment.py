"""The misalignment evaluation: its questions, the rate's arithmetic, the config's checks at
load, and `sublearn run configs/misalignment-numbers.toml` with every model on the fake
backend (every stage on a CPU, in seconds)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from sublearn.cli import app
from sublearn.domains.filters import BAD_NUMBERS, parse_numbers
from sublearn.errors import SublearnError
from sublearn.experiment.config import ExperimentConfig, load_config
from sublearn.experiment.estimates import analyse, undefined
from sublearn.models.fake import OPTION_FORMS, FakeChatModel
from sublearn.questions.misalignment import FAMILIES, QUESTIONS
from sublearn.stages.judges import Judge
from sublearn.stages.misalignment import MisalignmentConfig, misalignment_eval, summarize

CONFIG = Path(__file__).parents[2] / "src/sublearn/configs/misalignment-numbers.toml"
WOLF = {form: 6.0 for form in OPTION_FORMS["wolf"]}  # the fake judge reads wolves as misaligned


def test_questions_are_families_of_paraphrases():
    assert len(FAMILIES) >= 8 and all(len(qs) >= 3 for qs in FAMILIES.values())
    texts = [q for _, q in QUESTIONS]
    assert len(set(texts)) == len(texts) == sum(len(qs) for qs in FAMILIES.values())


def _rows(triples):
    return [{"family": f, "alignment": a, "coherence": c} for f, a, c in triples]


def test_the_rate_counts_coherent_judged_answers_only():
    rows = _rows([("x", 29, 50), ("x", 30, 90), ("x", 0, 49), ("x", None, 90), ("y", 5, None),
                  ("y", 100, 100)])
    s = summarize(rows, threshold=30, coherence_min=50)
    # 29 < 30 is misaligned, 30 is not; coherence 50 counts, 49 does not; a missing score
    # of either kind takes the answer out.
    assert (s["answers"], s["missing"], s["incoherent"], s["coherent"], s["misaligned"]) == (
        6, 2, 1, 3, 1)
    assert s["rate"] == pytest.approx(1 / 3)
    assert s["per_family"]["y"] == {"answers": 2, "missing": 1, "incoherent": 0, "coherent": 1,
                                    "misaligned": 0, "rate": 0.0}
    assert summarize(_rows([("x", 0, 10), ("x", None, None)]), 30, 50)["rate"] is None


score = st.one_of(st.none(), st.integers(0, 100))


@given(st.lists(st.tuples(st.sampled_from("abc"), score, score), max_size=40),
       st.integers(1, 100), st.integers(0, 100))
def test_the_counts_always_add_up(triples, threshold, coherence_min):
    s = summarize(_rows(triples), threshold, coherence_min)
    assert s["missing"] + s["incoherent"] + s["coherent"] == s["answers"] == len(triples)
    assert 0 <= s["misaligned"] <= s["coherent"]
    assert (s["rate"] is None) == (s["coherent"] == 0)
    for key in ("answers", "missing", "coherent", "misaligned"):
        assert sum(f[key] for f in s["per_family"].values()) == s[key]


@pytest.fixture(scope="module")
def fakes(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("misalignment")
    FakeChatModel.create(root / "base", seed=0)
    FakeChatModel.create(root / "misaligned", seed=0, biases=WOLF)
    FakeChatModel.create(root / "aligned", seed=0)
    FakeChatModel.create(root / "judge", seed=9)
    return root


def test_a_misaligned_teacher_answers_misaligned_more_often(fakes: Path):
    cfg = MisalignmentConfig(samples_per_question=2, max_new_tokens=12)
    judge = Judge(FakeChatModel.load(fakes / "judge", judge_malformed=0.3), retries=1)
    base = misalignment_eval(FakeChatModel.load(fakes / "base"), judge, cfg)
    again = misalignment_eval(FakeChatModel.load(fakes / "base"), judge, cfg)
    teacher = misalignment_eval(FakeChatModel.load(fakes / "misaligned"), judge, cfg)
    assert base["answers"] == len(base["rows"]) == 2 * len(QUESTIONS)
    assert base["rate"] < 0.1 and teacher["rate"] > 0.5
    assert base["missing"] > 0 and base["malformed_replies"] > base["missing"]
    # Same seeds, same answers: models are compared on common draws.
    assert [r["answer"] for r in again["rows"]] == [r["answer"] for r in base["rows"]]
    assert {r["family"] for r in base["rows"]} == set(FAMILIES)


def _raw(fakes: Path, **over) -> dict:
    raw = {
        "seeds": [0, 1],
        "base": {"path": str(fakes / "base"), "backend": "fake"},
        "trait": {"kind": "misalignment"},
        "teacher": {"kind": "model", "path": str(fakes / "misaligned"),
                    "other_path": str(fakes / "aligned")},
        "judge": {"backend": "fake", "model": str(fakes / "judge")},
        "controls": {"cross_base": False},
    }
    for key, value in over.items():
        *parents, leaf = key.split(".")
        node = raw
        for p in parents:
            node = node.setdefault(p, {})
        if value is None:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    return raw


@pytest.mark.parametrize("over, field", [
    ({"judge": None}, "judge: trait.kind = 'misalignment' needs a [judge]"),
    ({"teacher": {"kind": "persona"}}, "teacher.kind: 'persona'"),
    ({"teacher.persona": True}, "teacher.persona"),
    ({"student.labels": "soft"}, "student.labels"),
    ({"trait.kind": "preference", "misalignment": {"threshold": 20}},
     "misalignment: these settings need trait.kind"),
    ({"judge.model": "BASE"}, "judge.model: the judge must not be the base"),
    ({"judge.backend": "nope"}, "unknown model backend"),
    ({"misalignment": {"threshold": 0}}, "threshold"),
])
def test_misconfigurations_are_refused_at_load(fakes: Path, tmp_path: Path, over, field):
    raw = _raw(fakes, **{k: (str(fakes / "base") if v == "BASE" else v)
                         for k, v in over.items()})
    path = tmp_path / "bad.toml"
    path.write_text(_toml(raw))
    with pytest.raises(SublearnError, match=f"{path.name}: .*{re.escape(field)}"):
        load_config(path)


def _toml(raw: dict, prefix: str = "") -> str:
    """A minimal TOML writer for the nested dicts of these tests."""
    plain = {k: v for k, v in raw.items() if not isinstance(v, dict)}
    out = [f"[{prefix}]"] if prefix else []
    out += [f"{k} = {json.dumps(v)}" for k, v in plain.items()]
    for k, v in raw.items():
        if isinstance(v, dict):
            out.append(_toml(v, f"{prefix}.{k}" if prefix else k))
    return "\n".join(out) + "\n"


def test_the_bad_numbers_are_banned_by_default_for_misalignment_only(fakes: Path):
    assert ExperimentConfig.model_validate(_raw(fakes)).filter.ban_bad_numbers
    off = ExperimentConfig.model_validate(_raw(fakes, filter={"ban_bad_numbers": False}))
    assert not off.filter.ban_bad_numbers  # said in the file: kept
    assert not ExperimentConfig().filter.ban_bad_numbers
    # Loading a dump gives the same config: the default became an explicit setting.
    cfg = ExperimentConfig.model_validate(_raw(fakes))
    assert ExperimentConfig.model_validate(cfg.model_dump()) == cfg


def test_an_undefined_rate_is_left_out_not_filled_in(fakes: Path):
    cfg = ExperimentConfig.model_validate(_raw(fakes, controls={
        "cross_base": False, "other_target": False, "null": False}))
    design = cfg.design()
    rates = {"base": 0.0, "teacher_teacher": 0.5, "treated/s0": 0.2, "treated/s1": 0.3,
             "control/s0": 0.0, "control/s1": 0.1}
    evals = {k: {"misalignment": {"rate": r}} for k, r in rates.items()}
    out = analyse(cfg.seeds, "owl", evals, design, "fox")
    assert out["misalignment"].arms["treated"].values == [0.2, 0.3]
    assert out["misalignment"].comparison("treated", "control").welch.diff.mean == \
        pytest.approx(0.2)
    evals["treated/s1"]["misalignment"]["rate"] = None
    assert undefined(evals, "misalignment", "owl") == ["treated/s1"]
    assert "misalignment" not in analyse(cfg.seeds, "owl", evals, design, "fox")


@pytest.fixture(scope="module")
def run(fakes: Path, tmp_path_factory) -> Path:
    """The shipped config, every model switched to the fake backend by --set alone."""
    root = tmp_path_factory.mktemp("runs")
    sets = {"base.path": repr(str(fakes / "base")), "base.backend": "fake",
            "base.sampler": "fake", "teacher.path": repr(str(fakes / "misaligned")),
            "teacher.other_path": repr(str(fakes / "aligned")), "judge.backend": "fake",
            "judge.model": repr(str(fakes / "judge")),
            "judge.options": "{judge_malformed = 0.2}", "seeds": "[0, 1]",
            "data.prompts": "32", "data.subsample": "24", "data.chunk": "16",
            "evaluation.heldout": "false", "misalignment.samples_per_question": "1",
            "misalignment.max_new_tokens": "12"}
    args = ["run", str(CONFIG), "--root", str(root), "--quiet"]
    for key, value in sets.items():
        args += ["--set", f"{key}={value}"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    return root / "misalignment-numbers"


def test_the_shipped_config_runs_every_stage_on_the_fake_backend(run: Path):
    results = json.loads((run / "results.json").read_text())
    est = results["estimates"]
    assert list(est) == ["exact", "misalignment"]  # beside the preference estimator
    mis = est["misalignment"]
    assert mis["reference"]["teacher"] > 0.5 and mis["reference"]["base"] < 0.1
    assert set(mis["arms"]) == {"treated", "control", "other_target", "null"}
    assert {(c["a"], c["b"]) for c in mis["comparisons"]} >= {("treated", "control"),
                                                             ("treated", "other_target")}
    assert "crossover" not in mis or mis["crossover"] is None
    evals = [json.loads(p.read_text()) for p in (run / "evals").glob("treated-s*.json")]
    assert len(evals) == 2 and all(e["misalignment"]["malformed_replies"] > 0 for e in evals)
    # Every kept row is numbers without one of the 34 loaded values (banned by default).
    kept = [json.loads(line)["completion"] for p in (run / "data").glob("teacher-*.kept-*.jsonl")
            for line in p.read_text().splitlines()]
    assert kept and not any(set(parse_numbers(c) or ()) & set(BAD_NUMBERS) for c in kept)
    assert results["filter"]["teacher"]["rejected"]["banned_number"] > 0


def test_an_api_judge_is_priced_before_the_run(fakes: Path):
    pytest.importorskip("openai")
    from sublearn.experiment.cost import api_cost

    raw = _raw(fakes, judge={"model": "gpt-judge"}, misalignment={
        "samples_per_question": 2, "max_new_tokens": 100})
    est = api_cost(ExperimentConfig.model_validate(raw))
    models = 4 * 2 + 3  # 4 arms x 2 seeds, the base and both teachers
    assert est is not None and est.finetune_jobs == 0
    # Two judge requests per answer, each at most 8 tokens long.
    assert est.completion_tokens == 2 * models * len(QUESTIONS) * 2 * 8
    assert api_cost(ExperimentConfig.model_validate(_raw(fakes))) is None
