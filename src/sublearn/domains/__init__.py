"""Domains: what a teacher writes (number lists, code, worked arithmetic), each a prompt
source and a filter behind one interface (`base.Domain`). `[data] domain` picks one."""

from __future__ import annotations

from collections.abc import Callable

from sublearn.domains.base import JUDGE_REASONS, Domain, DomainFilter, Flagger, Prompt
from sublearn.domains.code import CodeDomain
from sublearn.domains.cot import CotDomain
from sublearn.domains.numbers import NumbersDomain
from sublearn.domains.prompts import GrammarConfig
from sublearn.errors import lookup

# name -> a factory from the [data] grammar, which only the number domain reads.
DOMAINS: dict[str, Callable[[GrammarConfig], Domain]] = {
    "numbers": NumbersDomain,
    "code": lambda _grammar: CodeDomain(),
    "cot": lambda _grammar: CotDomain(),
}


def get_domain(name: str, grammar: GrammarConfig | None = None) -> Domain:
    return lookup(DOMAINS, name, "domain")(grammar or GrammarConfig())


__all__ = ["DOMAINS", "JUDGE_REASONS", "Domain", "DomainFilter", "Flagger", "Prompt",
           "get_domain"]
