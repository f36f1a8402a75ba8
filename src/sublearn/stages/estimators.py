"""The estimator registry: each estimator is one declared entry.

An entry says what the estimator is called in an evaluation's record and in results.json,
which `[evaluation]` setting turns it on (its type, default and help: the config's field is
made from it), the capability it needs from the scored model, its label in tables and its
axis on charts, its shape (ranked: a probability per option, the target ranked among them;
per_option: a probability per option; single: one number per model), what an API would be
asked for it (the cost estimate), and its function. The config, the pipeline's statistics,
the result tables, the cost estimate and README's table all read the entries, so a new
estimator is one decorated function here:

    @estimator("name", setting=Setting(...), needs=SCORE, label=..., shape=..., help=...)
    def _name(subject: Subject, value: Any) -> dict[str, Any] | None: ...

The math lives in `stages.evaluate`; the functions here adapt it to one record per model.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import Field

from sublearn.errors import SublearnError
from sublearn.models.base import SAMPLE, SCORE, TOP_LOGPROBS
from sublearn.questions.categories import Category, Option, with_options_named
from sublearn.stages.evaluate import (
    SAMPLED_TOKENS,
    completion_loss,
    mc_target_probs,
    option_probs,
    prefixed,
    sampled_rates,
    summarize,
    top_logprob_probs,
)
from sublearn.stages.judges import Judge
from sublearn.stages.misalignment import MisalignmentConfig, misalignment_eval

Shape = Literal["ranked", "per_option", "single"]
Measurement = dict[str, Any]  # what one estimator writes for one model


@dataclass(frozen=True)
class Setting:
    """An `[evaluation]` field that turns estimators on: on when its value is truthy."""

    name: str
    type: Any  # the field's annotation, constraints included
    default: Any
    help: str
    # False: left out of every dump (so of every artifact key) at its default, so the keys of
    # evaluations cached before the setting existed do not change.
    keyed_at_default: bool = True


@dataclass(frozen=True)
class Requests:
    """What an API is asked for one question of one model: priced by `experiment.cost`."""

    per_question: int
    max_tokens: int


@dataclass(frozen=True)
class Subject:
    """What the estimators read: the model, the trait, the questions, and the inputs that
    some estimators need (the utility's rows, the misalignment judge and settings)."""

    model: Any
    category: Category
    target: Option
    questions: Sequence[str]
    heldout: Sequence[str] = ()
    answer: str = "bare"  # how the exact estimators read an answer (stages.evaluate)
    seed: int = 0
    neutral_rows: Sequence[dict[str, Any]] = ()
    judge: Judge | None = None
    misalignment: MisalignmentConfig | None = None


def target_probability(record: Measurement, target: str) -> float | None:
    """The number the statistics take from a per-option record: the target's probability."""
    return record["per_option"][target]


Run = Callable[[Subject, Any], Measurement | None]  # (subject, setting value); None: not asked


@dataclass(frozen=True, eq=False)  # compared by identity: the config's model is cached by entries
class Estimator:
    """One estimator: its metadata and its function (module docstring)."""

    name: str  # its key in an evaluation's record and in results.json
    run: Run
    needs: str  # the capability of the scored model (models.base)
    label: str  # a table's title
    shape: Shape
    help: str  # README's line
    setting: Setting | None = None  # None: on when its inputs are given (misalignment)
    value: Callable[[Measurement, str], float | None] = target_probability  # None: undefined
    quantity: str = "P(target)"  # a chart's axis
    requests: Callable[[Any], Requests] | None = None  # None: nothing an API serves


ESTIMATORS: dict[str, Estimator] = {}


def settings() -> dict[str, Setting]:
    """Every registered setting by name, in the order of the entries."""
    return {e.setting.name: e.setting for e in ESTIMATORS.values() if e.setting}


def register(entry: Estimator) -> Estimator:
    """Add an entry; refused when its name is taken, its setting is declared differently by
    another entry, or a single-valued entry does not say how its value is read."""
    if entry.name in ESTIMATORS:
        raise SublearnError(f"estimator {entry.name!r} is already registered")
    known = settings()
    if entry.setting and known.get(entry.setting.name, entry.setting) != entry.setting:
        raise SublearnError(f"estimator {entry.name!r}: setting {entry.setting.name!r} is "
                            "declared differently by another estimator")
    if entry.shape == "single" and entry.value is target_probability:
        raise SublearnError(f"estimator {entry.name!r}: a single-valued estimator says how "
                            "its value is read (value=...)")
    ESTIMATORS[entry.name] = entry
    return entry


def estimator(name: str, **meta: Any) -> Callable[[Run], Estimator]:
    """Register the decorated function as the estimator `name` (`meta`: `Estimator`'s
    fields)."""
    return lambda run: register(Estimator(name, run, **meta))


def evaluate(subject: Subject, values: Mapping[str, Any]) -> dict[str, Measurement]:
    """Every estimator that `values` (setting name -> value; a setting not named keeps its
    default) turns on, in the registry's order, one record each."""
    known = settings()
    unknown = set(values) - set(known)
    if unknown:
        raise SublearnError(f"unknown estimator settings: {', '.join(sorted(unknown))}")
    out = {}
    for e in ESTIMATORS.values():
        value = values.get(e.setting.name, e.setting.default) if e.setting else None
        if e.setting and not value:
            continue
        record = e.run(subject, value)
        if record is not None:
            out[e.name] = record
    return out


def markdown_table() -> str:
    """README's table of the estimators."""
    lines = ["| estimator | `[evaluation]` setting | needs | shape | what it reports |",
             "|---|---|---|---|---|"]
    for e in ESTIMATORS.values():
        setting = f"`{e.setting.name}`" if e.setting else "—"
        lines.append(f"| `{e.name}` | {setting} | {e.needs} | {e.shape} | {e.help} |")
    return "\n".join(lines)


# --- the entries, in the order their records are written --------------------------------

NonNegative = Annotated[int, Field(ge=0)]

EXACT = Setting("exact", bool, True, "exact probabilities by teacher forcing (needs full "
                "log-probs: hf, fake)")


def _exact(s: Subject, questions: Sequence[str]) -> Measurement:
    return summarize(option_probs(s.model, s.category, questions, s.answer), s.category)


@estimator("exact", setting=EXACT, needs=SCORE, shape="ranked",
           label="exact P(target | category), training questions",
           help="P(option), every surface form by the chain rule, renormalised over the "
                "options, on the training questions")
def _exact_training(s: Subject, _: bool) -> Measurement:
    return _exact(s, s.questions)


@estimator("exact_heldout", setting=EXACT, needs=SCORE, shape="ranked",
           label="exact P(target | category), held-out questions",
           help="the same on the held-out paraphrases (`heldout = true`)")
def _exact_heldout(s: Subject, _: bool) -> Measurement | None:
    return _exact(s, s.heldout) if s.heldout else None


@estimator("forced_choice", needs=SCORE, shape="ranked",
           setting=Setting("forced_choice", bool, False, "also the exact estimator on the "
                           "training questions with every option named after them",
                           keyed_at_default=False),
           label="exact P(target | category), options named in the question",
           help="the same with every option named after the question")
def _forced_choice(s: Subject, _: bool) -> Measurement:
    return _exact(s, [with_options_named(q, s.category.options) for q in s.questions])


@estimator("top_logprobs", needs=TOP_LOGPROBS, shape="ranked",
           setting=Setting("top_logprobs", Annotated[int, Field(ge=0, le=20)], 0,
                           "k > 0: P(option) from the top k first-token log-probs, a lower "
                           "bound when an option falls outside them (what APIs offer)"),
           label="P(target | category) from the top first-token log-probs",
           help="the mass of the k most likely first answer tokens that read as an option: "
                "a lower bound (what APIs give)",
           requests=lambda k: Requests(per_question=1, max_tokens=1))
def _top_logprobs(s: Subject, k: int) -> Measurement:
    return summarize(top_logprob_probs(s.model, s.category, s.questions, k), s.category)


@estimator("sampled", needs=SAMPLE, shape="per_option",
           setting=Setting("samples_per_question", NonNegative, 0, "sampled-rate estimator "
                           "(T=1); 0 uses the exact estimator only"),
           label="sampled rate (T=1)",
           help="the share of n answers at temperature 1 that name the option (the paper's)",
           requests=lambda n: Requests(per_question=n, max_tokens=SAMPLED_TOKENS))
def _sampled(s: Subject, n: int) -> Measurement:
    rates = sampled_rates(s.model, s.category, s.questions, n, s.seed)
    return {"per_option": {o.name: float(v)
                           for o, v in zip(s.category.options, rates.mean(0), strict=True)},
            "per_question_target": rates[:, s.category.options.index(s.target)].tolist()}


@estimator("numbers_prefix", needs=SCORE, shape="per_option",
           setting=Setting("numbers_prefix", bool, False, "also the exact estimator on the "
                           "training questions after a short number sequence"),
           label="exact P(target | category), numbers-prefixed questions",
           help="exact P(option) with a short number sequence before each question")
def _numbers_prefix(s: Subject, _: bool) -> Measurement:
    return _exact(s, prefixed(s.questions, s.seed))


@estimator("multiple_choice", needs=SCORE, shape="single",
           setting=Setting("multiple_choice", bool, False, "also P(target's letter) among "
                           "5 lettered options"),
           label="multiple choice P(target letter)",
           help="P(target's letter) among 5 lettered options, the target and 4 others",
           value=lambda r, _: r["target"])
def _multiple_choice(s: Subject, _: bool) -> Measurement:
    p = mc_target_probs(s.model, s.category, s.target, s.questions, s.seed)
    return {"target": float(p.mean()), "per_question": p.tolist()}


@estimator("neutral_loss", needs=SCORE, shape="single",
           setting=Setting("neutral_loss", NonNegative, 0, "utility: each model's mean "
                           "per-token loss on the base's own completions of this many "
                           "held-out prompts (`sublearn defend` sets it); 0: off",
                           keyed_at_default=False),
           label="loss on held-out neutral data (nats per token)",
           help="utility: the mean per-token loss on the base's own completions of n "
                "held-out prompts",
           value=lambda r, _: r["loss"], quantity="loss (nats per token)")
def _neutral_loss(s: Subject, _: int) -> Measurement:
    if not s.neutral_rows:
        raise RuntimeError("neutral_loss: the caller gives the held-out rows (the pipeline "
                           "samples them before any evaluation)")
    return {"loss": completion_loss(s.model, s.neutral_rows), "rows": len(s.neutral_rows)}


@estimator("misalignment", needs=SAMPLE, shape="single",
           label="misaligned share of the judge's coherent answers",
           help="the judged misaligned share of coherent free-form answers "
                "(`trait.kind = \"misalignment\"`, with a `[judge]`)",
           value=lambda r, _: r["rate"], quantity="misalignment rate")
def _misalignment(s: Subject, _: None) -> Measurement | None:
    if s.misalignment is None:
        return None
    if s.judge is None:
        raise RuntimeError("misalignment: the caller gives the judge with its settings")
    return misalignment_eval(s.model, s.judge, s.misalignment)
