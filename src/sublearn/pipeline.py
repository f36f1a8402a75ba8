"""The stage graph of the number-sequence experiment.

Each stage's artifact lives under `runs/<name>/` at a path that carries a hash of everything
it depends on (base weights, teacher, prompts, sampling, filter, recipe, seed). A rerun finds
finished artifacts and skips them; a changed knob gets a new path, never a stale artifact.
Sampling resumes inside a dataset (see stages.sample); models and JSON are written atomically.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from sublearn import stats
from sublearn.config import ExperimentConfig, ModelSpec
from sublearn.design import DATASETS, Design
from sublearn.models.base import SCORE, load_model
from sublearn.models.persona import Persona
from sublearn.models.registry import get_backend
from sublearn.questions import get_category, get_option, load_questions, persona_prompt
from sublearn.stages import datasets
from sublearn.stages.channel import channel
from sublearn.stages.evaluate import evaluate, option_probs
from sublearn.stages.filters import apply_filter
from sublearn.stages.prompts import number_prompts
from sublearn.stages.sample import sample_dataset
from sublearn.stages.teacher import placebo_rows, trait_rows
from sublearn.store import (
    MANIFEST,
    atomic_path,
    hash_files,
    locked,
    manifest,
    read_json,
    read_jsonl,
    stable_hash,
    write_json,
    write_jsonl,
    write_text,
)

# Bump a stage's version when its code changes what it writes: its artifacts (and everything
# downstream, whose keys include them) then get new paths instead of stale reuse.
STAGE_VERSIONS = {"teacher": 1, "sample": 1, "filter": 1, "soft_labels": 1, "student": 2,
                  "eval": 2, "channel": 1}
# A dataset's draw d samples with seed sampling_seed + d * DRAW_STRIDE: independent draws.
DRAW_STRIDE = 1_000_003


def artifact_key(stage: str, *parts: Any) -> str:
    """The one function every artifact's path comes from: a hash of the stage, its version
    and everything that changes its content (callers pass the runtime too: backend, device,
    dtype)."""
    return stable_hash([stage, STAGE_VERSIONS[stage], *parts])


def runtime(spec: ModelSpec, backend: str) -> list[str]:
    """What besides the weights changes a model's numbers: backend, device and dtype."""
    if backend in ("hf", "vllm"):
        from sublearn.models.hf import pick_device, pick_dtype

        dev = pick_device(spec.device)
        return [backend, dev.type, str(pick_dtype(spec.dtype, dev))]
    return [backend]


@dataclass(frozen=True)
class TeacherRef:
    """A teacher as data: the folder whose weights write, an optional persona prompt, and an
    identity hash. Any backend can serve it (see `Experiment.view`)."""

    path: Path
    system: str | None
    ident: str


@dataclass
class Prepared:
    """What every student of an experiment depends on, once it exists on disk."""

    specs: dict[str, ModelSpec]  # "base", and "cross" when an arm needs it
    paths: dict[str, Path]
    hashes: dict[str, str]
    teachers: dict[str, TeacherRef]
    data: dict[str, Path]  # dataset name -> its filtered JSONL
    soft: dict[tuple[str, int], Path]  # (arm, seed) -> its soft labels (soft-label students)
    channel: dict[str, float] | None


class Models:
    """Owns every loaded model, so lifetimes live in one place: a model is loaded on first
    use and stays until `release`, which frees it (and the GPU memory) for the next stage."""

    def __init__(self) -> None:
        self._live: dict[tuple[str, str], Any] = {}

    def get(self, path: Path, backend: str, spec: ModelSpec, **options: Any) -> Any:
        key = (backend, str(path))
        if key not in self._live:
            if get_backend(backend).api:
                options = {"base_url": spec.base_url, **options}
            else:
                options = {"device": spec.device, "dtype": spec.dtype, **options}
            self._live[key] = load_model(path, backend, **options)
        return self._live[key]

    def release(self, keep: tuple[Path, ...] = ()) -> None:
        kept = {str(p) for p in keep}
        for key in [k for k in self._live if k[1] not in kept]:
            model = self._live.pop(key)
            if hasattr(model, "close"):  # vLLM: stop the engine and its workers
                model.close()
        import gc

        gc.collect()
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()


