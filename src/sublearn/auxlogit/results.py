"""The toy's results record (results.json of `sublearn auxlogit`), beside the toy that writes
it: the analysis layer's `Record` knows nothing of the toy's config."""

from __future__ import annotations

from typing import ClassVar, Literal

from sublearn.analysis.records import ArmEstimate, Comparison, Frozen, Record
from sublearn.auxlogit.config import AuxLogitConfig


class DataInfo(Frozen):
    """The toy's dataset: its name and sizes."""

    name: str
    n_train: int
    n_test: int
    n_features: int


class AuxLogitResults(Record):
    """One run of the auxiliary-logit toy (`sublearn auxlogit`): per-model test accuracy by
    arm, and the same-init student against each control."""

    rerun: ClassVar[str] = "rerun `sublearn auxlogit` with the same options to rewrite it"

    kind: Literal["auxlogit"] = "auxlogit"
    config: AuxLogitConfig
    data: DataInfo
    wall_s: float
    chance: float
    arms: dict[str, ArmEstimate]
    comparisons: list[Comparison]
