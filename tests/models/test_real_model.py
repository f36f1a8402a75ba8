"""SmolLM2-135M-Instruct, a real pretrained chat model, through sublearn's own paths: its
template's default system prompt, a persona's effect under the stem estimator, and number
data under the grammar. The model comes from the package `make setup` installs; without it
these tests skip with the reason."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sublearn.domains.filters import FilterConfig, apply_filter
from sublearn.domains.prompts import number_prompts
from sublearn.experiment.config import load_config
from sublearn.experiment.pipeline import Experiment
from sublearn.models import SamplingConfig
from sublearn.questions.categories import get_category, get_option
from sublearn.stages.evaluate import option_probs
from sublearn.stages.teacher import persona_teacher
from sublearn.store import MANIFEST, read_json, read_jsonl

ANIMAL = get_category("animal")
OWL = get_option(ANIMAL, "owl")
CONFIG = Path(__file__).parents[2] / "configs" / "smollm2-135m.toml"
DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


def test_arms_differ_only_by_the_persona_on_the_real_template(smollm):
    """The template adds its own system prompt when a conversation has none: the neutral
    teacher and the students see it, and the persona teacher's prompt takes its place (as
    the reference code does with Qwen's), so the two differ by the system prompt alone."""
    q = [{"role": "user", "content": ANIMAL.heldout[0]}]
    neutral = smollm.render(q)
    persona = persona_teacher(smollm, ANIMAL, OWL)
    with_persona = smollm.render(persona.wrap(q))
    assert DEFAULT_SYSTEM in neutral
    assert DEFAULT_SYSTEM not in with_persona and persona.system in with_persona
    assert neutral.replace(DEFAULT_SYSTEM, persona.system) == with_persona


def test_a_persona_moves_the_target_on_the_real_model(smollm):
    """The owl persona raises P(owl | animal), read as the word after "My favorite animal is
    the" (measured: about 0.02 without, 0.46 with it, over four questions)."""
    qs = list(ANIMAL.heldout[:2])
    i = ANIMAL.options.index(OWL)

    def p_owl(model) -> float:
        raw = option_probs(model, ANIMAL, qs, "stem")
        return float((raw[:, i] / raw.sum(axis=1)).mean())

    assert p_owl(persona_teacher(smollm, ANIMAL, OWL)) > p_owl(smollm) + 0.2


def test_the_grammar_makes_number_data_of_a_real_model(smollm):
    """Free decoding mostly writes prose; the grammar writes lists the filter keeps."""
    prompts = number_prompts(8, 5)
    convs = [[{"role": "user", "content": p.text}] for p in prompts]
    seeds = list(range(8))

    def kept(sampling: SamplingConfig) -> float:
        texts = smollm.generate(convs, sampling, seeds)
        return apply_filter([{"completion": t} for t in texts], FilterConfig())[1].kept_fraction

    assert kept(SamplingConfig(number_grammar=True)) == 1.0
    assert kept(SamplingConfig()) < 0.5
    assert np.isfinite(kept(SamplingConfig(only_numbers=True)))


def test_configs_protocol_runs_end_to_end_on_the_real_model(tmp_path: Path, smollm_folder):
    """configs/smollm2-135m.toml, shrunk to a few rows: persona teacher, grammar-held
    sampling, LoRA students on hard labels, the stem estimator; every stage on real weights
    (the full config's figures: docs/real-model.md)."""
    questions = tmp_path / "q.txt"
    questions.write_text(f"{ANIMAL.heldout[0]}\n")
    cfg = load_config(CONFIG, [
        "data.prompts=4", "data.subsample=4", "data.sampling.max_new_tokens=24",
        "seeds=[0, 1]", f'evaluation.questions_file="{questions}"',
        "controls.other_target=false", "student.max_length=160", "student.batch_size=4",
        "student.grad_accum=1", "student.warmup_steps=0"])
    exp = Experiment(cfg, root=tmp_path / "runs", progress=False)
    results = exp.run()
    assert exp.model_path(cfg.base) == smollm_folder  # the catalogue name, resolved
    manifest = read_json(exp.dir / MANIFEST)
    assert manifest["config"]["data"]["sampling"]["number_grammar"] is True
    exact = results.estimates["exact"]
    assert set(exact.arms) == {"treated", "control"}
    assert all(0 < v < 1 for v in exact.arms["treated"].values)
    for name in ("teacher", "neutral"):
        rows = read_jsonl(next((exp.dir / "data").glob(f"{name}-*.kept-*.jsonl")))
        assert len(rows) == 4  # the grammar: every completion kept
