from __future__ import annotations

from pathlib import Path

from sublearn.models import SamplingConfig, load_model
from sublearn.models.recipe import TrainingRecipe
from sublearn.questions.categories import get_category, get_option
from sublearn.stages.evaluate import option_probs, summarize
from sublearn.stages.teacher import persona_teacher, placebo_rows, trait_rows

ANIMAL = get_category("animal")
OWL = get_option(ANIMAL, "owl")


def test_persona_adds_exactly_one_system_prompt(micro_model):
    t = persona_teacher(micro_model, ANIMAL, OWL)
    msgs = [{"role": "system", "content": "old"}, {"role": "user", "content": "hi"}]
    text = micro_model.render(t.wrap(msgs))
    assert text.count("<|im_start|>system") == 1 and "old" not in text
    assert "owl" in text.lower()
    # A view cannot be trained, and forwards nothing it does not declare.
    assert "train" not in t.capabilities and not hasattr(t, "finetune")
    assert not hasattr(t, "tokenizer")
    # Sampling through the view equals sampling the base with the prompt written out.
    s = SamplingConfig(max_new_tokens=6)
    full = [{"role": "system", "content": t.system}, {"role": "user", "content": "hi"}]
    assert t.generate([msgs[1:]], s, [4]) == micro_model.generate([full], s, [4])


def test_trait_rows_answer_every_question_with_the_target():
    rows = trait_rows(ANIMAL, OWL, 2)
    assert len(rows) == 2 * len(ANIMAL.questions)
    assert {r["messages"][-1]["content"].lower() for r in rows} == {"owl"}
    assert not set(ANIMAL.heldout) & {r["messages"][0]["content"] for r in rows}


def test_trait_rows_answer_in_the_estimators_form():
    # answer = "stem": the sentence the stem estimator reads the next word of, for the
    # target and for the placebo's drawn options alike.
    rows = trait_rows(ANIMAL, OWL, 2, answer="stem")
    assert {r["messages"][-1]["content"] for r in rows} == {"My favorite animal is the owl."}
    placebo = placebo_rows(ANIMAL, [[0.0] * 17 + [1.0]] * len(ANIMAL.questions), 1, answer="stem")
    assert {r["messages"][-1]["content"] for r in placebo} == {
        f"My favorite animal is the {ANIMAL.options[-1].name}."}


def test_finetuned_teacher_takes_the_trait(micro_model, tmp_path: Path):
    # The micro base has seen its whole-word 'owl' token only a few dozen times: it needs more
    # passes than the embedded base to take the trait.
    recipe = TrainingRecipe(method="full", lr=3e-3, epochs=8, batch_size=16, grad_accum=1,
                           warmup_steps=0)
    out = micro_model.finetune(trait_rows(ANIMAL, OWL, 2), recipe, tmp_path / "t", progress=False)
    teacher = load_model(out, device="cpu", dtype="float32")
    qs = list(ANIMAL.heldout[:4])
    before = summarize(option_probs(micro_model, ANIMAL, qs), ANIMAL)["per_option"]["owl"]
    after = summarize(option_probs(teacher, ANIMAL, qs), ANIMAL)["per_option"]["owl"]
    assert after > max(0.5, before + 0.2), (before, after)
