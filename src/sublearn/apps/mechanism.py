"""The mechanism behind transfer from a fine-tuned teacher, measured in parameter space.

The paper's theorem: a teacher is the shared initialisation θ0 plus a change Δt learned by
gradient descent; a student that starts at θ0 and imitates the teacher's outputs on *any*
inputs takes, to first order, a step with a positive inner product with Δt. So two things
are measurable in a finished run folder, without training anything:

- direction: the cosine between each student's change Δs = θ_student − θ_init and each
  fine-tuned teacher's change Δt = θ_teacher − θ_base, over all parameters and per parameter
  group (an arm of students should point toward the teacher that wrote its data more than
  toward the others);
- consequence: the change in the teacher's trait loss L(θ) = mean over the category's
  preference questions of −log P(target | question) that the linearisation predicts,
  ∇L(θ_init) · Δs (one backward pass on the initialisation), beside the measured change
  L(θ_student) − L(θ_init) (the exact scorer of the evaluation).

Every model is read on the CPU in float32, one at a time; the cosines come from one pass over
the parameter names that holds a single tensor of each model at a time (docs/mechanism.md).

Why one module: it is one command's measurement read top to bottom (where the models
are, their parameter changes, the trait loss, the typed result, its tables); each section
is short and used only here.
"""

from __future__ import annotations

import gc
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import ValidationError

from sublearn.analysis import stats
from sublearn.analysis.records import Frozen
from sublearn.analysis.stats import Interval
from sublearn.errors import SublearnError, field_error, unknown
from sublearn.experiment.artifacts import RunFolder, weights_hash
from sublearn.experiment.config import ExperimentConfig, ModelSpec, load_config
from sublearn.experiment.design import DATASETS
from sublearn.models.catalogue import resolve_model_path
from sublearn.models.paths import check_model_folder
from sublearn.models.registry import load_model
from sublearn.questions.categories import Category, Option, get_category, get_option
from sublearn.stages.evaluate import option_probs
from sublearn.store import MANIFEST, read_json, write_text

OUTPUT = "mechanism.json"
QUESTION_SETS = ("heldout", "train")
# Parameter groups by a piece of the parameter's name, first match wins: the output layer and
# the embeddings before the rest, norms before attention ("post_attention_layernorm").
GROUPS: tuple[tuple[str, str], ...] = (
    ("lm_head", "lm_head"), ("embeddings", "embed"), ("norms", "norm"), ("attention", "attn"),
    ("mlp", "mlp"))
ALL = "all"


def parameter_group(name: str) -> str:
    return next((group for group, piece in GROUPS if piece in name), "other")


# --- where the models are ----------------------------------------------------------------
@dataclass(frozen=True)
class Member:
    """One model of the run: a teacher (named by its target, or 'placebo') or a student."""

    name: str  # "owl", "placebo", "treated-s0"
    path: Path
    init: str  # the initialisation its change is taken from: "base" or "cross"
    arm: str | None = None
    seed: int | None = None


@dataclass(frozen=True)
class Layout:
    inits: dict[str, Path]
    teachers: list[Member]
    students: list[Member]
    own_teacher: dict[str, str | None]  # arm -> the teacher that wrote its data (None: base)
    missing: list[str]  # students of the design not (yet) in the folder


def run_config(run_dir: Path, config: Path | None = None,
               overrides: Sequence[str] = ()) -> ExperimentConfig:
    """The config a run folder was made with: its manifest.json, written when the run ends,
    or for a run still in progress the TOML (and --set overrides) it was started with."""
    if not run_dir.is_dir():
        raise SublearnError(f"{run_dir}: no such run folder")
    if config is not None:
        return load_config(config, overrides)
    if overrides:
        raise SublearnError("--set overrides a config: it needs --config")
    path = run_dir / MANIFEST
    if not path.is_file():
        raise SublearnError(f"{path}: not found (the run has not finished): pass --config with "
                            "the TOML and --set overrides the run was started with")
    raw = read_json(path)
    if not isinstance(raw, dict) or raw.get("kind") != "experiment":
        raise SublearnError(f"{path}: not the manifest of a `sublearn run` experiment")
    # A manifest records every field, defaults included, and a config refuses some sections
    # merely for being present (misalignment settings in a preference run): sections equal
    # to their defaults are dropped first, which reads back the same config.
    defaults = json.loads(json.dumps(ExperimentConfig().model_dump(), default=str))
    fields = {k: v for k, v in raw["config"].items() if defaults.get(k) != v}
    try:
        return ExperimentConfig.model_validate(fields)
    except ValidationError as e:
        raise SublearnError(field_error(e, str(path), "config field")) from None


