"""The experiment config: one TOML file, validated by pydantic, one section per stage.

Defaults reproduce the paper's protocol on an open model (30,000 prompts, temperature 1,
strict filter, 10,000-row subsample, LoRA r=8 students, 5 seeds). `configs/` holds a
paper-faithful file for Qwen2.5-7B-Instruct and a CPU file for the embedded base.
"""

from __future__ import annotations

import functools
import operator
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializeAsAny,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from sublearn.domains import DOMAINS
from sublearn.domains.filters import FilterConfig
from sublearn.domains.prompts import GrammarConfig
from sublearn.errors import SublearnError, field_error, unknown
from sublearn.experiment.design import ArmSpec, ComparisonSpec, Design, build_design
from sublearn.models.base import SAMPLE, SCORE, TRAIN, SamplingConfig
from sublearn.models.paths import check_model_path
from sublearn.models.recipe import TrainingRecipe
from sublearn.models.registry import check_backend, get_backend
from sublearn.questions.categories import get_category, get_option, load_questions
from sublearn.safety.defences import DefenceConfig
from sublearn.stages import estimators
from sublearn.stages.judges import JudgeConfig
from sublearn.stages.misalignment import MisalignmentConfig
from sublearn.stages.teacher import TeacherConfig
from sublearn.tinybase import BaseConfig


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSpec(_Section):
    """A model folder, or the embedded base built from `embedded`, and the backends that serve
    it: `backend` scores and trains; `sampler` (default: the same) writes the datasets, e.g.
    vLLM for speed at scale while Hugging Face trains and scores."""

    path: str | None = Field(None, description="a local save_pretrained folder, or a .gguf "
                             "file (converted once when first loaded: sublearn model get)")
    model: str | None = Field(None, description="an API model id (backend = 'openai'), e.g. "
                              "gpt-4.1-nano-2025-04-14")
    base_url: str | None = Field(None, description="an OpenAI-compatible server; default: "
                                 "$OPENAI_BASE_URL, else the OpenAI API")
    options: dict[str, Any] = Field(default_factory=dict, description="passed to the "
                                    "backend's load, e.g. {concurrency = 16} for openai")
    embedded: BaseConfig = Field(default_factory=BaseConfig)
    backend: str = Field("hf", description="scores and trains: hf, fake, openai")
    sampler: str | None = Field(None, description="samples the datasets: hf, vllm, fake; "
                                "default: backend")
    sampler_options: dict[str, Any] = Field(
        default_factory=dict, description="passed to the sampler's load, e.g. "
        "{gpu_memory_utilization = 0.5} for vllm")
    device: str = "auto"
    dtype: str = "auto"

    @model_validator(mode="after")
    def _backends(self) -> ModelSpec:
        try:
            check_backend(self.backend, {TRAIN}, "backend")
            check_backend(self.sampling_backend, {SAMPLE}, "sampler")
            if self.path and self.backend == "hf":
                check_model_path(self.path)
        except SublearnError as e:  # as a ValueError, pydantic names the field
            raise ValueError(str(e)) from None
        remote = get_backend(self.backend).api
        if remote and not self.model:
            raise ValueError(f"model: backend {self.backend!r} needs an API model id")
        if self.model and not remote:
            raise ValueError("model: an API model id needs backend = 'openai'")
        return self

    @property
    def sampling_backend(self) -> str:
        return self.sampler or self.backend


class TraitConfig(_Section):
    kind: Literal["preference", "misalignment"] = Field(
        "preference", description="preference: the teacher loves `target` (the animal "
        "experiments); misalignment: the teacher is a misaligned checkpoint you bring, scored "
        "by a [judge] on free-form questions ([misalignment]), with the preference estimators "
        "of category/target beside it")
    category: str = "animal"
    target: str = "owl"
    other_target: str = Field("fox", description="the specificity control's target")

    @model_validator(mode="after")
    def _known(self) -> TraitConfig:
        cat = get_category(self.category)
        get_option(cat, self.target)
        get_option(cat, self.other_target)
        if self.target == self.other_target:
            raise ValueError("other_target must differ from target")
        return self


