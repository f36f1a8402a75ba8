"""The experiment's design as data: datasets, arms, controls and comparisons.

A *dataset* is written by one teacher with one set of random draws. An *arm* is a population
of students (one per seed): which dataset they train on, which transform is applied to it
first, and which base they start from. A *control* is a named preset of arms and the
comparisons that read them; `[controls]` switches presets on, and `[[arms]]` /
`[[comparisons]]` in the config add more. Adding a control is one entry in `PRESETS`; adding
a transform is one entry in `stages.datasets.TRANSFORMS`. The pipeline reads only this.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from sublearn.errors import unknown
from sublearn.stages.datasets import TRANSFORMS


class DatasetSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    writer: Literal["teacher", "neutral", "other"]
    draw: int = Field(0, ge=0, description="which independent set of random draws (0: the "
                      "draws every teacher shares)")


# The null sample is the neutral teacher with other random draws: what chance alone moves.
DATASETS: dict[str, DatasetSpec] = {
    "teacher": DatasetSpec(writer="teacher"),
    "neutral": DatasetSpec(writer="neutral"),
    "other": DatasetSpec(writer="other"),
    "null": DatasetSpec(writer="neutral", draw=1),
}


class ArmSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    data: str = Field(description=f"the dataset: {', '.join(DATASETS)}")
    transform: str | None = Field(None, description=f"applied to the rows first: "
                                  f"{', '.join(TRANSFORMS)}")
    base: Literal["base", "cross"] = Field("base", description="the student's initialisation")

    @field_validator("data")
    @classmethod
    def _known_data(cls, v: str) -> str:
        if v not in DATASETS:
            raise ValueError(unknown("dataset", v, DATASETS))
        return v

    @field_validator("transform")
    @classmethod
    def _known_transform(cls, v: str | None) -> str | None:
        if v is not None and v not in TRANSFORMS:
            raise ValueError(unknown("transform", v, TRANSFORMS))
        return v


class ComparisonSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    a: str
    b: str
    meaning: str = ""

    @property
    def key(self) -> str:
        return f"{self.a} - {self.b}"


TREATED = ArmSpec(name="treated", data="teacher")
CONTROL = ArmSpec(name="control", data="neutral")


def _cmp(a: str, b: str, meaning: str) -> ComparisonSpec:
    return ComparisonSpec(a=a, b=b, meaning=meaning)


# control name (a [controls] switch) -> (arms it adds, comparisons it answers)
PRESETS: dict[str, tuple[list[ArmSpec], list[ComparisonSpec]]] = {
    "neutral": ([CONTROL], [_cmp("treated", "control",
                                 "effect: treated student minus neutral-teacher control")]),
    "other_target": ([ArmSpec(name="other_target", data="other")],
                     [_cmp("treated", "other_target",
                           "specificity: minus the other-target teacher's student")]),
    "null": ([ArmSpec(name="null", data="null"), CONTROL],
             [_cmp("null", "control", "null: an independent neutral sample minus the control")]),
    "cross_base": ([ArmSpec(name="cross_treated", data="teacher", base="cross"),
                    ArmSpec(name="cross_control", data="neutral", base="cross"), CONTROL],
                   [_cmp("cross_treated", "cross_control",
                         "cross-base: a different base on the same data")]),
    "shuffle_within": ([ArmSpec(name="shuffled_within", data="teacher", transform="within"),
                        CONTROL],
                       [_cmp("shuffled_within", "control", "numbers shuffled within completions")]),
    "shuffle_across": ([ArmSpec(name="shuffled_across", data="teacher", transform="across"),
                        CONTROL],
                       [_cmp("shuffled_across", "control", "numbers shuffled across completions")]),
}


class Design(BaseModel):
    """The arms and comparisons of one experiment, in a stable order."""

    arms: dict[str, ArmSpec]
    comparisons: list[ComparisonSpec]

    @property
    def datasets(self) -> list[str]:
        """The datasets the arms train on, in `DATASETS` order."""
        used = {a.data for a in self.arms.values()}
        return [d for d in DATASETS if d in used]


def build_design(controls: dict[str, bool], arms: list[ArmSpec],
                 comparisons: list[ComparisonSpec]) -> Design:
    """The treated arm, every switched-on preset, then the declared extras; a name declared
    twice must mean the same arm, and comparisons must name arms that exist."""
    out: dict[str, ArmSpec] = {"treated": TREATED}
    comps: list[ComparisonSpec] = []
    for name, (preset_arms, preset_comps) in PRESETS.items():
        if controls.get(name):
            for a in preset_arms:
                out.setdefault(a.name, a)
            comps += preset_comps
    for a in arms:
        if a.name in out and out[a.name] != a:
            raise ValueError(f"arms: {a.name!r} is already an arm with another definition")
        out[a.name] = a
    order = {a: i for i, a in enumerate([TREATED.name, CONTROL.name])}
    ordered = dict(sorted(out.items(), key=lambda kv: order.get(kv[0], len(order))))
    for c in comparisons:
        for side in (c.a, c.b):
            if side not in ordered:
                raise ValueError(f"comparisons: {c.key!r} names no arm {side!r}; arms: "
                                 f"{', '.join(ordered)}")
    seen = set()
    unique = [c for c in [*comps, *comparisons] if not (c.key in seen or seen.add(c.key))]
    return Design(arms=ordered, comparisons=unique)