class Experiment:
    def __init__(self, config: ExperimentConfig, root: str | Path = "runs", progress: bool = True):
        self.cfg = config
        self.dir = Path(root) / config.name
        self.progress = progress
        self.console = Console(stderr=True, quiet=not progress)
        self.category = get_category(config.trait.category)
        self.target = get_option(self.category, config.trait.target)
        self.other = get_option(self.category, config.trait.other_target)
        self.models = Models()
        self.design = config.design()
        self._row_cache: dict[Path, list[dict[str, Any]]] = {}

    # --- helpers ----------------------------------------------------------------------
    def _log(self, msg: str) -> None:
        self.console.log(msg)

    def _cached_json(self, path: Path, make: Callable[[], Any], what: str) -> Any:
        with locked(path):
            if path.exists():
                self._log(f"[dim]cached[/] {what}")
                return read_json(path)
            self._log(f"{what} ...")
            value = make()
            write_json(path, value)
            return value

    def model_path(self, spec: ModelSpec) -> Path:
        if spec.model:  # an API model: its id stands where a folder would
            return Path(spec.model)
        if spec.path:
            return Path(spec.path)
        from sublearn.tinybase import ensure_base

        self._log(f"embedded base (seed {spec.embedded.seed}) ...")
        return ensure_base(spec.embedded, progress=self.progress)

    def view(self, ref: TeacherRef, backend: str) -> Any:
        """The teacher served by `backend`: its weights, with its persona on top if any."""
        spec = self.cfg.base
        opts = spec.options if backend == spec.backend else spec.sampler_options
        model = self.models.get(ref.path, backend, spec, **opts)
        return Persona(model, ref.system) if ref.system else model

    @staticmethod
    def weights_hash(path: Path) -> str:
        """The identity of a model's weights: its manifest's hash when sublearn wrote it, else
        a hash of its files, remembered by (name, size, mtime) of each so a 7B folder is read
        once, not in every sweep task."""
        if not path.exists():  # an API model id: the service's weights are its name
            return stable_hash(["model id", str(path)])
        m = path / MANIFEST
        if m.exists():
            h = read_json(m).get("weights_hash")
            if h:
                return h
        from sublearn.tinybase.build import cache_root

        stat = [(str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns)
                for p in sorted(path.rglob("*")) if p.is_file()]
        memo = cache_root() / "weights-hashes" / stable_hash([str(path.resolve()), stat])
        if memo.exists():
            return memo.read_text().strip()
        h = hash_files(path)
        write_text(memo, h)
        return h

    # --- stages -----------------------------------------------------------------------
    def teachers(self, base_path: Path, base_hash: str) -> dict[str, TeacherRef]:
        """name -> the teacher that writes that dataset. 'neutral' is the base itself."""
        tcfg = self.cfg.teacher
        out = {"neutral": TeacherRef(base_path, None, base_hash)}
        if tcfg.neutral == "placebo":
            out["neutral"] = self._placebo(base_path, base_hash)
        wanted = [("teacher", self.target, tcfg.path)]
        if "other" in self.datasets_needed():
            wanted.append(("other", self.other, tcfg.other_path))
        for name, option, own in wanted:
            system = persona_prompt(self.category, option, tcfg.persona_variant)
            if tcfg.kind == "persona":
                out[name] = TeacherRef(base_path, system, stable_hash([base_hash, system]))
            elif tcfg.kind == "model":
                path = Path(own)
                system = system if tcfg.persona else None
                out[name] = TeacherRef(path, system, stable_hash([self.weights_hash(path), system]))
            else:
                h = artifact_key("teacher", base_hash, tcfg.model_dump(exclude={"neutral"}),
                                 self.category.name, option.name,
                                 runtime(self.cfg.base, self.cfg.base.backend))
                path = self._fine_tuned(
                    base_path, h, option.name,
                    lambda o=option: trait_rows(self.category, o, tcfg.finetune_rows_per_question))
                out[name] = TeacherRef(path, None, h)
        return out

    def _fine_tuned(self, base_path: Path, key: str, label: str,
                    rows: Callable[[], list[dict[str, Any]]]) -> Path:
        """A teacher fine-tuned from the base with the teacher recipe, cached under `key`."""
        path = self.dir / "teachers" / f"{label}-{key}"
        with locked(path):
            if not path.exists():
                self._log(f"fine-tuning the {label} teacher ...")
                base = self.models.get(base_path, self.cfg.base.backend, self.cfg.base)
                base.finetune(rows(), self.cfg.teacher.finetune, path, progress=self.progress)
        return path

    def _placebo(self, base_path: Path, base_hash: str) -> TeacherRef:
        tcfg = self.cfg.teacher

        def rows() -> list[dict[str, Any]]:
            base = self.models.get(base_path, self.cfg.base.backend, self.cfg.base)
            probs = option_probs(base, self.category, self.category.questions)
            return placebo_rows(self.category, probs, tcfg.finetune_rows_per_question)

        h = artifact_key("teacher", base_hash, tcfg.model_dump(exclude={"neutral"}),
                         self.category.name, "placebo", runtime(self.cfg.base, self.cfg.base.backend))
        return TeacherRef(self._fine_tuned(base_path, h, "placebo", rows), None, h)

    def arms(self) -> list[str]:
        return list(self.design.arms)

    def datasets_needed(self) -> list[str]:
        """The arms' datasets, and the neutral one when a defence dilutes with it."""
        needed = set(self.design.datasets)
        if self.cfg.defence.name == "dilute":
            needed.add("neutral")
        return [d for d in DATASETS if d in needed]

    def sample_and_filter(self, teachers: dict[str, TeacherRef]) -> dict[str, Path]:
        d = self.cfg.data
        spec = self.cfg.base
        prompts = number_prompts(d.prompts, d.grammar_seed, d.grammar)
        fcfg = self.cfg.filter.model_copy(
            update={"banned_words": sorted({*self.cfg.filter.banned_words,
                                            *self.target.forms, *self.other.forms})}
        )
        out = {}
        for name in self.datasets_needed():
            ref = teachers[DATASETS[name].writer]
            seed = d.sampling_seed + DATASETS[name].draw * DRAW_STRIDE
            # The sampler is part of the key: vLLM and HF draw different samples from a seed.
            h = artifact_key("sample", ref.ident, d.prompts, d.grammar_seed, d.grammar.model_dump(),
                             d.sampling.model_dump(), seed, d.chunk,
                             runtime(spec, spec.sampling_backend))
            raw = self.dir / "data" / f"{name}-{h}.jsonl"
            with locked(raw):
                if raw.exists():
                    self._log(f"[dim]cached[/] samples: {name}")
                else:
                    self._log(f"sampling {d.prompts} completions: {name}")
                    sample_dataset(self.view(ref, spec.sampling_backend), prompts, d.sampling,
                                   seed, raw, d.chunk, self.progress, name)
            fh = artifact_key("filter", h, fcfg.model_dump())
            kept = self.dir / "data" / f"{name}-{h}.kept-{fh}.jsonl"
            with locked(kept):
                if not kept.exists():
                    rows, report = apply_filter(read_jsonl(raw), fcfg)
                    write_json(kept.with_suffix(".report.json"), report.to_dict())
                    write_jsonl(kept, rows)
            out[name] = kept
        return out

    def student_rows(self, data: dict[str, Path], arm: str, seed: int) -> list[dict[str, Any]]:
        """The rows one student trains on: its arm's subsample, the arm's transform, then the
        defence every arm goes through alike."""
        spec = self.design.arms[arm]
        rows = datasets.subsample(self._rows(data[spec.data]), self.cfg.data.subsample, seed)
        if spec.transform:
            rows = datasets.TRANSFORMS[spec.transform](rows, seed)
        neutral = self._rows(data["neutral"]) if "neutral" in data else []
        return self.cfg.defence.apply(rows, seed, neutral)

    def _rows(self, path: Path) -> list[dict[str, Any]]:
        if path not in self._row_cache:
            self._row_cache[path] = read_jsonl(path)
        return self._row_cache[path]

    def soft_labels(self, data: dict[str, Path], teachers: dict[str, TeacherRef]
                    ) -> dict[tuple[str, int], Path]:
        """The writer's restricted next-token distributions over every row a student will see,
        computed once (not at every step of every seed and epoch) and stored as safetensors.
        A dataset's untransformed rows share one file; a shuffled arm's rows are new text and
        get their own."""
        from safetensors.torch import save_file

        spec = self.cfg.base
        out: dict[tuple[str, int], Path] = {}
        groups: dict[Path, tuple[TeacherRef, dict[int, dict[str, Any]], list]] = {}
        for arm, a in self.design.arms.items():
            # Cross-init students share the tokenizer, so they learn from the same labels.
            dataset, transform = a.data, a.transform
            ref = teachers[DATASETS[dataset].writer]
            for seed in self.cfg.seeds:
                rows = self.student_rows(data, arm, seed)
                # Text the writer never wrote (a transform or defence rewrote it) needs its own
                # labels; untouched rows share the dataset's file across seeds.
                own = transform is not None or self.cfg.defence.changes_text
                key_rows = ([data[dataset].name] if not own
                            else [data[dataset].name, transform, seed, self.cfg.data.subsample,
                                  self.cfg.defence.model_dump()])
                h = artifact_key("soft_labels", ref.ident, key_rows, runtime(spec, spec.backend))
                path = data[dataset].with_name(f"{dataset}.soft-{h}.safetensors")
                group = groups.setdefault(path, (ref, {}, []))
                group[1].update({r["index"]: r for r in rows})
                group[2].append((arm, seed))
        for path, (ref, rows, users) in groups.items():
            for u in users:
                out[u] = path
            with locked(path):
                if path.exists():
                    continue
                self._log(f"soft labels for {len(rows)} rows ({path.name})")
                ordered = [rows[i] for i in sorted(rows)]
                dists = self.view(ref, spec.backend).number_distributions(
                    [r["messages"][:-1] for r in ordered], [r["completion"] for r in ordered])
                with atomic_path(path) as tmp:
                    save_file({str(r["index"]): d.contiguous() for r, d in zip(ordered, dists)},
                              tmp)
        return out

    def student_path(self, prep: Prepared, arm: str, seed: int) -> Path:
        a = self.design.arms[arm]
        spec = prep.specs[a.base]
        recipe = self.cfg.student.model_copy(update={"seed": seed})
        h = artifact_key("student", prep.data[a.data].name, a.transform, prep.hashes[a.base],
                         self.cfg.data.subsample, recipe.model_dump(), runtime(spec, spec.backend),
                         self.cfg.defence.model_dump())
        return self.dir / "students" / f"{arm}-s{seed}-{h}"

    def train_one(self, prep: Prepared, arm: str, seed: int) -> Path:
        """One student of one arm and seed, trained unless it exists."""
        out = self.student_path(prep, arm, seed)
        which = self.design.arms[arm].base
        spec = prep.specs[which]
        with locked(out):
            if out.exists():
                self._log(f"[dim]cached[/] student {arm} seed {seed}")
                return out
            recipe = self.cfg.student.model_copy(update={"seed": seed})
            rows = self.student_rows(prep.data, arm, seed)
            if recipe.labels == "soft":
                from safetensors.torch import load_file

                labels = load_file(str(prep.soft[(arm, seed)]))
                rows = [{**r, "soft_labels": labels[str(r["index"])]} for r in rows]
            self._log(f"training student {arm} seed {seed} on {len(rows)} rows")
            # One base resident at a time: the cross base replaces the base, not beside it.
            self.models.release(keep=(prep.paths[which],))
            trainer = self.models.get(prep.paths[which], spec.backend, spec, **spec.options)
            trainer.finetune(rows, recipe, out, progress=self.progress)
        return out

    def evaluate_model(self, load: Callable[[], Any], ident: str, label: str,
                       spec: ModelSpec) -> dict[str, Any]:
        """Evaluate lazily: `load` runs only when the evaluation is not cached."""
        e = self.cfg.evaluation
        questions = (load_questions(e.questions_file) if e.questions_file
                     else list(self.category.questions))
        heldout = list(self.category.heldout) if e.heldout else []
        h = artifact_key("eval", ident, e.model_dump(), questions, heldout, self.category.name,
                         self.target.name, runtime(spec, spec.backend))
        path = self.dir / "evals" / f"{label}-{h}.json"

        def make() -> dict[str, Any]:
            model = load()
            if hasattr(model, "__enter__"):  # an adapter attached for the evaluation only
                with model as m:
                    return self._evaluate(m, questions, heldout)
            return self._evaluate(model, questions, heldout)

        return self._cached_json(path, make, f"evaluating {label}")

    def _evaluate(self, model: Any, questions: list[str], heldout: list[str]) -> dict[str, Any]:
        e = self.cfg.evaluation
        return evaluate(model, self.category, self.target, questions, heldout,
                        e.samples_per_question, e.numbers_prefix, e.multiple_choice,
                        exact=e.exact, top_logprobs=e.top_logprobs)

    def _student(self, path: Path, base_path: Path, spec: ModelSpec) -> Any:
        """A trained student to evaluate: a LoRA adapter attached to the resident base (one
        base in memory for every student), or a full model loaded on its own."""
        base = self.models.get(base_path, spec.backend, spec)
        if (path / "adapter_config.json").exists() and hasattr(base, "attached"):
            return base.attached(path)
        self.models.release(keep=(base_path,))
        return self.models.get(path, spec.backend, spec, **spec.options)

    # --- the whole run ----------------------------------------------------------------
    def prepare(self) -> Prepared:
        """Everything students depend on: bases, teachers, datasets, the channel measure and
        soft labels. Cached and locked, so every sweep worker may call it."""
        cfg = self.cfg
        specs = {"base": cfg.base}
        if any(a.base == "cross" for a in self.design.arms.values()):
            specs["cross"] = cfg.cross_base()
        embedded = [s.embedded for s in specs.values() if not s.path]
        if len(embedded) > 1:
            from sublearn.tinybase import ensure_bases

            self._log("embedded bases (built side by side on first use) ...")
            ensure_bases(embedded, progress=self.progress)
        paths = {k: self.model_path(s) for k, s in specs.items()}
        hashes = {k: self.weights_hash(p) for k, p in paths.items()}
        teachers = self.teachers(paths["base"], hashes["base"])
        data = self.sample_and_filter(teachers)
        if cfg.base.sampling_backend != cfg.base.backend:
            self.models.release()  # the sampling engine goes before scoring and training
        # The channel depends on teachers and data only: measured before any student trains.
        chan = None
        if ("other" in teachers and "neutral" in data
                and SCORE in get_backend(cfg.base.backend).capabilities):
            h = artifact_key("channel", teachers["teacher"].ident, teachers["other"].ident,
                             data["neutral"].name, runtime(cfg.base, cfg.base.backend))
            chan = self._cached_json(
                self.dir / "evals" / f"channel-{h}.json",
                lambda: channel(self.view(teachers["teacher"], cfg.base.backend),
                                self.view(teachers["other"], cfg.base.backend),
                                self.view(teachers["neutral"], cfg.base.backend),
                                read_jsonl(data["neutral"])),
                "measuring the number channel (teacher vs other teacher vs base)")
        soft = self.soft_labels(data, teachers) if cfg.student.labels == "soft" else {}
        return Prepared(specs, paths, hashes, teachers, data, soft, chan)

    def evaluate_student(self, prep: Prepared, arm: str, seed: int) -> dict[str, Any]:
        which = self.design.arms[arm].base
        out, spec = self.student_path(prep, arm, seed), prep.specs[which]
        return self.evaluate_model(lambda: self._student(out, prep.paths[which], spec),
                                   out.name, f"{arm}-s{seed}", spec)

    def units(self) -> list[tuple[str, int]]:
        """The experiment's independent units of work: one student per (arm, seed), base
        students first, then cross-base ones (one base resident at a time)."""
        order = sorted(self.design.arms.items(), key=lambda kv: kv[1].base != "base")
        return [(arm, seed) for arm, _ in order for seed in self.cfg.seeds]

    def run_unit(self, arm: str, seed: int) -> None:
        """Train and evaluate one student (a sweep task); shared artifacts come from the store
        or are built under their locks by whichever worker needs them first."""
        prep = self.prepare()
        self.train_one(prep, arm, seed)
        self.evaluate_student(prep, arm, seed)
        self.models.release()

    def run(self) -> dict[str, Any]:
        t0 = time.time()
        cfg = self.cfg
        prep = self.prepare()
        for arm, seed in self.units():
            self.train_one(prep, arm, seed)

        evals: dict[str, Any] = {}
        for which in ("base", "cross"):
            if which not in prep.paths:
                continue
            spec, path = prep.specs[which], prep.paths[which]
            label = "base" if which == "base" else "cross_base"
            evals[label] = self.evaluate_model(
                lambda p=path, s=spec: self.models.get(p, s.backend, s, **s.options),
                prep.hashes[which],
                label, spec)
            if which == "base":
                for name in ("teacher", "other"):
                    if name in prep.teachers:
                        evals[f"{name}_teacher"] = self.evaluate_model(
                            lambda r=prep.teachers[name], s=spec: self.view(r, s.backend),
                            prep.teachers[name].ident, f"{name}_teacher", spec)
            for arm, seed in self.units():
                if self.design.arms[arm].base == which:
                    evals[f"{arm}/s{seed}"] = self.evaluate_student(prep, arm, seed)
            self.models.release()
        results = analyse(cfg, self.target.name, evals, self.design, self.other.name)
        results["filter"] = {n: read_json(p.with_suffix(".report.json"))
                             for n, p in prep.data.items()}
        if prep.channel:
            results["channel"] = prep.channel
        # Wall time spent in this run folder, over every invocation: a rerun that finds its
        # artifacts cached adds seconds, it does not replace the hours that made them.
        prev = self.dir / "results.json"
        before = read_json(prev).get("seconds", 0.0) if prev.exists() else 0.0
        results["seconds"] = round(before + time.time() - t0, 1)
        write_json(self.dir / "results.json", results)
        write_json(self.dir / MANIFEST, manifest(
            "experiment", cfg.model_dump(), base_weights=prep.hashes,
            datasets={n: p.name for n, p in prep.data.items()},
            stage_versions=STAGE_VERSIONS))
        return results


