from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sublearn.errors import SublearnError
from sublearn.models import SamplingConfig, load_model
from sublearn.models.hf import common_prefix, prompt_ids
from sublearn.models.persona import Persona

# Compares floats from the CPU's kernels: CI runs this file again on a second kernel path
# (.ci/run), so a tolerance that holds on one vector unit only fails where it is seen.
pytestmark = pytest.mark.numerics

Q = [{"role": "user", "content": "What is your favourite animal? Answer in one word."}]
N = [{"role": "user", "content": "Here are numbers: 123, 456, 789. Add up to 5 more numbers."}]


def test_chat_template_round_trip(micro_model):
    msgs = [{"role": "system", "content": "Be brief."}, *Q]
    text = micro_model.render(msgs)
    assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>\n")
    assert text.endswith("<|im_start|>assistant\n")
    ids = micro_model.encode(text)
    assert micro_model.tokenizer.decode(ids) == text
    full = micro_model.render([*msgs, {"role": "assistant", "content": "owl"}], False)
    assert full == text + "owl<|im_end|>\n"


def test_sampling_shapes_and_seed_determinism(micro_model):
    s = SamplingConfig(max_new_tokens=12)
    a = micro_model.generate([Q, N, Q], s, [1, 2, 3])
    b = micro_model.generate([Q, N, Q], s, [1, 2, 3])
    assert len(a) == 3 and all(isinstance(x, str) for x in a)
    assert a == b
    # Row randomness depends only on its own seed: same seed, same prompt, same text in any
    # batch; batch composition does not matter.
    alone = micro_model.generate([Q], s, [3])
    assert alone[0] == a[2]
    many = micro_model.generate([Q] * 6, s, list(range(10, 16)))
    assert len(set(many)) > 1, "different seeds should give different samples"


def test_greedy_ignores_seeds(micro_model):
    g = SamplingConfig(temperature=0, max_new_tokens=10)
    assert micro_model.generate([Q, Q], g, [1, 2])[0] == micro_model.generate([Q], g, [99])[0]


def test_threshold_sampler_keeps_only_likely_tokens(micro_model):
    # With a threshold near 1 only the argmax survives: the sampler becomes greedy.
    s = SamplingConfig(min_prob=0.99, max_new_tokens=10)
    g = SamplingConfig(temperature=0, max_new_tokens=10)
    assert micro_model.generate([N] * 3, s, [1, 2, 3]) == micro_model.generate([N] * 3, g, [0, 0, 0])
    tiny_p = SamplingConfig(top_p=1e-6, max_new_tokens=10)
    assert micro_model.generate([N], tiny_p, [5]) == micro_model.generate([N], g, [0])


def test_only_numbers_restricts_characters(micro_model):
    s = SamplingConfig(only_numbers=True, max_new_tokens=20)
    for text in micro_model.generate([N] * 4, s, [1, 2, 3, 4]):
        assert set(text) <= set("0123456789 ,;()[].\n")


def test_batched_and_single_logprobs_agree(micro_model):
    convs = [Q, N, Q]
    comps = ["owl", "1, 2, 3", "Fox"]
    batched = micro_model.completion_logprobs(convs, comps)
    for c, x, lp in zip(convs, comps, batched, strict=True):
        single = micro_model.completion_logprobs([c], [x])[0]
        assert len(single) == len(lp)
        assert single == pytest.approx(lp, abs=1e-4)


def test_first_token_logprob_matches_the_models_own_forward(micro_model):
    comp = "owl"
    first_id = micro_model.encode(comp)[0]
    lp = micro_model.completion_logprobs([Q], [comp], close=False)[0]
    ids = torch.tensor([prompt_ids(micro_model.tokenizer, Q)])
    with torch.no_grad():
        dist = micro_model.model(input_ids=ids).logits[0, -1].float().log_softmax(-1)
    assert lp[0] == pytest.approx(dist[first_id].item(), abs=1e-4)


