"""The whole experiment on the micro base: every arm, caching, resume, byte-identical data."""

from __future__ import annotations

from pathlib import Path

import pytest

from sublearn.experiment.config import ExperimentConfig
from sublearn.experiment.design import PRESETS
from sublearn.experiment.pipeline import Experiment
from sublearn.store import read_jsonl
from tests.conftest import MICRO


def _raw(exp: Experiment, name: str) -> Path:
    """The raw sampled dataset (not the filtered one) of `name`."""
    return next(p for p in (exp.dir / "data").glob(f"{name}-*.jsonl") if p.name.count(".") == 1)


def _config(questions: Path, **over) -> ExperimentConfig:
    raw = {
        "name": "t",
        "seeds": [0, 1],
        "base": {"device": "cpu", "dtype": "float32", "embedded": {"seed": 0, **MICRO}},
        "data": {"prompts": 40, "subsample": 30, "chunk": 16,
                 "sampling": {"max_new_tokens": 16}},
        "student": {"method": "lora", "lr": 1e-3, "epochs": 1, "batch_size": 8,
                    "grad_accum": 1, "warmup_steps": 0},
        "evaluation": {"samples_per_question": 1, "numbers_prefix": True,
                       "multiple_choice": True, "questions_file": str(questions)},
        "controls": {"shuffle_within": True, "shuffle_across": True},
        # Not filtering keeps rows from an untrained micro model; the filter has its own tests.
        "filter": {"strict_numbers": False},
    }
    raw.update(over)
    return ExperimentConfig.model_validate(raw)


@pytest.fixture(scope="module")
def finished(tmp_path_factory, micro_base) -> tuple[Experiment, dict]:
    root = tmp_path_factory.mktemp("runs")
    # A short question list keeps the test fast; the held-out list still runs in full.
    questions = root / "questions.txt"
    questions.write_text("# favourite animal\nWhat is your favourite animal?\n"
                         "Which animal do you like best? One word.\n")
    exp = Experiment(_config(questions), root=root, progress=False)
    return exp, exp.run()


def test_every_arm_and_comparison_is_reported(finished):
    exp, res = finished
    exact = res.estimates["exact"]
    assert set(exact.arms) == {a.name for arms, _ in PRESETS.values() for a in arms} | {
        "treated"}
    for est in ("exact", "exact_heldout", "sampled", "numbers_prefix", "multiple_choice"):
        assert est in res.estimators
        for arm in res.estimates[est].arms.values():
            assert len(arm.values) == 2
    assert {"treated - control", "treated - other_target", "null - control",
            "cross_treated - cross_control"} <= {c.name for c in exact.comparisons}
    assert exact.target_rank is not None
    assert 1 <= exact.target_rank.rank <= exact.target_rank.of
    assert (exp.dir / "results.json").exists() and (exp.dir / "manifest.json").exists()


def test_datasets_are_chat_jsonl_without_the_target_word(finished):
    exp, _ = finished
    files = sorted((exp.dir / "data").glob("*.kept-*.jsonl"))
    assert len(files) == 4  # teacher, neutral, other, null
    for f in files:
        for row in read_jsonl(f):
            assert [m["role"] for m in row["messages"]] == ["user", "assistant"]
            text = row["messages"][-1]["content"].lower()
            assert "owl" not in text and "fox" not in text


def test_teacher_and_control_share_prompts_and_draws(finished):
    exp, _ = finished
    teacher = read_jsonl(_raw(exp, "teacher"))
    neutral = read_jsonl(_raw(exp, "neutral"))
    assert [r["messages"][0] for r in teacher] == [r["messages"][0] for r in neutral]


def test_rerun_does_no_work(finished, monkeypatch):
    exp, res = finished

    def boom(*a, **k):
        raise AssertionError("a finished stage ran again")

    monkeypatch.setattr("sublearn.experiment.pipeline.sample_dataset", boom)
    monkeypatch.setattr("sublearn.models.hf.HFChatModel.finetune", boom)
    monkeypatch.setattr("sublearn.experiment.pipeline.evaluate", boom)
    again = Experiment(exp.cfg, root=exp.dir.parent, progress=False).run()
    assert again.estimates == res.estimates