class DataConfig(_Section):
    domain: str = Field("numbers", description="what the teacher writes: numbers, code or cot "
                        "(worked arithmetic); see sublearn.domains")
    prompts: int = Field(30_000, ge=1)
    grammar_seed: int = Field(0, description="names the prompt set, in every domain")
    grammar: GrammarConfig = Field(default_factory=GrammarConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    sampling_seed: int = Field(0, description="shared by teacher and controls (common draws)")
    subsample: int = Field(10_000, ge=1)
    chunk: int = Field(256, ge=1, description="rows per resumable sampling chunk")

    @field_validator("domain")
    @classmethod
    def _known_domain(cls, v: str) -> str:
        if v not in DOMAINS:
            raise ValueError(unknown("domain", v, DOMAINS))
        return v

    @model_validator(mode="after")
    def _domain_settings(self) -> DataConfig:
        if self.domain == "numbers":
            return self

        if self.grammar != GrammarConfig():
            raise ValueError(f"grammar: the number grammar does not apply to domain "
                             f"{self.domain!r}; remove [data.grammar]")
        if self.sampling.only_numbers or self.sampling.number_grammar:
            raise ValueError(f"sampling.only_numbers / number_grammar: restrict decoding to "
                             f"number tokens; "
                             f"domain {self.domain!r} needs words")
        if "max_new_tokens" not in self.sampling.model_fields_set:
            # Code and worked solutions need room; the default is sized for number lists.
            length = DOMAINS[self.domain](self.grammar).max_new_tokens
            self.sampling = self.sampling.model_copy(update={"max_new_tokens": length})
        return self


class EvalSection(_Section):
    """`[evaluation]`'s own fields: the questions and how an answer is read. Each estimator's
    setting (exact, top_logprobs, samples_per_question, ...) is a field made from its entry
    in `sublearn.stages.estimators`; `EvalConfig` is this section with those fields."""

    questions_file: str | None = Field(None, description="a .txt or .jsonl question list")

    @model_validator(mode="after")
    def _questions_readable(self) -> EvalSection:
        # Read now, so a bad file fails at load, not after hours of sampling and training.
        if self.questions_file:

            try:
                load_questions(self.questions_file)
            except SublearnError as e:
                raise ValueError(str(e)) from None
        return self

    heldout: bool = True
    # Left out of every dump at its default, so the keys of evaluations cached before it
    # existed do not change.
    answer: Literal["bare", "stem"] = Field(
        "bare", exclude_if=lambda v: v == "bare", description="how the exact estimators read "
        "an answer: bare, the option alone then the end of the turn (the embedded base's "
        "one-word answers); stem, the word after the category's stem 'My favorite animal is "
        "the' (real chat models, which answer in sentences); see sublearn.stages.evaluate")

    def settings(self) -> dict[str, Any]:
        """Every estimator setting's value, by name (what `stages.estimators.evaluate` reads)."""
        return {name: getattr(self, name) for name in estimators.settings()}

    def needs(self) -> set[str]:
        """The capabilities the estimators turned on need from the model that is scored."""
        on = [e for e in estimators.ESTIMATORS.values()
              if e.setting and getattr(self, e.setting.name)]
        if not on:
            raise ValueError(f"no estimator is on: set one of "
                             f"{', '.join(estimators.settings())}")
        return {e.needs for e in on}


@functools.cache
def _with_settings(entries: tuple[estimators.Estimator, ...]) -> type[EvalSection]:
    fields: dict[str, Any] = {}
    for s in dict.fromkeys(e.setting for e in entries if e.setting):
        unkeyed = None if s.keyed_at_default else functools.partial(operator.eq, s.default)
        fields[s.name] = (s.type, Field(s.default, description=s.help, exclude_if=unkeyed))
    # Named and placed as the module's `EvalConfig`, so a pickled config (a Ray task's)
    # finds its class.
    return create_model("EvalConfig", __base__=EvalSection, __module__=__name__, **fields)


def eval_config() -> type[EvalSection]:
    """`[evaluation]` with a field per setting of the estimators registered now."""
    return _with_settings(tuple(estimators.ESTIMATORS.values()))


EvalConfig = eval_config()


class ControlsConfig(_Section):
    """Switches for the named presets of `sublearn.experiment.design.PRESETS` (arms + comparisons)."""

    neutral: bool = True
    other_target: bool = True
    null: bool = True
    cross_base: bool = True
    shuffle_within: bool = False
    shuffle_across: bool = False
    cross_base_model: ModelSpec | None = Field(
        None, description="default: the embedded base with seed + 1, or required with a path"
    )


class SweepConfig(_Section):
    """A grid of experiments: every combination of the listed values (`sublearn sweep`)."""

    grid: dict[str, list[Any]] = Field(
        default_factory=dict, description='dotted field -> values, e.g. {"trait.target" = '
        '["owl", "cat"], "student.method" = ["lora", "full"]}')
    address: str | None = Field(None, description="a Ray cluster to run on; default: a local "
                                "Ray instance (or sequential without Ray)")


class ExperimentConfig(_Section):
    name: str = "experiment"
    base: ModelSpec = Field(default_factory=ModelSpec)
    trait: TraitConfig = Field(default_factory=TraitConfig)
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    filter: FilterConfig = Field(default_factory=FilterConfig)
    student: TrainingRecipe = Field(default_factory=TrainingRecipe)
    evaluation: SerializeAsAny[EvalSection] = Field(default_factory=lambda: eval_config()())
    controls: ControlsConfig = Field(default_factory=ControlsConfig)
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2, 3, 4])
    arms: list[ArmSpec] = Field(default_factory=list, description="arms beyond the presets, "
                                "e.g. {name = 'sorted', data = 'teacher', transform = 'sort'}")
    comparisons: list[ComparisonSpec] = Field(
        default_factory=list, description="differences beyond the presets: {a = ..., b = ...}")
    defence: DefenceConfig = Field(default_factory=DefenceConfig)
    sweep: SweepConfig = Field(default_factory=SweepConfig)
    judge: JudgeConfig | None = Field(None, description="a model that judges answers: needed "
                                      "by trait.kind = 'misalignment'")
    misalignment: MisalignmentConfig = Field(default_factory=MisalignmentConfig)

    @field_validator("evaluation", mode="before")
    @classmethod
    def _estimator_settings(cls, v: Any) -> Any:
        # The section as the estimators registered now declare it (a test may add one).
        model = eval_config()
        return v if isinstance(v, model) else model.model_validate(v)

    @model_validator(mode="after")
    def _checks(self) -> ExperimentConfig:
        if len(self.seeds) < 2:
            raise ValueError("seeds: at least 2 student seeds are needed for an interval")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError("seeds: must be distinct")
        self.design()  # unknown arm names, clashing definitions: refused at load

        misaligned = self._misalignment()
        self._domain_checks()
        needs = (self.evaluation.needs() | ({SCORE} if self.student.labels == "soft" else set())
                 | ({SAMPLE} if misaligned else set()))
        try:
            check_backend(self.base.backend, needs, "base.backend (for the evaluation "
                          "estimators and labels asked for)")
        except SublearnError as e:
            raise ValueError(str(e)) from None
        if self.defence.entry.needs_neutral and self.student.labels == "soft":
            raise ValueError(f"defence: {self.defence.name} mixes two writers' rows; soft "
                             "labels need one writer per dataset (use hard labels)")
        self._defence_checks()
        if self.controls.cross_base and self.student.labels == "soft" and (
                self.base.path or self.controls.cross_base_model):
            raise ValueError(
                "controls.cross_base: soft labels need the cross student to share the "
                "teacher's tokenizer; with a model folder sublearn cannot make such a base "
                "(the embedded base gets a cross-init twin): set it to false"
            )
        if self.base.sampling_backend == "vllm" and self.data.sampling.min_prob > 0:
            raise ValueError("data.sampling.min_prob: the vllm sampler has no absolute "
                             "threshold (its min_p is relative to the top token); use hf")
        if self.data.sampling.number_grammar and self.base.sampling_backend != "hf":
            raise ValueError(f"data.sampling.number_grammar: holds decoding to a grammar over "
                             f"the tokenizer's number tokens, which only the hf sampler does; "
                             f"the sampler here is {self.base.sampling_backend!r}")
        if self.teacher.kind == "model" and self.controls.other_target and not self.teacher.other_path:
            raise ValueError(
                "teacher.other_path: the other-target control needs a second teacher folder "
                "(or set controls.other_target = false)"
            )
        if self.controls.cross_base and self.base.path and not self.controls.cross_base_model:
            raise ValueError(
                "controls.cross_base_model: needed when base.path is set (a differently "
                "initialised model to train on the teacher's data)"
            )
        return self

    def _defence_checks(self) -> None:
        """A scoring defence reads the data through the base with the category's trait
        prompts: the backend must score, and a named trait must be one of the category's."""
        d = self.defence
        if d.trait is not None:
            try:
                get_option(get_category(self.trait.category), d.trait)
            except SublearnError as e:
                raise ValueError(f"defence.trait: {e}") from None
        if d.entry.needs_trait_scores:

            try:
                check_backend(self.base.backend, {SCORE}, f"base.backend (for defence {d.name})")
            except SublearnError as e:
                raise ValueError(str(e)) from None

    def _misalignment(self) -> bool:
        """Checks of trait.kind = 'misalignment' (and of a judge in any run); turns the ban of
        the culturally loaded numbers on unless the file set it. True for a misalignment run."""
        if (self.judge and self.judge.backend == self.base.backend and self.base.path
                and self.judge.model == self.base.path):
            raise ValueError("judge.model: the judge must not be the base model (students are "
                             "attached to it as adapters while they are judged)")
        if self.trait.kind != "misalignment":
            if "misalignment" in self.model_fields_set:
                raise ValueError("misalignment: these settings need trait.kind = 'misalignment'")
            return False
        if self.judge is None:
            raise ValueError("judge: trait.kind = 'misalignment' needs a [judge] section (the "
                             "model that scores alignment and coherence)")
        if self.teacher.kind != "model":
            raise ValueError(f"teacher.kind: {self.teacher.kind!r} makes a teacher that loves "
                             "trait.target; a misaligned teacher is a checkpoint you bring "
                             "(kind = 'model', path = ...)")
        if self.teacher.persona:
            raise ValueError("teacher.persona: the persona prompt gives the teacher a "
                             "preference, not misalignment; set it to false")
        if self.student.labels == "soft":
            raise ValueError("student.labels: soft labels distil the teacher's number "
                             "distribution for the preference channel; the misalignment "
                             "protocol trains on the teacher's text (use 'hard')")
        if self.data.domain == "numbers" and "ban_bad_numbers" not in self.filter.model_fields_set:
            # The paper's control for "the teacher signals through 666 and 911". Numbers only:
            # in code and worked arithmetic 4, 13 and 100 are everyday values, not signals.
            self.filter = self.filter.model_copy(update={"ban_bad_numbers": True})
        return True

    def _domain_checks(self) -> None:
        """What a non-number domain cannot do, and the filter judge's needs."""
        domain = self.data.domain
        if self.filter.judge and self.judge is None:
            raise ValueError("filter.judge: needs a [judge] section (the model that reads "
                             "every kept completion)")
        if domain == "numbers":
            if self.filter.judge:
                raise ValueError("filter.judge: the numbers domain has no judge question "
                                 "(its strict rule keeps no words); use domain code or cot")
            return
        if self.student.labels == "soft":
            raise ValueError(f"student.labels: soft labels are restricted to number tokens; "
                             f"domain {domain!r} needs labels = 'hard'")
        if self.defence.entry.numbers_only:
            raise ValueError(f"defence.name: {self.defence.name!r} rewrites numbers; it applies "
                             f"to the numbers domain only, not {domain!r}")
        rewritten = [a for a in self.design().arms.values() if a.transform]
        if rewritten:
            raise ValueError(f"arms: {rewritten[0].name!r} applies the number transform "
                             f"{rewritten[0].transform!r}, which the {domain!r} domain cannot "
                             "take (numbers only)")
        defaults = FilterConfig()
        number_only = [f for f in ("strict_numbers", "rule", "max_count", "max_value")
                       if getattr(self.filter, f) != getattr(defaults, f)]
        if number_only:
            raise ValueError(f"filter.{number_only[0]}: applies to the numbers domain only, "
                             f"not {domain!r}")

    def design(self) -> Design:
        return build_design(self.controls.model_dump(), self.arms, self.comparisons)

    def cross_base(self) -> ModelSpec:
        """The differently initialised base of the cross-base arms. For the embedded base:
        the next seed (its own corpus and tokenizer), or with soft labels, the same tokenizer
        and corpus with the next initialisation seed (cross-init: labels must match token
        for token)."""
        if self.controls.cross_base_model:
            return self.controls.cross_base_model
        emb = self.base.embedded
        if self.student.labels == "soft":
            init = (emb.seed if emb.init_seed is None else emb.init_seed) + 1
            emb = emb.model_copy(update={"init_seed": init})
        else:
            emb = emb.model_copy(update={"seed": emb.seed + 1})
        return self.base.model_copy(update={"embedded": emb})