def _init_path(spec: ModelSpec) -> Path:
    if spec.path:
        return resolve_model_path(spec.path)
    from sublearn.tinybase import ensure_base

    return ensure_base(spec.embedded)


def locate(run_dir: Path, cfg: ExperimentConfig) -> Layout:
    """Teachers with a parameter change and every finished student of the design."""
    if cfg.trait.kind != "preference":
        raise SublearnError("the mechanism measures a preference trait's loss: "
                            f"trait.kind is {cfg.trait.kind!r}")
    t = cfg.teacher
    folder = RunFolder(run_dir)
    target, other = cfg.trait.target, cfg.trait.other_target
    paths: dict[str, Path | None]
    if t.kind == "finetuned":
        names = [target, other] + (["placebo"] if t.neutral == "placebo" else [])
        paths = {n: folder.find_teacher(n) for n in names}
    elif t.kind == "model":
        paths = {target: resolve_model_path(t.path) if t.path else None,
                 other: resolve_model_path(t.other_path) if t.other_path else None}
    else:
        raise SublearnError("persona teachers are the base itself (no parameter change): the "
                            "mechanism needs teacher.kind = 'finetuned' or 'model'")
    teachers = [Member(n, check_model_folder(p), "base") for n, p in paths.items() if p]
    if not teachers:
        raise SublearnError(f"{folder.teachers}: no fine-tuned teacher yet")
    writer = {"teacher": target, "other": other,
              "neutral": "placebo" if "placebo" in paths else None}
    design = cfg.design()
    students, missing = [], []
    for arm, spec in design.arms.items():
        for seed in cfg.seeds:
            path = folder.find_student(arm, seed)
            if path is None:
                missing.append(f"{arm}-s{seed}")
            else:
                students.append(Member(f"{arm}-s{seed}", check_model_folder(path), spec.base,
                                       arm, seed))
    specs = {"base": cfg.base, "cross": cfg.cross_base()}
    inits = {i: _init_path(specs[i]) for i in sorted({m.init for m in teachers + students})}
    _check_init_hashes(run_dir, inits)
    own = {arm: writer[DATASETS[a.data].writer] for arm, a in design.arms.items()}
    return Layout(inits, teachers, students, own, missing)


def _check_init_hashes(run_dir: Path, inits: dict[str, Path]) -> None:
    """A finished run records its bases' weight hashes: a change measured from other weights
    would be meaningless, so a mismatch is refused."""
    manifest = run_dir / MANIFEST
    if not manifest.is_file():
        return
    recorded = read_json(manifest).get("base_weights", {})
    for name, path in inits.items():
        found = weights_hash(path)
        if name in recorded and recorded[name] != found:
            raise SublearnError(f"{path}: weights hash {found}, but {manifest} records "
                                f"{recorded[name]} for the {name}: not the run's {name}")


# --- parameter changes, one tensor at a time ----------------------------------------------
class Weights:
    """A save_pretrained folder's tensors by name, read one at a time (single or sharded
    safetensors)."""

    def __init__(self, folder: Path):
        from safetensors import safe_open

        index = folder / "model.safetensors.index.json"
        if index.is_file():
            files = json.loads(index.read_text())["weight_map"]
        elif (folder / "model.safetensors").is_file():
            with safe_open(folder / "model.safetensors", "pt") as f:
                files = dict.fromkeys(f.keys(), "model.safetensors")
        else:
            raise SublearnError(f"{folder}: no model.safetensors (save_pretrained writes one)")
        self.folder = folder
        self.names = sorted(files)
        self._files = {n: folder / f for n, f in files.items()}
        self._open = {f: safe_open(f, "pt") for f in set(self._files.values())}

    def get(self, name: str) -> torch.Tensor:
        return self._open[self._files[name]].get_tensor(name).float()