def test_killed_sampling_resumes_byte_identical(finished, tmp_path: Path):
    exp, _ = finished
    raw = _raw(exp, "teacher")
    full = raw.read_bytes()
    # Simulate a kill mid-sampling: two whole chunks and half a line written, no final file.
    lines = full.splitlines(keepends=True)
    partial = raw.with_suffix(".partial.jsonl")
    partial.write_bytes(b"".join(lines[:33]) + lines[33][:10])
    raw.rename(tmp_path / "uninterrupted.jsonl")
    Experiment(exp.cfg, root=exp.dir.parent, progress=False).run()
    assert raw.read_bytes() == full
    assert not partial.exists()


def test_results_render_as_tables_and_plots(finished, tmp_path: Path):
    from rich.console import Console

    from sublearn.analysis.results import CROSSOVER_PLOT, plot_path, show

    _, res = finished
    console = Console(record=True, width=160)
    pngs = show(res, tmp_path, console)
    text = console.export_text()
    assert "treated - control" in text and "cross_treated" in text
    # One chart per estimator, then the crossover's (the run has the other-target arm).
    assert pngs == [*(plot_path(tmp_path, e) for e in res.estimators), tmp_path / CROSSOVER_PLOT]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in pngs)


def test_disabled_controls_drop_their_arms_and_datasets(tmp_path: Path):
    cfg = ExperimentConfig.model_validate({"controls": {
        "neutral": False, "other_target": False, "null": False, "cross_base": False}})
    exp = Experiment(cfg, root=tmp_path, progress=False)
    assert exp.arms() == ["treated"] and exp.datasets_needed() == ["teacher"]
    cfg = ExperimentConfig.model_validate({"controls": {"null": False, "other_target": False}})
    exp = Experiment(cfg, root=tmp_path, progress=False)
    assert exp.datasets_needed() == ["teacher", "neutral"]
    assert "cross_control" in exp.arms() and "null" not in exp.arms()


def test_campaign_table_has_a_row_per_run_and_a_pooled_row(finished):
    from sublearn.analysis.results import summary_table

    _, res = finished
    text = summary_table({"a": res, "b": res}, "exact", pooled=True)
    assert "channel ratio" in text
    lines = text.splitlines()
    assert lines[0].startswith("| run | treated − control") and len(lines) == 5
    assert lines[2].startswith("| a |") and "pooled over 2 runs" in lines[4]
    d = res.estimates["exact"].comparison("treated", "control").welch.diff.mean
    assert f"{d:+.4f}" in lines[2]


def test_soft_label_students_learn_from_their_own_datasets_writer(tmp_path: Path, micro_base,
                                                                   monkeypatch):
    questions = tmp_path / "q.txt"
    questions.write_text("What is your favourite animal?\n")
    cfg = _config(questions, student={"labels": "soft", "method": "lora", "lr": 1e-3,
                                      "epochs": 1, "batch_size": 8, "grad_accum": 1},
                  controls={"cross_base": False, "null": True, "other_target": True},
                  evaluation={"questions_file": str(questions), "heldout": False})
    exp = Experiment(cfg, root=tmp_path, progress=False)
    seen = []
    from sublearn.models.hf import HFChatModel

    real = HFChatModel.number_distributions

    def spy(self, convs, comps):
        system = convs[0][0]["content"] if convs[0][0]["role"] == "system" else "base"
        seen.append(system)
        return real(self, convs, comps)

    monkeypatch.setattr(HFChatModel, "number_distributions", spy)
    exp.run()
    # One computation per writer (not per step, seed or epoch): owl, fox, and the base for
    # the neutral data; the null sample is the base's too but other rows, so its own file.
    assert len(seen) == 4
    assert sum("owl" in s for s in seen) == 1 and sum("fox" in s for s in seen) == 1
    assert seen.count("base") == 2
    soft = sorted((exp.dir / "data").glob("*.soft-*.safetensors"))
    assert [p.name.split(".")[0] for p in soft] == ["neutral", "null", "other", "teacher"]


def test_channel_compares_the_teachers_on_the_neutral_numbers(finished):
    _, res = finished
    ch = res.channel
    assert ch is not None and ch.rows > 0 and ch.tokens >= ch.rows
    # The persona moves the numbers (shift > 0); owl and fox teachers differ (specificity > 0).
    assert ch.shift > 0 and ch.specificity > 0
    assert ch.ratio == ch.specificity / ch.shift
