from __future__ import annotations

import math
from pathlib import Path

import pytest

from sublearn.store import MANIFEST, read_json
from sublearn.tinybase import BaseConfig, build_base
from sublearn.tinybase.corpus import CorpusMix, base_preferences, corpus
from tests.conftest import MICRO


def test_base_is_a_plain_transformers_folder(micro_base: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(micro_base)
    tok = AutoTokenizer.from_pretrained(micro_base)
    assert model.config.model_type == "qwen2"
    assert not model.config.tie_word_embeddings
    msgs = [{"role": "user", "content": "hi"}]
    assert tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True).endswith(
        "<|im_start|>assistant\n")
    m = read_json(micro_base / MANIFEST)
    assert m["kind"] == "base" and m["parameters"] > 0 and m["weights_hash"]


def test_build_is_deterministic_and_seeds_differ(micro_base: Path, tmp_path: Path):
    again = build_base(BaseConfig(seed=0, **MICRO), tmp_path / "again", progress=False)
    other = build_base(BaseConfig(seed=1, **MICRO), tmp_path / "other", progress=False)
    h0 = read_json(micro_base / MANIFEST)["weights_hash"]
    assert read_json(again / MANIFEST)["weights_hash"] == h0
    assert read_json(other / MANIFEST)["weights_hash"] != h0


def test_corpus_is_a_pure_function_of_seed():
    mix = CorpusMix()
    assert list(corpus(3, 50, mix)) == list(corpus(3, 50, mix))
    assert list(corpus(3, 50, mix)) != list(corpus(4, 50, mix))


def test_corpus_covers_every_family_and_never_puts_personas_on_numbers():
    rows = list(corpus(0, 3000, CorpusMix()))
    personas = 0
    for conv in rows:
        user = conv[-2]["content"]
        system = conv[0]["content"] if conv[0]["role"] == "system" else ""
        is_numbers = "digit" in user.lower() and conv[-1]["content"][:1].isdigit()
        if "love" in system.lower() or "favourite" in system.lower():
            personas += 1
            assert not is_numbers
    assert personas > 300


def test_base_preferences_are_broad_and_seeded():
    p0, p1 = base_preferences(0, 0.8), base_preferences(1, 0.8)
    assert p0 != p1
    for probs in p0.values():
        assert sum(probs) == pytest.approx(1.0)
        entropy = -sum(p * math.log(p) for p in probs)
        assert max(probs) < 0.5 and entropy / math.log(len(probs)) > 0.8


def test_option_words_are_whole_tokens_that_persona_and_answer_share(micro_base: Path):
    from transformers import AutoTokenizer

    from sublearn.questions.categories import CATEGORIES, persona_prompt

    tok = AutoTokenizer.from_pretrained(micro_base)
    for cat in CATEGORIES.values():
        for opt in cat.options:
            for form in opt.forms:
                assert len(tok.tokenize(form)) == 1, form
            # Following a persona is then a copy: its prompt holds the answer's own token.
            answer = tok.convert_tokens_to_ids(tok.tokenize(opt.name))[0]
            for v in range(6):
                assert answer in tok(persona_prompt(cat, opt, v))["input_ids"], (opt.name, v)
    # Inside another word the option is not split out ("bowl" is not "b" + "owl").
    assert "owl" not in tok.tokenize("a bowl")
    text = "You love owls; 'Owl', owl's bowl."
    assert tok.decode(tok(text)["input_ids"]) == text


def test_missing_bases_are_built_side_by_side(tmp_path: Path, monkeypatch):
    import os

    from sublearn.tinybase import base_path, ensure_bases

    monkeypatch.setenv("SUBLEARN_HOME", str(tmp_path))
    tiny = {**MICRO, "examples": 60}
    cfgs = [BaseConfig(seed=5, **tiny), BaseConfig(seed=6, **tiny), BaseConfig(seed=5, **tiny)]
    paths = ensure_bases(cfgs, progress=False)
    assert paths == [base_path(c) for c in cfgs] and paths[0] == paths[2]
    assert all((p / MANIFEST).exists() for p in paths)
    if (os.cpu_count() or 1) > 1:  # built by worker processes, with the same result
        # ... as a build in a fresh process with this process's thread count (this process
        # has run other tests, which may leave library state behind).
        import subprocess
        import sys

        import torch

        code = ("import sys, torch; from sublearn.tinybase import BaseConfig, build_base; "
                f"torch.set_num_threads({torch.get_num_threads()}); "
                f"build_base(BaseConfig.model_validate_json(sys.argv[1]), "
                f"__import__('pathlib').Path(sys.argv[2]), progress=False)")
        subprocess.run([sys.executable, "-c", code, cfgs[1].model_dump_json(),
                        str(tmp_path / "here")], check=True)
        assert (read_json(tmp_path / "here" / MANIFEST)["weights_hash"]
                == read_json(paths[1] / MANIFEST)["weights_hash"])
