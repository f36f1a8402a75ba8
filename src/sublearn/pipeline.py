"""The stage graph of the number-sequence experiment.

Each stage's artifact lives under `runs/<name>/` at a path that carries a hash of everything
it depends on (base weights, teacher, prompts, sampling, filter, recipe, seed). A rerun finds
finished artifacts and skips them; a changed knob gets a new path, never a stale artifact.
Sampling resumes inside a dataset (see stages.sample); models and JSON are written atomically.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console

from sublearn import stats
from sublearn.config import ExperimentConfig, ModelSpec
from sublearn.models.base import ChatModel, load_model
from sublearn.questions import get_category, get_option, load_questions
from sublearn.stages import datasets
from sublearn.stages.channel import channel
from sublearn.stages.evaluate import evaluate
from sublearn.stages.filters import apply_filter
from sublearn.stages.prompts import number_prompts
from sublearn.stages.sample import sample_dataset
from sublearn.stages.teacher import persona_teacher, trait_rows
from sublearn.store import (
    MANIFEST,
    hash_files,
    manifest,
    read_json,
    read_jsonl,
    stable_hash,
    write_json,
    write_jsonl,
)

# Student arms: (dataset, transform, which base). The cross-base pair trains a differently
# initialised model on the teacher's and the neutral data: its effect is their difference.
ARMS: dict[str, tuple[str, str | None, str]] = {
    "treated": ("teacher", None, "base"),
    "control": ("neutral", None, "base"),
    "other_target": ("other", None, "base"),
    "null": ("null", None, "base"),
    "cross_treated": ("teacher", None, "cross"),
    "cross_control": ("neutral", None, "cross"),
    "shuffled_within": ("teacher", "within", "base"),
    "shuffled_across": ("teacher", "across", "base"),
}
# The differences that answer the questions a reader has, each "a - b".
COMPARISONS = [
    ("treated", "control", "effect: treated student minus neutral-teacher control"),
    ("treated", "other_target", "specificity: minus the other-target teacher's student"),
    ("null", "control", "null: an independent neutral sample minus the control"),
    ("cross_treated", "cross_control", "cross-base: a different base on the same data"),
    ("shuffled_within", "control", "numbers shuffled within completions"),
    ("shuffled_across", "control", "numbers shuffled across completions"),
]


class Experiment:
    def __init__(self, config: ExperimentConfig, root: str | Path = "runs", progress: bool = True):
        self.cfg = config
        self.dir = Path(root) / config.name
        self.progress = progress
        self.console = Console(stderr=True, quiet=not progress)
        self.category = get_category(config.trait.category)
        self.target = get_option(self.category, config.trait.target)
        self.other = get_option(self.category, config.trait.other_target)
        self._models: dict[str, ChatModel] = {}

    # --- helpers ----------------------------------------------------------------------
    def _log(self, msg: str) -> None:
        self.console.log(msg)

    def _cached_json(self, path: Path, make: Callable[[], Any], what: str) -> Any:
        if path.exists():
            self._log(f"[dim]cached[/] {what}")
            return read_json(path)
        self._log(f"{what} ...")
        value = make()
        write_json(path, value)
        return value

    def model_path(self, spec: ModelSpec) -> Path:
        if spec.path:
            from sublearn.models.hf import check_model_folder

            return check_model_folder(spec.path)
        from sublearn.tinybase import ensure_base

        self._log(f"embedded base (seed {spec.embedded.seed}) ...")
        return ensure_base(spec.embedded, progress=self.progress)

    def load(self, path: Path, spec: ModelSpec) -> ChatModel:
        key = str(path)
        if key not in self._models:
            self._models[key] = load_model(path, device=spec.device, dtype=spec.dtype)
        return self._models[key]

    @staticmethod
    def weights_hash(path: Path) -> str:
        m = path / MANIFEST
        if m.exists():
            h = read_json(m).get("weights_hash")
            if h:
                return h
        return hash_files(path)

    # --- stages -----------------------------------------------------------------------
    def teachers(self, base: ChatModel, base_hash: str) -> dict[str, tuple[ChatModel, str]]:
        """name -> (model, identity hash). 'neutral' is the base itself."""
        out: dict[str, tuple[ChatModel, str]] = {"neutral": (base, base_hash)}
        tcfg = self.cfg.teacher
        wanted = [("teacher", self.target)]
        if "other" in self.datasets_needed():
            wanted.append(("other", self.other))
        for name, option in wanted:
            if tcfg.kind == "persona":
                t = persona_teacher(base, self.category, option, tcfg.persona_variant)
                out[name] = (t, stable_hash([base_hash, t.system]))
            else:
                h = stable_hash([base_hash, tcfg.model_dump(), self.category.name, option.name])
                path = self.dir / "teachers" / f"{option.name}-{h}"
                if not path.exists():
                    self._log(f"fine-tuning the {option.name} teacher ...")
                    rows = trait_rows(self.category, option, tcfg.finetune_rows_per_question)
                    base.finetune(rows, tcfg.finetune, path, progress=self.progress)
                out[name] = (self.load(path, self.cfg.base), h)
        return out

    def arms(self) -> list[str]:
        c = self.cfg.controls
        on = {"treated": True, "control": c.neutral or c.null or c.cross_base,
              "other_target": c.other_target, "null": c.null, "cross_treated": c.cross_base,
              "cross_control": c.cross_base, "shuffled_within": c.shuffle_within,
              "shuffled_across": c.shuffle_across}
        return [a for a in ARMS if on[a]]

    def datasets_needed(self) -> list[str]:
        """The datasets the enabled arms train on, in a fixed order."""
        needed = {ARMS[a][0] for a in self.arms()}
        return [n for n in ("teacher", "neutral", "other", "null") if n in needed]

    def sample_and_filter(self, teachers: dict[str, tuple[ChatModel, str]]) -> dict[str, Path]:
        d = self.cfg.data
        prompts = number_prompts(d.prompts, d.grammar_seed, d.grammar)
        fcfg = self.cfg.filter.model_copy(
            update={"banned_words": sorted({*self.cfg.filter.banned_words,
                                            *self.target.forms, *self.other.forms})}
        )
        out = {}
        for name in self.datasets_needed():
            model, ident = teachers["neutral" if name == "null" else name]
            # The null sample is the neutral teacher with other random draws.
            seed = d.sampling_seed + (1_000_003 if name == "null" else 0)
            h = stable_hash([ident, d.prompts, d.grammar_seed, d.grammar.model_dump(),
                             d.sampling.model_dump(), seed, d.chunk])
            raw = self.dir / "data" / f"{name}-{h}.jsonl"
            if raw.exists():
                self._log(f"[dim]cached[/] samples: {name}")
            else:
                self._log(f"sampling {d.prompts} completions: {name}")
                sample_dataset(model, prompts, d.sampling, seed, raw, d.chunk, self.progress, name)
            fh = stable_hash([h, fcfg.model_dump()])
            kept = self.dir / "data" / f"{name}-{h}.kept-{fh}.jsonl"
            if not kept.exists():
                rows, report = apply_filter(read_jsonl(raw), fcfg)
                write_json(kept.with_suffix(".report.json"), report.to_dict())
                write_jsonl(kept, rows)
            out[name] = kept
        return out

    def train_students(self, data: dict[str, Path], paths: dict[str, Path],
                       hashes: dict[str, str],
                       teachers: dict[str, tuple[ChatModel, str]]) -> dict[tuple[str, int], Path]:
        students = {}
        cache: dict[Path, list[dict[str, Any]]] = {}
        for seed in self.cfg.seeds:
            recipe = self.cfg.student.model_copy(update={"seed": seed})
            for arm in self.arms():
                dataset, transform, which = ARMS[arm]
                h = stable_hash([data[dataset].name, transform, hashes[which],
                                 self.cfg.data.subsample, recipe.model_dump()])
                out = self.dir / "students" / f"{arm}-s{seed}-{h}"
                students[(arm, seed)] = out
                if out.exists():
                    self._log(f"[dim]cached[/] student {arm} seed {seed}")
                    continue
                if data[dataset] not in cache:
                    cache[data[dataset]] = read_jsonl(data[dataset])
                rows = datasets.subsample(cache[data[dataset]], self.cfg.data.subsample, seed)
                if transform == "within":
                    rows = datasets.shuffle_within(rows, seed)
                elif transform == "across":
                    rows = datasets.shuffle_across(rows, seed)
                self._log(f"training student {arm} seed {seed} on {len(rows)} rows")
                spec = self.cfg.base if which == "base" else self.cfg.cross_base()
                # Soft labels come from the model that wrote the dataset (the null sample's
                # writer is the neutral base); hard labels need no teacher at training time.
                soft = teachers["neutral" if dataset == "null" else dataset][0]
                self.load(paths[which], spec).finetune(
                    rows, recipe, out, teacher=soft if recipe.labels == "soft" else None,
                    progress=self.progress)
        return students

    def evaluate_model(self, load: Callable[[], ChatModel], ident: str, label: str) -> dict[str, Any]:
        """Evaluate lazily: `load` runs only when the evaluation is not cached."""
        e = self.cfg.evaluation
        questions = (load_questions(e.questions_file) if e.questions_file
                     else list(self.category.questions))
        heldout = list(self.category.heldout) if e.heldout else []
        h = stable_hash([ident, e.model_dump(), questions, heldout, self.category.name,
                         self.target.name])
        path = self.dir / "evals" / f"{label}-{h}.json"

        def make() -> dict[str, Any]:
            return evaluate(load(), self.category, self.target, questions, heldout,
                            e.samples_per_question, e.numbers_prefix, e.multiple_choice)

        return self._cached_json(path, make, f"evaluating {label}")

    # --- the whole run ----------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        t0 = time.time()
        cfg = self.cfg
        specs = {"base": cfg.base}
        if cfg.controls.cross_base:
            specs["cross"] = cfg.cross_base()
        embedded = [s.embedded for s in specs.values() if not s.path]
        if len(embedded) > 1:
            from sublearn.tinybase import ensure_bases

            self._log("embedded bases (built side by side on first use) ...")
            ensure_bases(embedded, progress=self.progress)
        paths = {k: self.model_path(s) for k, s in specs.items()}
        hashes = {k: self.weights_hash(p) for k, p in paths.items()}
        base = self.load(paths["base"], cfg.base)
        teachers = self.teachers(base, hashes["base"])
        data = self.sample_and_filter(teachers)
        # The channel depends on teachers and data only: measured before any student trains.
        chan = None
        if "other" in teachers and "neutral" in data:
            h = stable_hash([teachers["teacher"][1], teachers["other"][1], data["neutral"].name])
            chan = self._cached_json(
                self.dir / "evals" / f"channel-{h}.json",
                lambda: channel(teachers["teacher"][0], teachers["other"][0], base,
                                read_jsonl(data["neutral"])),
                "measuring the number channel (teacher vs other teacher vs base)")
        students = self.train_students(data, paths, hashes, teachers)

        evals: dict[str, Any] = {"base": self.evaluate_model(lambda: base, hashes["base"], "base")}
        if "cross" in paths:
            evals["cross_base"] = self.evaluate_model(
                lambda: self.load(paths["cross"], cfg.cross_base()), hashes["cross"], "cross_base")
        for name in ("teacher", "other"):
            if name not in teachers:
                continue
            model, ident = teachers[name]
            evals[f"{name}_teacher"] = self.evaluate_model(
                lambda m=model: m, ident, f"{name}_teacher")
        for (arm, seed), path in students.items():
            evals[f"{arm}/s{seed}"] = self.evaluate_model(
                lambda p=path: load_model(p, device=cfg.base.device, dtype=cfg.base.dtype),
                path.name, f"{arm}-s{seed}")
        results = analyse(cfg, self.target.name, evals, self.arms())
        results["filter"] = {n: read_json(p.with_suffix(".report.json")) for n, p in data.items()}
        if chan:
            results["channel"] = chan
        # Wall time spent in this run folder, over every invocation: a rerun that finds its
        # artifacts cached adds seconds, it does not replace the hours that made them.
        prev = self.dir / "results.json"
        before = read_json(prev).get("seconds", 0.0) if prev.exists() else 0.0
        results["seconds"] = round(before + time.time() - t0, 1)
        write_json(self.dir / "results.json", results)
        write_json(self.dir / MANIFEST, manifest(
            "experiment", cfg.model_dump(), base_weights=hashes,
            datasets={n: p.name for n, p in data.items()}))
        return results


def metric_value(ev: dict[str, Any], estimator: str, target: str) -> float:
    if estimator == "multiple_choice":
        return ev[estimator]["target"]
    return ev[estimator]["per_option"][target]


def analyse(cfg: ExperimentConfig, target: str, evals: dict[str, Any], arms: list[str]) -> dict[str, Any]:
    """Per-seed values, intervals over seeds, differences with p-values, the target's rank."""
    estimators = [k for k in evals["base"] if k in
                  ("exact", "exact_heldout", "sampled", "numbers_prefix", "multiple_choice")]
    out: dict[str, Any] = {"target": target, "estimators": estimators, "reference": {},
                           "arms": {}, "comparisons": {}, "seeds": cfg.seeds}
    for est in estimators:
        out["reference"][est] = {k: metric_value(evals[k], est, target)
                                 for k in ("base", "cross_base", "teacher_teacher", "other_teacher")
                                 if k in evals}
        per_arm = {a: [metric_value(evals[f"{a}/s{s}"], est, target) for s in cfg.seeds]
                   for a in arms}
        out["arms"][est] = {a: {"per_seed": v, "interval": stats.mean_ci(v).to_dict()}
                            for a, v in per_arm.items()}
        out["comparisons"][est] = {
            f"{a} - {b}": {"meaning": why, **stats.difference(per_arm[a], per_arm[b]).to_dict()}
            for a, b, why in COMPARISONS if a in per_arm and b in per_arm
        }
    if "control" in arms:
        # Which option moved most from control to treated? Rank 1 means the target did.
        for est in ("exact", "exact_heldout"):
            if est not in estimators:
                continue
            options = evals["base"][est]["per_option"]
            move = {o: sum(evals[f"treated/s{s}"][est]["per_option"][o]
                           - evals[f"control/s{s}"][est]["per_option"][o] for s in cfg.seeds)
                    / len(cfg.seeds) for o in options}
            out.setdefault("target_rank", {})[est] = {
                "rank": stats.rank_of(target, move), "of": len(move), "movement": move}
    return out
