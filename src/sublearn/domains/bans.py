"""The ban checks every text domain shares: banned numbers and banned words.

Banned numbers reuse the number filter's own check (`stages.filters.rejection_reason` with
`strict_numbers` off looks at every ASCII digit run: "x13" holds 13, "013" is 13), configured
by the same `[filter]` fields (`ban_bad_numbers`, `banned_numbers`). Banned words are the
config's `banned_words` as case-insensitive substrings, as in the number filter, plus the
trait's terms under the word rule of `sublearn.domains.words`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

from sublearn.domains.filters import FilterConfig, rejection_reason
from sublearn.domains.words import mentioned, trait_terms
from sublearn.questions.categories import Option

BAN_REASONS: tuple[str, ...] = ("banned_number", "banned_word")


def ban_check(config: FilterConfig, options: Sequence[Option]
              ) -> tuple[Callable[[str], str | None], list[Any]]:
    """(text -> "banned_number" | "banned_word" | None, the key of what it depends on)."""
    numbers = FilterConfig(strict_numbers=False, ban_bad_numbers=config.ban_bad_numbers,
                           banned_numbers=config.banned_numbers)
    configured = [w.casefold() for w in config.banned_words]
    terms = [trait_terms(o) for o in options]

    def check(text: str) -> str | None:
        if rejection_reason(text, numbers) == "banned_number":
            return "banned_number"
        lowered = text.casefold()
        if any(w in lowered for w in configured) or mentioned(text, terms):
            return "banned_word"
        return None

    key = [sorted(numbers.banned_set()), sorted(configured), [asdict(t) for t in terms]]
    return check, key
