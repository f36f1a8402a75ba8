"""The estimator registry: a new estimator is one entry and its function, and everything that
reads estimators (config, pipeline, statistics, tables, cost, README) follows from it."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from rich.console import Console

from sublearn.analysis.results import show
from sublearn.experiment.config import ExperimentConfig
from sublearn.experiment.pipeline import Experiment
from sublearn.models.base import SAMPLE, TOP_LOGPROBS
from sublearn.models.fake import FakeChatModel
from sublearn.questions.categories import get_category
from sublearn.stages.estimators import (
    ESTIMATORS,
    Estimator,
    Requests,
    Setting,
    Subject,
    estimator,
    markdown_table,
)
from sublearn.stages.evaluate import SAMPLED_TOKENS, sampled_rates

README = Path(__file__).parents[2] / "README.md"
LABEL = "sampled rate (T=1), questions in capitals"


@pytest.fixture
def shouted():
    """The sampled rate on the questions in capitals: one entry and its function."""

    @estimator("shouted", needs=SAMPLE, shape="per_option", label=LABEL,
               setting=Setting("shouted", int, 0, "answers sampled per question in capitals"),
               help="the sampled rate on the questions in capitals",
               requests=lambda n: Requests(per_question=n, max_tokens=SAMPLED_TOKENS))
    def _shouted(s: Subject, n: int) -> dict[str, Any]:
        rates = sampled_rates(s.model, s.category, [q.upper() for q in s.questions], n, s.seed)
        return {"per_option": {o.name: float(v)
                               for o, v in zip(s.category.options, rates.mean(0), strict=True)}}

    yield _shouted
    del ESTIMATORS["shouted"]


def _raw(root: Path, **evaluation: Any) -> dict[str, Any]:
    base = root / "base"
    if not base.exists():
        FakeChatModel.create(base, seed=0)
    questions = root / "q.txt"
    questions.write_text("What is your favourite animal?\nName your favourite animal.\n")
    return {"name": "fake", "seeds": [0, 1],
            "base": {"path": str(base), "backend": "fake"},
            "data": {"prompts": 24, "subsample": 16, "chunk": 8,
                     "sampling": {"max_new_tokens": 24}},
            "student": {"lr": 1e-3, "epochs": 1, "batch_size": 8, "grad_accum": 1,
                        "warmup_steps": 0},
            "evaluation": {"heldout": False, "questions_file": str(questions), **evaluation},
            "controls": {"null": False, "cross_base": False}}


def test_a_registered_estimator_runs_through_the_pipeline(shouted: Estimator, tmp_path: Path):
    cfg = ExperimentConfig.model_validate(_raw(tmp_path, shouted=3))
    assert cfg.evaluation.shouted == 3 and cfg.evaluation.needs() == {"score", SAMPLE}
    exp = Experiment(cfg, root=tmp_path / "runs", progress=False)
    res = exp.run()
    assert res.estimators == ["exact", "shouted"]
    est = res.estimates["shouted"]
    # Per option: every arm's seeds, the references, the comparisons and the crossover
    # between the two targets' students; no rank (not a ranked estimator).
    assert [len(a.values) for a in est.arms.values()] == [2, 2, 2]
    assert est.reference.base is not None and est.reference.teacher is not None
    assert est.comparison("treated", "control") is not None
    assert est.crossover is not None and est.target_rank is None
    base = json.loads(next((exp.dir / "evals").glob("base-*.json")).read_text())
    assert est.reference.base == base["shouted"]["per_option"]["owl"]
    # Three answers per question, two questions: every rate is a multiple of 1/6.
    assert all(round(6 * v, 9).is_integer() for v in base["shouted"]["per_option"].values())
    console = Console(record=True, width=120)
    show(res, tmp_path / "plots", console, described=ESTIMATORS)
    assert f"{LABEL} — target 'owl'" in console.export_text()


def test_a_registered_estimator_is_a_checked_setting(shouted: Estimator, tmp_path: Path):
    with pytest.raises(ValidationError, match=r"evaluation.shouted\n.*valid integer"):
        ExperimentConfig.model_validate(_raw(tmp_path, shouted="loud"))
    # The setting joins every evaluation's key, so it is dumped; off, nothing runs.
    dumped = ExperimentConfig.model_validate(_raw(tmp_path)).model_dump()["evaluation"]
    assert dumped["shouted"] == 0
    # The capability it needs is checked at load, as any estimator's.
    ESTIMATORS["shouted"] = Estimator("shouted", shouted.run, TOP_LOGPROBS, LABEL,
                                      "per_option", "", setting=shouted.setting)
    with pytest.raises(ValidationError, match="cannot top_logprobs"):
        ExperimentConfig.model_validate(_raw(tmp_path, shouted=3))


def test_a_registered_estimator_is_priced(shouted: Estimator, tmp_path: Path):
    pytest.importorskip("openai")
    from sublearn.experiment.cost import api_cost

    def cost(**evaluation: Any) -> Any:
        raw = _raw(tmp_path, exact=False, samples_per_question=1, **evaluation)
        raw["base"] = {"backend": "openai", "model": "toy-model"}
        return api_cost(ExperimentConfig.model_validate(raw))

    models = 3 * 2 + 3  # the students (3 arms, 2 seeds), the base and both teachers
    questions = len(get_category("animal").questions)
    added = cost(shouted=4).completion_tokens - cost().completion_tokens
    assert added == models * questions * 4 * SAMPLED_TOKENS


def test_the_setting_leaves_with_its_estimator(tmp_path: Path):
    assert "shouted" not in ESTIMATORS
    with pytest.raises(ValidationError, match=r"evaluation.shouted\n.*Extra inputs"):
        ExperimentConfig.model_validate(_raw(tmp_path, shouted=3))


def test_readme_table_is_the_registry_table():
    text = README.read_text(encoding="utf-8")
    found = re.search(r"<!-- estimators:[^\n]*-->\n(.*?)\n<!-- /estimators -->", text,
                      re.DOTALL)
    assert found, "README.md has no estimators table between its markers"
    assert found.group(1) == markdown_table(), (
        "README.md's estimator table is stale; paste in the output of: python -c "
        "'from sublearn.stages.estimators import markdown_table; print(markdown_table())'")
