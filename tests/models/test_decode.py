"""The two decoding engines give the same tokens, row by row, whatever the batch; the kv
engine's lean forward gives the model's own logits bit for bit."""

from __future__ import annotations

import copy

import pytest
import torch

from sublearn.domains.prompts import number_prompts
from sublearn.models import SamplingConfig
from sublearn.models.decode import (
    ENGINES,
    MIN_ROWS,
    BlockNoise,
    LeanForward,
    ModelForward,
    RowSampler,
    cut_at_end,
    generate_hf,
    generate_kv,
    gumbel,
    kv_forward,
    left_padded,
    rows_to_keep,
)
from sublearn.models.number_grammar import can_end

# Compares floats from the CPU's kernels: CI runs this file again on a second kernel path
# (.ci/run), so a tolerance that holds on one vector unit only fails where it is seen.
pytestmark = pytest.mark.numerics

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
    "number_grammar": SamplingConfig(number_grammar=True, max_new_tokens=20),
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


def decode(micro_model, engine: str, prompts, sampling: SamplingConfig, seeds,
           **kw) -> list[list[int]]:
    allowed = (micro_model.number_grammar(sampling.max_new_tokens) if sampling.number_grammar
               else micro_model.number_token_mask if sampling.only_numbers else None)
    return ENGINES[engine](
        micro_model.model, prompts, sampling, seeds, micro_model.end_ids,
        micro_model.tokenizer.pad_token_id, allowed, **kw,
    )


def test_engines_are_registered_by_name():
    assert ENGINES == {"generate": generate_hf, "kv": generate_kv}


@pytest.mark.parametrize("name", SAMPLINGS)
def test_engines_give_the_same_tokens(micro_model, prompts, name):
    s = SAMPLINGS[name]
    seeds = [101 + i for i in range(len(prompts))]
    ref = decode(micro_model, "generate", prompts, s, seeds)
    assert decode(micro_model, "kv", prompts, s, seeds) == ref
    assert decode(micro_model, "kv", prompts, s, seeds, lean=False) == ref
    assert all(len(r) <= s.max_new_tokens for r in ref)
    assert all(t not in micro_model.end_ids for r in ref for t in r)
    if s.only_numbers or s.number_grammar:
        assert all(micro_model.number_token_mask[t] for r in ref for t in r)
    if s.number_grammar:  # every row a prefix of a well-formed list, whole when it ended
        grammar = micro_model.number_grammar(s.max_new_tokens)
        states = [grammar.state(r) for r in ref]
        assert all(state is not None and can_end(state) for state in states)


@pytest.mark.parametrize("lean", [True, False])
@pytest.mark.parametrize("name", ["temperature 1", "only_numbers", "number_grammar", "top_p"])
def test_dropping_finished_rows_changes_nothing(micro_model, monkeypatch, name, lean):
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
    forward = LeanForward if lean else ModelForward
    keep = forward.keep
    monkeypatch.setattr(forward, "keep",
                        lambda self, index: (dropped.append(len(index)), keep(self, index)))
    assert decode(micro_model, "kv", batch, s, seeds, lean=lean) == ref
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
    out = RowSampler(SamplingConfig(temperature=0), [1, 2], None, 0)(torch.empty(0), scores)
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


# --- the lean forward ----------------------------------------------------------------------
def tiny_lm(model_type: str, attn: str = "sdpa", **extra):
    """A random-init causal LM of another architecture, built from its config alone."""
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    shape = {"vocab_size": 96, "hidden_size": 32, "intermediate_size": 64,
             "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
             "head_dim": 8, "max_position_embeddings": 128}
    config = AutoConfig.for_model(model_type, **(shape | extra))
    return AutoModelForCausalLM.from_config(config, attn_implementation=attn).eval()


def random_prompts(lengths: list[int], vocab: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (n,), generator=g).tolist() for n in lengths]


@pytest.fixture(scope="module")
def variants(micro_model):
    """Models the lean forward mirrors: the micro base as loaded, in bf16 (the CPU dtype of
    bench_scale), under an unmerged LoRA adapter, and a Llama."""
    from peft import LoraConfig, get_peft_model

    lora = get_peft_model(
        copy.deepcopy(micro_model.model),
        LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    ).eval()
    return {
        "micro": micro_model.model,
        "micro bf16": copy.deepcopy(micro_model.model).to(torch.bfloat16),
        "micro + LoRA": lora,
        "llama": tiny_lm("llama"),
    }


