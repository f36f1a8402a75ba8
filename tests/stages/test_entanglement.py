"""Subliminal prompting: entangled values chosen by lift, random controls apart from them."""

from __future__ import annotations

import numpy as np
import pytest

from sublearn.questions.categories import get_category, get_option
from sublearn.stages import entanglement
from sublearn.stages.entanglement import EntanglementConfig, measure

ANIMAL = get_category("animal")


def test_entangled_values_are_the_personas_top_lifts(micro_model, monkeypatch):
    config = EntanglementConfig(max_value=30, top=2, pool=10, controls=3, questions=1,
                                answer="bare")
    seen = {}

    def spy(model, max_value):
        out = real(model, max_value)
        seen["persona" if hasattr(model, "system") else "plain"] = out
        return out

    real = entanglement.value_logprobs
    monkeypatch.setattr(entanglement, "value_logprobs", spy)
    res = measure(micro_model, ANIMAL, [get_option(ANIMAL, "owl")], config)["targets"]["owl"]
    lift = (seen["persona"] - seen["plain"]).mean(axis=0)
    pool = np.argsort(-seen["persona"].mean(axis=0), kind="stable")[:10]
    want = sorted(pool, key=lambda v: -lift[v])[:2]
    assert [e["value"] for e in res["entangled"]] == [int(v) for v in want]
    assert [e["lift"] for e in res["entangled"]] == pytest.approx([lift[v] for v in want])
    assert len(res["random_values"]) == 3
    assert not set(res["random_values"]) & {e["value"] for e in res["entangled"]}
    assert len(res["p_target_entangled"]) == 2 and len(res["p_target_random"]) == 3
    assert res["effect"] == pytest.approx(np.mean(res["p_target_entangled"])
                                          - np.mean(res["p_target_random"]))
    assert 0 < res["p"] <= 1
