"""What every domain gives the pipeline: a prompt source and a filter.

A domain is the kind of data a teacher writes: number lists, code, or worked arithmetic. Its
prompt `i` of a set depends on (seed, i) alone, like the number grammar's, so a set of 100 is
the first 100 of a set of 10,000 and workers can build slices. Its filter says, for each
(prompt, completion), why the row is dropped, or None to keep it; an optional judge then
looks at every row the rules kept.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

from sublearn.domains.filters import FilterConfig, FilterReport
from sublearn.errors import SublearnError
from sublearn.questions.categories import Option

# The reasons the judge pass adds after a domain's own: the judge said yes, or gave no usable
# answer (counted apart, and dropped too: a row nobody vouched for is not clean).
JUDGE_REASONS: tuple[str, ...] = ("judge_flagged", "judge_missing")


@runtime_checkable
class Prompt(Protocol):
    """What sampling needs from any prompt: its text and its index in the set."""

    text: str
    index: int


class Flagger(Protocol):
    """The judge as the filter uses it (`sublearn.stages.judges.Judge` satisfies it): a strict YES/NO
    per text, True for yes, None where the judge gave no usable answer."""

    def flags(self, texts: Sequence[str], question: str) -> list[bool | None]: ...


Rule = Callable[[Any, str], "str | None"]  # (prompt, completion) -> reason or None


@dataclass(frozen=True)
class DomainFilter:
    """A domain's filter, bound to a config and the trait's options.

    `reasons` are the rule's reason keys in the order it checks them; `key` is everything that
    changes its verdicts (it goes into the filtered dataset's artifact key); `question` is what
    the judge is asked about each kept completion, when the judge is on.
    """

    reasons: tuple[str, ...]
    rule: Rule
    key: list[Any]
    question: str | None = None

    def apply(self, rows: Iterable[dict], prompts: Mapping[int, Any],
              judge: Flagger | None = None) -> tuple[list[dict], FilterReport]:
        """Keep the rows whose completion passes the rule, then, with a judge, those it does
        not flag. Kept rows are the same dict objects, in order; the report counts every
        reason (the judge's too when it is on)."""
        reasons = self.reasons + (JUDGE_REASONS if judge is not None else ())
        report = FilterReport(rejected=dict.fromkeys(reasons, 0))
        passed: list[dict] = []
        for i, row in enumerate(rows):
            completion = row.get("completion")
            if not isinstance(completion, str):
                raise SublearnError(f"row {i}: expected a string under 'completion', "
                                    f"got {type(completion).__name__}")
            report.total += 1
            reason = self.rule(prompts.get(row.get("index")), completion)
            if reason is None:
                passed.append(row)
            else:
                report.rejected[reason] += 1
        if judge is not None and passed:
            if self.question is None:
                raise SublearnError("this domain's filter has no judge question")
            verdicts = judge.flags([r["completion"] for r in passed], self.question)
            if len(verdicts) != len(passed):
                raise SublearnError(f"the judge returned {len(verdicts)} verdicts for "
                                    f"{len(passed)} texts")
            kept = []
            for row, flagged in zip(passed, verdicts, strict=True):
                if flagged is None:
                    report.rejected["judge_missing"] += 1
                elif flagged:
                    report.rejected["judge_flagged"] += 1
                else:
                    kept.append(row)
            passed = kept
        report.kept = len(passed)
        return passed, report


class Domain(ABC):
    """A prompt source and its filter; see the module docstring."""

    name: ClassVar[str]
    # Decoding length when the config does not set one: code and worked solutions need room.
    max_new_tokens: ClassVar[int]

    @abstractmethod
    def prompt(self, index: int, seed: int) -> Prompt:
        """Prompt `index` of the set named by `seed`; depends on nothing else."""

    def prompts(self, n: int, seed: int, start: int = 0) -> list[Prompt]:
        """Prompts `start .. start+n-1` of the set named by `seed`."""
        if n < 0 or start < 0:
            raise ValueError(f"n and start must be non-negative, got n={n}, start={start}")
        return [self.prompt(i, seed) for i in range(start, start + n)]

    @abstractmethod
    def sample_key(self) -> list[Any]:
        """What besides the seed and count changes the prompts (part of the sampling key)."""

    @abstractmethod
    def filter(self, config: FilterConfig, options: Sequence[Option]) -> DomainFilter:
        """The filter for `config`, banning the words of `options` (the trait's targets)."""