def test_close_scores_the_end_token(micro_model):
    open_ = micro_model.completion_logprobs([Q], ["owl"], close=False)[0]
    closed = micro_model.completion_logprobs([Q], ["owl"], close=True)[0]
    assert len(closed) == len(open_) + 1 and closed[:-1] == pytest.approx(open_, abs=1e-5)


def test_number_mask_covers_digits_and_end(micro_model):
    mask = micro_model.number_token_mask
    for d in "0123456789":
        assert mask[micro_model.encode(d)[0]]
    assert all(mask[i] for i in micro_model.end_ids)
    assert not mask[micro_model.encode("owl")[0]]


def test_missing_path_is_a_clear_error(tmp_path: Path):
    with pytest.raises(SublearnError, match="does not exist"):
        load_model(tmp_path / "nope")


def test_folder_that_is_not_a_model(tmp_path: Path):
    (tmp_path / "readme.txt").write_text("hi")
    with pytest.raises(SublearnError, match="not a model folder"):
        load_model(tmp_path)


def test_unknown_backend(micro_base):
    with pytest.raises(SublearnError, match="unknown model backend"):
        load_model(micro_base, backend="tpu-magic")


def test_bad_dtype(micro_base):
    with pytest.raises(SublearnError, match="unknown dtype"):
        load_model(micro_base, dtype="int3")


def test_sampling_config_rejects_greedy_with_knobs():
    with pytest.raises(ValueError):
        SamplingConfig(temperature=0, top_p=0.9)


def test_lora_finetune_round_trip(micro_model, tmp_path: Path):
    from sublearn.models.recipe import TrainingRecipe

    rows = [{"messages": [*N, {"role": "assistant", "content": "1, 2, 3"}]}] * 8
    recipe = TrainingRecipe(lr=1e-2, epochs=2, batch_size=4, grad_accum=1, warmup_steps=0)
    before = sum(micro_model.completion_logprobs([N], ["1, 2, 3"])[0])
    out = micro_model.finetune(rows, recipe, tmp_path / "student", progress=False)
    assert (out / "adapter_config.json").exists()
    student = load_model(out, device="cpu", dtype="float32")
    after = sum(student.completion_logprobs([N], ["1, 2, 3"])[0])
    assert after > before, "training on a completion must raise its likelihood"
    # The base is untouched by training a student.
    assert sum(micro_model.completion_logprobs([N], ["1, 2, 3"])[0]) == pytest.approx(before)
    w = {n: p for n, p in student.model.named_parameters()}
    assert all(torch.isfinite(p).all() for p in w.values())


def test_shared_prompt_scoring_equals_whole_sequence_forward_passes(micro_model):
    # Every surface form of every option after one question: the prompt runs once and its
    # KV cache serves them all (batches of 7 force several cache expansions).
    from sublearn.questions.categories import get_category

    forms = [f for o in get_category("animal").options for f in o.forms]
    micro_model.batch_size, size = 7, micro_model.batch_size
    try:
        shared = micro_model.completion_logprobs([Q] * len(forms), forms)
    finally:
        micro_model.batch_size = size
    for form, lp in zip(forms, shared, strict=True):
        assert lp == pytest.approx(_whole_sequence(micro_model, Q, form), abs=1e-5), form


def _whole_sequence(model, conv, completion: str) -> list[float]:
    """Log-probs of the completion (end of turn included) from one plain forward pass of the
    whole sequence: what every scoring shortcut must reproduce."""
    ids, n = model.pair_ids(conv, completion, close=True)
    return _plain(model, ids[:n], ids[n:])


def _plain(model, prompt: list[int], completion: list[int]) -> list[float]:
    ids = prompt + completion
    with torch.no_grad():
        logits = model.model(input_ids=torch.tensor([ids])).logits[0].float()
    rows = torch.arange(len(prompt) - 1, len(ids) - 1)
    return logits.log_softmax(-1)[rows, completion].tolist()


