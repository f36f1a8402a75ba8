"""Defences on the auxiliary channel: each is a distribution, is the identity or the
extreme it claims at its ends, and bad specifications are refused before any training."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sublearn.auxlogit.defence import DEFENCES, parse
from sublearn.errors import SublearnError

# Compares floats from the CPU's kernels: CI runs this file again on a second kernel path
# (.ci/run), so a tolerance that holds on one vector unit only fails where it is seen.
pytestmark = pytest.mark.numerics

LOGITS = torch.randn(3, 50, 4, generator=torch.Generator().manual_seed(0)) * 2
EPS = torch.randn(3, 50, 4, generator=torch.Generator().manual_seed(1))
SOFT = F.softmax(LOGITS, -1)


@pytest.mark.parametrize("name", list(DEFENCES))
def test_every_defence_releases_a_distribution_at_every_default_strength(name: str) -> None:
    d = DEFENCES[name]
    for s in d.defaults:
        q = d.apply(LOGITS, s, EPS)
        assert q.shape == LOGITS.shape and (q >= 0).all(), (name, s)
        torch.testing.assert_close(q.sum(-1), torch.ones(3, 50))
        assert not torch.allclose(q, SOFT, atol=1e-3), (name, s)  # it does change something


def test_weak_ends_are_the_soft_target_and_strong_ends_what_they_claim() -> None:
    apply = {name: d.apply for name, d in DEFENCES.items()}
    torch.testing.assert_close(apply["noise"](LOGITS, 0.0, EPS), SOFT)
    torch.testing.assert_close(apply["temperature"](LOGITS, 1.0, EPS), SOFT)
    torch.testing.assert_close(apply["top1"](LOGITS, 0.0, EPS), SOFT)
    assert (apply["round"](LOGITS, 16, EPS) - SOFT).abs().max() < 1e-4
    hard = F.one_hot(LOGITS.argmax(-1), 4).float()
    torch.testing.assert_close(apply["top1"](LOGITS, 1.0, EPS), hard)
    # Very hot: almost uniform. Very noisy: the argmax no longer follows the teacher.
    assert (apply["temperature"](LOGITS, 1e3, EPS) - 0.25).abs().max() < 0.01
    agree = (apply["noise"](LOGITS, 100.0, EPS).argmax(-1) == LOGITS.argmax(-1)).float().mean()
    assert agree < 0.6
    # One bit: every released value is 0 or 1 before renormalising, so few levels survive.
    assert len(torch.unique(apply["round"](LOGITS, 1, EPS))) <= 4


def test_rounding_everything_to_zero_releases_the_uniform_distribution() -> None:
    flat = torch.zeros(1, 1, 30)  # 30 outputs of 1/30 each round to 0 at 1 bit
    torch.testing.assert_close(DEFENCES["round"].apply(flat, 1, flat), torch.full((1, 1, 30), 1 / 30))


def test_parse_names_defaults_and_strengths() -> None:
    assert parse(["noise"]) == [("noise", [0.5, 1, 2, 4])]
    assert parse(["round=4,2"]) == [("round", [4.0, 2.0])]
    assert parse(["noise"], "0,1") == [("noise", [0.0, 1.0])]
    assert [n for n, _ in parse(["all"])] == list(DEFENCES)
    for specs, strengths, needle in (
        (["blur"], None, "unknown defence"),
        (["round=1.5"], None, "whole number"),
        (["top1=2"], None, "[0, 1]"),
        (["temperature=0"], None, "T > 0"),
        (["noise=a"], None, "not numbers"),
        (["noise", "noise=1"], None, "twice"),
        (["noise", "round"], "1,2", "exactly one"),
    ):
        with pytest.raises(SublearnError, match=needle):
            parse(specs, strengths)
