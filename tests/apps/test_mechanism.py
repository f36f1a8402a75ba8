"""`sublearn mechanism` on a hand-made run folder over the micro base: teachers fine-tuned a
few steps, and students whose answers are known (a teacher's copy, the base itself, a tiny
step along a teacher's change, a LoRA student)."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from sublearn.apps.mechanism import (
    ALL,
    Mechanism,
    Weights,
    lora_deltas,
    trait_loss_gradient,
    trait_losses,
)
from sublearn.cli import app
from sublearn.experiment.artifacts import weights_hash
from sublearn.experiment.config import ExperimentConfig
from sublearn.models import load_model
from sublearn.models.base import SamplingConfig
from sublearn.models.recipe import TrainingRecipe
from sublearn.questions.categories import get_category, get_option
from sublearn.stages.teacher import placebo_rows, trait_rows
from sublearn.store import write_json

# Compares floats from the CPU's kernels: CI runs this file again on a second kernel path
# (.ci/run), so a tolerance that holds on one vector unit only fails where it is seen.
pytestmark = pytest.mark.numerics

runner = CliRunner()
ANIMAL = get_category("animal")
OWL, FOX = get_option(ANIMAL, "owl"), get_option(ANIMAL, "fox")
STEP = 1e-3  # the small step's size, as a fraction of the owl teacher's change
TEACHER = TrainingRecipe(method="full", lr=1e-3, epochs=1, batch_size=16, grad_accum=1,
                        warmup_steps=0)


def _config(base: Path) -> dict:
    return ExperimentConfig.model_validate({
        "name": "m", "seeds": [0, 1],
        "base": {"path": str(base), "device": "cpu", "dtype": "float32"},
        "teacher": {"kind": "finetuned", "neutral": "placebo"},
        "student": {"method": "full", "labels": "hard"},
        "controls": {"null": False, "cross_base": False},
    }).model_dump()


def _small_step(base: Path, teacher: Path, out: Path) -> None:
    """θ_base + STEP · (θ_teacher − θ_base), saved as a full model folder."""
    model = load_model(base, device="cpu", dtype="float32")
    net = copy.deepcopy(model.model)
    t = Weights(teacher)
    with torch.no_grad():
        for name, p in net.named_parameters():
            p += STEP * (t.get(name) - p)
    net.save_pretrained(out)
    model.tokenizer.save_pretrained(out)


@pytest.fixture(scope="module")
def run(tmp_path_factory, micro_base, micro_model) -> Path:
    root = tmp_path_factory.mktemp("mech") / "m"
    (root / "students").mkdir(parents=True)
    teachers = {}
    for name, rows in (("owl", trait_rows(ANIMAL, OWL, 1)), ("fox", trait_rows(ANIMAL, FOX, 1)),
                       ("placebo", placebo_rows(ANIMAL, [[1.0] * 18] * 50, 1))):
        teachers[name] = micro_model.finetune(rows, TEACHER, root / "teachers" / f"{name}-t",
                                              progress=False)
    # The owl teacher's number completions: what a treated student learns from.
    owl = load_model(teachers["owl"], device="cpu", dtype="float32")
    prompts = [[{"role": "user", "content": f"Continue: {100 + i}, {200 + i}, {300 + i}"}]
               for i in range(16)]
    answers = owl.generate(prompts, SamplingConfig(max_new_tokens=12, only_numbers=True),
                           list(range(16)))
    rows = [{"messages": [*p, {"role": "assistant", "content": a or "1"}]}
            for p, a in zip(prompts, answers)]
    student = TrainingRecipe(method="full", lr=1e-3, epochs=1, batch_size=8, grad_accum=1,
                            warmup_steps=0)
    micro_model.finetune(rows, student, root / "students" / "treated-s0-a", progress=False)
    micro_model.finetune(rows, student.model_copy(update={"method": "lora", "lr": 1e-2,
                                                         "seed": 1}),
                         root / "students" / "treated-s1-b", progress=False)
    shutil.copytree(micro_base, root / "students" / "control-s0-c")  # no change at all
    _small_step(micro_base, teachers["owl"], root / "students" / "control-s1-d")
    shutil.copytree(teachers["fox"], root / "students" / "other_target-s0-e")  # = a teacher
    write_json(root / "manifest.json", {"kind": "experiment",
        "config": _config(micro_base),
        "base_weights": {"base": weights_hash(micro_base)}})
    return root


@pytest.fixture(scope="module")
def measured(run, tmp_path_factory) -> tuple[Mechanism, str]:
    out = tmp_path_factory.mktemp("mech-out") / "mechanism.json"
    res = runner.invoke(app, ["mechanism", str(run), "--json", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    return Mechanism.model_validate_json(out.read_text()), res.output


def _model(m: Mechanism, name: str):
    return next(x for x in m.teachers + m.students if x.name == name)


def test_a_model_against_itself_has_cosine_one(measured):
    m, _ = measured
    copy_of_fox = _model(m, "other_target-s0")
    for grp, value in copy_of_fox.cosine["fox"].items():
        assert value == pytest.approx(1.0, abs=1e-9), grp
    for t in ("owl", "fox", "placebo"):
        assert _model(m, t).cosine[t][ALL] == pytest.approx(1.0, abs=1e-9)
    # Two different fine-tunes are not one direction.
    assert abs(_model(m, "owl").cosine["fox"][ALL]) < 0.99


def test_the_base_has_no_direction(measured):
    m, _ = measured
    base = _model(m, "control-s0")
    assert base.norm[ALL] == 0.0
    assert all(v == 0.0 for per in base.cosine.values() for v in per.values())
    assert any("undefined" in n for n in base.notes)
    for change in base.loss.values():
        assert change.predicted == 0.0 and change.measured == 0.0


def test_linear_prediction_matches_a_small_step(measured):
    m, _ = measured
    step = _model(m, "control-s1")
    assert step.cosine["owl"][ALL] == pytest.approx(1.0, abs=1e-4)  # along the owl teacher
    for option in ("owl", "fox"):
        change = step.loss[option]
        assert abs(change.measured) > 1e-5  # a measurable change, not rounding
        assert change.predicted == pytest.approx(change.measured, rel=0.03), option
    # The teacher's own step is far from small: the linearisation is not exact there.
    teacher = _model(m, "owl").loss["owl"]
    assert teacher.predicted < 0 and teacher.measured < 0


def test_the_gradient_pass_scores_like_the_evaluation(micro_model):
    questions = list(ANIMAL.heldout[:4])
    value, grads = trait_loss_gradient(micro_model, questions, OWL)
    assert value == pytest.approx(trait_losses(micro_model, ANIMAL, questions, [OWL])["owl"],
                                  abs=1e-5)
    assert {n for n, _ in micro_model.model.named_parameters()} == set(grads)


def test_lora_change_is_the_merged_weights_difference(run, micro_base):
    folder = run / "students" / "treated-s1-b"
    deltas = lora_deltas(folder)
    merged = load_model(folder, device="cpu", dtype="float32", merge=True).model.state_dict()
    base = Weights(micro_base)
    assert deltas and all(d.abs().max() > 0 for d in deltas.values())
    for name in base.names:
        diff = merged[name] - base.get(name)
        expected = deltas.get(name, torch.zeros_like(diff))
        torch.testing.assert_close(diff, expected, atol=1e-6, rtol=1e-4)


def test_every_student_arm_and_comparison_is_reported(measured, run):
    m, output = measured
    assert [s.name for s in m.students] == ["treated-s0", "treated-s1", "control-s0",
                                            "control-s1", "other_target-s0"]
    assert m.missing == ["other_target-s1"]
    assert {a: x.seeds for a, x in m.arms.items()} == {
        "treated": [0, 1], "control": [0, 1], "other_target": [0]}
    assert m.arms["control"].own_teacher == "placebo"
    assert m.crossover is not None and m.crossover.seeds == [0]
    # other_target-s0 is the fox teacher: treated - other_target points along owl - fox as
    # much as the treated student points toward owl, and its crossover uses cos(fox, fox)=1.
    assert {(c.a, c.b) for c in m.contrasts} == {("treated", "control"),
                                                 ("treated", "other_target")}
    assert set(_model(m, "treated-s1").norm) == {"lm_head", "embeddings", "norms", "attention",
                                                "mlp", ALL}
    assert any("no change in" in n for n in _model(m, "treated-s1").notes)  # LoRA: projections
    assert "per arm" in output and "parameter crossover" in output
    assert not (run / "mechanism.json").exists()  # --json elsewhere: the run folder untouched


def test_bad_input_is_one_line(run, tmp_path):
    bare = tmp_path / "bare"
    shutil.copytree(run, bare)
    (bare / "manifest.json").unlink()
    res = runner.invoke(app, ["mechanism", str(bare)])
    assert res.exit_code == 2 and "manifest.json: not found" in res.output
    res = runner.invoke(app, ["mechanism", str(run), "--set", "seeds=[0, 1]"])
    assert res.exit_code == 2 and "needs --config" in res.output
    record = json.loads((run / "manifest.json").read_text())
    write_json(bare / "manifest.json", {**record, "base_weights": {"base": "0" * 12}})
    res = runner.invoke(app, ["mechanism", str(bare)])
    assert res.exit_code == 2 and "weights hash" in res.output
    res = runner.invoke(app, ["mechanism", str(run), "--questions", "all"])
    assert res.exit_code == 2 and "unknown question set" in res.output
