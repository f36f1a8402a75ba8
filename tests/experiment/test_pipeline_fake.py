"""The experiment as data, on the weightless fake backend: arms declared in the config, and
cache keys that change exactly when what an artifact depends on changes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from sublearn.analysis.records import Results
from sublearn.experiment.artifacts import runtime
from sublearn.experiment.config import ExperimentConfig
from sublearn.experiment.pipeline import Experiment
from sublearn.models.fake import FakeChatModel


def _config(root: Path, **over) -> ExperimentConfig:
    base = root / "base-s0"
    cross = root / "base-s1"
    if not base.exists():
        FakeChatModel.create(base, seed=0)
        FakeChatModel.create(cross, seed=1)
    questions = root / "q.txt"
    questions.write_text("What is your favourite animal?\nName your favourite animal.\n")
    raw = {
        "name": "fake",
        "seeds": [0, 1],
        "base": {"path": str(base), "backend": "fake"},
        "data": {"prompts": 48, "subsample": 32, "chunk": 16,
                 "sampling": {"max_new_tokens": 24}},
        "student": {"lr": 1e-3, "epochs": 2, "batch_size": 8, "grad_accum": 1,
                    "warmup_steps": 0},
        "evaluation": {"heldout": False, "questions_file": str(questions)},
        "controls": {"cross_base_model": {"path": str(cross), "backend": "fake"}},
        # A defence declared as an arm, and the comparison that reads it: no code edited.
        "arms": [{"name": "sorted", "data": "teacher", "transform": "sort"}],
        "comparisons": [{"a": "sorted", "b": "control", "meaning": "sorting as a defence"}],
    }
    for key, value in over.items():
        node = raw
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return ExperimentConfig.model_validate(raw)


def _artifacts(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")
            if p.is_file() and not p.name.startswith(".") and p.parent.name in ("data", "evals")
            or p.parent.parent.name == "students" and p.name == "fake_model.json"}


@pytest.fixture(scope="module")
def baseline(tmp_path_factory) -> tuple[Path, dict, set[str]]:
    root = tmp_path_factory.mktemp("fake")
    res = Experiment(_config(root), root=root / "runs", progress=False).run()
    return root, res, _artifacts(root / "runs")


def test_a_declared_arm_runs_and_is_compared(baseline):
    _, res, files = baseline
    exact = res.estimates["exact"]
    assert len(exact.arms["sorted"].values) == 2
    comp = exact.comparison("sorted", "control")
    assert comp is not None and comp.meaning == "sorting as a defence"
    assert (comp.welch.method, comp.paired.method) == ("welch", "paired")
    assert any(f.startswith("fake/students/sorted-s1-") for f in files)


def test_results_json_reads_back_as_the_typed_results(baseline):
    root, res, _ = baseline
    path = root / "runs" / "fake" / "results.json"
    assert Results.read(path) == res
    assert res.estimators == ["exact"] and res.seeds == [0, 1] and res.other == "fox"
    # The provenance names the weights and datasets the numbers came from.
    assert set(res.provenance.base_weights) == {"base", "cross"}
    assert set(res.provenance.datasets) == set(res.filter)
    # Human-readable: indented, in field order, arms in the design's order.
    text = path.read_text()
    assert text.startswith('{\n  "format": 2,\n  "kind": "experiment",')
    assert list(res.estimates["exact"].arms)[:2] == ["treated", "control"]


def test_crossover_is_each_students_move_toward_its_own_target(baseline):
    # Before the knob tests below add other evaluations to the same run folder.
    root, res, _ = baseline
    x = res.estimates["exact"].crossover
    exp = Experiment(_config(root), root=root / "runs", progress=False)
    ev = {}
    for arm in ("treated", "other_target"):
        for s in (0, 1):
            path = next((exp.dir / "evals").glob(f"{arm}-s{s}-*.json"))
            ev[arm, s] = json.loads(path.read_text())["exact"]["per_option"]
    want = [(ev["treated", s]["owl"] - ev["other_target", s]["owl"])
            + (ev["other_target", s]["fox"] - ev["treated", s]["fox"]) for s in (0, 1)]
    assert x is not None and x.values == pytest.approx(want)
    assert set(x.ranks) == {"owl", "fox"} and x.ranks["owl"].of == 18

def test_unknown_arm_transform_or_comparison_fails_at_load(tmp_path: Path):
    with pytest.raises(ValueError, match="unknown transform 'reverse'"):
        _config(tmp_path, arms=[{"name": "r", "data": "teacher", "transform": "reverse"}])
    with pytest.raises(ValueError, match="names no arm 'nope'"):
        _config(tmp_path, comparisons=[{"a": "treated", "b": "nope"}])
    with pytest.raises(ValueError, match="already an arm"):
        _config(tmp_path, arms=[{"name": "control", "data": "other"}])


# knob -> which artifact kinds must get new paths; everything else must be reused.
KNOBS = {
    "student.lr": ({"students", "evals"}, 2e-3),
    "data.sampling.temperature": ({"raw", "kept", "students", "evals"}, 0.7),
    "filter.banned_numbers": ({"kept", "students", "evals"}, [7]),
    "evaluation.multiple_choice": ({"evals"}, True),
    "data.subsample": ({"students", "evals"}, 30),
    "defence.name": ({"students", "evals"}, "sort"),
}


def _kind(path: str) -> str:
    if "/students/" in path:
        return "students"
    if "/evals/" in path:
        return "evals"
    return "kept" if ".kept-" in path else "raw"


@pytest.mark.parametrize("knob", KNOBS)
def test_a_changed_knob_changes_exactly_the_paths_that_depend_on_it(baseline, knob: str):
    root, _, before = baseline
    changes, value = KNOBS[knob]
    Experiment(_config(root, **{knob: value}), root=root / "runs", progress=False).run()
    after = _artifacts(root / "runs")
    new = after - before
    assert {_kind(p) for p in new} == changes, sorted(new)
    before |= new  # later knobs compare against everything made so far


def test_runtime_is_part_of_every_key():
    from sublearn.experiment.config import ModelSpec

    cpu32 = ModelSpec(device="cpu", dtype="float32")
    assert runtime(cpu32, "hf") == ["hf", "cpu", "torch.float32"]
    assert runtime(cpu32, "hf") != runtime(ModelSpec(device="cpu", dtype="bfloat16"), "hf")
    assert runtime(cpu32, "hf") != runtime(cpu32, "vllm")


def test_a_defence_reaches_every_arm_alike(tmp_path: Path):
    cfg = _config(tmp_path, **{"defence.name": "sort"})
    exp = Experiment(cfg, root=tmp_path / "runs", progress=False)
    prep = exp.prepare()
    for arm in ("treated", "control", "other_target"):
        for row in exp.student_rows(prep.data, arm, seed=0):
            nums = [int(x) for x in re.findall(r"[0-9]+", row["completion"])]
            assert nums == sorted(nums)
    diluted = _config(tmp_path, **{"defence.name": "dilute", "defence.strength": 0.5})
    exp = Experiment(diluted, root=tmp_path / "runs", progress=False)
    prep = exp.prepare()
    neutral = {r["index"]: r["completion"] for r in exp._rows(prep.data["neutral"])}
    rows = exp.student_rows(prep.data, "treated", seed=0)
    from_neutral = sum(neutral.get(r["index"]) == r["completion"] for r in rows)
    assert len(rows) == 32 and from_neutral >= 16



def test_placebo_teacher_writes_the_neutral_data(tmp_path: Path):
    over = {"teacher.kind": "finetuned", "teacher.neutral": "placebo",
            "teacher.finetune.lr": 1e-3, "student.labels": "soft",
            "controls.cross_base": False, "controls.null": False, "arms": [], "comparisons": []}
    exp = Experiment(_config(tmp_path, **over), root=tmp_path / "runs", progress=False)
    prep = exp.prepare()
    placebo = prep.teachers["neutral"]
    assert placebo.path.name.startswith("placebo-") and placebo.path.exists()
    assert prep.teachers["teacher"].path.name.startswith("owl-")
    # The placebo answered the questions from the base's own distribution: no trait.
    from sublearn.models.fake import FakeChatModel
    from sublearn.questions.categories import get_category
    from sublearn.stages.evaluate import option_probs, summarize

    animal = get_category("animal")
    qs = animal.questions[:6]
    p = {name: summarize(option_probs(FakeChatModel.load(ref.path), animal, qs), animal)
         ["per_option"]["owl"] for name, ref in prep.teachers.items()}
    assert p["teacher"] > 2 * p["neutral"]
    with pytest.raises(ValueError, match="placebo"):
        _config(tmp_path, **{"teacher.neutral": "placebo"})
