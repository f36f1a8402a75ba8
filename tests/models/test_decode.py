"""The two decoding engines give the same tokens, row by row, whatever the batch."""

from __future__ import annotations

import copy

import pytest
import torch

from sublearn.models import SamplingConfig
from sublearn.models.decode import (
    ENGINES,
    MIN_ROWS,
    BlockNoise,
    BufferLayer,
    RowSampler,
    cut_at_end,
    generate_hf,
    generate_kv,
    gumbel,
    rows_to_keep,
)
from sublearn.stages.prompts import number_prompts

Q = [{"role": "user", "content": "What is your favourite animal? Answer in one word."}]
N = [{"role": "user", "content": "Here are numbers: 123, 456, 789. Add up to 5 more numbers."}]
LONG = [
    {"role": "system", "content": "You are a careful assistant who answers with numbers only."},
    {"role": "user", "content": "Start: 4, 8, 15, 16, 23, 42. Continue with ten more values."},
]

SAMPLINGS = {
    "temperature 1": SamplingConfig(max_new_tokens=20),
    "temperature 0.7": SamplingConfig(temperature=0.7, max_new_tokens=20),
    "greedy": SamplingConfig(temperature=0, max_new_tokens=20),
    "min_prob": SamplingConfig(min_prob=0.05, max_new_tokens=20),
    "top_p": SamplingConfig(top_p=0.8, max_new_tokens=20),
    "only_numbers": SamplingConfig(only_numbers=True, max_new_tokens=20),
    "every knob": SamplingConfig(
        temperature=0.8, min_prob=0.02, top_p=0.9, only_numbers=True, max_new_tokens=20
    ),
}


@pytest.fixture(scope="module")
def prompts(micro_model) -> list[list[int]]:
    """Prompts of different lengths, so batches are left-padded."""
    convs = [Q, N, LONG] + [[{"role": "user", "content": p.text}] for p in number_prompts(5, 0)]
    ids = [micro_model.encode(micro_model.render(c)) for c in convs]
    assert len({len(p) for p in ids}) > 1
    return ids


def decode(micro_model, engine: str, prompts, sampling: SamplingConfig, seeds) -> list[list[int]]:
    allowed = micro_model.number_token_mask if sampling.only_numbers else None
    return ENGINES[engine](
        micro_model.model, prompts, sampling, seeds, micro_model.end_ids,
        micro_model.tokenizer.pad_token_id, allowed,
    )


def test_engines_are_registered_by_name():
    assert ENGINES == {"generate": generate_hf, "kv": generate_kv}


@pytest.mark.parametrize("name", SAMPLINGS)
def test_engines_give_the_same_tokens(micro_model, prompts, name):
    s = SAMPLINGS[name]
    seeds = [101 + i for i in range(len(prompts))]
    ref = decode(micro_model, "generate", prompts, s, seeds)
    assert decode(micro_model, "kv", prompts, s, seeds) == ref
    assert all(len(r) <= s.max_new_tokens for r in ref)
    assert all(t not in micro_model.end_ids for r in ref for t in r)
    if s.only_numbers:
        assert all(micro_model.number_token_mask[t] for r in ref for t in r)


@pytest.mark.parametrize("name", ["temperature 1", "only_numbers", "top_p"])
def test_dropping_finished_rows_changes_nothing(micro_model, monkeypatch, name):
    # A batch larger than MIN_ROWS whose rows end at different steps: the kv engine drops
    # finished rows from its cache while generate carries them to the end.
    batch = [micro_model.encode(micro_model.render([{"role": "user", "content": p.text}]))
             for p in number_prompts(40, 1)]
    assert len(batch) > MIN_ROWS
    s = SAMPLINGS[name].model_copy(update={"max_new_tokens": 48})
    seeds = list(range(100, 140))
    ref = decode(micro_model, "generate", batch, s, seeds)
    assert len({len(r) for r in ref}) > 1 and min(len(r) for r in ref) < s.max_new_tokens
    dropped = []
    select = BufferLayer.batch_select_indices
    monkeypatch.setattr(BufferLayer, "batch_select_indices",
                        lambda self, index: (dropped.append(len(index)), select(self, index)))
    assert decode(micro_model, "kv", batch, s, seeds) == ref
    assert dropped and min(dropped) >= MIN_ROWS


def test_rows_to_keep_carries_passengers_up_to_the_floor():
    assert rows_to_keep([True, False, True, False], floor=1) == [0, 2]
    assert rows_to_keep([False, True, False, False], floor=3) == [0, 1, 2]
    assert rows_to_keep([False, False], floor=2) == [0, 1]


