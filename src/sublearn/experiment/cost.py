"""What a run will cost on an API backend, computed from the config before any request.

Token counts are estimates: prompts are measured in characters and divided by 4 (about right
for English and digits with OpenAI's tokenizers), completions are counted at their maximum
length, and fine-tuning rows at prompt plus maximum completion. So the figure is an upper
bound for completions and an approximation for prompts; `sublearn run` prints it and asks
for confirmation (or `--yes`) before spending anything. What an estimator asks an API for is
declared by its entry (`stages.estimators`: `requests`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sublearn.domains import get_domain
from sublearn.experiment.design import DATASETS
from sublearn.models.openai_api import estimate_cost
from sublearn.models.registry import get_backend
from sublearn.questions.categories import Category, get_category, get_option, persona_prompt
from sublearn.questions.judge_prompts import PROMPTS, request
from sublearn.questions.misalignment import QUESTIONS
from sublearn.stages.estimators import ESTIMATORS

if TYPE_CHECKING:
    from sublearn.experiment.config import ExperimentConfig
    from sublearn.models.openai_api import CostEstimate, Prices
    from sublearn.stages.judges import JudgeConfig
    from sublearn.stages.misalignment import MisalignmentConfig

CHARS_PER_TOKEN = 4
# Chat formatting overhead per message (role markers, separators), in tokens.
PER_MESSAGE = 4


def _tokens(text: str) -> float:
    return len(text) / CHARS_PER_TOKEN + PER_MESSAGE


def api_cost(cfg: ExperimentConfig, prices: Prices | None = None) -> CostEstimate | None:
    """The estimate for the parts of the run an API serves, or None when nothing is remote."""
    samples_remote = get_backend(cfg.base.sampling_backend).api
    rest_remote = get_backend(cfg.base.backend).api
    judged = cfg.trait.kind == "misalignment" and cfg.judge is not None
    filter_judged = cfg.filter.judge and cfg.judge is not None
    judge_remote = (judged or filter_judged) and get_backend(cfg.judge.backend).api
    if not (samples_remote or rest_remote or judge_remote):
        return None
    design = cfg.design()
    d = cfg.data
    category = get_category(cfg.trait.category)
    prompts = get_domain(d.domain, d.grammar).prompts(min(d.prompts, 2_000), d.grammar_seed)
    user = sum(_tokens(p.text) for p in prompts) / len(prompts)
    persona = _tokens(persona_prompt(category, get_option(category, cfg.trait.target),
                                     cfg.teacher.persona_variant))
    total = estimate_cost(requests=0, prompt_tokens=0, max_completion_tokens=0, prices=prices)
    if samples_remote:
        for name in design.datasets:
            system = persona if DATASETS[name].writer != "neutral" else 0.0
            total += estimate_cost(requests=d.prompts, prompt_tokens=user + system,
                                   max_completion_tokens=d.sampling.max_new_tokens, prices=prices)
    if rest_remote:
        students = len(design.arms) * len(cfg.seeds)
        total += estimate_cost(
            requests=0, prompt_tokens=0, max_completion_tokens=0, train_rows=d.subsample,
            row_tokens=user + d.sampling.max_new_tokens, epochs=round(cfg.student.epochs),
            jobs=students, prices=prices)
        total += _estimator_cost(cfg.evaluation.settings(), category, students + 3, prices)
    if filter_judged and judge_remote:
        total += _filter_judge_cost(cfg, design.datasets, prices)
    if judged:
        total += _misalignment_cost(cfg.misalignment, cfg.judge,
                                    len(design.arms) * len(cfg.seeds) + 3, rest_remote,
                                    judge_remote, prices)
    return total


def _estimator_cost(values: dict[str, Any], category: Category, models: int,
                    prices: Prices | None) -> CostEstimate:
    """What the estimators turned on ask the API for (each entry's `requests`), over every
    model (each student, the base and both teachers) and the category's questions."""
    questions = len(category.questions)
    q_tokens = sum(_tokens(q) for q in category.questions) / questions
    total = estimate_cost(requests=0, prompt_tokens=0, max_completion_tokens=0, prices=prices)
    for e in ESTIMATORS.values():
        value = values[e.setting.name] if e.setting else None
        if e.requests is None or not value:
            continue
        asked = e.requests(value)
        total += estimate_cost(requests=models * questions * asked.per_question,
                               prompt_tokens=q_tokens, max_completion_tokens=asked.max_tokens,
                               prices=prices)
    return total


def _filter_judge_cost(cfg: ExperimentConfig, datasets: list[str],
                       prices: Prices | None) -> CostEstimate:
    """The filter's judge (code and cot domains): one yes/no request per completion the
    domain's own rule keeps, counted as if it kept every one, each completion at its longest."""
    d = cfg.data
    category = get_category(cfg.trait.category)
    options = (get_option(category, cfg.trait.target), get_option(category, cfg.trait.other_target))
    question = get_domain(d.domain, d.grammar).filter(cfg.filter, options).question or ""
    system, user = request("flag", question, "")
    per_request = _tokens(system["content"]) + _tokens(user["content"]) + d.sampling.max_new_tokens
    return estimate_cost(requests=d.prompts * len(datasets), prompt_tokens=per_request,
                         max_completion_tokens=cfg.judge.sampling.max_new_tokens, prices=prices)


def _misalignment_cost(m: MisalignmentConfig, judge: JudgeConfig | None, models: int,
                       answers_remote: bool, judge_remote: bool,
                       prices: Prices | None) -> CostEstimate:
    """The free-form answers (when the evaluated models are remote) and the judge's two
    requests per answer (when the judge is), each answer at its longest. A malformed reply's
    retries come on top: at most `judge.retries` more requests each."""
    answers = models * len(QUESTIONS) * m.samples_per_question
    q_tokens = sum(_tokens(q) for _, q in QUESTIONS) / len(QUESTIONS)
    total = estimate_cost(requests=0, prompt_tokens=0, max_completion_tokens=0, prices=prices)
    if answers_remote:
        total += estimate_cost(requests=answers, prompt_tokens=q_tokens,
                               max_completion_tokens=m.max_new_tokens, prices=prices)
    if judge_remote and judge:
        for kind in ("alignment", "coherence"):
            system, user = PROMPTS[kind]
            total += estimate_cost(
                requests=answers, prompt_tokens=_tokens(system) + _tokens(user) + q_tokens
                + m.max_new_tokens, max_completion_tokens=judge.sampling.max_new_tokens,
                prices=prices)
    return total