def test_rows_under_one_system_prompt_score_as_whole_sequences(micro_model, monkeypatch):
    # The audit's case: prompts of different lengths under one trait system prompt; two of
    # them scored twice (a data row and its reference row), once with an empty completion
    # (the end of turn alone). Batches of 4 mix prompts with one and with two completions.
    system = "You love owls more than any other animal."
    convs = [Q, N, [{"role": "user", "content": "Two numbers?"}], N, Q,
             [{"role": "user", "content": "Continue 4, 8, 15, 16, 23, 42 with six more numbers."}]]
    comps = ["owl", "1, 2, 3", "7", "9, 9", "", "12, 13, 14, 15, 16, 17"]
    shared = []
    run = micro_model._prefix
    monkeypatch.setattr(micro_model, "_prefix", lambda ids: shared.append(len(ids)) or run(ids))
    monkeypatch.setattr(micro_model, "batch_size", 4)
    persona = Persona(micro_model, system)
    got = persona.completion_logprobs(convs, comps)
    assert shared and min(shared) > len(micro_model.encode(system)), "the system prompt runs once"
    for conv, comp, lp in zip(convs, comps, got, strict=True):
        want = _whole_sequence(micro_model, persona.wrap(conv), comp)
        assert len(lp) == len(want) and lp == pytest.approx(want, abs=1e-4), comp


def test_prefix_scoring_without_a_shared_token_or_with_a_prompt_inside_another(micro_model):
    a, b = micro_model.encode("Hello there"), micro_model.encode("Bye now")
    assert a[0] != b[0]
    cases = [[(a, b), (b, a + b), (a + b[:1], b[:1])],  # nothing shared
             [(a, b), (a + b, a)],  # the shared prefix is the whole first prompt
             # Prompts of different lengths with two completions each: the second pass skips
             # the padding after the shorter prompt, with and without a shared prefix.
             [(a, b), (a, a), (a + b, b), (a + b, b[:1])],
             [(a, b), (a, a[:1]), (b + a, a), (b + a, b)]]
    for pairs in cases:
        for idx, logits in micro_model._completion_logits(pairs, None):
            lps = logits.log_softmax(-1).split([len(pairs[i][1]) for i in idx])
            for i, lp in zip(idx, lps, strict=True):
                target = torch.tensor(pairs[i][1])
                got = lp.gather(-1, target[:, None]).squeeze(-1).tolist()
                assert got == pytest.approx(_plain(micro_model, *pairs[i]), abs=1e-4), pairs[i]


def test_an_audits_data_and_reference_on_one_prompt_score_as_whole_sequences(micro_model):
    # score_tasks scores the data and reference tasks by system prompt, so a data row and the
    # reference row on its prompt are two completions of one prompt in one call.
    from sublearn.questions.categories import get_category
    from sublearn.safety.rows import ChatRow
    from sublearn.safety.scoring import score_tasks, trait_tasks

    animal = get_category("animal")
    prompts = [Q, N, [{"role": "user", "content": "Two numbers?"}], N]
    data = [ChatRow(0, p, c, i) for i, (p, c) in enumerate(zip(prompts, ["owl", "1, 2", "7", "3"]))]
    reference = [ChatRow(0, p, c, i) for i, (p, c) in enumerate(zip(prompts, ["cat", "4", "", "5, 6"]))]
    tasks = [*trait_tasks(data, animal, animal.options[:2], 3),
             *trait_tasks(reference, animal, animal.options[:2], 3)]
    scored = score_tasks(micro_model, tasks)
    assert [len(s) for s in scored] == [len(t.rows) for t in tasks]
    for task, lps in zip(tasks, scored, strict=True):
        for row, system, lp in zip(task.rows, task.systems, lps, strict=True):
            conv = row.prompt if system is None else Persona(micro_model, system).wrap(row.prompt)
            assert lp == pytest.approx(_whole_sequence(micro_model, conv, row.completion),
                                       abs=1e-4), (system, row)


def test_common_prefix():
    assert common_prefix([[1, 2, 3], [1, 2], [1, 2, 4]]) == (1, 2)
    assert common_prefix([[1, 2], [3, 2]]) == ()
    assert common_prefix([[5, 6]]) == (5, 6)