BATCHES = {
    # Left padding, more rows than MIN_ROWS (rows are dropped mid-way), fewer rows, one row,
    # and a batch with no padding at all (sdpa's unmasked path).
    "padded 24 rows": [3 + (7 * i) % 29 for i in range(24)],
    "padded 5 rows": [4, 9, 17, 2, 11],
    "short 2 rows": [3, 5],  # fewer tokens than MIN_ROWS in the whole batch
    "one row": [13],
    "no padding": [12] * 20,
}


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("name", ["micro", "micro bf16", "micro + LoRA", "llama"])
def test_lean_forward_gives_the_models_logits_bit_for_bit(variants, name, batch):
    model = variants[name]
    vocab = model.get_output_embeddings().weight.shape[0]
    prompts = random_prompts(BATCHES[batch], vocab, seed=len(batch))
    ids, att = left_padded(prompts, 0, torch.device("cpu"))
    pos = (att.cumsum(-1) - 1).masked_fill(att == 0, 0)
    capacity = ids.shape[1] + 12
    ref, lean = ModelForward(model, capacity), LeanForward.of(model, capacity)
    assert lean is not None
    with torch.no_grad():
        expected, got = ref.prefill(ids, att, pos), lean.prefill(ids, att, pos)
        last = pos[:, -1]
        for t in range(12):
            assert torch.equal(got, expected), f"step {t}"
            tokens = expected.argmax(-1)
            if t == 4 and len(prompts) > MIN_ROWS:  # drop rows down to the floor
                index = torch.arange(MIN_ROWS).flip(0)
                ref.keep(index), lean.keep(index)
                tokens, last = tokens[index], last[index]
            last = last + 1
            expected, got = ref.step(tokens, last), lean.step(tokens, last)
        assert torch.equal(got, expected)


def test_kv_forward_mirrors_only_the_architectures_it_knows(micro_model, variants):
    capacity = 64
    for name in ("micro", "micro + LoRA", "llama"):
        assert isinstance(kv_forward(variants[name], capacity), LeanForward), name
    assert isinstance(kv_forward(micro_model.model, capacity, lean=False), ModelForward)
    # Qwen3 adds a norm on queries and keys; eager attention runs other kernels: the model's
    # own forward decodes them. Mistral has no layer types: `generate` decodes it.
    assert isinstance(kv_forward(tiny_lm("qwen3"), capacity), ModelForward)
    assert isinstance(kv_forward(tiny_lm("qwen2", attn="eager"), capacity), ModelForward)
    # An MLP width that is not whole vectors: the packed activation could round differently.
    assert isinstance(kv_forward(tiny_lm("qwen2", intermediate_size=48), capacity), ModelForward)
    assert kv_forward(tiny_lm("mistral"), capacity) is None
    training = tiny_lm("qwen2").train()
    assert isinstance(kv_forward(training, capacity), ModelForward)


@pytest.mark.parametrize("arch", ["llama", "qwen3", "mistral"])
def test_every_architecture_gets_generates_tokens(arch):
    # Lean (llama), the model's own forward (qwen3), `generate` itself (mistral): rows of
    # random lengths end on any of three stop tokens, so they end at different steps.
    model = tiny_lm(arch)
    prompts = random_prompts([5, 17, 9, 30, 2, 12] * 3, 96, seed=1)
    seeds = list(range(len(prompts)))
    ends = [3, 4, 5]
    for s in (SAMPLINGS["temperature 1"], SAMPLINGS["top_p"], SAMPLINGS["greedy"]):
        s = s.model_copy(update={"max_new_tokens": 40})
        ref = generate_hf(model, prompts, s, seeds, ends, 0, None)
        assert generate_kv(model, prompts, s, seeds, ends, 0, None) == ref
    assert len({len(r) for r in ref}) > 1


def test_stop_tokens_end_rows_early(micro_model, prompts):
    # A frequent token as an extra stop token: rows end at different, early steps.
    s = SamplingConfig(max_new_tokens=30)
    seeds = list(range(len(prompts)))
    digit = micro_model.encode("1")[0]
    ends = [*micro_model.end_ids, digit]
    pad = micro_model.tokenizer.pad_token_id
    ref = generate_hf(micro_model.model, prompts, s, seeds, ends, pad, None)
    assert any(len(r) < s.max_new_tokens for r in ref)
    for lean in (True, False):
        got = generate_kv(micro_model.model, prompts, s, seeds, ends, pad, None, lean=lean)
        assert got == ref