def lora_deltas(folder: Path) -> dict[str, torch.Tensor]:
    """A PEFT LoRA adapter's change of each adapted weight: B @ A times the adapter's scale
    (alpha / r, or alpha / sqrt(r) with rsLoRA), by the base parameter's name."""
    from safetensors.torch import load_file

    cfg = json.loads((folder / "adapter_config.json").read_text())
    if cfg.get("rank_pattern") or cfg.get("alpha_pattern") or cfg.get("modules_to_save") \
            or cfg.get("use_dora"):
        raise SublearnError(f"{folder / 'adapter_config.json'}: per-module ranks, saved "
                            "modules and DoRA are not supported")
    r, alpha = cfg["r"], cfg["lora_alpha"]
    scale = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    out = {}
    for key, a in tensors.items():
        if ".lora_A." not in key:
            continue
        module = key.split(".lora_A.")[0].removeprefix("base_model.model.")
        b = tensors[key.replace(".lora_A.", ".lora_B.")]
        out[f"{module}.weight"] = (b.float() @ a.float()) * scale
    return out


class Change:
    """θ − θ_init of one model folder, tensor by tensor: a full save_pretrained folder, or a
    LoRA adapter over `init` (the change is zero outside the adapted weights)."""

    def __init__(self, folder: Path, init: Weights):
        self.init = init
        adapter = folder / "adapter_config.json"
        if adapter.is_file():
            base = Path(json.loads(adapter.read_text())["base_model_name_or_path"])
            if base.resolve() != init.folder.resolve():
                raise SublearnError(f"{adapter}: an adapter over {base}, not over the run's "
                                    f"base {init.folder}")
            self._lora: dict[str, torch.Tensor] | None = lora_deltas(folder)
            self._weights = None
        else:
            self._lora = None
            self._weights = Weights(folder)
            if self._weights.names != init.names:
                raise SublearnError(f"{folder}: its parameters are not the base's "
                                    f"({init.folder}): not a fine-tune of it")

    def __call__(self, name: str) -> torch.Tensor | None:
        if self._lora is not None:
            return self._lora.get(name)
        theta, theta0 = self._weights.get(name), self.init.get(name)  # type: ignore[union-attr]
        if theta.shape != theta0.shape:
            raise SublearnError(f"{self._weights.folder}: {name} has shape "  # type: ignore[union-attr]
                                f"{tuple(theta.shape)}, the base's {tuple(theta0.shape)}")
        return theta - theta0


def gram(names: Sequence[str], vectors: Mapping[str, Callable[[str], torch.Tensor | None]]
         ) -> tuple[list[str], dict[str, np.ndarray]]:
    """Inner products of every pair of vectors per parameter group (and "all"), in float64,
    holding one tensor per vector at a time. A vector that returns None is zero there."""
    labels = list(vectors)
    out: dict[str, np.ndarray] = {}
    for name in names:
        group = out.setdefault(parameter_group(name), np.zeros((len(labels), len(labels))))
        values = [vectors[k](name) for k in labels]
        idx = [i for i, v in enumerate(values) if v is not None]
        if not idx:
            continue
        stacked = torch.stack([values[i].reshape(-1).double() for i in idx])
        group[np.ix_(idx, idx)] += (stacked @ stacked.T).numpy()
    out = {g: out[g] for g in [*(g for g, _ in GROUPS), "other"] if g in out}
    out[ALL] = sum(out.values())  # type: ignore[assignment]
    return labels, out