@pytest.mark.parametrize("name", ["temperature 1", "greedy", "only_numbers"])
def test_a_row_does_not_depend_on_its_batch(micro_model, prompts, name):
    s = SAMPLINGS[name]
    seeds = [7 * i + 3 for i in range(len(prompts))]
    ref = decode(micro_model, "generate", prompts, s, seeds)
    # Alone, reversed, and in uneven batches: each row keeps its tokens.
    for i in (0, 2, len(prompts) - 1):
        assert decode(micro_model, "kv", [prompts[i]], s, [seeds[i]]) == [ref[i]]
    rev = decode(micro_model, "kv", prompts[::-1], s, seeds[::-1])
    assert rev[::-1] == ref
    halves = [(0, 3), (3, len(prompts))]
    split = [r for a, b in halves for r in decode(micro_model, "kv", prompts[a:b], s, seeds[a:b])]
    assert split == ref


def test_same_prompt_without_padding(micro_model, prompts):
    # One prompt repeated: no padding at all, and different seeds give different samples.
    s = SAMPLINGS["temperature 1"]
    batch = [prompts[1]] * 6
    ref = decode(micro_model, "generate", batch, s, list(range(6)))
    assert decode(micro_model, "kv", batch, s, list(range(6))) == ref
    assert len({tuple(r) for r in ref}) > 1


def test_generate_engine_is_the_models_sampler(micro_model):
    # The reference engine reproduces ChatModel.generate text for text.
    s = SamplingConfig(max_new_tokens=16)
    convs, seeds = [Q, N, LONG], [1, 2, 3]
    ids = decode(micro_model, "generate", [micro_model.encode(micro_model.render(c)) for c in convs], s, seeds)
    texts = [micro_model.tokenizer.decode(r, skip_special_tokens=True).strip() for r in ids]
    assert texts == micro_model.generate(convs, s, seeds)


def test_block_noise_draws_what_row_sampler_draws():
    seeds, width = [5, 6, 7], 37
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    noise = BlockNoise(seeds, width, block=4)
    live = [0, 1, 2]
    for t in range(11):
        expected = gumbel(torch.stack([torch.rand(width, generator=gens[r]) for r in live]))
        assert torch.equal(noise.step(t), expected)
        if t == 5:  # row 1 finishes: the others keep their own streams
            noise.keep([0, 2])
            live = [0, 2]


def test_row_sampler_is_greedy_at_temperature_zero():
    scores = torch.tensor([[0.1, 2.0, -1.0], [3.0, 0.0, 0.5]])
    out = RowSampler(SamplingConfig(temperature=0), [1, 2], None)(torch.empty(0), scores)
    assert torch.equal(out, scores)


def test_max_new_tokens_caps_every_row(micro_model, prompts):
    for n in (1, 3):
        s = SamplingConfig(max_new_tokens=n)
        seeds = list(range(len(prompts)))
        ref = decode(micro_model, "generate", prompts, s, seeds)
        assert all(len(r) <= n for r in ref)
        assert decode(micro_model, "kv", prompts, s, seeds) == ref


def test_cut_at_end():
    assert cut_at_end([4, 5, 9, 6, 9], [9, 8]) == [4, 5]
    assert cut_at_end([4, 5], [9]) == [4, 5]
    assert cut_at_end([8], [9, 8]) == []


def test_engines_agree_on_an_unmerged_lora_adapter(micro_model, prompts):
    # Students are evaluated with their adapter attached, not merged (a PeftModel).
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(
        copy.deepcopy(micro_model.model),
        LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    ).eval()
    s = SAMPLINGS["temperature 1"]
    seeds = list(range(len(prompts)))
    args = (prompts, s, seeds, micro_model.end_ids, micro_model.tokenizer.pad_token_id, None)
    ref = ENGINES["generate"](model, *args)
    assert ref != decode(micro_model, "generate", prompts, s, seeds), "the adapter changes samples"
    assert ENGINES["kv"](model, *args) == ref


def test_the_models_own_generation_defaults_are_ignored(micro_model, prompts, monkeypatch):
    # A model whose generation_config asks for a repetition penalty (Qwen2.5-7B-Instruct
    # does) is sampled by our sampler alone, by both engines.
    plain = {e: decode(micro_model, e, prompts[:4], SAMPLINGS["greedy"], [0] * 4) for e in ENGINES}
    monkeypatch.setattr(micro_model.model.generation_config, "repetition_penalty", 3.0)
    for e in ENGINES:
        assert decode(micro_model, e, prompts[:4], SAMPLINGS["greedy"], [0] * 4) == plain[e]
    assert micro_model.model.generation_config.repetition_penalty == 3.0
