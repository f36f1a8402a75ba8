"""The whole experiment through the OpenAI-compatible backend, against the local test server
(127.0.0.1, started here): a run that suffers every network fault writes the same datasets,
byte for byte, as one that suffers none, and its cost is estimated before it starts."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("openai")

from sublearn.experiment.config import ExperimentConfig
from sublearn.experiment.cost import api_cost
from sublearn.experiment.pipeline import Experiment
from tests.openai_server import FAULTS, FakeOpenAI

KEY = "sk-test-pipeline-PQRSTUVWXYZ"
FAST = {"timeout": 0.3, "backoff_base": 0.01, "backoff_cap": 0.05, "poll_interval": 0.01,
        "poll_cap": 0.05, "concurrency": 4, "max_attempts": 30}


def _config(url: str, tmp: Path) -> ExperimentConfig:
    q = tmp / "q.txt"
    q.write_text("What is your favourite animal?\nName your favourite animal.\n")
    return ExperimentConfig.model_validate({
        "name": "api", "seeds": [0, 1],
        "base": {"backend": "openai", "model": "toy-model", "base_url": url, "options": FAST},
        "data": {"prompts": 24, "subsample": 16, "chunk": 8, "sampling": {"max_new_tokens": 12}},
        "student": {"epochs": 2},
        "evaluation": {"exact": False, "heldout": False, "top_logprobs": 5,
                       "samples_per_question": 2, "questions_file": str(q)},
        "controls": {"null": False, "cross_base": False},
    })


def _datasets(run: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((run / "data").glob("*.jsonl"))}


def test_a_faulty_network_gives_the_same_run(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    every = [x for f in FAULTS for x in (f, None)]
    runs = {}
    for label, faults in (("clean", None), ("faulty", {"chat": every, "jobs.get": every})):
        with FakeOpenAI(KEY, faults, slow_s=0.6, polls_to_finish=2) as server:
            exp = Experiment(_config(server.base_url, tmp_path), root=tmp_path / label,
                             progress=False)
            res = exp.run()
            runs[label] = (exp.dir, res, server.uploads, server.job_creations)
    (clean, res, uploads, jobs), (faulty, res2, uploads2, jobs2) = runs["clean"], runs["faulty"]
    assert _datasets(clean) == _datasets(faulty) and len(_datasets(clean)) >= 6
    assert set(res.estimators) == {"top_logprobs", "sampled"}
    assert res.estimates == res2.estimates
    # One upload and one job per student (3 arms x 2 seeds), faults or not.
    assert uploads == jobs == uploads2 == jobs2 == 6
    for p in clean.rglob("*"):
        assert not p.is_file() or KEY.encode() not in p.read_bytes()


def test_cost_is_estimated_for_api_runs_only(tmp_path: Path):
    cfg = _config("http://127.0.0.1:9/v1", tmp_path)
    est = api_cost(cfg)
    # 4 datasets? No: teacher, neutral and other; each 24 prompts of at most 12 tokens.
    assert est.completion_tokens >= 3 * 24 * 12 and est.finetune_jobs == 6
    assert est.training_tokens > 0 and est.dollars is None
    assert api_cost(ExperimentConfig()) is None


def test_exact_scoring_is_refused_for_the_api_at_load():
    with pytest.raises(ValueError, match="cannot score"):
        ExperimentConfig.model_validate({"base": {"backend": "openai", "model": "m"}})