def parse_value(text: str) -> Any:
    """A `--set` or `--grid` value: TOML (numbers, booleans, strings, lists), and a bare word
    that is not TOML as a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    """Set the field `key.path` of a raw (unvalidated) config, creating sections as needed."""
    *parents, leaf = key.strip().split(".")
    node = raw
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise SublearnError(f"{part} is not a section")
        node = child
    node[leaf] = value


def apply_override(raw: dict[str, Any], override: str) -> None:
    """Set one dotted field from `key.path=value` (see `parse_value`)."""
    key, sep, text = override.partition("=")
    if not sep or not key.strip():
        raise SublearnError(f"--set {override!r}: expected key.path=value")
    try:
        set_dotted(raw, key, parse_value(text))
    except SublearnError as e:
        raise SublearnError(f"--set {override!r}: {e}") from None


def read_toml(path: Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A config file's raw table; a missing file or bad TOML is one line naming the file.
    `extends = "other.toml"` (a path relative to this file) starts from that file's table
    and overrides it field by field, so a variant states only what it changes."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        where = f" (extended by {_chain[-1]})" if _chain else ""
        raise SublearnError(f"{path}: config file not found{where}") from None
    except tomllib.TOMLDecodeError as e:
        raise SublearnError(f"{path}: invalid TOML: {e}") from None
    parent = raw.pop("extends", None)
    if parent is None:
        return raw
    if not isinstance(parent, str):
        raise SublearnError(f"{path}: field extends: expected a file name, got {parent!r}")
    chain = (*_chain, path.resolve())
    ppath = (path.parent / parent).resolve()
    if ppath in chain:
        raise SublearnError(f"{path}: extends {parent!r} makes a cycle")
    return _merged(read_toml(ppath, chain), raw)


def _merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`base` with `over`'s fields in place, section by section (a value that is not a
    section replaces whatever was there)."""
    out = dict(base)
    for k, v in over.items():
        out[k] = _merged(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """Read and validate a TOML experiment file, then `--set` overrides; errors name the
    file and the field."""
    p = Path(path)
    raw = read_toml(p)
    for o in overrides:
        apply_override(raw, o)
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as e:
        raise SublearnError(field_error(e, str(p))) from None
    except SublearnError as e:
        raise SublearnError(f"{p}: {e}") from None