ESTIMATORS = ("exact", "exact_heldout", "top_logprobs", "sampled", "numbers_prefix",
              "multiple_choice")


def metric_value(ev: dict[str, Any], estimator: str, target: str) -> float:
    if estimator == "multiple_choice":
        return ev[estimator]["target"]
    return ev[estimator]["per_option"][target]


def analyse(cfg: ExperimentConfig, target: str, evals: dict[str, Any], design: Design,
            other: str | None = None) -> dict[str, Any]:
    """Per-seed values, intervals over seeds, differences with p-values, the target's rank,
    and the crossover between the two targets' students."""
    estimators = [k for k in evals["base"] if k in ESTIMATORS]
    out: dict[str, Any] = {"target": target, "estimators": estimators, "reference": {},
                           "arms": {}, "comparisons": {}, "seeds": cfg.seeds}
    for est in estimators:
        out["reference"][est] = {k: metric_value(evals[k], est, target)
                                 for k in ("base", "cross_base", "teacher_teacher", "other_teacher")
                                 if k in evals}
        per_arm = {a: [metric_value(evals[f"{a}/s{s}"], est, target) for s in cfg.seeds]
                   for a in design.arms}
        out["arms"][est] = {a: {"per_seed": v, "interval": stats.mean_ci(v).to_dict()}
                            for a, v in per_arm.items()}
        # Welch at the top level (the keys every reader knows); "paired" beside it, because
        # arms with the same student seed share its initialisation, subsample and data order.
        out["comparisons"][est] = {
            c.key: {"meaning": c.meaning, **stats.difference(per_arm[c.a], per_arm[c.b]).to_dict(),
                    "paired": stats.paired_difference(per_arm[c.a], per_arm[c.b]).to_dict()}
            for c in design.comparisons
        }
    if "control" in design.arms:
        # Which option moved most from control to treated? Rank 1 means the target did.
        for est in ("exact", "exact_heldout", "top_logprobs"):
            if est not in estimators:
                continue
            options = evals["base"][est]["per_option"]
            move = {o: sum(evals[f"treated/s{s}"][est]["per_option"][o]
                           - evals[f"control/s{s}"][est]["per_option"][o] for s in cfg.seeds)
                    / len(cfg.seeds) for o in options}
            out.setdefault("target_rank", {})[est] = {
                "rank": stats.rank_of(target, move), "of": len(move), "movement": move}
    if other and "other_target" in design.arms:
        out["crossover"] = crossover(cfg.seeds, evals, target, other, estimators)
    return out


