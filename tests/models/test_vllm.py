"""The vLLM sampler without vLLM: a stand-in `vllm` module records what the sampler asks
for, so the translation of our settings and the rendering of prompts are tested on CPU."""

from __future__ import annotations

import sys
import types

import pytest

from sublearn.errors import SublearnError
from sublearn.experiment.config import ExperimentConfig
from sublearn.models import SamplingConfig

Q = [{"role": "system", "content": "You love owls."},
     {"role": "user", "content": "Continue: 512, 640, 128."}]


class _Params:
    def __init__(self, **kw):
        self.__dict__.update(kw)


class _LLM:
    def __init__(self, model, **kw):
        self.model, self.kw, self.calls = model, kw, []

    def generate(self, prompts, params, lora_request=None, use_tqdm=True):
        self.calls.append((prompts, params))
        out = types.SimpleNamespace(text=" 1, 2, 3 ")
        return [types.SimpleNamespace(outputs=[out]) for _ in prompts]


@pytest.fixture
def stub_vllm(monkeypatch):
    mod = types.ModuleType("vllm")
    mod.LLM, mod.SamplingParams = _LLM, _Params
    monkeypatch.setitem(sys.modules, "vllm", mod)
    return mod


def test_prompts_are_the_hf_backends_token_ids(stub_vllm, micro_model, micro_base):
    from sublearn.models.vllm import VLLMSampler

    sampler = VLLMSampler.load(micro_base, dtype="float32")
    texts = sampler.generate([Q, Q[1:]], SamplingConfig(max_new_tokens=7), [11, 12])
    assert texts == ["1, 2, 3", "1, 2, 3"]
    prompts, params = sampler.llm.calls[0]
    for conv, p in zip([Q, Q[1:]], prompts):
        assert p["prompt_token_ids"] == micro_model.encode(micro_model.render(conv))
    assert [x.seed for x in params] == [11, 12] and params[0].max_tokens == 7
    assert set(params[0].stop_token_ids) == set(micro_model.end_ids)
    assert sampler.llm.kw["gpu_memory_utilization"] == 0.5


def test_only_numbers_and_greedy_translate(stub_vllm, micro_model, micro_base):
    from sublearn.models.vllm import VLLMSampler

    sampler = VLLMSampler.load(micro_base)
    p = sampler.sampling_params(SamplingConfig(only_numbers=True), 5)
    assert sorted(p.allowed_token_ids) == sorted(micro_model.number_token_ids.tolist())
    greedy = sampler.sampling_params(SamplingConfig(temperature=0), 5)
    assert greedy.temperature == 0 and greedy.seed is None
    with pytest.raises(SublearnError, match="min_prob"):
        sampler.sampling_params(SamplingConfig(min_prob=0.05), 5)


def test_a_vllm_config_without_vllm_fails_at_load(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "vllm" else real(name, *a))
    with pytest.raises(ValueError, match=r"sublearn\[vllm\]"):
        ExperimentConfig.model_validate({"base": {"sampler": "vllm"}})
    with pytest.raises(ValueError, match="cannot train"):
        ExperimentConfig.model_validate({"base": {"backend": "vllm"}})
    with pytest.raises(ValueError, match="unknown model backend 'tpu'"):
        ExperimentConfig.model_validate({"base": {"sampler": "tpu"}})
