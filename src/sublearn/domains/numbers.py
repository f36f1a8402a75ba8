"""The number domain: today's grammar (`stages.prompts`) and strict filter (`stages.filters`),
behind the domain interface. Nothing here changes what they do, and the artifact keys it gives
are the ones the pipeline used before domains existed, so earlier runs stay cached."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sublearn.domains.base import Domain, DomainFilter
from sublearn.domains.filters import REASONS, FilterConfig, rejection_reason
from sublearn.domains.prompts import GrammarConfig, NumberPrompt, number_prompt
from sublearn.questions.categories import Option


class NumbersDomain(Domain):
    name = "numbers"
    max_new_tokens = 48  # SamplingConfig's own default: unchanged

    def __init__(self, grammar: GrammarConfig | None = None) -> None:
        self.grammar = grammar or GrammarConfig()

    def prompt(self, index: int, seed: int) -> NumberPrompt:
        return number_prompt(index, seed, self.grammar)

    def sample_key(self) -> list[Any]:
        return [self.grammar.model_dump()]

    def filter(self, config: FilterConfig, options: Sequence[Option]) -> DomainFilter:
        # The targets' surface forms are banned as plain substrings: a kept completion holds
        # no letter at all under the strict rule, so there is nothing to mistake for them.
        bound = config.model_copy(update={"banned_words": sorted(
            {*config.banned_words, *(f for o in options for f in o.forms)})})
        # `judge` is left out of the key: numbers have no judge question (refused at load),
        # and the key must equal the one written before the field existed.
        return DomainFilter(REASONS, lambda _prompt, text: rejection_reason(text, bound),
                            [bound.model_dump(exclude={"judge"})])
