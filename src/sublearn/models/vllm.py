"""vLLM as a sampler: the paper's 30,000 completions per dataset at GPU speed.

Only sampling: scoring and training stay with Hugging Face (`[base] sampler = "vllm"`,
`backend = "hf"`). Prompts are rendered and tokenized by the same code as the HF backend
(`hf.prompt_ids`) and handed to vLLM as token ids, so both backends see identical inputs.
Each row carries its own seed, so a row's sample does not depend on its batch; vLLM's
random streams are not ours, though, so the sampler is part of every dataset's cache key.
`close()` stops the engine and releases its GPU memory before training starts.
"""

from __future__ import annotations

import gc
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sublearn.errors import SublearnError
from sublearn.models.base import SAMPLE, Messages, SamplingConfig
from sublearn.models.hf import end_token_ids, number_token_ids, prompt_ids
from sublearn.models.paths import check_model_folder


class VLLMSampler:
    capabilities = frozenset({SAMPLE})

    def __init__(self, llm: Any, tokenizer: Any, path: Path, lora: Any = None):
        self.llm = llm
        self.tokenizer = tokenizer
        self.path = path
        self.lora = lora  # a vllm LoRARequest when the folder is an adapter

    @classmethod
    def load(cls, path: str | Path, device: str = "auto", dtype: str = "auto",
             gpu_memory_utilization: float = 0.5, **engine: Any) -> VLLMSampler:
        """`gpu_memory_utilization` defaults to half the GPU: the HF model that scores and
        trains may be resident beside the engine during a run."""
        import json

        from transformers import AutoTokenizer
        from vllm import LLM

        p = check_model_folder(path)
        adapter = p / "adapter_config.json"
        lora = None
        base = p
        if adapter.exists():  # a LoRA teacher: the engine serves its base with the adapter on
            from vllm.lora.request import LoRARequest

            cfg = json.loads(adapter.read_text())
            base = check_model_folder(cfg["base_model_name_or_path"])
            engine = {"enable_lora": True, "max_lora_rank": max(8, cfg.get("r", 8)), **engine}
            lora = LoRARequest(p.name, 1, str(p))
        llm = LLM(model=str(base), dtype=dtype, gpu_memory_utilization=gpu_memory_utilization,
                  seed=0, **engine)
        return cls(llm, AutoTokenizer.from_pretrained(p), p, lora)

    def sampling_params(self, sampling: SamplingConfig, seed: int) -> Any:
        """Our sampling settings as vLLM's, or a clear refusal where it has no equivalent."""
        from vllm import SamplingParams

        if sampling.min_prob > 0:
            # vLLM's min_p is relative to the top token; our threshold is absolute.
            raise SublearnError("data.sampling.min_prob: not available with the vllm sampler "
                                "(its min_p is relative to the top token); use sampler = 'hf'")
        if sampling.number_grammar:
            raise SublearnError("data.sampling.number_grammar: not yet available with the vllm "
                                "sampler; use sampler = 'hf'")
        end = end_token_ids(self.tokenizer)
        allowed = number_token_ids(self.tokenizer) if sampling.only_numbers else None
        return SamplingParams(
            temperature=sampling.temperature, top_p=sampling.top_p,
            max_tokens=sampling.max_new_tokens, seed=None if sampling.temperature == 0 else seed,
            stop_token_ids=end, allowed_token_ids=allowed, skip_special_tokens=True,
        )

    def generate(
        self, conversations: Sequence[Messages], sampling: SamplingConfig, seeds: Sequence[int]
    ) -> list[str]:
        if len(seeds) != len(conversations):
            raise ValueError("one seed per conversation")
        prompts = [{"prompt_token_ids": prompt_ids(self.tokenizer, c)} for c in conversations]
        params = [self.sampling_params(sampling, int(s) % 2**63) for s in seeds]
        outs = self.llm.generate(prompts, params, lora_request=self.lora, use_tqdm=False)
        return [o.outputs[0].text.strip() for o in outs]

    def close(self) -> None:
        """Stop the engine and give its GPU memory back."""
        engine = getattr(self.llm, "llm_engine", None)
        if engine is not None and hasattr(engine, "shutdown"):
            engine.shutdown()
        self.llm = None
        gc.collect()
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