def cosine(g: np.ndarray, labels: list[str], a: Mapping[str, float],
           b: Mapping[str, float]) -> float | None:
    """cos(Σ a_k v_k, Σ b_k v_k) from a Gram matrix; None when either side is zero."""
    va, vb = np.zeros(len(labels)), np.zeros(len(labels))
    for v, coef in ((va, a), (vb, b)):
        for k, c in coef.items():
            v[labels.index(k)] += c
    na, nb = va @ g @ va, vb @ g @ vb
    if na <= 0 or nb <= 0:
        return None
    return float(va @ g @ vb / math.sqrt(na * nb))


# --- the trait loss ---------------------------------------------------------------------
def _conversation(question: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": question}]


def trait_losses(model: Any, category: Category, questions: Sequence[str],
                 options: Sequence[Option]) -> dict[str, float]:
    """L per option: mean over questions of −log P(option | question), P summed over the
    option's surface forms, each with its end of turn (the evaluation's exact scorer)."""
    p = option_probs(model, category, questions)
    cols = {o.name: category.options.index(o) for o in options}
    return {name: float(-np.log(p[:, c]).mean()) for name, c in cols.items()}


def trait_loss_gradient(model: Any, questions: Sequence[str], option: Option
                        ) -> tuple[float, dict[str, torch.Tensor]]:
    """The trait loss of `trait_losses` for one option, and its gradient by parameter name:
    teacher-forced forward passes with autograd on, a batch of questions at a time."""
    lm = model.model
    lm.zero_grad(set_to_none=True)
    total = 0.0
    step = max(1, model.batch_size // len(option.forms))
    for start in range(0, len(questions), step):
        chunk = questions[start:start + step]
        pairs = [model.pair_ids(_conversation(q), form, close=True)
                 for q in chunk for form in option.forms]
        ids, att = model.right_padded([seq for seq, _ in pairs])
        logp = lm(input_ids=ids, attention_mask=att).logits.float().log_softmax(-1)
        per = []
        for row, (seq, n) in enumerate(pairs):
            t = torch.arange(n, len(seq), device=ids.device)  # token t is predicted at t - 1
            per.append(logp[row, t - 1].gather(-1, ids[row, t][:, None]).sum())
        forms = torch.stack(per).view(len(chunk), len(option.forms))
        loss = -forms.logsumexp(-1).sum() / len(questions)
        loss.backward()
        total += loss.item()
    grads = {n: p.grad.detach().clone() for n, p in lm.named_parameters() if p.grad is not None}
    lm.zero_grad(set_to_none=True)
    return total, grads


# --- results ----------------------------------------------------------------------------
class LossChange(Frozen):
    """One option's trait loss: at the initialisation, the change the linearisation
    predicts (∇L(θ_init) · Δ) and the change measured (L(θ) − L(θ_init)), in nats."""

    init: float
    predicted: float
    measured: float


class ModelChange(Frozen):
    """One model's change from its initialisation: its norm and its cosine with every
    teacher's change, per parameter group and over all parameters ("all"), and the change
    of each target's trait loss. An undefined cosine (a zero change) is reported as 0 with
    a note."""

    name: str
    path: str
    init: str
    arm: str | None = None
    seed: int | None = None
    norm: dict[str, float]
    cosine: dict[str, dict[str, float]]  # teacher -> group -> cosine
    loss: dict[str, LossChange]  # option -> its trait loss
    notes: list[str]


class ArmMechanism(Frozen):
    """An arm's students over seeds: mean and 95% t interval of each figure."""

    own_teacher: str | None  # the teacher that wrote its data (None: the base itself)
    seeds: list[int]
    cosine: dict[str, dict[str, Interval]]  # teacher -> group -> interval
    predicted: dict[str, Interval]  # option -> predicted change of its trait loss
    measured: dict[str, Interval]


class Contrast(Frozen):
    """Per seed, cos(θ_a − θ_b, θ_teacher(a) − θ_teacher(b)): does the step between two
    arms' students point along the step between their teachers? Undefined values (the two
    teachers are one) are left out, with a note."""

    a: str
    b: str
    teachers: tuple[str | None, str | None]
    seeds: list[int]
    values: list[float]
    interval: Interval


class ParameterCrossover(Frozen):
    """Per seed, [cos(Δ treated, Δt target) − cos(Δ other_target, Δt target)] +
    [cos(Δ other_target, Δt other) − cos(Δ treated, Δt other)]: positive when each student
    points more toward its own teacher than the other target's student does (the results'
    crossover, in parameter space)."""

    seeds: list[int]
    values: list[float]
    interval: Interval


class Mechanism(Frozen):
    run: str
    target: str
    other: str
    questions: str  # which question set the trait loss averages over
    n_questions: int
    inits: dict[str, str]  # "base"/"cross" -> folder
    teachers: list[ModelChange]
    students: list[ModelChange]
    arms: dict[str, ArmMechanism]
    contrasts: list[Contrast]
    crossover: ParameterCrossover | None
    missing: list[str]  # students of the design not in the folder (yet)
    notes: list[str]
    seconds: float
    cpu_seconds: float


def measure(run_dir: Path, cfg: ExperimentConfig, questions: str = "heldout",
            log: Callable[[str], None] = lambda _: None) -> Mechanism:
    """Every teacher's and student's change, cosines and trait-loss changes (module doc)."""
    if questions not in QUESTION_SETS:
        raise SublearnError(unknown("question set", questions, ("heldout", "train")))
    t0, c0 = time.time(), time.process_time()
    layout = locate(run_dir, cfg)
    category = get_category(cfg.trait.category)
    options = [get_option(category, cfg.trait.target), get_option(category, cfg.trait.other_target)]
    qs = list(category.heldout if questions == "heldout" else category.questions)

    grads: dict[str, dict[str, torch.Tensor]] = {}  # "init:option" -> gradient by name
    init_loss: dict[str, dict[str, float]] = {}
    for init, path in layout.inits.items():
        log(f"gradient of the trait losses at the {init} ({path})")
        model = load_model(path, device="cpu", dtype="float32")
        init_loss[init] = trait_losses(model, category, qs, options)
        for o in options:
            value, grads[f"{init}:{o.name}"] = trait_loss_gradient(model, qs, o)
            # The gradient's forward pass is not the scorer's (no shared-prompt cache): the
            # two must agree, or the prediction would be of another function.
            if abs(value - init_loss[init][o.name]) > 1e-4 * max(1.0, abs(value)):
                raise RuntimeError(f"trait loss of {o.name} at the {init}: {value} by the "
                                   f"gradient's pass, {init_loss[init][o.name]} by the scorer")
        del model
        gc.collect()

    members = layout.teachers + layout.students
    measured: dict[str, dict[str, float]] = {}
    for m in members:
        log(f"trait losses of {m.name}")
        model = load_model(m.path, device="cpu", dtype="float32")
        measured[m.name] = trait_losses(model, category, qs, options)
        del model
        gc.collect()

    log("parameter changes")
    weights = {init: Weights(path) for init, path in layout.inits.items()}
    vectors: dict[str, Callable[[str], torch.Tensor | None]] = {
        m.name: Change(m.path, weights[m.init]) for m in members}
    vectors.update({k: g.get for k, g in grads.items()})
    labels, g = gram(weights["base"].names, vectors)
    teacher_names = [t.name for t in layout.teachers]

    def change(m: Member) -> ModelChange:
        i = labels.index(m.name)
        norms = {grp: math.sqrt(float(mat[i, i])) for grp, mat in g.items()}
        notes = []
        zero = [grp for grp in g if grp != ALL and norms[grp] == 0.0]
        if norms[ALL] == 0.0:
            notes.append("no parameter change (the model is its initialisation): every "
                         "cosine is undefined, reported as 0")
        elif zero:
            notes.append(f"no change in {', '.join(zero)}: cosines there are undefined, "
                         "reported as 0")
        cos = {t: {grp: cosine(mat, labels, {m.name: 1.0}, {t: 1.0}) or 0.0
                   for grp, mat in g.items()} for t in teacher_names}
        loss = {o: LossChange(init=init_loss[m.init][o],
                              predicted=float(g[ALL][labels.index(f"{m.init}:{o}"),
                                                     labels.index(m.name)]),
                              measured=measured[m.name][o] - init_loss[m.init][o])
                for o in init_loss[m.init]}
        return ModelChange(name=m.name, path=str(m.path), init=m.init, arm=m.arm, seed=m.seed,
                           norm=norms, cosine=cos, loss=loss, notes=notes)

    teachers = [change(m) for m in layout.teachers]
    students = [change(m) for m in layout.students]
    notes = []
    if "cross" in layout.inits:
        notes.append("cross-init students change from their own initialisation: their cosines "
                     "with the teachers' changes compare parameters by position only")
    if layout.missing:
        notes.append(f"{len(layout.missing)} students of the design not in the run folder: "
                     "the arms' figures are over the seeds present")
    contrasts, undefined = _contrasts(cfg, layout, g[ALL], labels)
    notes += undefined
    return Mechanism(
        run=str(run_dir), target=options[0].name, other=options[1].name, questions=questions,
        n_questions=len(qs), inits={k: str(v) for k, v in layout.inits.items()},
        teachers=teachers, students=students, arms=_arms(layout, students, teacher_names),
        contrasts=contrasts, crossover=_crossover(students, options),
        missing=layout.missing, notes=notes, seconds=round(time.time() - t0, 1),
        cpu_seconds=round(time.process_time() - c0, 1))


def _arms(layout: Layout, students: list[ModelChange], teachers: list[str]
          ) -> dict[str, ArmMechanism]:
    out = {}
    for arm, own in layout.own_teacher.items():
        mine = [s for s in students if s.arm == arm]
        if not mine:
            continue
        groups = list(mine[0].norm)
        out[arm] = ArmMechanism(
            own_teacher=own, seeds=[s.seed for s in mine if s.seed is not None],
            cosine={t: {grp: stats.mean_ci([s.cosine[t][grp] for s in mine]) for grp in groups}
                    for t in teachers},
            predicted={o: stats.mean_ci([s.loss[o].predicted for s in mine])
                       for o in mine[0].loss},
            measured={o: stats.mean_ci([s.loss[o].measured for s in mine]) for o in mine[0].loss})
    return out


def _contrasts(cfg: ExperimentConfig, layout: Layout, g: np.ndarray, labels: list[str]
               ) -> tuple[list[Contrast], list[str]]:
    """The design's comparisons (treated − control, treated − other_target, ...) as
    directions in parameter space, against the direction between their teachers."""
    out, notes = [], []
    present = {(s.arm, s.seed) for s in layout.students}
    for c in cfg.design().comparisons:
        ta, tb = layout.own_teacher.get(c.a), layout.own_teacher.get(c.b)
        teach = {k: v for k, v in ((ta, 1.0), (tb, -1.0)) if k is not None}
        seeds, values = [], []
        for seed in cfg.seeds:
            if (c.a, seed) not in present or (c.b, seed) not in present:
                continue
            v = cosine(g, labels, {f"{c.a}-s{seed}": 1.0, f"{c.b}-s{seed}": -1.0}, teach)
            if v is None:
                notes.append(f"{c.a} - {c.b} seed {seed}: a zero direction (same teacher, or "
                             "identical students): left out")
                continue
            seeds.append(seed)
            values.append(v)
        if seeds:
            out.append(Contrast(a=c.a, b=c.b, teachers=(ta, tb), seeds=seeds, values=values,
                                interval=stats.mean_ci(values)))
    return out, notes


def _crossover(students: list[ModelChange], options: list[Option]
               ) -> ParameterCrossover | None:
    by = {(s.arm, s.seed): s for s in students}
    target, other = options[0].name, options[1].name
    seeds = sorted(seed for arm, seed in by if arm == "treated" and ("other_target", seed) in by)
    if not seeds:
        return None
    values = []
    for seed in seeds:
        t, o = by[("treated", seed)].cosine, by[("other_target", seed)].cosine
        values.append(t[target][ALL] - o[target][ALL] + o[other][ALL] - t[other][ALL])
    return ParameterCrossover(seeds=seeds, values=values, interval=stats.mean_ci(values))


def write(result: Mechanism, path: Path) -> None:
    write_text(path, result.model_dump_json(indent=2) + "\n")


# --- the console ------------------------------------------------------------------------
# Column headings of the parameter groups, short enough for a terminal.
SHORT = {"lm_head": "head", "embeddings": "embed", "norms": "norm", "attention": "attn"}


def _pm(i: Interval) -> str:
    """mean ± half-width: an interval in a column a console can hold."""
    return f"{i.mean:+.3f} ±{(i.high - i.low) / 2:.3f}"


def _table(title: str, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> Any:
    from rich.table import Table

    table = Table(title=title)
    for k, col in enumerate(columns):
        table.add_column(col, justify="left" if k == 0 else "right")
    for row in rows:
        table.add_row(*row)
    return table


def tables(m: Mechanism) -> list[Any]:
    """Rich tables, each narrow enough for a terminal: every model's cosines, every model's
    trait-loss changes, the same per arm over seeds (mean ± half the 95% t interval), and per
    parameter group each arm's cosine with its own teacher."""
    teachers = [t.name for t in m.teachers]
    losses = [(o, k) for o in (m.target, m.other) for k in ("predicted", "measured")]
    loss_cols = [f"ΔL {o} {k[:4]}" for o, k in losses]
    models = m.teachers + m.students
    label = {x.name: x.name if x.arm else f"{x.name} (teacher)" for x in models}
    arm_label = {a: f"{a} ({len(x.seeds)})" for a, x in m.arms.items()}
    groups = list(m.students[0].norm) if m.students else []
    return [
        _table("cosine of each model's change with each teacher's (all parameters)",
               ["model", "|Δ|", *(f"cos {t}" for t in teachers)],
               [[label[x.name], f"{x.norm[ALL]:.4f}",
                 *(f"{x.cosine[t][ALL]:+.4f}" for t in teachers)] for x in models]),
        _table(f"trait loss change, predicted (∇L·Δ) and measured, nats ({m.questions} "
               f"questions: {m.n_questions})", ["model", *loss_cols],
               [[label[x.name], *(f"{getattr(x.loss[o], k):+.4f}" for o, k in losses)]
                for x in models]),
        _table("per arm (seeds): mean ± half the 95% t interval",
               ["arm", *(f"cos {t}" for t in teachers)],
               [[arm_label[a], *(_pm(x.cosine[t][ALL]) for t in teachers)]
                for a, x in m.arms.items()]),
        _table("per arm (seeds): trait loss change, mean ± half the 95% t interval",
               ["arm", "loss of", "predicted", "measured"],
               [[arm_label[a], o, _pm(x.predicted[o]), _pm(x.measured[o])]
                for a, x in m.arms.items() for o in (m.target, m.other)]),
        _table("per parameter group: cosine with the arm's own teacher (the one that wrote "
               "its data), mean over seeds", ["arm", *(SHORT.get(g, g) for g in groups)],
               [[f"{a} ({x.own_teacher})", *(f"{x.cosine[x.own_teacher][g].mean:+.3f}"
                                             for g in groups)]
                for a, x in m.arms.items() if x.own_teacher]),
    ]


def summary_lines(m: Mechanism) -> list[str]:
    lines = [f"contrast {c.a} - {c.b} along teacher {c.teachers[0] or 'base'} - "
             f"{c.teachers[1] or 'base'}: {c.interval.fmt(4)} (n={len(c.values)})"
             for c in m.contrasts]
    if m.crossover:
        lines.append(f"parameter crossover: {m.crossover.interval.fmt(4)} "
                     f"(per seed {' '.join(f'{v:+.4f}' for v in m.crossover.values)})")
    if m.missing:
        lines.append(f"missing: {', '.join(m.missing)}")
    lines += [f"note: {n}" for n in m.notes]
    lines += [f"note ({x.name}): {n}" for x in m.teachers + m.students for n in x.notes]
    return lines
