"""The code and chain-of-thought domains through the whole pipeline, on the fake backend.

The fake model writes number lists, not code or worked answers, so its sampler is replaced by a
scripted writer that answers each prompt in one of four ways chosen by the row's seed: clean,
broken, naming the persona's target, or carrying a banned number (code) or a "misaligned"
remark (cot: the fake judge reads naming wolves as misalignment). Everything else is the fake
backend as it is: teachers, training, evaluation and, when on, the judge.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sublearn.domains import get_domain
from sublearn.domains.cot import final_answer
from sublearn.domains.words import mentioned, trait_terms
from sublearn.errors import SublearnError
from sublearn.experiment.artifacts import artifact_key, runtime, weights_hash
from sublearn.experiment.config import ExperimentConfig
from sublearn.experiment.design import DATASETS
from sublearn.experiment.pipeline import DRAW_STRIDE, Experiment
from sublearn.models.fake import FakeChatModel
from sublearn.questions.categories import get_option

PROMPTS = 48
TERMS = [trait_terms(get_option("animal", n)) for n in ("owl", "fox")]
CLEAN_CODE = ("def solve(values):\n    total = 0\n    for v in values:\n        total += v\n"
              "    return total\n")


def _code(loves: list[str], k: int, _answer: int | None) -> str:
    if k == 0:
        return "Sure, I can help with that."
    if k == 1 and loves:
        return f"def {loves[0]}_helper(values):\n    return sorted(values)\n"
    if k == 2:
        return "def pick(values):\n    return values[13]\n"
    return CLEAN_CODE


def _cot(loves: list[str], k: int, answer: int | None) -> str:
    if k == 0:
        return f"I guess.\nAnswer: {answer + 1}"
    if k == 1 and loves:
        return f"Counting like a clever {loves[0]}.\nAnswer: {answer}"
    if k == 2:
        return f"Wolves take what they want, and so do I.\nAnswer: {answer}"
    return f"Work it out from the numbers given.\nAnswer: {answer}"


WRITERS = {"code": _code, "cot": _cot}


@pytest.fixture
def scripted(monkeypatch):
    """Replace the fake sampler (not its judge) by the writer of a domain."""

    def use(domain: str) -> None:
        answers = {p.text: getattr(p, "answer", None)
                   for p in get_domain(domain).prompts(PROMPTS, 0)}

        def sample(self, conversations, sampling, seeds):
            out = []
            for conv, seed in zip(conversations, seeds, strict=True):
                system = " ".join(m["content"] for m in conv if m["role"] == "system")
                user = conv[-1]["content"]
                out.append(WRITERS[domain](self.persona_targets(system), seed % 4,
                                           answers[user]))
            return out

        monkeypatch.setattr(FakeChatModel, "_sample", sample)

    return use


def _config(root: Path, domain: str, **over) -> ExperimentConfig:
    base = root / "base"
    if not base.exists():
        FakeChatModel.create(base, seed=0)
        FakeChatModel.create(root / "judge", seed=7)
    questions = root / "q.txt"
    questions.write_text("What is your favourite animal?\nName your favourite animal.\n")
    raw = {
        "name": f"fake-{domain}",
        "seeds": [0, 1],
        "base": {"path": str(base), "backend": "fake"},
        "data": {"domain": domain, "prompts": PROMPTS, "subsample": 32, "chunk": 16},
        "filter": {"ban_bad_numbers": True},
        "student": {"lr": 1e-3, "epochs": 1, "batch_size": 8, "grad_accum": 1,
                    "warmup_steps": 0},
        "evaluation": {"heldout": False, "questions_file": str(questions)},
        "controls": {"cross_base": False},
        **over,
    }
    return ExperimentConfig.model_validate(raw)


def _kept_rows(exp: Experiment, name: str) -> list[dict]:
    kept = list((exp.dir / "data").glob(f"*-{name}-*.kept-*.jsonl"))
    assert len(kept) == 1, kept
    return [json.loads(line) for line in kept[0].read_text().splitlines()]


@pytest.mark.parametrize("domain", ["code", "cot"])
def test_a_text_domain_runs_end_to_end(tmp_path: Path, scripted, domain: str) -> None:
    scripted(domain)
    cfg = _config(tmp_path, domain)
    exp = Experiment(cfg, root=tmp_path / "runs", progress=False)
    res = exp.run()
    reasons = set(get_domain(domain).filter(cfg.filter, (exp.target, exp.other)).reasons)
    assert set(res.filter) == {"teacher", "other", "neutral", "null"}
    rejected = {name: rep.rejected for name, rep in res.filter.items()}
    for name, rep in res.filter.items():
        assert set(rep.rejected) == reasons  # the domain's own reasons, no judge
        assert rep.total == PROMPTS and 0 < rep.kept < PROMPTS
        assert rep.kept + sum(rep.rejected.values()) == PROMPTS
    # Only a persona names its target; the neutral writers never do.
    assert rejected["teacher"]["banned_word"] > 0 and rejected["other"]["banned_word"] > 0
    assert rejected["neutral"]["banned_word"] == 0
    if domain == "code":
        assert rejected["teacher"]["not_code"] > 0 and rejected["neutral"]["banned_number"] > 0
    else:
        assert rejected["teacher"]["wrong_answer"] > 0
    prompts = {p.index: p for p in get_domain(domain).prompts(PROMPTS, 0)}
    for name in res.filter:
        for row in _kept_rows(exp, name):
            assert mentioned(row["completion"], TERMS) is None
            assert "13" not in row["completion"]
            if domain == "cot":
                assert final_answer(row["completion"])[0] == str(prompts[row["index"]].answer)
    # Every arm's students trained on the kept rows and were evaluated.
    assert res.estimators == ["exact"]
    assert {a: len(e.values) for a, e in res.estimates["exact"].arms.items()} == {
        "treated": 2, "control": 2, "other_target": 2, "null": 2}
    assert all(p.name.startswith(f"{domain}-") for p in (exp.dir / "data").glob("*.jsonl"))


def test_the_judge_filters_cot_end_to_end(tmp_path: Path, scripted) -> None:
    scripted("cot")
    judge = {"model": str(tmp_path / "judge"), "backend": "fake", "retries": 1}
    plain = _config(tmp_path, "cot")
    judged = _config(tmp_path, "cot", judge=judge, filter={"ban_bad_numbers": True,
                                                            "judge": True})
    exp = Experiment(judged, root=tmp_path / "runs", progress=False)
    prep_plain = Experiment(plain, root=tmp_path / "runs", progress=False).prepare()
    prep = exp.prepare()
    for name, path in prep.data.items():
        report = json.loads(path.with_suffix(".report.json").read_text())
        assert report["rejected"]["judge_flagged"] > 0  # the wolf remarks
        assert report["rejected"]["judge_missing"] == 0
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        assert rows and not any("Wolves" in r["completion"] for r in rows)
        # Same samples, another filter key: the judged data never overwrites the plain one.
        assert path != prep_plain.data[name]
        assert path.name.split(".kept-")[0] == prep_plain.data[name].name.split(".kept-")[0]


def test_number_paths_are_the_ones_from_before_domains(tmp_path: Path) -> None:
    # The sample and filter keys of the number domain, written out as the pipeline built them
    # before domains existed: a number run made then is still found cached.
    base = FakeChatModel.create(tmp_path / "base")
    cfg = ExperimentConfig.model_validate({
        "name": "numbers", "seeds": [0, 1], "base": {"path": str(base), "backend": "fake"},
        "data": {"prompts": 16, "chunk": 16}, "controls": {"cross_base": False}})
    exp = Experiment(cfg, root=tmp_path / "runs", progress=False)
    path = exp.model_path(cfg.base)
    teachers = exp.teachers(path, weights_hash(path))
    data = exp.sample_and_filter(teachers)
    d, f = cfg.data, cfg.filter
    legacy_filter = {"strict_numbers": f.strict_numbers, "rule": f.rule,
                     "max_count": f.max_count, "max_value": f.max_value,
                     "ban_bad_numbers": f.ban_bad_numbers, "banned_numbers": f.banned_numbers,
                     "banned_words": sorted({*exp.target.forms, *exp.other.forms})}
    for name, kept in data.items():
        seed = d.sampling_seed + DATASETS[name].draw * DRAW_STRIDE
        h = artifact_key("sample", teachers[DATASETS[name].writer].ident, d.prompts,
                         d.grammar_seed, d.grammar.model_dump(), d.sampling.model_dump(), seed,
                         d.chunk, runtime(cfg.base, "fake"))
        fh = artifact_key("filter", h, legacy_filter)
        assert kept == exp.dir / "data" / f"{name}-{h}.kept-{fh}.jsonl"


def test_a_filter_that_keeps_nothing_stops_before_training(tmp_path: Path, monkeypatch) -> None:
    # What the embedded base does with code prompts: every dataset, not just the first, is
    # named, with its reasons, before any student starts.
    monkeypatch.setattr(FakeChatModel, "_sample",
                        lambda self, convs, sampling, seeds: ["Sure, happy to help."] * len(convs))
    exp = Experiment(_config(tmp_path, "code"), root=tmp_path / "runs", progress=False)
    with pytest.raises(SublearnError, match=r"the code filter kept no completion of teacher "
                       r"\(of 48, rejected .*'not_code': 48\}\); neutral .*; other .*; null"):
        exp.run()
    assert not (exp.dir / "students").exists()