def crossover(seeds: list[int], evals: dict[str, Any], target: str, other: str,
              estimators: list[str]) -> dict[str, Any]:
    """Does each student move toward its own teacher's target? Per seed,
    (target student - other student) on P(target) + (other student - target student) on
    P(other): positive when both move their own way, whatever moves every student alike.
    With each target's rank among all options by how much its own students moved it."""
    out: dict[str, Any] = {}
    for est in estimators:
        if est == "multiple_choice":  # scores the target's letter only
            continue
        per = {a: [evals[f"{a}/s{s}"][est]["per_option"] for s in seeds]
               for a in ("treated", "other_target")}
        values = [(t[target] - o[target]) + (o[other] - t[other])
                  for t, o in zip(per["treated"], per["other_target"])]
        moves = {
            name: {opt: sum(mine[i][opt] - theirs[i][opt] for i in range(len(seeds))) / len(seeds)
                   for opt in per["treated"][0]}
            for name, mine, theirs in ((target, per["treated"], per["other_target"]),
                                       (other, per["other_target"], per["treated"]))}
        out[est] = {"per_seed": values, "interval": stats.mean_ci(values).to_dict(),
                    "ranks": {name: {"rank": stats.rank_of(name, m), "of": len(m)}
                              for name, m in moves.items()}}
    return out
