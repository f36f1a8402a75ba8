"""The stage graph of an experiment, whatever its domain (number sequences, code, worked
arithmetic: `domains`).

Each stage's artifact lives under `runs/<name>/` at a path that carries a hash of everything
it depends on (base weights, teacher, prompts, sampling, filter, recipe, seed). A rerun finds
finished artifacts and skips them; a changed knob gets a new path, never a stale artifact.
Sampling resumes inside a dataset (see stages.sample); models and JSON are written atomically.

Why one module: it is the experiment's stage graph, one method per stage and its artifact in
the order a run takes them, with the model lifetimes they share (`Models`). What is not a
stage lives beside it: artifact keys and the run folder's layout (`artifacts`), the
statistics over the evaluations (`estimates`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from sublearn.analysis.records import (
    RESULTS,
    Provenance,
    Results,
    recorded_seconds,
)
from sublearn.domains import get_domain
from sublearn.errors import SublearnError
from sublearn.experiment.artifacts import (
    STAGE_VERSIONS,
    RunFolder,
    artifact_key,
    runtime,
    weights_hash,
)
from sublearn.experiment.config import ExperimentConfig, ModelSpec
from sublearn.experiment.design import DATASETS
from sublearn.experiment.estimates import analyse, undefined
from sublearn.models.base import SCORE
from sublearn.models.catalogue import resolve_model_path
from sublearn.models.persona import Persona
from sublearn.models.registry import get_backend, load_model
from sublearn.questions.categories import get_category, get_option, load_questions, persona_prompt
from sublearn.safety.defences import Inputs
from sublearn.safety.trait_scores import TraitScores
from sublearn.safety.traits import AUDIT_TEMPLATES
from sublearn.stages import datasets
from sublearn.stages.channel import channel
from sublearn.stages.estimators import Subject, evaluate
from sublearn.stages.evaluate import option_probs
from sublearn.stages.judges import Judge
from sublearn.stages.sample import sample_dataset
from sublearn.stages.teacher import placebo_rows, trait_rows
from sublearn.store import (
    MANIFEST,
    atomic_path,
    locked,
    manifest,
    read_json,
    read_jsonl,
    stable_hash,
    write_json,
    write_jsonl,
)

# A dataset's draw d samples with seed sampling_seed + d * DRAW_STRIDE: independent draws.
DRAW_STRIDE = 1_000_003


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
        gone = [k for k in self._live if k[1] not in kept]
        if not gone:  # a full collection costs ~0.2 s; with nothing freed it frees nothing
            return
        for key in gone:
            model = self._live.pop(key)
            if hasattr(model, "close"):  # vLLM: stop the engine and its workers
                model.close()
        import gc

        gc.collect()
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()


class Experiment:
    def __init__(self, config: ExperimentConfig, root: str | Path = "runs", progress: bool = True,
                 store: str | Path | None = None):
        """`store`: where the artifacts keyed by their content alone (teachers, datasets, soft
        labels, students, evaluations) live; default the run folder. Several run folders may
        share one (`sublearn claims`: conditions that differ only in the students train one
        set of teachers and data); results.json and the manifest stay in the run folder."""
        self.cfg = config
        self.dir = Path(root) / config.name
        self.store = Path(store) if store is not None else self.dir
        self.progress = progress
        self.console = Console(stderr=True, quiet=not progress)
        self.category = get_category(config.trait.category)
        self.target = get_option(self.category, config.trait.target)
        self.other = get_option(self.category, config.trait.other_target)
        self.models = Models()
        self.design = config.design()
        self._row_cache: dict[Path, list[dict[str, Any]]] = {}
        self._base: tuple[Path, str] | None = None  # the base's folder and hash, once known
        self._heldout: list[dict[str, Any]] | None = None  # the utility's rows (prepare)

    # --- helpers ----------------------------------------------------------------------
    def _log(self, msg: str) -> None:
        self.console.log(msg)

    def judge(self) -> Judge | None:
        """The config's judge over its model, loaded on first use and held in `models` like
        every other model (so `release` frees it too); None without a [judge] section."""
        j = self.cfg.judge
        if j is None:
            return None
        return j.build(self.models.get(Path(j.model), j.backend, j, **j.options))

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
        if spec.path:  # a GGUF file: its converted folder (converted once, here)
            return resolve_model_path(spec.path, self._log)
        from sublearn.tinybase import ensure_base

        self._log(f"embedded base (seed {spec.embedded.seed}) ...")
        return ensure_base(spec.embedded, progress=self.progress)

    def view(self, ref: TeacherRef, backend: str) -> Any:
        """The teacher served by `backend`: its weights, with its persona on top if any."""
        spec = self.cfg.base
        opts = spec.options if backend == spec.backend else spec.sampler_options
        model = self.models.get(ref.path, backend, spec, **opts)
        return Persona(model, ref.system) if ref.system else model

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
                path = resolve_model_path(own, self._log)
                system = system if tcfg.persona else None
                out[name] = TeacherRef(path, system, stable_hash([weights_hash(path), system]))
            else:
                h = artifact_key("teacher", base_hash, tcfg.model_dump(exclude={"neutral"}),
                                 self.category.name, option.name, *self._reply_form(),
                                 runtime(self.cfg.base, self.cfg.base.backend))
                path = self._fine_tuned(
                    base_path, h, option.name,
                    lambda o=option: trait_rows(self.category, o, tcfg.finetune_rows_per_question,
                                                self.cfg.evaluation.answer))
                out[name] = TeacherRef(path, None, h)
        return out

    def _fine_tuned(self, base_path: Path, key: str, label: str,
                    rows: Callable[[], list[dict[str, Any]]]) -> Path:
        """A teacher fine-tuned from the base with the teacher recipe, cached under `key`."""
        path = RunFolder(self.store).teacher(label, key)
        with locked(path):
            if not path.exists():
                self._log(f"fine-tuning the {label} teacher ...")
                base = self.models.get(base_path, self.cfg.base.backend, self.cfg.base)
                base.finetune(rows(), self.cfg.teacher.finetune, path, progress=self.progress)
        return path

    def _reply_form(self) -> list[str]:
        """A fine-tuned teacher's replies follow the estimator's answer form
        (`stages.teacher.trait_rows`), so the form is part of its key; the one-word form adds
        nothing, which keeps the keys of teachers made before the stem form existed."""
        answer = self.cfg.evaluation.answer
        return [] if answer == "bare" else [answer]

    def _placebo(self, base_path: Path, base_hash: str) -> TeacherRef:
        tcfg = self.cfg.teacher

        def rows() -> list[dict[str, Any]]:
            base = self.models.get(base_path, self.cfg.base.backend, self.cfg.base)
            probs = option_probs(base, self.category, self.category.questions,
                                 self.cfg.evaluation.answer)
            return placebo_rows(self.category, probs, tcfg.finetune_rows_per_question,
                                answer=self.cfg.evaluation.answer)

        h = artifact_key("teacher", base_hash, tcfg.model_dump(exclude={"neutral"}),
                         self.category.name, "placebo", *self._reply_form(),
                         runtime(self.cfg.base, self.cfg.base.backend))
        return TeacherRef(self._fine_tuned(base_path, h, "placebo", rows), None, h)

    def arms(self) -> list[str]:
        return list(self.design.arms)

    def datasets_needed(self) -> list[str]:
        """The arms' datasets, and the neutral one when a defence dilutes with it."""
        needed = set(self.design.datasets)
        if self.cfg.defence.entry.needs_neutral:
            needed.add("neutral")
        return [d for d in DATASETS if d in needed]

    def sample_and_filter(self, teachers: dict[str, TeacherRef]) -> dict[str, Path]:
        d = self.cfg.data
        spec = self.cfg.base
        domain = get_domain(d.domain, d.grammar)
        prompts = domain.prompts(d.prompts, d.grammar_seed)
        # Every dataset goes through the same filter, banning both targets' words.
        filt = domain.filter(self.cfg.filter, (self.target, self.other))
        j = self.cfg.judge if self.cfg.filter.judge else None
        # The judge's settings and weights change its verdicts: part of the filtered key.
        judged = [j.model_dump(), weights_hash(Path(j.model))] if j else []
        # Number datasets keep the file names (and keys) they had before domains existed.
        stem = "" if d.domain == "numbers" else f"{d.domain}-"
        out = {}
        for name in self.datasets_needed():
            ref = teachers[DATASETS[name].writer]
            seed = d.sampling_seed + DATASETS[name].draw * DRAW_STRIDE
            # The sampler is part of the key: vLLM and HF draw different samples from a seed.
            h = artifact_key("sample", ref.ident, d.prompts, d.grammar_seed, *domain.sample_key(),
                             d.sampling.model_dump(), seed, d.chunk,
                             runtime(spec, spec.sampling_backend))
            raw = self.store / "data" / f"{stem}{name}-{h}.jsonl"
            with locked(raw):
                if raw.exists():
                    self._log(f"[dim]cached[/] samples: {name}")
                else:
                    self._log(f"sampling {d.prompts} completions: {name}")
                    sample_dataset(self.view(ref, spec.sampling_backend), prompts, d.sampling,
                                   seed, raw, d.chunk, self.progress, name)
            fh = artifact_key("filter", h, *filt.key, *judged)
            kept = self.store / "data" / f"{stem}{name}-{h}.kept-{fh}.jsonl"
            with locked(kept):
                if not kept.exists():
                    # The judge is loaded only when a filter actually runs.
                    rows, report = filt.apply(read_jsonl(raw), {p.index: p for p in prompts},
                                              self.judge() if j else None)
                    write_json(kept.with_suffix(".report.json"), report.to_dict())
                    write_jsonl(kept, rows)
            out[name] = kept
        # An empty dataset would fail every later stage, less clearly: say so once all are in.
        empty = {n: read_json(p.with_suffix(".report.json")) for n, p in out.items()}
        empty = {n: r for n, r in empty.items() if not r["kept"]}
        if empty:
            raise SublearnError(
                f"the {d.domain} filter kept no completion of " + "; ".join(
                    f"{n} (of {r['total']}, rejected {r['rejected']})" for n, r in empty.items())
                + f": nothing to train on (reports in {self.store / 'data'})")
        return out

    def student_rows(self, data: dict[str, Path], arm: str, seed: int) -> list[dict[str, Any]]:
        """The rows one student trains on: its arm's subsample, the arm's transform, then the
        defence every arm goes through alike."""
        spec = self.design.arms[arm]
        rows = datasets.subsample(self._rows(data[spec.data]), self.cfg.data.subsample, seed)
        if spec.transform:
            rows = datasets.TRANSFORMS[spec.transform](rows, seed)
        neutral = self._rows(data["neutral"]) if "neutral" in data else []
        scores = (self.trait_scores(data[spec.data], spec.transform, seed)
                  if self.cfg.defence.entry.needs_trait_scores else None)
        return self.cfg.defence.apply(
            rows, seed, Inputs(neutral, scores, [o.name for o in self.category.options]))

    def trait_scores(self, dataset: Path, transform: str | None, seed: int) -> TraitScores:
        """What a scoring defence reads an arm's rows by: their per-token log-probs under
        every candidate's trait prompt, by the base. Cached beside the dataset: once for its
        own rows (every seed's subsample shares them), per seed for rows a transform rewrote."""
        spec = self.cfg.base
        if self._base is None:
            path = self.model_path(spec)
            self._base = (path, weights_hash(path))
        base, base_hash = self._base
        own = [transform, seed, self.cfg.data.subsample] if transform else []
        h = artifact_key("defence", base_hash, dataset.name, own, self.category.name,
                         AUDIT_TEMPLATES, runtime(spec, spec.backend))
        return TraitScores(dataset.with_name(f"{dataset.stem}.traits-{h}.safetensors"),
                           lambda: self.models.get(base, spec.backend, spec), self.category,
                           None if transform else self._rows(dataset), self._log)

    def heldout_rows(self, base: Path, base_hash: str) -> list[dict[str, Any]]:
        """The utility estimator's data: the base's own completions on the
        `evaluation.neutral_loss` prompts after the data's (so no student trained on them),
        filtered like every dataset. Sampled once, cached."""
        d, spec, n = self.cfg.data, self.cfg.base, self.cfg.evaluation.neutral_loss
        domain = get_domain(d.domain, d.grammar)
        prompts = domain.prompts(n, d.grammar_seed, start=d.prompts)
        h = artifact_key("sample", base_hash, "heldout", d.prompts, n, d.grammar_seed,
                         *domain.sample_key(), d.sampling.model_dump(), d.sampling_seed,
                         d.chunk, runtime(spec, spec.sampling_backend))
        path = self.store / "data" / f"heldout-{h}.jsonl"
        with locked(path):
            if not path.exists():
                self._log(f"sampling {n} held-out neutral completions (utility)")
                sample_dataset(self.view(TeacherRef(base, None, base_hash), spec.sampling_backend),
                               prompts, d.sampling, d.sampling_seed, path, d.chunk,
                               self.progress, "heldout")
        rows, _ = domain.filter(self.cfg.filter, (self.target, self.other)).apply(
            read_jsonl(path), {p.index: p for p in prompts})
        if not rows:
            raise SublearnError(f"{path}: no held-out completion passed the filter; raise "
                                "evaluation.neutral_loss")
        return rows

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
                own = transform is not None or self.cfg.defence.entry.changes_text
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
        return RunFolder(self.store).student(arm, seed, h)

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
                         self.target.name, runtime(spec, spec.backend), *self._judged())
        path = self.store / "evals" / f"{label}-{h}.json"

        def make() -> dict[str, Any]:
            model = load()
            if hasattr(model, "__enter__"):  # an adapter attached for the evaluation only
                with model as m:
                    return self._evaluate(m, questions, heldout)
            return self._evaluate(model, questions, heldout)

        return self._cached_json(path, make, f"evaluating {label}")

    def _evaluate(self, model: Any, questions: list[str], heldout: list[str]) -> dict[str, Any]:
        """Every estimator the [evaluation] section turns on, and the misalignment rate of a
        misalignment run (its judge and [misalignment] section)."""
        e = self.cfg.evaluation
        misaligned = self.cfg.trait.kind == "misalignment"
        subject = Subject(model, self.category, self.target, questions, heldout,
                          answer=e.answer, neutral_rows=self._heldout or (),
                          judge=self.judge() if misaligned else None,
                          misalignment=self.cfg.misalignment if misaligned else None)
        res = evaluate(subject, e.settings())
        if "misalignment" in res:
            m = res["misalignment"]
            self._log(f"misalignment: {m['misaligned']} misaligned of {m['coherent']} coherent "
                      f"answers ({m['answers']} sampled, {m['incoherent']} incoherent, "
                      f"{m['missing']} with a judgement missing)")
        return res

    def _judged(self) -> list[Any]:
        """What the misalignment evaluation adds to an evaluation's key: its settings and the
        judge's identity. Nothing for a preference trait, whose keys stay as they were."""
        j = self.cfg.judge
        if self.cfg.trait.kind != "misalignment" or j is None:
            return []
        return [self.cfg.misalignment.model_dump(), j.model_dump(),
                weights_hash(Path(j.model))]

    def _student(self, path: Path, base_path: Path, spec: ModelSpec) -> Any:
        """A trained student to evaluate: a LoRA adapter attached to the resident base (one
        base in memory for every student), or a full model loaded on its own."""
        base = self.models.get(base_path, spec.backend, spec)
        if (path / "adapter_config.json").exists() and hasattr(base, "attached"):
            return base.attached(path)
        # The judge stays: it is needed with the student anyway, so keeping it saves a reload
        # without raising the peak.
        judge = (Path(self.cfg.judge.model),) if self.cfg.judge else ()
        self.models.release(keep=(base_path, *judge))
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
        hashes = {k: weights_hash(p) for k, p in paths.items()}
        teachers = self.teachers(paths["base"], hashes["base"])
        data = self.sample_and_filter(teachers)
        self._base = (paths["base"], hashes["base"])
        if cfg.evaluation.neutral_loss:
            self._heldout = self.heldout_rows(paths["base"], hashes["base"])
        if cfg.base.sampling_backend != cfg.base.backend:
            self.models.release()  # the sampling engine goes before scoring and training
        # The channel depends on teachers and data only: measured before any student trains.
        chan = None
        if ("other" in teachers and "neutral" in data
                and SCORE in get_backend(cfg.base.backend).capabilities):
            h = artifact_key("channel", teachers["teacher"].ident, teachers["other"].ident,
                             data["neutral"].name, runtime(cfg.base, cfg.base.backend))
            chan = self._cached_json(
                self.store / "evals" / f"channel-{h}.json",
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

    def run(self) -> Results:
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
        if "misalignment" in evals["base"] and (
                gone := undefined(evals, "misalignment", self.target.name)):
            self._log(f"[red]misalignment rate undefined[/] for {', '.join(gone)} (no answer "
                      "both coherent and judged): left out of the statistics")
        record = manifest("experiment", cfg.model_dump(), base_weights=prep.hashes,
                          datasets={n: p.name for n, p in prep.data.items()},
                          stage_versions=STAGE_VERSIONS)
        path = self.dir / RESULTS
        results = Results(
            target=self.target.name, other=self.other.name, seeds=cfg.seeds,
            estimates=analyse(cfg.seeds, self.target.name, evals, self.design, self.other.name),
            filter={n: read_json(p.with_suffix(".report.json")) for n, p in prep.data.items()},
            channel=prep.channel or None,
            # Wall time spent in this run folder, over every invocation: a rerun that finds
            # its artifacts cached adds seconds, it does not replace the hours that made them.
            seconds=round(recorded_seconds(path) + time.time() - t0, 1),
            provenance=Provenance.model_validate(
                {**record, "config_hash": stable_hash(cfg.model_dump())}))
        results.write(path)
        write_json(self.dir / MANIFEST, record)
        return results
